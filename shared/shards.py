"""Shard bookkeeping shared by the shard stages: skip finished shards, record finished ones.

A shard's rows and its `done` state are written in one transaction, so a shard
redelivered after a crash either finds everything or nothing.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import SetAside, Shard
from .messages import ShardTask


def shard_row(s: Session, stage: str, task: ShardTask) -> Shard:
    row = s.scalar(select(Shard).where(Shard.run_id == task.run_id, Shard.iteration == task.iteration,
                                       Shard.stage == stage, Shard.index == task.index))
    if row is None:
        row = Shard(run_id=task.run_id, iteration=task.iteration, stage=stage, index=task.index,
                    input_key=task.input_key, state="pending", attempts=0)
        s.add(row)
        s.flush()
    return row


def is_done(s: Session, stage: str, task: ShardTask) -> bool:
    row = s.scalar(select(Shard.state).where(Shard.run_id == task.run_id, Shard.iteration == task.iteration,
                                             Shard.stage == stage, Shard.index == task.index))
    return row == "done"


def mark_attempt(sessions, stage: str, task: ShardTask) -> int:  # noqa: ANN001
    with sessions.begin() as s:
        row = shard_row(s, stage, task)
        row.attempts += 1
        return row.attempts


def finish(s: Session, stage: str, task: ShardTask, output_key: str, items_in: int, items_out: int,
           seconds: float) -> None:
    row = shard_row(s, stage, task)
    row.state, row.output_key, row.items_in, row.items_out, row.seconds, row.error = (
        "done", output_key, items_in, items_out, seconds, None)


def set_aside(s: Session, task_or_run: ShardTask | tuple[int, int], stage: str, record_id: str, reason: str) -> None:
    run_id, iteration = (task_or_run.run_id, task_or_run.iteration) if isinstance(task_or_run, ShardTask) else task_or_run
    s.add(SetAside(run_id=run_id, iteration=iteration, stage=stage, record_id=record_id[:300], reason=reason[:300]))


def shard_key(run_id: int, iteration: int, what: str, index: int) -> str:
    return f"runs/{run_id}/iter{iteration}/{what}/{index:05d}.jsonl"
