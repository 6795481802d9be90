"""A run's evaluation report: Markdown with a PNG plot of accuracy per iteration per category,
tables of every accuracy with its bootstrap interval, both-order metrics, item counts, and paired
comparisons between checkpoints (exact McNemar and paired bootstrap). Every number is read from
eval_summaries (comparisons from eval_results), so the report says what the database says.

`selfjudge report --run N --out DIR` writes it to a folder; the evaluator also puts a copy in the
store (runs/<id>/report/) when a run finishes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from selfjudge.shared import selection
from selfjudge.shared.db import Checkpoint, EvalSummary, Iteration, Run, SetAside
from selfjudge.shared.status import injection_counts
from selfjudge.shared.store import Store

from . import scoring
from .judging import both_name
from .protocols import HELDOUT, make_protocol
from .results import result_rows

ORDER = {"overall": 0, "macro": 1}
PLOT = "accuracy.png"


def collect(s: Session, run_id: int) -> dict:
    """{run, iterations, benchmarks: {name: {iteration: {category: {metric: {value, n}}}}}}."""
    run = s.get(Run, run_id)
    if run is None:
        raise LookupError(f"no run {run_id}")
    benchmarks: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for e in s.scalars(
        select(EvalSummary).where(EvalSummary.run_id == run_id).order_by(EvalSummary.iteration, EvalSummary.id)
    ):
        benchmarks[e.benchmark][e.iteration][e.category][e.metric] = {"value": e.value, "n": e.n}
    iterations = []
    for it in s.scalars(select(Iteration).where(Iteration.run_id == run_id).order_by(Iteration.number)):
        ckpt = s.get(Checkpoint, it.output_checkpoint_id) if it.output_checkpoint_id else None
        meta = (ckpt.meta or {}) if ckpt else {}
        iterations.append(
            {
                "iteration": it.number,
                "status": it.status,
                "checkpoint_id": it.output_checkpoint_id,
                "checkpoint_uri": ckpt.uri if ckpt else None,
                "injection": injection_counts(s, run_id, it.number),
                "trained_examples": meta.get("examples"),
                "dropped_examples": meta.get("dropped"),
            }
        )
    order = {HELDOUT: 0}
    benchmarks.pop(selection.BENCHMARK, None)  # shown in its own section
    by_iteration = selection.signals(s, run_id)
    choice = selection.recorded_choice(s, run_id) or selection.choose(by_iteration)
    return {
        "run": {"id": run.id, "name": run.name, "status": run.status, "iterations": run.iterations},
        "iterations": iterations,
        "selection": {"signals": by_iteration, "choice": choice},
        "benchmarks": {
            b: {it: {c: dict(m) for c, m in cats.items()} for it, cats in sorted(its.items())}
            for b, its in sorted(benchmarks.items(), key=lambda kv: (order.get(kv[0], 1), kv[0]))
        },
    }


def categories(per_iteration: dict, metric: str = "accuracy") -> list[str]:
    cats = {c for cats in per_iteration.values() for c, ms in cats.items() if metric in ms}
    return sorted(cats, key=lambda c: (ORDER.get(c, 2), c))


def _value(cats: dict, category: str, metric: str) -> float | None:
    m = cats.get(category, {}).get(metric)
    return None if m is None else m["value"]


def benchmark_result(s: Session, run_id: int, iteration: int, benchmark: str) -> dict:
    """What `selfjudge eval --json` prints: item counts, accuracy per category, overall and macro
    with bootstrap intervals, both-order metrics and the excluded records with their reasons."""
    data = collect(s, run_id)
    cats = data["benchmarks"].get(benchmark, {}).get(iteration, {})
    overall = cats.get("overall", {})

    def count(metric: str) -> int:
        return int(overall.get(metric, {}).get("value", 0))

    acc_cats = [c for c in sorted(cats, key=lambda c: (ORDER.get(c, 2), c)) if "accuracy" in cats[c]]
    excluded = [
        {"record_id": r.record_id.split(":", 1)[1], "reason": r.reason}
        for r in s.scalars(
            select(SetAside)
            .where(
                SetAside.run_id == run_id,
                SetAside.iteration == iteration,
                SetAside.record_id.startswith(f"{benchmark}:"),
            )
            .order_by(SetAside.id)
        )
    ]
    statuses = {
        m[len("items_") :]: int(v["value"])
        for m, v in overall.items()
        if m.startswith("items_") and m[len("items_") :] not in ("total", "excluded", "judged", "scored")
    }
    return {
        "benchmark": benchmark,
        "run_id": run_id,
        "iteration": iteration,
        "checkpoint_id": next((i["checkpoint_id"] for i in data["iterations"] if i["iteration"] == iteration), None),
        "items": {
            "total": count("items_total"),
            "used": count("items_judged"),
            "excluded": count("items_excluded"),
            "scored": count("items_scored"),
            "unscored": count("items_judged") - count("items_scored"),
            **statuses,
        },
        "overall": _value(cats, "overall", "accuracy"),
        "macro": _value(cats, "macro", "accuracy"),
        "accuracy": {c: cats[c]["accuracy"]["value"] for c in acc_cats},
        "n": {c: cats[c]["accuracy"]["n"] for c in acc_cats},
        "ci": {
            c: [cats[c]["accuracy_ci_low"]["value"], cats[c]["accuracy_ci_high"]["value"]]
            for c in acc_cats
            if "accuracy_ci_low" in cats[c]
        },
        "both_orders": {c: m["both_orders"]["value"] for c, m in cats.items() if "both_orders" in m},
        "position_bias": {c: m["position_bias"]["value"] for c, m in cats.items() if "position_bias" in m},
        "excluded": excluded,
    }


def _plan_k(s: Session, run_id: int, benchmark: str) -> int:
    """k of the official protocol, from the run's config or the `selfjudge eval` record."""
    run = s.get(Run, run_id)
    cfg = run.config or {}
    specs = [cfg.get("evaluation") or {}] + list((cfg.get("eval") or {}).get("benchmarks") or [])
    k = next((sp.get("k") for sp in specs if sp.get("name") == benchmark), None)
    return make_protocol(benchmark, k).k if benchmark != HELDOUT else 0


