"""Trainer: all kept traces of iteration k in, judge checkpoint k out.

In:    TrainTask (sent once, by the barrier, when every filter shard of iteration k is done)
Does:  supervised fine-tuning of judge k-1 on the kept (prompt, reasoning + verdict) traces,
       loss on the judge's answer tokens only.
Out:   a Hugging Face folder (or, for LoRA with train.lora_merge false, a PEFT adapter folder over
       the base model) uploaded to runs/<run>/checkpoints/iter<k>/, with selfjudge_training.json
       in it; a `checkpoints` row with its content hash, parent and training metadata.
Next:  loop.on_trained -> evaluator.

The traces are not loaded up front: their records are copied to a local file and read one at a
time (services/trainer/examples.py); DataLoader workers fetch each image by its store key when its
micro-batch is encoded, so memory does not grow with the traces. A trace too long for
train.max_length even with its image shrunk (model.min_pixels) is dropped, never cut: set aside
with the reason (counted per iteration by `selfjudge status`), counted in
selfjudge_train_dropped_examples_total and in the checkpoint's meta (the report shows it).
Training runs in this process, or on train.nproc processes (train.distributed ddp|fsdp, torchrun).
Every train.save_every optimizer steps its state goes to <work_dir>/train/run<r>-iter<k>.resume/:
a redelivered task (the worker died mid-training) resumes from there instead of starting over.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select

from selfjudge.shared import loop, shards
from selfjudge.shared.config import Settings, TrainConfig
from selfjudge.shared.context import Context
from selfjudge.shared.db import SetAside, Shard
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.messages import TrainTask
from selfjudge.shared.models.sft.launch import train
from selfjudge.shared.records import RecordError
from selfjudge.shared.store import open_store

from .examples import StoreExamples

STAGE = "trainer"
log = logging.getLogger(__name__)


def train_config(settings: Settings, iteration: int) -> TrainConfig:
    """The `train:` section with what it leaves to other sections: the seed (run.seed + iteration) and
    model device, dtype and image pixel bounds."""
    m = settings.model
    taken = dict(seed=settings.run.seed + iteration, dtype=m.dtype, device=m.device, max_pixels=m.max_pixels,
                 min_pixels=m.min_pixels)  # fmt: skip
    return TrainConfig.model_validate(settings.train.as_dict() | taken)


def work_dirs(settings: Settings, run_id: int, iteration: int) -> tuple[Path, Path]:
    """(output folder, resume folder) of one training task; the resume folder outlives a crash."""
    root = Path(settings.run.work_dir).resolve() / "train"
    return root / f"run{run_id}-iter{iteration}", root / f"run{run_id}-iter{iteration}.resume"


def handle(payload: dict, ctx: Context) -> None:
    task = TrainTask.model_validate(payload)
    shards.run_training(
        ctx,
        task,
        lambda: train_claimed(task, ctx),
        hand_off=lambda checkpoint_id: loop.on_trained(ctx, task, checkpoint_id),
    )


def train_claimed(task: TrainTask, ctx: Context) -> int:
    """Train the judge on iteration k's kept traces (this worker holds the lease); returns the new
    checkpoint's id (the old judge's when nothing was kept)."""
    failpoint("trainer.start")  # fault tests: a training that outlasts the broker's consumer_timeout
    with ctx.sessions() as s:
        keys = s.scalars(
            select(Shard.output_key)
            .where(
                Shard.run_id == task.run_id,
                Shard.iteration == task.iteration,
                Shard.stage == "filter",
                Shard.state == "done",
            )
            .order_by(Shard.index)
        ).all()
    start, m = time.perf_counter(), ctx.metrics
    out_dir, resume_dir = work_dirs(ctx.settings, task.run_id, task.iteration)
    settings = ctx.settings
    bad: list[RecordError] = []
    examples = StoreExamples.spill(
        ctx.store,
        keys,
        out_dir.parent / f"{out_dir.name}.traces.jsonl",
        reopen=lambda: open_store(settings.store, settings.run.work_dir),
        invalid=bad.append,
    )
    m.items_in.labels(STAGE).inc(len(examples) + len(bad))
    record_bad(ctx, task, bad)
    if not len(examples):
        log.warning(
            "trainer: run %s iter %s has no kept traces; the judge stays as it was", task.run_id, task.iteration
        )
        shards.release_training(ctx.sessions, task.run_id, task.iteration, "done")
        return task.judge_checkpoint_id

    train_cfg = train_config(ctx.settings, task.iteration)
    shutil.rmtree(out_dir, ignore_errors=True)  # a half-written output; resume_dir is kept
    parent_path = ctx.models.local_path(task.judge_checkpoint_id)
    labels = {"run": str(task.run_id), "iteration": str(task.iteration)}
    last = [time.perf_counter()]
    last_beat = [time.monotonic()]

    def progress(step: int, total: int, loss: float) -> None:
        if time.monotonic() - last_beat[0] > min(30.0, ctx.settings.run.train_lease_seconds / 4):
            shards.renew_training(ctx.sessions, task.run_id, task.iteration)  # keep the lease
            last_beat[0] = time.monotonic()
        now = time.perf_counter()
        m.train_step_seconds.observe(now - last[0])
        last[0] = now
        m.train_loss.labels(**labels).set(loss)
        m.train_steps.inc()
        if step == 1 or step == total or step % 10 == 0:
            log.info("trainer: run %s iter %s step %s/%s loss %.4f", task.run_id, task.iteration, step, total, loss)

    result = train(
        parent_path, examples, out_dir, train_cfg, progress=progress, resume_from=resume_dir, spec_dir=out_dir.parent
    )
    failpoint("trainer.before_commit")  # fault tests: die after training, before recording it
    m.train_tokens.inc(result.answer_tokens)
    record_dropped(ctx, task, examples, result.dropped)
    meta = {
        "examples": len(examples) - len(result.dropped),
        "dropped": len(result.dropped),
        "dropped_reasons": result.meta.get("dropped_reasons", {}),
        "steps": result.steps,
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
        "answer_tokens": result.answer_tokens,
        "train_seconds": result.seconds,
        "resumed_from_step": result.resumed_from,
        "world_size": result.world_size,
        "format": result.meta.get("format", "full"),
        "config": train_cfg.__dict__,
    }
    if meta["format"] == "peft_adapter":
        meta["base_model"] = result.meta.get("base_model")
    ckpt_id = loop.register_checkpoint(
        ctx, task.run_id, task.iteration, str(out_dir), parent_id=task.judge_checkpoint_id, meta=meta
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(resume_dir, ignore_errors=True)
    examples.path.unlink(missing_ok=True)
    shards.release_training(ctx.sessions, task.run_id, task.iteration, "done")
    m.items_out.labels(STAGE).inc(1)
    m.shard_seconds.labels(STAGE).observe(time.perf_counter() - start)
    log.info(
        "trainer: run %s iter %s: %s examples (%s dropped), %s steps, loss %.3f -> %.3f, checkpoint %s",
        task.run_id,
        task.iteration,
        meta["examples"],
        meta["dropped"],
        result.steps,
        result.losses[0],
        result.losses[-1],
        ckpt_id,
    )
    return ckpt_id


def _set_aside_once(ctx: Context, task: TrainTask, rows: list[tuple[str, str]]) -> None:
    """(record id, reason) rows into set_aside, skipping those a retried task recorded already."""
    with ctx.sessions.begin() as s:
        for rid, why in rows:
            exists = s.scalar(select(SetAside.id).where(SetAside.run_id == task.run_id, SetAside.iteration == task.iteration,
                                                        SetAside.stage == STAGE, SetAside.record_id == rid))  # fmt: skip
            if exists is None:  # a retried task drops the same examples again
                shards.set_aside(s, (task.run_id, task.iteration), STAGE, rid, why)


def record_bad(ctx: Context, task: TrainTask, bad: list[RecordError]) -> None:
    """Lines of the filter's shards that are no valid trace: set aside (`bad_record: <why>`) and counted."""
    if not bad:
        return
    asides = [err.set_aside() for err in bad]
    _set_aside_once(ctx, task, [(a.record_id[:300], a.reason) for a in asides])
    ctx.metrics.items_rejected.labels(STAGE, "bad_record").inc(len(bad))
    log.warning(
        "trainer: run %s iter %s: %s bad records left out, e.g. %s", task.run_id, task.iteration, len(bad), bad[0]
    )


def record_dropped(ctx: Context, task: TrainTask, examples: StoreExamples, dropped: list) -> None:
    """Traces left out of training (too long even with smaller images, or an unreadable image):
    set aside with the reason (`selfjudge status` counts them per iteration) and counted."""
    if not dropped:
        return
    _set_aside_once(ctx, task, [(examples.record_id(i), why) for i, why in dropped])
    for _, why in dropped:
        ctx.metrics.train_dropped.labels(
            run=str(task.run_id), iteration=str(task.iteration), reason=why.split(":")[0].strip()
        ).inc()
    log.warning(
        "trainer: run %s iter %s: %s traces dropped (too long or unreadable), e.g. %s",
        task.run_id,
        task.iteration,
        len(dropped),
        dropped[0][1],
    )
