"""Results: judgments into `eval_results`, and, once every shard is done, the scores.

Judgments are written one item per transaction (an item is in the database with all its rows or
not at all), so a shard redelivered after a crash judges only the items it had not written.
`score` is the evaluation's barrier: the caller that finds every evaluator shard of the iteration
done, and no summary yet, scores each planned benchmark from the database rows (scoring.py) and
writes `eval_summaries` and the accuracy gauges, under a row lock, so it happens once.
"""

from __future__ import annotations

import logging
import math

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from selfjudge.shared.context import Context
from selfjudge.shared.db import EvalResult, EvalSummary, Iteration, Shard
from selfjudge.shared.messages import EvalShard, ProtocolSpec
from selfjudge.shared.records import EvalJudgment

from . import scoring
from .judging import both_name
from .plan import PlannedBenchmark, load_plan
from .protocols import HELDOUT, make_protocol

STAGE = "evaluator"
log = logging.getLogger(__name__)
Summary = tuple[str, str, float, int]  # (category, metric, value, n)


def judged_items(ctx: Context, task: EvalShard, item_ids: list[str]) -> set[str]:
    """Those of the shard's items already recorded (by an earlier attempt at this shard)."""
    names = [task.benchmark, both_name(task.benchmark)]
    with ctx.sessions() as s:
        return set(
            s.scalars(
                select(EvalResult.item_id)
                .distinct()
                .where(
                    EvalResult.run_id == task.run_id,
                    EvalResult.iteration == task.iteration,
                    EvalResult.benchmark.in_(names),
                    EvalResult.item_id.in_(item_ids),
                )
            )
        )


def write_judgments(ctx: Context, task: EvalShard, judgments: dict[str, list[EvalJudgment]]) -> None:
    """One transaction per item: an item is in the database with all its rows or not at all."""
    for item_id, rows in judgments.items():
        try:
            with ctx.sessions.begin() as s:
                s.add_all(_row(task, j) for j in rows)
        except IntegrityError:  # the same item written by a redelivered copy of this shard
            log.info("evaluator: item %s of run %s iter %s already recorded", item_id, task.run_id, task.iteration)


def _row(task: EvalShard, j: EvalJudgment) -> EvalResult:
    return EvalResult(
        run_id=task.run_id,
        iteration=task.iteration,
        checkpoint_id=task.checkpoint_id,
        benchmark=j.benchmark,
        item_id=j.item_id[:200],
        category=j.category[:80],
        order=j.order,
        sample=j.sample,
        output=j.output,
        verdict=j.verdict,
        correct=j.correct,
    )


def result_rows(s: Session, run_id: int, iteration: int, benchmark: str) -> list[scoring.Judged]:
    """The scoring columns only (not the outputs) of one benchmark's rows, in the order written."""
    cols = (EvalResult.item_id, EvalResult.category, EvalResult.order, EvalResult.verdict, EvalResult.sample)
    query = select(*cols).where(
        EvalResult.run_id == run_id, EvalResult.iteration == iteration, EvalResult.benchmark == benchmark
    )
    return [scoring.Judged(*r) for r in s.execute(query.order_by(EvalResult.id))]


def scored(ctx: Context, run_id: int, iteration: int) -> bool:
    """Whether this iteration's evaluation has been scored (its summaries are written)."""
    with ctx.sessions() as s:
        return _has_summaries(s, run_id, iteration)


def _has_summaries(s: Session, run_id: int, iteration: int) -> bool:
    query = select(EvalSummary.id).where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration)
    return s.scalar(query.limit(1)) is not None


def score(ctx: Context, run_id: int, iteration: int, checkpoint_id: int) -> bool:
    """The barrier: once every evaluator shard of the iteration is done, score every planned
    benchmark and write the summaries and gauges. True for the one caller that scored."""
    summaries: dict[str, list[Summary]] = {}
    with ctx.sessions.begin() as s:
        s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == iteration).with_for_update())
        pending = s.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == STAGE, Shard.state != "done")
        )
        if pending or _has_summaries(s, run_id, iteration):
            return False
        for entry in load_plan(ctx.store, run_id, iteration).benchmarks:
            rows = summarize(s, run_id, iteration, entry)
            summaries[entry.name] = rows
            s.add_all(
                EvalSummary(
                    run_id=run_id,
                    iteration=iteration,
                    checkpoint_id=checkpoint_id,
                    benchmark=entry.name,
                    category=category[:80],
                    metric=metric,
                    value=value,
                    n=n,
                )
                for category, metric, value, n in rows
            )
    for name, rows in summaries.items():
        for category, metric, value, _ in rows:
            if metric == "accuracy":
                ctx.metrics.eval_accuracy.labels(str(run_id), str(iteration), name, category).set(value)
        log.info("evaluator: run %s iter %s checkpoint %s: %s", run_id, iteration, checkpoint_id, headline(name, rows))
    return True


def summarize(s: Session, run_id: int, iteration: int, entry: PlannedBenchmark) -> list[Summary]:
    """One planned benchmark's summary rows, from its judgments in the database."""
    if entry.name == HELDOUT:
        rows = scoring.summarize_heldout(result_rows(s, run_id, iteration, HELDOUT))
        return [*rows, ("overall", "items_total", float(entry.total), entry.total)]
    official = result_rows(s, run_id, iteration, entry.name)
    both = result_rows(s, run_id, iteration, both_name(entry.name))
    k = official_k(entry.protocol)
    return scoring.summarize_benchmark(entry.name, official, both, k, entry.total, len(entry.excluded))


def official_k(protocol: ProtocolSpec) -> int:
    return make_protocol(**protocol.model_dump()).k


def headline(name: str, rows: list[Summary]) -> str:
    """The log line of one benchmark's scores."""
    values = {(c, metric): (v, n) for c, metric, v, n in rows}

    def get(category: str, metric: str) -> tuple[float, int]:
        return values.get((category, metric), (math.nan, 0))

    accuracy, both, bias = get("overall", "accuracy"), get("overall", "both_orders"), get("overall", "position_bias")
    if name == HELDOUT:
        return f"accuracy {accuracy[0]:.3f}, both orders {both[0]:.3f}, position bias {bias[0]:.3f}"
    return (
        f"{name} overall {accuracy[0]:.3f} (n={accuracy[1]}), macro {get('macro', 'accuracy')[0]:.3f}, "
        f"both orders {both[0]:.3f}, position bias {bias[0]:.3f}; "
        f"{int(get('overall', 'items_excluded')[0])} of {int(get('overall', 'items_total')[0])} records excluded"
    )
