"""Shard bookkeeping shared by the shard stages: one shard's life (`run_shard`), the trainer's lease.

A shard's rows and its `done` state are written in one transaction, so a shard
redelivered after a crash either finds everything or nothing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .db import Iteration, SetAside, Shard, utcnow
from .messages import ShardTask, TrainTask
from .records import SetAsideRecord

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger(__name__)


class ShardMessage(Protocol):
    """What names a shard in a message: a ShardTask, or the evaluator's EvalShard."""

    run_id: int
    iteration: int
    index: int
    input_key: str


def shard_row(s: Session, stage: str, task: ShardMessage) -> Shard:
    """The shard's row, created `pending` on first sight. `task`: any message with run_id,
    iteration, index and input_key (a ShardTask, or the evaluator's EvalShard)."""
    row = s.scalar(
        select(Shard).where(
            Shard.run_id == task.run_id,
            Shard.iteration == task.iteration,
            Shard.stage == stage,
            Shard.index == task.index,
        )
    )
    if row is None:
        row = Shard(
            run_id=task.run_id,
            iteration=task.iteration,
            stage=stage,
            index=task.index,
            input_key=task.input_key,
            state="pending",
            attempts=0,
        )
        s.add(row)
        s.flush()
    return row


def plan_shards(s: Session, stage: str, run_id: int, iteration: int, inputs: dict[int, str]) -> set[int]:
    """The rows of a stage's planned shards (index -> input key): made `pending` where missing,
    pointed at their input where a failure report made the row before the plan existed; a row of
    no planned shard is dropped. Returns the indexes already `done`."""
    rows = {
        r.index: r
        for r in s.scalars(
            select(Shard).where(Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == stage)
        )
    }
    for index, input_key in inputs.items():
        row = rows.get(index)
        if row is None:
            s.add(
                Shard(
                    run_id=run_id,
                    iteration=iteration,
                    stage=stage,
                    index=index,
                    input_key=input_key,
                    state="pending",
                    attempts=0,
                )
            )
        elif row.input_key != input_key:
            row.input_key = input_key
    for index, row in list(rows.items()):
        if index not in inputs:
            s.delete(row)
            del rows[index]
    return {index for index, row in rows.items() if row.state == "done"}


def is_done(s: Session, stage: str, task: ShardMessage) -> bool:
    row = s.scalar(
        select(Shard.state).where(
            Shard.run_id == task.run_id,
            Shard.iteration == task.iteration,
            Shard.stage == stage,
            Shard.index == task.index,
        )
    )
    return row == "done"


def mark_attempt(sessions: sessionmaker, stage: str, task: ShardMessage) -> int:
    with sessions.begin() as s:
        row = shard_row(s, stage, task)
        row.attempts += 1
        return row.attempts


def finish(
    s: Session, stage: str, task: ShardMessage, output_key: str | None, items_in: int, items_out: int, seconds: float
) -> None:
    row = shard_row(s, stage, task)
    row.state, row.output_key, row.items_in, row.items_out, row.seconds, row.error = (
        "done",
        output_key,
        items_in,
        items_out,
        seconds,
        None,
    )


@dataclass
class Attempt:
    """One attempt at a shard, as the stage's work function sees it (`number` 1 is the first)."""

    stage: str
    task: ShardMessage
    number: int
    start: float = field(default_factory=time.perf_counter)
    finished: tuple[int, float] | None = None  # (items out, seconds) once recorded
    aside: Counter[str] = field(default_factory=Counter)  # set-aside records by code

    def set_aside(self, s: Session, records: Iterable[SetAsideRecord]) -> None:
        """Set-aside rows for the records this attempt did not use, in the shard's transaction `s`;
        counted (`selfjudge_items_rejected_total`, by code) once the shard is done."""
        for record in records:
            set_aside(s, (self.task.run_id, self.task.iteration), self.stage, record.record_id, record.reason)
            self.aside[record.code] += 1

    def finish(self, s: Session, output_key: str | None, items_in: int, items_out: int) -> float:
        """Record the shard `done` in `s`, the transaction that writes the stage's rows; its seconds."""
        seconds = time.perf_counter() - self.start
        finish(s, self.stage, self.task, output_key, items_in, items_out, seconds)
        self.finished = (items_out, seconds)
        return seconds


def run_shard(
    ctx: Context, stage: str, task: ShardMessage, work: Callable[[Attempt], None], hand_off: Callable[[], None]
) -> None:
    """One shard message's life, the same in every shard stage and on both buses: a shard already
    `done` (a redelivered message, a resumed run) is only handed on; otherwise the attempt is
    counted, `work` does the stage's work and records it with `attempt.finish`, the shard's
    metrics are counted and `hand_off` sends what comes next. An error in `work` propagates (the
    worker's policy, shared/worker.py, decides what becomes of it)."""
    with ctx.sessions() as s:
        done = is_done(s, stage, task)
    if not done:
        attempt = Attempt(stage, task, mark_attempt(ctx.sessions, stage, task))
        work(attempt)
        if attempt.finished is None:
            raise RuntimeError(
                f"{stage}: shard {task.index} of run {task.run_id} iteration {task.iteration} "
                "was worked on but not recorded"
            )
        items_out, seconds = attempt.finished
        ctx.metrics.items_out.labels(stage).inc(items_out)
        ctx.metrics.shards.labels(stage, "done").inc()
        ctx.metrics.shard_seconds.labels(stage).observe(seconds)
        for code, count in attempt.aside.items():
            ctx.metrics.items_rejected.labels(stage, code).inc(count)
    hand_off()


