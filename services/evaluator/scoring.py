"""From verdicts to accuracies: the official scorers, both-order metrics, confidence intervals and
paired tests between two checkpoints. Pure functions over `Judged` rows (item_id, category, order,
verdict, sample), so the same code scores a fresh evaluation and rows read back from the database.

Official protocols
  VL-RewardBench (github.com/vl-rewardbench/VL_RewardBench cal.py, `classify` and
  `distribution_dataset`): an item's first k samples are counted as agree (picked the preferred
  response), reject (picked the other) or doesntMatch (no verdict). The item is agree / reject /
  doesntMatch when that count is > total/2, else "other" (no majority: a tie, or a split with
  unparsed samples). Only agree and reject items are scored: a category's accuracy is
  agree / (agree + reject); overall pools the items of the three categories; macro is the mean of
  the general, hallucination and reasoning accuracies (here: of those present).
  Multimodal RewardBench (facebookresearch/multimodal_rewardbench scripts/2_get_accuracy.py):
  one judgment per item; no verdict -> a coin flip ('A' if random() < 0.5 else 'B'). The original
  draws the coins from one random.seed(123) stream in file order; here each item's coin is
  random.Random(f"{seed}:{item_id}") (seed 123), so a sharded, resumed evaluation gets the same
  coins. Accuracy per category and over all items ("all"); macro = mean of the six leaderboard
  areas (reasoning and safety pooled over their two halves).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .benchmarks import MM_AREAS, VL_CATEGORIES
from .protocols import HELDOUT, MM_REWARDBENCH, VL_REWARDBENCH, correct_letter

N_BOOT = 1000
LEVEL = 0.95
MM_COIN_SEED = 123


class Judged(NamedTuple):
    """One judgment as the scorers read it: the scoring columns of an eval_results row."""

    item_id: str
    category: str
    order: str  # "AB": the preferred response shown as A; "BA": shown as B
    verdict: str | None  # "A", "B", or None where no verdict could be read
    sample: int = 0  # which of an item's samples (VL-RewardBench scores the first k)

    @property
    def right(self) -> bool:
        return self.verdict is not None and self.verdict == correct_letter(self.order)


class ItemOrders(NamedTuple):
    """One item of a both-orders pass (its AB and BA judgments)."""

    category: str
    both: int  # 1: right in both orders
    bias: int  # 1: the same letter both times (position bias)
    right: int  # judgments right
    judged: int  # judgments


@dataclass
class Score:
    """Per-item official outcomes of one benchmark."""

    benchmark: str
    category: dict[str, str]  # item -> category (every judged item)
    status: dict[str, str]  # item -> agree | reject | doesntMatch | other
    outcome: dict[str, int] = field(default_factory=dict)  # item -> 1/0, items that count only
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # aggregate categories
    macro_over: tuple[str, ...] = ()  # categories/groups averaged by macro

    def members(self, category: str) -> list[str]:
        cats = self.groups.get(category, (category,))
        return [i for i, c in self.category.items() if category == "overall" or c in cats]

    def values(self, category: str = "overall") -> list[int]:
        return [self.outcome[i] for i in self.members(category) if i in self.outcome]

    def accuracy(self, category: str = "overall") -> tuple[float | None, int]:
        v = self.values(category)
        return (sum(v) / len(v) if v else None), len(v)

    def macro(self) -> tuple[float | None, list[str]]:
        used = [c for c in self.macro_over if self.values(c)]
        return (sum(self.accuracy(c)[0] for c in used) / len(used) if used else None), used

    def categories(self) -> list[str]:
        present = sorted(set(self.category.values()))
        return present + [g for g in self.groups if g not in present and any(c in present for c in self.groups[g])]


def _by_item(rows: Sequence[Judged]) -> dict[str, list[Judged]]:
    out: dict[str, list[Judged]] = defaultdict(list)
    for r in rows:
        out[r.item_id].append(r)
    return out


def vl_rewardbench(rows: Sequence[Judged], k: int) -> Score:
    """Official rows (one per sample: item_id, category, order, sample, verdict) -> the cal.py score."""
    score = Score(VL_REWARDBENCH, {}, {}, macro_over=VL_CATEGORIES)
    for item, rs in _by_item(rows).items():
        rs = sorted(rs, key=lambda r: r.sample)[:k]
        agree = sum(r.right for r in rs)
        unparsed = sum(r.verdict is None for r in rs)
        reject, total = len(rs) - agree - unparsed, len(rs)
        score.category[item] = rs[0].category
        if agree > total / 2:
            score.status[item], score.outcome[item] = "agree", 1
        elif reject > total / 2:
            score.status[item], score.outcome[item] = "reject", 0
        elif unparsed > total / 2:
            score.status[item] = "doesntMatch"
        else:
            score.status[item] = "other"
    return score


def mm_coin(item_id: str, seed: int = MM_COIN_SEED) -> str:
    return "A" if random.Random(f"{seed}:{item_id}").random() < 0.5 else "B"


def mm_rewardbench(rows: Sequence[Judged], seed: int = MM_COIN_SEED) -> Score:
    """Official rows (one per item, in the file's order) -> the 2_get_accuracy.py score."""
    groups = {area: cats for area, cats in MM_AREAS.items() if len(cats) > 1}
    score = Score(MM_REWARDBENCH, {}, {}, groups=groups, macro_over=tuple(MM_AREAS))
    score.groups.update({a: c for a, c in MM_AREAS.items() if len(c) == 1 and a != c[0]})
    for item, rs in _by_item(rows).items():
        r = min(rs, key=lambda r: r.sample)
        verdict = r.verdict if r.verdict is not None else mm_coin(item, seed)
        score.category[item] = r.category
        score.outcome[item] = int(verdict == correct_letter(r.order))
        score.status[item] = ("agree" if score.outcome[item] else "reject") if r.verdict is not None else "coin_flip"
    return score


def mm_categories(score: Score) -> list[str]:
    """The categories a Multimodal RewardBench report lists: the file's, then reasoning and safety."""
    present = sorted(set(score.category.values()))
    return present + [a for a in ("reasoning", "safety") if any(c in present for c in MM_AREAS[a])]


def both_orders(rows: Sequence[Judged]) -> dict[str, ItemOrders]:
    """Rows of the both-orders pass (order AB and BA per item) -> per item: right in both orders,
    same letter both times (position bias), judgments right, judgments, category."""
    out = {}
    for item, rs in _by_item(rows).items():
        verdicts = {r.order: r.verdict for r in rs}
        right = [r.right for r in rs]
        out[item] = ItemOrders(
            category=rs[0].category,
            both=int(len(rs) == 2 and all(right)),
            bias=int(len(verdicts) == 2 and None not in verdicts.values() and len(set(verdicts.values())) == 1),
            right=sum(right),
            judged=len(rs),
        )
    return out


# --- intervals and tests ----------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float],
    weights: Sequence[float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap of sum(values)/sum(weights) over items (weights: judgments per item;
    default 1 each). None for no items."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    stats = v[idx].sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_macro_ci(
    groups: list, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """Mean of per-group accuracies, each group resampled on its own (stratified bootstrap)."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    means = np.mean([g[rng.integers(0, g.size, size=(n_boot, g.size))].mean(1) for g in groups], axis=0)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b, c = the discordant pairs (A right B wrong, A wrong B right)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: dict[str, int], b: dict[str, int], n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Paired comparison of two checkpoints' per-item outcomes (1 right / 0 wrong) on the items both
    scored: accuracies, difference b - a with a paired-bootstrap interval and p-value, exact McNemar."""
    common = sorted(set(a) & set(b))
    x = np.array([a[i] for i in common], dtype=float)
    y = np.array([b[i] for i in common], dtype=float)
    out = {
        "n": len(common),
        "accuracy_a": None,
        "accuracy_b": None,
        "difference": None,
        "ci": None,
        "a_only": int(((x == 1) & (y == 0)).sum()),
        "b_only": int(((x == 0) & (y == 1)).sum()),
        "mcnemar_p": 1.0,
        "bootstrap_p": 1.0,
    }
    if not common:
        return out
    out.update(accuracy_a=float(x.mean()), accuracy_b=float(y.mean()), difference=float(y.mean() - x.mean()))
    out["mcnemar_p"] = mcnemar_exact(out["a_only"], out["b_only"])
    idx = np.random.default_rng(seed).integers(0, len(common), size=(n_boot, len(common)))
    diffs = (y[idx] - x[idx]).mean(1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    out["ci"] = (float(lo), float(hi))
    out["bootstrap_p"] = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    return out


def paired_bootstrap(
    a: dict[str, float],
    b: dict[str, float],
    weights: dict[str, float] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """The difference b - a of two accuracies measured on the same items, each the ratio
    sum(right) / sum(weight) (a[i], b[i]: right judgments of item i; weights[i]: its judgments,
    default 1), with a percentile-bootstrap interval that resamples the items of both together
    (paired: an item drawn counts for a and for b). Items in one of them only are left out.
    {"n", "difference", "ci", "p"}; p: two-sided share of resampled differences on the other side of 0."""
    common = sorted(set(a) & set(b))
    out: dict = {"n": len(common), "difference": None, "ci": None, "p": 1.0}
    if not common:
        return out
    x = np.array([a[i] for i in common], dtype=float)
    y = np.array([b[i] for i in common], dtype=float)
    w = np.array([1.0 if weights is None else weights[i] for i in common], dtype=float)
    out["difference"] = float((y.sum() - x.sum()) / max(w.sum(), 1e-12))
    idx = np.random.default_rng(seed).integers(0, len(common), size=(n_boot, len(common)))
    diffs = (y[idx].sum(1) - x[idx].sum(1)) / np.maximum(w[idx].sum(1), 1e-12)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    out["ci"] = (float(lo), float(hi))
    out["p"] = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    return out


# --- summaries: what goes to eval_summaries ---------------------------------------------------


def _ci_rows(category: str, metric: str, ci: tuple[float, float] | None, n: int) -> list[tuple]:
    return [] if ci is None else [(category, f"{metric}_ci_low", ci[0], n), (category, f"{metric}_ci_high", ci[1], n)]


def official_score(benchmark: str, rows: Sequence[Judged], k: int, coin_seed: int = MM_COIN_SEED) -> Score:
    if benchmark == VL_REWARDBENCH:
        return vl_rewardbench(rows, k)
    if benchmark == MM_REWARDBENCH:
        return mm_rewardbench(rows, coin_seed)
    raise ValueError(f"no official scorer for {benchmark!r}")


def item_outcomes(benchmark: str, official: Sequence[Judged], both: Sequence[Judged], k: int) -> dict[str, int]:
    """Per item 1/0 for paired comparisons: the official outcome (VL: decided items only; MM: with
    the coin), or for the held-out set, right in both orders."""
    if benchmark == HELDOUT:
        return {i: r.both for i, r in both_orders(both).items()}
    return official_score(benchmark, official, k).outcome


def summarize_benchmark(
    benchmark: str,
    official: Sequence[Judged],
    both: Sequence[Judged],
    k: int,
    items_total: int,
    items_excluded: int,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> list[tuple[str, str, float, int]]:
    """(category, metric, value, n) rows: accuracy (official) with CI per category, overall and macro;
    both_orders (right in both orders) and position_bias with CIs; item counts under "overall"."""
    rows: list[tuple[str, str, float, int]] = []
    score = official_score(benchmark, official, k)
    cats = score.categories() if benchmark == VL_REWARDBENCH else mm_categories(score)
    for cat in ["overall", *cats]:
        value, n = score.accuracy(cat)
        if value is not None:
            rows.append((cat, "accuracy", value, n))
            rows += _ci_rows(cat, "accuracy", bootstrap_ci(score.values(cat), n_boot=n_boot, seed=seed), n)
    macro, used = score.macro()
    if macro is not None:
        n = sum(len(score.values(c)) for c in used)
        rows.append(("macro", "accuracy", macro, n))
        rows += _ci_rows("macro", "accuracy", bootstrap_macro_ci([score.values(c) for c in used], n_boot, seed), n)
    rows += both_order_rows(both, score, cats, n_boot, seed)
    counts = defaultdict(int)
    for s in score.status.values():
        counts[s] += 1
    rows += [
        ("overall", "items_total", float(items_total), items_total),
        ("overall", "items_excluded", float(items_excluded), items_excluded),
        ("overall", "items_judged", float(len(score.category)), len(score.category)),
        ("overall", "items_scored", float(len(score.outcome)), len(score.outcome)),
    ]
    rows += [("overall", f"items_{status}", float(n), n) for status, n in sorted(counts.items())]
    return rows


def both_order_rows(
    both: Sequence[Judged], score: Score | None, cats: list[str], n_boot: int = N_BOOT, seed: int = 0
) -> list[tuple[str, str, float, int]]:
    per_item = both_orders(both)
    groups = score.groups if score is not None else {}
    rows = []
    for cat in ["overall", *cats]:
        members = [r for r in per_item.values() if cat == "overall" or r.category in groups.get(cat, (cat,))]
        if not members:
            continue
        n = len(members)
        for metric, values in (
            ("both_orders", [r.both for r in members]),
            ("position_bias", [r.bias for r in members]),
        ):
            rows.append((cat, metric, sum(values) / n, n))
            rows += _ci_rows(cat, metric, bootstrap_ci(values, n_boot=n_boot, seed=seed), n)
    return rows


def summarize_heldout(
    results: Sequence[Judged], n_boot: int = N_BOOT, seed: int = 0
) -> list[tuple[str, str, float, int]]:
    """The held-out set: accuracy over judgments (both orders), both_orders, position_bias, with
    CIs (an item's two judgments are resampled together)."""
    per_item = both_orders(results)
    cats = sorted({r.category for r in per_item.values()})
    rows = []
    for cat in ["overall", *cats]:
        members = [r for r in per_item.values() if cat == "overall" or r.category == cat]
        if not members:
            continue
        judged = sum(r.judged for r in members)
        rows.append((cat, "accuracy", sum(r.right for r in members) / judged, judged))
        rows += _ci_rows(
            cat,
            "accuracy",
            bootstrap_ci([r.right for r in members], [r.judged for r in members], n_boot=n_boot, seed=seed),
            judged,
        )
    rows += both_order_rows(results, None, cats, n_boot, seed)
    return rows
