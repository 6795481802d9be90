"""What `selfjudge status` shows: per iteration, how much flowed through each stage."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db import Checkpoint, EvalSummary, Iteration, Judgment, Pair, Prompt, Run, SetAside, Shard, TrainingExample
from .filter_stats import keep_rate_by, parse_failures, selection_signal


def _count(s: Session, model, run_id: int, iteration: int, *where: Any) -> int:  # noqa: ANN001
    return (
        s.scalar(
            select(func.count()).select_from(model).where(model.run_id == run_id, model.iteration == iteration, *where)
        )
        or 0
    )


def run_status(s: Session, run_id: int | None = None) -> dict:
    run = s.get(Run, run_id) if run_id else s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
    if run is None:
        return {"run": None, "iterations": []}
    rows = []
    for it in s.scalars(select(Iteration).where(Iteration.run_id == run.id).order_by(Iteration.number)):
        k = it.number
        ckpt = s.get(Checkpoint, it.output_checkpoint_id) if it.output_checkpoint_id else None
        evals = {
            (e.category, e.metric): e.value
            for e in s.scalars(
                select(EvalSummary).where(
                    EvalSummary.run_id == run.id, EvalSummary.iteration == k, EvalSummary.benchmark == "heldout"
                )
            )
        }
        shards = {
            f"{stage}:{state}": n
            for stage, state, n in s.execute(
                select(Shard.stage, Shard.state, func.count())
                .where(Shard.run_id == run.id, Shard.iteration == k)
                .group_by(Shard.stage, Shard.state)
            )
        }
        aside: dict[str, int] = {}
        aside_by_stage: dict[str, dict[str, int]] = {}
        for stage, reason, n in s.execute(
            select(SetAside.stage, SetAside.reason, func.count())
            .where(SetAside.run_id == run.id, SetAside.iteration == k)
            .group_by(SetAside.stage, SetAside.reason)
        ):
            kind = reason_kind(reason)
            aside[kind] = aside.get(kind, 0) + n
            by_kind = aside_by_stage.setdefault(stage, {})
            by_kind[kind] = by_kind.get(kind, 0) + n
        kept_pairs = (
            s.scalar(
                select(func.count(func.distinct(TrainingExample.pair_id))).where(
                    TrainingExample.run_id == run.id, TrainingExample.iteration == k
                )
            )
            or 0
        )
        rows.append(
            {
                "iteration": k,
                "status": it.status,
                "prompts": _count(s, Prompt, run.id, k),
                "pairs": _count(s, Pair, run.id, k),
                "judged": _count(s, Judgment, run.id, k),
                "judged_correct": _count(s, Judgment, run.id, k, Judgment.correct.is_(True)),
                "kept_pairs": kept_pairs,
                "training_examples": _count(s, TrainingExample, run.id, k),
                "checkpoint_id": it.output_checkpoint_id,
                "checkpoint_uri": ckpt.uri if ckpt else None,
                "checkpoint_hash": ckpt.content_hash if ckpt else None,
                "eval_accuracy": evals.get(("overall", "accuracy")),
                "eval_both_orders": evals.get(("overall", "both_orders")),
                "eval_position_bias": evals.get(("overall", "position_bias")),
                "eval_by_category": {
                    c: v for (c, metric), v in evals.items() if metric == "accuracy" and c != "overall"
                },
                "shards": shards,
                "failures": [
                    {
                        "stage": sh.stage,
                        "shard": sh.index,
                        "attempts": sh.attempts,
                        "state": sh.state,
                        "error": sh.error,
                    }
                    for sh in s.scalars(
                        select(Shard).where(Shard.run_id == run.id, Shard.iteration == k, Shard.error.is_not(None))
                    )
                ],
                "set_aside": aside,  # reason kind -> records, all stages
                "set_aside_by_stage": aside_by_stage,  # stage -> reason kind -> records
                **_data_reports(s, run.id, k),
            }
        )
    return {
        "run": {
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "iterations": run.iterations,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        },
        "iterations": rows,
    }


_NAMES = re.compile(r"""\s*'[^']*[/\\][^']*'|\s+in\s+\S+\s*\(id\s.*?\)""")


def reason_kind(reason: str) -> str:
    """What a set-aside reason is counted under: the reason up to its first ':', without the
    file or record it names ("corrupt image '/data/a.png': OSError: ..." -> "corrupt image";
    "no_majority: 2 of 8" -> "no_majority"), so one kind of bad input is one count."""
    return _NAMES.sub("", reason).split(":")[0].strip() or reason[:80]


def injection_counts(s: Session, run_id: int, k: int) -> dict:
    """Open-ended pairs of iteration k by how the rejected response got its errors: the model's
    alteration, the rule perturber as asked (synth.injection rule/both), or the rule perturber as
    the fallback for a rejected alteration; `fallback_share` = fallback / open pairs."""
    counts = {"model": 0, "rule": 0, "rule_fallback": 0}
    fell_back = Pair.meta["fallback"].as_string()  # one expression object: one bound parameter in SELECT and GROUP BY
    for method, fallback, n in s.execute(
        select(Pair.method, fell_back, func.count())
        .where(
            Pair.run_id == run_id,
            Pair.iteration == k,
            Pair.method.in_(("rule_perturb", "model_detail", "model_style_mimic")),
        )
        .group_by(Pair.method, fell_back)
    ):
        key = "model" if method.startswith("model") else "rule_fallback" if fallback == "rule" else "rule"
        counts[key] += n
    total = sum(counts.values())
    return {
        **counts,
        "open_pairs": total,
        "fallback_share": round(counts["rule_fallback"] / total, 4) if total else None,
    }


def _data_reports(s: Session, run_id: int, k: int) -> dict:
    """keep_rate_by, parse_failures, selection (shared/filter_stats.py) and injection."""
    return {
        "keep_rate_by": keep_rate_by(s, run_id, k),
        "parse_failures": parse_failures(s, run_id, k),
        "selection": selection_signal(s, run_id, k),
        "injection": injection_counts(s, run_id, k),
    }


def format_table(status: dict) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:5.1f}%"

    head = (
        f"{'iter':>4} {'status':>8} {'prompts':>7} {'pairs':>6} {'judged':>6} {'kept':>5} {'examples':>8} "
        f"{'heldout acc':>11} {'both orders':>11} {'pos. bias':>9}  checkpoint"
    )
    lines = [head, "-" * len(head)]
    for r in status["iterations"]:
        lines.append(
            f"{r['iteration']:>4} {r['status']:>8} {r['prompts']:>7} {r['pairs']:>6} {r['judged']:>6} "
            f"{r['kept_pairs']:>5} {r['training_examples']:>8} {pct(r['eval_accuracy']):>11} "
            f"{pct(r['eval_both_orders']):>11} {pct(r['eval_position_bias']):>9}  "
            f"{r['checkpoint_uri'] or '-'}"
        )
    for r in status["iterations"]:
        inj = r.get("injection") or {}
        if inj.get("open_pairs"):
            lines.append(
                f"  iteration {r['iteration']} open pairs {inj['open_pairs']}: model alteration "
                f"{inj['model']}, rule {inj['rule']}, rule fallback {inj['rule_fallback']} "
                f"({pct(inj['fallback_share']).strip()})"
            )
        for f in r.get("failures", []):
            lines.append(
                f"  iteration {r['iteration']} {f['stage']} shard {f['shard']} {f['state']} after "
                f"{f['attempts']} attempt(s): {(f['error'] or '')[:160]}"
            )
        by_stage = r.get("set_aside_by_stage") or ({"all": r["set_aside"]} if r.get("set_aside") else {})
        for stage, kinds in sorted(by_stage.items()):
            lines.append(
                f"  iteration {r['iteration']} set aside by {stage} ({sum(kinds.values())}): "
                + ", ".join(f"{reason} {n}" for reason, n in sorted(kinds.items()))
            )
    if status.get("queues"):
        lines.append(
            "  queues: "
            + ", ".join(
                f"{stage} {q['messages']} waiting/{q['consumers']} workers" for stage, q in status["queues"].items()
            )
        )
    for letter in status.get("dead_letters", []):
        lines.append(f"  dead letter: {letter['stage']} {letter['payload']} -- {letter['error'][:160]}")
    return "\n".join(lines)
