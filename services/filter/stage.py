"""Filter: a shard of judgments in, the training examples worth keeping out.

In:    ShardTask; input_key = judgments JSONL (from the reasoner)
Does:  keeps a pair's traces only if the judge chose the synthetic preference in BOTH orders
       (and in every sample); each kept trace becomes one training example, so every kept
       pair gives one "A is better" and one "B is better" example (balanced by construction).
Out:   examples JSONL runs/<run>/iter<k>/examples/<i>.jsonl; rows in `training_examples`.
Next:  loop.on_filtered -> the barrier before the trainer.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import TrainingExample
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.store import get_jsonl, put_jsonl

STAGE = "filter"
log = logging.getLogger(__name__)


def keep_consistent(judgments: list[dict]) -> list[dict]:
    """The traces of pairs judged correctly in both orders (every sample); others dropped."""
    by_pair: dict[int, list[dict]] = defaultdict(list)
    for j in judgments:
        by_pair[j["pair_id"]].append(j)
    kept = []
    for traces in by_pair.values():
        if {t["order"] for t in traces} == {"AB", "BA"} and all(t["correct"] for t in traces):
            kept.extend(traces)
    return kept


def handle(payload: dict, ctx: Context) -> None:
    task = ShardTask.model_validate(payload)
    out_key = shards.shard_key(task.run_id, task.iteration, "examples", task.index)
    with ctx.sessions() as s:
        if shards.is_done(s, STAGE, task):
            loop.on_filtered(ctx, task)
            return
    start, m = time.perf_counter(), ctx.metrics
    judgments = list(get_jsonl(ctx.store, task.input_key))
    m.items_in.labels(STAGE).inc(len(judgments))
    kept = keep_consistent(judgments)
    records = []
    with ctx.sessions.begin() as s:
        for j in kept:
            row = TrainingExample(run_id=task.run_id, iteration=task.iteration, shard_index=task.index,
                                  judgment_id=j["judgment_id"], pair_id=j["pair_id"], label=j["verdict"])
            s.add(row)
            s.flush()
            records.append({"example_id": row.id, "judgment_id": j["judgment_id"], "pair_id": j["pair_id"],
                            "image_key": j["image_key"], "prompt_text": j["prompt_text"],
                            "answer": j["output"], "label": j["verdict"]})
        put_jsonl(ctx.store, out_key, records)
        seconds = time.perf_counter() - start
        shards.finish(s, STAGE, task, out_key, len(judgments), len(records), seconds)
    m.items_out.labels(STAGE).inc(len(records))
    m.shards.labels(STAGE, "done").inc()
    m.shard_seconds.labels(STAGE).observe(seconds)
    log.info("filter: run %s iter %s shard %s: kept %s of %s traces", task.run_id, task.iteration, task.index,
             len(records), len(judgments))
    loop.on_filtered(ctx, task)
