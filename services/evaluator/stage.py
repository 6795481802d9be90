"""Evaluator: a judge checkpoint in, its accuracy on the held-out pairs and the configured benchmarks out.

In:    EvalTask from the loop (iteration 0 = the base judge; iteration k = judge k), or an EvalPlan
       from `selfjudge eval` (which benchmarks, no held-out set); then EvalShard, one per shard,
       sent by the evaluator to itself.
Does:  plan (plan.py, once per evaluation): each benchmark file is loaded once per run into
         self-contained shards of EvalItem records in the store (images copied, bad records set
         aside with the reason); one Shard row and one EvalShard message per shard.
       shard (shards.run_shard's lifecycle): judges each item not yet in eval_results (so a
         restarted evaluation does not redo finished items) and writes its rows item by item
         (judging.py, results.py):
           held-out: both orders, greedy, the selfjudge prompt (generator labels, never trained on);
           benchmarks: the official protocol (protocols.py) under the benchmark's name, plus one
           greedy judgment in each order under "<name>:both".
       finish (the last shard): scores every benchmark from the database rows (results.score,
         scoring.py), writes eval_summaries and the Prometheus gauges; with
         filter.selection_holdout > 0 it judges the run's fixed selection set with the checkpoint
         (shared/selection.py, benchmark "selection"); then hands on to the loop; a report is
         written when the run is done (report.py).
Out:   `eval_results` rows per item, order and sample; `eval_summaries` rows per benchmark, category
       and metric (accuracy with bootstrap CIs, macro, both_orders, position_bias, item counts);
       `set_aside` rows (stage "evaluator", "<benchmark>:<record id>") for excluded records.
Next:  loop.on_evaluated -> the next iteration, or the end of the run.
"""

from __future__ import annotations

import logging

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import Run
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.messages import EvalPlan, EvalShard, EvalTask
from selfjudge.shared.records import EvalItem, read_records
from selfjudge.shared.store import get_image

from . import plan, results
from .judging import judge_items
from .protocols import make_protocol
from .report import publish_report

STAGE = "evaluator"
log = logging.getLogger(__name__)


def handle(payload: dict, ctx: Context) -> None:
    if "index" in payload:
        on_shard(EvalShard.model_validate(payload), ctx)
    else:
        on_plan(EvalPlan.model_validate(payload), ctx)


def on_plan(task: EvalPlan, ctx: Context) -> None:
    if results.scored(ctx, task.run_id, task.iteration):  # redelivered after the end
        loop.on_evaluated(ctx, EvalTask(run_id=task.run_id, iteration=task.iteration, checkpoint_id=task.checkpoint_id))
        return
    todo = plan.plan(task, ctx)
    for shard in todo:
        ctx.bus.send(STAGE, shard)
    if not todo:
        finish(ctx, task.run_id, task.iteration, task.checkpoint_id)


def on_shard(task: EvalShard, ctx: Context) -> None:
    shards.run_shard(
        ctx,
        STAGE,
        task,
        lambda attempt: judge_shard(ctx, task, attempt),
        hand_off=lambda: finish(ctx, task.run_id, task.iteration, task.checkpoint_id),
    )


def judge_shard(ctx: Context, task: EvalShard, attempt: shards.Attempt) -> None:
    """Judge the shard's items not yet recorded, a batch at a time, and record the shard done."""
    protocol = make_protocol(**task.protocol.model_dump())
    items = list(read_records(ctx.store, task.input_key, EvalItem))
    judged = results.judged_items(ctx, task, [i.item_id for i in items])
    todo = [i for i in items if i.item_id not in judged]
    ctx.metrics.items_in.labels(STAGE).inc(len(items))
    if todo:
        backend = ctx.models.backend(task.checkpoint_id)
        chunk = max(1, ctx.settings.model.batch_size)
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            images = {i.image_key: get_image(ctx.store, i.image_key) for i in batch}
            results.write_judgments(ctx, task, judge_items(backend, protocol, batch, images, metrics=ctx.metrics))
    failpoint("evaluator.before_commit")  # fault tests: die after the items, before the shard is recorded
    with ctx.sessions.begin() as s:
        seconds = attempt.finish(s, None, len(items), len(todo))
    log.info(
        "evaluator: run %s iter %s %s shard %s: %s items judged, %s already done (%.1fs)",
        task.run_id,
        task.iteration,
        task.benchmark,
        task.index,
        len(todo),
        len(items) - len(todo),
        seconds,
    )


def finish(ctx: Context, run_id: int, iteration: int, checkpoint_id: int) -> None:
    """After any shard: if this was the evaluation's last, score it (once), judge the selection
    set, hand on to the loop and, when the run is over, write its report."""
    if not results.score(ctx, run_id, iteration, checkpoint_id):
        return
    if iteration >= 1 and ctx.settings.filter.selection_holdout > 0:  # the label-free selection set
        _judge_selection(ctx, run_id, iteration, checkpoint_id)
    loop.on_evaluated(ctx, EvalTask(run_id=run_id, iteration=iteration, checkpoint_id=checkpoint_id))
    _report_if_done(ctx, run_id)


def _judge_selection(ctx: Context, run_id: int, iteration: int, checkpoint_id: int) -> None:
    from selfjudge.shared.selection import judge_selection

    try:  # after the summaries are written: a failure here must not stop the hand-off
        judge_selection(ctx, run_id, iteration, checkpoint_id)
    except Exception:
        log.exception(
            "evaluator: run %s iter %s: the selection set could not be judged; `selfjudge select` "
            "will choose among the other checkpoints",
            run_id,
            iteration,
        )


def _report_if_done(ctx: Context, run_id: int) -> None:
    with ctx.sessions() as s:
        run = s.get(Run, run_id)
        if run is None or run.status != "done":
            return
    try:
        key = publish_report(ctx.sessions, run_id, ctx.store)
        log.info("evaluator: run %s report in the store at %s", run_id, key)
    except Exception:  # a report is a convenience: never fail the evaluation for it
        log.exception("evaluator: run %s: the report could not be written", run_id)
