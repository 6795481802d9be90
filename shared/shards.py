"""Shard bookkeeping shared by the shard stages: skip finished shards, record finished ones.

A shard's rows and its `done` state are written in one transaction, so a shard
redelivered after a crash either finds everything or nothing.
"""
from __future__ import annotations

from datetime import timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from .db import Iteration, SetAside, Shard, utcnow
from .messages import ShardTask


def shard_row(s: Session, stage: str, task: ShardTask) -> Shard:
    """The shard's row, created `pending` on first sight. `task`: any message with run_id,
    iteration, index and input_key (a ShardTask, or the evaluator's EvalShard)."""
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


def record_failure(sessions, stage: str, payload: dict, error: BaseException, final: bool,  # noqa: ANN001
                   attempt: int = 1) -> None:
    """Keep the error on the shard's row (trainer/evaluator: a row with index 0); `failed` when final."""
    index = payload.get("index", 0)
    with sessions.begin() as s:
        row = s.scalar(select(Shard).where(Shard.run_id == payload["run_id"], Shard.iteration == payload["iteration"],
                                           Shard.stage == stage, Shard.index == index))
        if row is None:
            row = Shard(run_id=payload["run_id"], iteration=payload["iteration"], stage=stage, index=index,
                        input_key=payload.get("input_key", f"{stage}:iteration{payload['iteration']}"), attempts=0)
            s.add(row)
        if row.state == "done":
            return
        row.error = f"{type(error).__name__}: {error}"[:4000]
        row.state = "failed" if final else "pending"
        row.attempts = max(row.attempts or 0, attempt)


# --- the trainer's lease --------------------------------------------------------------------
# Training can outlast RabbitMQ's consumer_timeout, so the trainer acks its message on receipt
# and holds a lease in the database instead: a `running` trainer row whose updated_at it keeps
# fresh. A redelivered or duplicate message finds the lease held and steps aside; a trainer that
# died stops renewing, and `stale_trainings` lets any trainer worker send the work again.

def _aware(moment):  # noqa: ANN001, ANN202 - SQLite hands back naive datetimes (stored as UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def claim_training(sessions, run_id: int, iteration: int, lease_seconds: float) -> bool:  # noqa: ANN001
    with sessions.begin() as s:
        row = s.scalar(select(Shard).where(Shard.run_id == run_id, Shard.iteration == iteration,
                                           Shard.stage == "trainer", Shard.index == 0).with_for_update())
        if row is None:
            row = Shard(run_id=run_id, iteration=iteration, stage="trainer", index=0,
                        input_key=f"trainer:iteration{iteration}", attempts=0)
            s.add(row)
        elif row.state == "done" or (row.state == "running" and row.updated_at is not None
                                      and _aware(row.updated_at) > utcnow() - timedelta(seconds=lease_seconds)):
            return False
        row.state, row.attempts, row.updated_at = "running", (row.attempts or 0) + 1, utcnow()
        return True


def renew_training(sessions, run_id: int, iteration: int) -> None:  # noqa: ANN001
    with sessions.begin() as s:
        row = s.scalar(select(Shard).where(Shard.run_id == run_id, Shard.iteration == iteration,
                                           Shard.stage == "trainer", Shard.index == 0))
        if row is not None:
            row.updated_at = utcnow()


def release_training(sessions, run_id: int, iteration: int, state: str) -> None:  # noqa: ANN001
    with sessions.begin() as s:
        row = s.scalar(select(Shard).where(Shard.run_id == run_id, Shard.iteration == iteration,
                                           Shard.stage == "trainer", Shard.index == 0))
        if row is not None:
            row.state = state


def stale_trainings(sessions, lease_seconds: float) -> list[tuple[int, int, int]]:  # noqa: ANN001
    """(run_id, iteration, judge_checkpoint_id) whose trainer lease ran out before a checkpoint was made."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    with sessions() as s:
        rows = s.execute(select(Iteration.run_id, Iteration.number, Iteration.judge_checkpoint_id).join(
            Shard, (Shard.run_id == Iteration.run_id) & (Shard.iteration == Iteration.number)
            & (Shard.stage == "trainer")).where(
            Iteration.output_checkpoint_id.is_(None), Shard.state == "running", Shard.updated_at < cutoff)).all()
    return [tuple(r) for r in rows]