def set_aside(s: Session, task_or_run: ShardTask | tuple[int, int], stage: str, record_id: str, reason: str) -> None:
    run_id, iteration = (
        (task_or_run.run_id, task_or_run.iteration) if isinstance(task_or_run, ShardTask) else task_or_run
    )
    s.add(SetAside(run_id=run_id, iteration=iteration, stage=stage, record_id=record_id[:300], reason=reason[:300]))


def shard_key(run_id: int, iteration: int, what: str, index: int) -> str:
    return f"runs/{run_id}/iter{iteration}/{what}/{index:05d}.jsonl"


def record_failure(
    sessions: sessionmaker,
    stage: str,
    payload: dict,
    error: BaseException,
    final: bool,
    attempt: int = 1,
) -> None:
    """Keep the error on the shard's row (trainer/evaluator: a row with index 0); `failed` when final."""
    index = payload.get("index", 0)
    with sessions.begin() as s:
        row = s.scalar(
            select(Shard).where(
                Shard.run_id == payload["run_id"],
                Shard.iteration == payload["iteration"],
                Shard.stage == stage,
                Shard.index == index,
            )
        )
        if row is None:
            row = Shard(
                run_id=payload["run_id"],
                iteration=payload["iteration"],
                stage=stage,
                index=index,
                input_key=payload.get("input_key", f"{stage}:iteration{payload['iteration']}"),
                attempts=0,
            )
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


def claim_training(sessions: sessionmaker, run_id: int, iteration: int, lease_seconds: float) -> bool:
    with sessions.begin() as s:
        row = s.scalar(
            select(Shard)
            .where(Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == "trainer", Shard.index == 0)
            .with_for_update()
        )
        if row is None:
            row = Shard(
                run_id=run_id,
                iteration=iteration,
                stage="trainer",
                index=0,
                input_key=f"trainer:iteration{iteration}",
                attempts=0,
            )
            s.add(row)
        elif row.state == "done" or (
            row.state == "running"
            and row.updated_at is not None
            and _aware(row.updated_at) > utcnow() - timedelta(seconds=lease_seconds)
        ):
            return False
        row.state, row.attempts, row.updated_at = "running", (row.attempts or 0) + 1, utcnow()
        return True


def renew_training(sessions: sessionmaker, run_id: int, iteration: int) -> None:
    with sessions.begin() as s:
        row = s.scalar(
            select(Shard).where(
                Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == "trainer", Shard.index == 0
            )
        )
        if row is not None:
            row.updated_at = utcnow()


def release_training(sessions: sessionmaker, run_id: int, iteration: int, state: str) -> None:
    with sessions.begin() as s:
        row = s.scalar(
            select(Shard).where(
                Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == "trainer", Shard.index == 0
            )
        )
        if row is not None:
            row.state = state


def trained_checkpoint(sessions: sessionmaker, run_id: int, iteration: int) -> int | None:
    """The checkpoint iteration `iteration` made, if its training is recorded."""
    with sessions() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == iteration))
        if it is None:
            raise LookupError(f"run {run_id} has no iteration {iteration}")
        return it.output_checkpoint_id


def run_training(ctx: Context, task: TrainTask, work: Callable[[], int], hand_off: Callable[[int], None]) -> None:
    """A training message's life, run_shard's under the lease: an iteration trained already is only
    handed on; a lease held elsewhere steps aside; claiming the lease counts the attempt; `work`
    returns the checkpoint and releases the lease `done`; if it fails, the lease is given back so
    the retry trains at once (if the database is down too, the lease runs out)."""
    done = trained_checkpoint(ctx.sessions, task.run_id, task.iteration)
    if done is not None:  # trained already (redelivered message)
        hand_off(done)
        return
    if not claim_training(ctx.sessions, task.run_id, task.iteration, ctx.settings.run.train_lease_seconds):
        log.info("trainer: run %s iter %s is being trained elsewhere (lease held)", task.run_id, task.iteration)
        return
    try:
        checkpoint_id = work()
    except BaseException:
        try:
            release_training(ctx.sessions, task.run_id, task.iteration, "pending")
        except Exception:
            log.exception("trainer: could not release the lease of run %s iter %s", task.run_id, task.iteration)
        raise
    hand_off(checkpoint_id)


def stale_trainings(sessions: sessionmaker, lease_seconds: float) -> list[tuple[int, int, int]]:
    """(run_id, iteration, judge_checkpoint_id) whose trainer lease ran out before a checkpoint was made."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    with sessions() as s:
        rows = s.execute(
            select(Iteration.run_id, Iteration.number, Iteration.judge_checkpoint_id)
            .join(
                Shard,
                (Shard.run_id == Iteration.run_id) & (Shard.iteration == Iteration.number) & (Shard.stage == "trainer"),
            )
            .where(Iteration.output_checkpoint_id.is_(None), Shard.state == "running", Shard.updated_at < cutoff)
        ).all()
    return [tuple(r) for r in rows]
