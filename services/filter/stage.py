"""Filter: a shard of judgments in, the training examples worth keeping out.

In:    ShardTask; input_key = judgments JSONL (from the reasoner)
Does:  policy.select_traces (rules and defaults in policy.py, knobs in `filter.*`):
       keeps a pair's right traces only if the judge chose the synthetic preference in BOTH orders
       (and in every sample, or in min_sample_agreement of them), caps traces per prompt, balances
       "A is better" against "B is better", and never keeps the checkpoint-selection holdout.
Out:   examples JSONL runs/<run>/iter<k>/examples/<i>.jsonl; rows in `training_examples`.
Next:  loop.on_filtered -> the barrier before the trainer.
"""

from __future__ import annotations

import logging
from collections import Counter

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import TrainingExample
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.records import ExampleRecord, JudgmentRecord, RecordError, read_records, write_records

from .policy import keep_consistent, select_traces  # noqa: F401 - keep_consistent re-exported

STAGE = "filter"
log = logging.getLogger(__name__)


def handle(payload: dict, ctx: Context) -> None:
    task = ShardTask.model_validate(payload)
    out_key = shards.shard_key(task.run_id, task.iteration, "examples", task.index)
    shards.run_shard(
        ctx,
        STAGE,
        task,
        lambda attempt: keep_traces(ctx, task, out_key, attempt),
        hand_off=lambda: loop.on_filtered(ctx, task),
    )


def keep_traces(ctx: Context, task: ShardTask, out_key: str, attempt: shards.Attempt) -> None:
    """The shard's kept traces, written with the shard's `done` in one transaction."""
    m = ctx.metrics
    bad: list[RecordError] = []
    judgments = list(read_records(ctx.store, task.input_key, JudgmentRecord, invalid=bad.append))
    m.items_in.labels(STAGE).inc(len(judgments) + len(bad))
    rng = loop.rng_for(ctx.settings.run.seed, STAGE, task.iteration, task.index)
    kept = select_traces(judgments, ctx.settings.filter, rng)
    failpoint("filter.before_commit")  # fault tests: die after the work, before recording it
    records: list[ExampleRecord] = []
    with ctx.sessions.begin() as s:
        for j in kept:
            row = TrainingExample(
                run_id=task.run_id,
                iteration=task.iteration,
                shard_index=task.index,
                judgment_id=j.judgment_id,
                pair_id=j.pair_id,
                label=j.verdict,
            )
            s.add(row)
            s.flush()
            records.append(
                ExampleRecord(
                    example_id=row.id,
                    judgment_id=j.judgment_id,
                    pair_id=j.pair_id,
                    image_key=j.image_key,
                    prompt_text=j.prompt_text,
                    answer=j.output,
                    label=j.verdict,
                )
            )
        attempt.set_aside(s, (err.set_aside() for err in bad))  # lines that are no record
        write_records(ctx.store, out_key, records)
        attempt.finish(s, out_key, len(judgments) + len(bad), len(records))
    labels = Counter(r.label for r in records)
    log.info(
        "filter: run %s iter %s shard %s: kept %s of %s traces (%s pairs; A %s / B %s; %s holdout traces)",
        task.run_id,
        task.iteration,
        task.index,
        len(records),
        len(judgments),
        len({r.pair_id for r in records}),
        labels["A"],
        labels["B"],
        sum(j.holdout for j in judgments),
    )
