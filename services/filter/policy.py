"""Which judge traces become training examples: the filter's rules as pure functions.

Given all judgments of a shard (JudgmentRecords: pair_id, order "AB"/"BA", sample, correct, verdict):
1. `consistent_pairs`: a pair qualifies when it was judged in both orders (the position-bias
   filter, `filter.require_both_orders`) and, in each order, every sample is right
   (`filter.require_all_samples`) or at least `filter.min_sample_agreement` of them are.
   Only the right traces of a qualifying pair are kept (a wrong trace never teaches).
2. `cap_per_prompt`: at most `filter.max_per_prompt` traces per pair (one pair per prompt),
   taken alternately from the two orders (even pair ids start with "AB", odd ones with "BA", so an
   odd cap stays balanced overall), lowest sample index first (0 = no cap).
3. `balance`: as many "A is better" as "B is better" examples: the surplus label loses traces,
   taken from the pairs that have the most left (ties broken by a seeded rng), so pair
   coverage is kept as long as possible.
Pairs of the checkpoint-selection set (shared/selection.is_holdout) are judged but never kept.
"""

from __future__ import annotations

import random
from collections import defaultdict

from selfjudge.shared.records import JudgmentRecord


def _by_pair(judgments: list[JudgmentRecord]) -> dict[int, list[JudgmentRecord]]:
    by_pair: dict[int, list[JudgmentRecord]] = defaultdict(list)
    for j in judgments:
        by_pair[j.pair_id].append(j)
    return by_pair


def consistent_pairs(
    judgments: list[JudgmentRecord],
    require_both_orders: bool = True,
    require_all_samples: bool = True,
    min_sample_agreement: float = 0.5,
) -> list[JudgmentRecord]:
    """The right traces of the pairs that pass the consistency rule (input order kept)."""
    kept_pairs = set()
    for pair_id, traces in _by_pair(judgments).items():
        orders = defaultdict(list)
        for t in traces:
            orders[t.order].append(t.correct)
        if require_both_orders and set(orders) != {"AB", "BA"}:
            continue
        if require_all_samples:
            ok = all(all(v) for v in orders.values())
        else:
            ok = all(sum(v) / len(v) >= min_sample_agreement for v in orders.values())
        if ok and any(any(v) for v in orders.values()):
            kept_pairs.add(pair_id)
    return [j for j in judgments if j.pair_id in kept_pairs and j.correct]


def keep_consistent(judgments: list[JudgmentRecord]) -> list[JudgmentRecord]:
    """The paper's rule: traces of pairs judged right in both orders, every sample."""
    return consistent_pairs(judgments)


def cap_per_prompt(traces: list[JudgmentRecord], cap: int) -> list[JudgmentRecord]:
    if cap <= 0:
        return list(traces)
    kept_ids = set()
    for group in _by_pair(traces).values():
        ab = sorted((t for t in group if t.order == "AB"), key=lambda t: t.sample)
        ba = sorted((t for t in group if t.order == "BA"), key=lambda t: t.sample)
        first, second = (ab, ba) if group[0].pair_id % 2 == 0 else (ba, ab)  # alternate across pairs
        interleaved = [t for pair in zip(first, second) for t in pair] + first[len(second) :] + second[len(first) :]
        kept_ids.update(id(t) for t in interleaved[:cap])
    return [t for t in traces if id(t) in kept_ids]


def balance(traces: list[JudgmentRecord], rng: random.Random) -> list[JudgmentRecord]:
    """Drop traces of the surplus verdict until "A" and "B" are equally many."""
    labels = defaultdict(list)
    for t in traces:
        labels[t.verdict].append(t)
    n_a, n_b = len(labels["A"]), len(labels["B"])
    if n_a == n_b:
        return list(traces)
    surplus = "A" if n_a > n_b else "B"
    remaining = defaultdict(int)
    for t in traces:
        remaining[t.pair_id] += 1
    candidates = list(labels[surplus])
    rng.shuffle(candidates)
    dropped = set()
    for _ in range(abs(n_a - n_b)):
        # the candidate whose pair has the most traces left; shuffled first, so ties are random
        pick = max((t for t in candidates if id(t) not in dropped), key=lambda t: remaining[t.pair_id])
        dropped.add(id(pick))
        remaining[pick.pair_id] -= 1
    return [t for t in traces if id(t) not in dropped]


def select_traces(judgments: list[JudgmentRecord], cfg, rng: random.Random) -> list[JudgmentRecord]:  # noqa: ANN001
    """The whole filter: holdout pairs out, consistency, cap per prompt, balance. `cfg`: FilterConfig."""
    usable = [j for j in judgments if not j.holdout]
    kept = consistent_pairs(usable, cfg.require_both_orders, cfg.require_all_samples, cfg.min_sample_agreement)
    kept = cap_per_prompt(kept, cfg.max_per_prompt)
    return balance(kept, rng) if cfg.balance else kept