def item_outcomes(s: Session, run_id: int, iteration: int, name: str) -> dict[str, int]:
    """Per item 1/0 as compared between checkpoints (scoring.item_outcomes), from eval_results."""
    official = [] if name == HELDOUT else result_rows(s, run_id, iteration, name)
    both = result_rows(s, run_id, iteration, HELDOUT if name == HELDOUT else both_name(name))
    return scoring.item_outcomes(name, official, both, _plan_k(s, run_id, name))


def _measure(name: str) -> str:
    return "right in both orders" if name == HELDOUT else "official item outcome"


def comparisons(s: Session, run_id: int, data: dict) -> list[dict]:
    """Per benchmark: the last iteration against the base (0) and against the one before it."""
    out = []
    for name, its in data["benchmarks"].items():
        iters = sorted(its)
        if len(iters) < 2:
            continue
        pairs = {(iters[0], iters[-1])} | ({(iters[-2], iters[-1])} if len(iters) > 2 else set())
        outcomes = {it: item_outcomes(s, run_id, it, name) for pair in pairs for it in pair}
        for a, b in sorted(pairs):
            out.append(
                {
                    "benchmark": name,
                    "a": a,
                    "b": b,
                    "measure": _measure(name),
                    **scoring.compare(outcomes[a], outcomes[b]),
                }
            )
    return out


def compare_evaluations(s: Session, a: tuple[int, int], b: tuple[int, int]) -> list[dict]:
    """Two evaluated checkpoints, (run, iteration) each (e.g. two `selfjudge eval` runs on the same
    file): a paired comparison on every benchmark both were scored on."""

    def names(run_id: int, iteration: int) -> set[str]:
        return set(
            s.scalars(
                select(EvalSummary.benchmark)
                .distinct()
                .where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration)
            )
        )

    return [
        {
            "benchmark": name,
            "a": f"run {a[0]} iter {a[1]}",
            "b": f"run {b[0]} iter {b[1]}",
            "measure": _measure(name),
            **scoring.compare(item_outcomes(s, *a, name), item_outcomes(s, *b, name)),
        }
        for name in sorted(names(*a) & names(*b))
    ]


