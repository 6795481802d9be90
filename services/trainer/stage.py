"""Trainer: all kept traces of iteration k in, judge checkpoint k out.

In:    TrainTask (sent once, by the barrier, when every filter shard of iteration k is done)
Does:  supervised fine-tuning of judge k-1 on the kept (prompt, reasoning + verdict) traces,
       loss on the judge's answer tokens only.
Out:   a Hugging Face folder uploaded to runs/<run>/checkpoints/iter<k>/; a `checkpoints` row
       with its content hash, parent and training metadata.
Next:  loop.on_trained -> evaluator.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.db import Iteration, Shard
from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.messages import TrainTask
from selfjudge.shared.models.training import SFTExample, TrainConfig, sft
from selfjudge.shared.store import get_image, get_jsonl

STAGE = "trainer"
log = logging.getLogger(__name__)


def handle(payload: dict, ctx: Context) -> None:
    task = TrainTask.model_validate(payload)
    with ctx.sessions() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == task.run_id, Iteration.number == task.iteration))
        if it.output_checkpoint_id is not None:      # trained already (redelivered message)
            loop.on_trained(ctx, task, it.output_checkpoint_id)
            return
    if not shards.claim_training(ctx.sessions, task.run_id, task.iteration, ctx.settings.run.train_lease_seconds):
        log.info("trainer: run %s iter %s is being trained elsewhere (lease held)", task.run_id, task.iteration)
        return
    with ctx.sessions() as s:
        keys = s.scalars(select(Shard.output_key).where(
            Shard.run_id == task.run_id, Shard.iteration == task.iteration, Shard.stage == "filter",
            Shard.state == "done").order_by(Shard.index)).all()
    start, m = time.perf_counter(), ctx.metrics
    records = [r for key in keys for r in get_jsonl(ctx.store, key)]
    m.items_in.labels(STAGE).inc(len(records))
    if not records:
        log.warning("trainer: run %s iter %s has no kept traces; the judge stays as it was",
                    task.run_id, task.iteration)
        shards.release_training(ctx.sessions, task.run_id, task.iteration, "done")
        loop.on_trained(ctx, task, task.judge_checkpoint_id)
        return

    images = {}
    examples = []
    for r in records:
        if r["image_key"] not in images:
            images[r["image_key"]] = get_image(ctx.store, r["image_key"])
        examples.append(SFTExample(text=r["prompt_text"], images=[images[r["image_key"]]], answer=r["answer"],
                                   system=JUDGE_SYSTEM))
    cfg, model = ctx.settings.train, ctx.settings.model
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                            max_length=cfg.max_length, warmup_ratio=cfg.warmup_ratio,
                            seed=ctx.settings.run.seed + task.iteration, dtype=model.dtype, device=model.device)
    out_dir = Path(ctx.settings.run.work_dir).resolve() / "train" / f"run{task.run_id}-iter{task.iteration}"
    shutil.rmtree(out_dir, ignore_errors=True)
    parent_path = ctx.models.local_path(task.judge_checkpoint_id)
    labels = {"run": str(task.run_id), "iteration": str(task.iteration)}

    last_beat = [time.monotonic()]

    def progress(step: int, total: int, loss: float) -> None:
        if time.monotonic() - last_beat[0] > min(30.0, ctx.settings.run.train_lease_seconds / 4):
            shards.renew_training(ctx.sessions, task.run_id, task.iteration)    # keep the lease
            last_beat[0] = time.monotonic()
        m.train_loss.labels(**labels).set(loss)
        m.train_steps.inc()
        if step == 1 or step == total or step % 10 == 0:
            log.info("trainer: run %s iter %s step %s/%s loss %.4f", task.run_id, task.iteration, step, total, loss)

    result = sft(parent_path, examples, out_dir, train_cfg, progress=progress)
    failpoint("trainer.before_commit")   # fault tests: die after training, before recording it
    m.train_tokens.inc(result.answer_tokens)
    meta = {"examples": len(examples), "steps": result.steps, "first_loss": result.losses[0],
            "last_loss": result.losses[-1], "answer_tokens": result.answer_tokens,
            "train_seconds": result.seconds, "config": train_cfg.__dict__}
    ckpt_id = loop.register_checkpoint(ctx, task.run_id, task.iteration, str(out_dir),
                                       parent_id=task.judge_checkpoint_id, meta=meta)
    shutil.rmtree(out_dir, ignore_errors=True)
    shards.release_training(ctx.sessions, task.run_id, task.iteration, "done")
    m.items_out.labels(STAGE).inc(1)
    m.shard_seconds.labels(STAGE).observe(time.perf_counter() - start)
    log.info("trainer: run %s iter %s: %s examples, %s steps, loss %.3f -> %.3f, checkpoint %s",
             task.run_id, task.iteration, len(examples), result.steps, result.losses[0], result.losses[-1], ckpt_id)
    loop.on_trained(ctx, task, ckpt_id)