def plot(data: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["benchmarks"]) or ["(no evaluations)"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 5.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        its = data["benchmarks"].get(name, {})
        for cat in categories(its):
            xs = [it for it in sorted(its) if "accuracy" in its[it].get(cat, {})]
            ys = [its[it][cat]["accuracy"]["value"] for it in xs]
            lo = [ys[i] - its[it][cat].get("accuracy_ci_low", {"value": ys[i]})["value"] for i, it in enumerate(xs)]
            hi = [its[it][cat].get("accuracy_ci_high", {"value": ys[i]})["value"] - ys[i] for i, it in enumerate(xs)]
            style = {"overall": dict(lw=2.5, color="black"), "macro": dict(lw=1.5, ls="--", color="black")}.get(cat, {})
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=cat, **style)
        ax.set_title(name)
        ax.set_xlabel("iteration (0 = base)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        if its:
            ax.set_xticks(sorted(its))
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        ax.grid(alpha=0.3)
    fig.suptitle(f"run {data['run']['id']} ({data['run']['name']}): accuracy per iteration, 95% bootstrap CIs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cell(metrics: dict, metric: str) -> str:
    """ "51.2 [45.1, 57.3] (n=312)": value and interval in percent."""
    m = metrics.get(metric)
    if m is None:
        return "-"
    text = f"{100 * m['value']:.1f}"
    if f"{metric}_ci_low" in metrics:
        text += (
            f" [{100 * metrics[f'{metric}_ci_low']['value']:.1f}, {100 * metrics[f'{metric}_ci_high']['value']:.1f}]"
        )
    return text + f" (n={m['n']})"


def _table(its: dict, metric: str) -> list[str]:
    iters = sorted(its)
    lines = ["| category | " + " | ".join(f"iter {i}" for i in iters) + " |", "|---|" + "---|" * len(iters)]
    for cat in categories(its, metric):
        lines.append(f"| {cat} | " + " | ".join(cell(its[i].get(cat, {}), metric) for i in iters) + " |")
    return lines


def _selection_section(data: dict) -> list[str]:
    """The label-free choice beside each benchmark's overall accuracy (shared/selection.py)."""
    sel = data.get("selection") or {}
    signals, choice = sel.get("signals") or {}, sel.get("choice")
    if not signals:
        return []
    names = [n for n in data["benchmarks"] if n != HELDOUT] or [n for n in data["benchmarks"]]
    lines = [
        "",
        "## Checkpoint selection (label-free)",
        "",
        "Selection score: share of the run's fixed synthetic selection pairs (never trained on) judged right "
        "in both orders. " + (f"Chosen: {choice['reason']}." if choice else ""),
        "",
        "| iteration | selection score | consistency | parse rate | "
        + " | ".join(f"{n} overall %" for n in names)
        + " | chosen |",
        "|---|---|---|---|" + "---|" * len(names) + "---|",
    ]
    for k, sig in sorted(signals.items(), key=lambda kv: int(kv[0])):
        accs = [
            cell(
                data["benchmarks"][n].get(int(k), data["benchmarks"][n].get(str(k), {})).get("overall", {}), "accuracy"
            )
            for n in names
        ]
        chosen = "**yes**" if choice and int(choice["iteration"]) == int(k) else ""
        lines.append(
            f"| {k} | {100 * sig['score']:.1f} | {100 * sig['consistency']:.1f} | "
            f"{100 * sig['parse_rate']:.1f} | " + " | ".join(accs) + f" | {chosen} |"
        )
    return lines


def render_markdown(data: dict, comps: list[dict], image: str = PLOT) -> str:
    run = data["run"]
    lines = [
        f"# Evaluation report: run {run['id']} ({run['name']})",
        "",
        f"Status: {run['status']}; {run['iterations']} training iterations (iteration 0 is the base judge).",
        "",
        f"![accuracy per iteration]({image})",
        "",
        "## Checkpoints",
        "",
        "| iteration | status | checkpoint | trained on | dropped (too long, unreadable) |",
        "|---|---|---|---|---|",
    ]
    dash = lambda v: "-" if v is None else v  # noqa: E731
    lines += [
        f"| {i['iteration']} | {i['status']} | {i['checkpoint_id']}: {i['checkpoint_uri'] or '-'} | "
        f"{dash(i.get('trained_examples'))} | {dash(i.get('dropped_examples'))} |"
        for i in data["iterations"]
    ]
    injected = [i for i in data["iterations"] if (i.get("injection") or {}).get("open_pairs")]
    if injected:
        lines += [
            "",
            "## Open-ended pairs: how the rejected response got its errors",
            "",
            "| iteration | open pairs | model alteration | rule (asked) | rule fallback | fallback share |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i['iteration']} | {j['open_pairs']} | {j['model']} | {j['rule']} | {j['rule_fallback']} | "
            f"{100 * j['fallback_share']:.1f}% |"
            for i in injected
            for j in [i["injection"]]
        ]
    lines += _selection_section(data)
    for name, its in data["benchmarks"].items():
        official = "accuracy over judgments, both orders" if name == HELDOUT else "official protocol"
        lines += [
            "",
            f"## {name}",
            "",
            f"### Accuracy ({official}), % [95% bootstrap CI]",
            "",
            *_table(its, "accuracy"),
        ]
        lines += ["", "### Position-consistent accuracy (right in both orders), %", "", *_table(its, "both_orders")]
        lines += ["", "### Position bias (same letter in both orders), %", "", *_table(its, "position_bias")]
        counts = sorted({m for cats in its.values() for m in cats.get("overall", {}) if m.startswith("items_")})
        if counts:
            lines += [
                "",
                "### Items",
                "",
                "| count | " + " | ".join(f"iter {i}" for i in sorted(its)) + " |",
                "|---|" + "---|" * len(its),
            ]
            lines += [
                f"| {m[len('items_') :]} | "
                + " | ".join(str(int(its[i].get("overall", {}).get(m, {}).get("value", 0))) for i in sorted(its))
                + " |"
                for m in counts
            ]
    if comps:
        lines += [
            "",
            "## Paired comparisons",
            "",
            "Items scored for both checkpoints; difference = B - A; exact McNemar test on the discordant "
            "items; paired bootstrap interval and p-value.",
            "",
            "| benchmark | A | B | outcome | n | acc A | acc B | B - A [95% CI] | A only | B only | McNemar p "
            "| bootstrap p |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in comps:
            pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
            ci = "" if c["ci"] is None else f" [{100 * c['ci'][0]:.1f}, {100 * c['ci'][1]:.1f}]"
            lines.append(
                f"| {c['benchmark']} | {c['a']} | {c['b']} | {c['measure']} | {c['n']} | "
                f"{pct(c['accuracy_a'])} | {pct(c['accuracy_b'])} | {pct(c['difference'])}{ci} | "
                f"{c['a_only']} | {c['b_only']} | {c['mcnemar_p']:.3g} | {c['bootstrap_p']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def write_report(sessions: sessionmaker, run_id: int, out_dir: str | Path) -> Path:
    """report.md, accuracy.png and report.json (the same numbers) in out_dir; returns report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with sessions() as s:
        data = collect(s, run_id)
        comps = comparisons(s, run_id, data)
    plot(data, out / PLOT)
    (out / "report.json").write_text(json.dumps({**data, "comparisons": comps}, indent=1, default=str))
    path = out / "report.md"
    path.write_text(render_markdown(data, comps))
    return path


def publish_report(sessions: sessionmaker, run_id: int, store: Store) -> str:
    """Write the report and put its files in the store under runs/<id>/report/; returns the .md key."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_report(sessions, run_id, tmp)
        for f in sorted(Path(tmp).iterdir()):
            store.put_bytes(f"runs/{run_id}/report/{f.name}", f.read_bytes())
    return f"runs/{run_id}/report/{path.name}"
