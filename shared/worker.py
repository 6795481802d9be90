"""The worker runtime: a stage's handler as a Celery task, and what happens when it fails.

A stage is a function `handle(payload, ctx)` (services/<stage>/stage.py). `serve` runs one stage's
worker: it registers the handler as a task of class `StageTask` and consumes the stage's queue.
`StageTask` owns the failure policy (`decide` is its pure core):

- an outage (the database, the store, the broker or a model endpoint cannot be reached:
  queue.is_outage) is waited out: retried after 1, 2, 4 ... 30 s for up to run.outage_seconds,
  without counting as a failure;
- any other error, or an outage that lasts longer, is a failure: counted, kept on the shard's
  row and retried after 1, 2, 4 ... 60 s, run.max_retries times; the last one leaves the shard
  `failed` and parks the message in the dead-letter queue (`selfjudge status` shows it,
  `selfjudge retry` sends it again);
- a retry that cannot be published (the broker is down as well) hands the message back to its
  queue instead of dropping it.

Acknowledgement: a stage's message is acked after its shard is recorded (acks_late; with the
app's task_reject_on_worker_lost a worker that dies mid-shard has it redelivered). The trainer
acks on receipt instead: training can outlast RabbitMQ's consumer_timeout, so it holds a
database lease (shared/shards.py), and `watch_trainings` re-sends the work of a trainer that died.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn

from celery import Celery, Task
from celery.exceptions import Reject

from . import shards
from .config import RunConfig, Settings
from .context import Context, make_context
from .messages import TrainTask, task_name
from .metrics import Metrics
from .queue import CeleryBus, declare_dead_letters, is_outage, make_celery, send_dead_letter

log = logging.getLogger(__name__)

Handler = Callable[[dict, Context], None]


@dataclass(frozen=True)
class Decision:
    """What becomes of a task whose stage raised.

    wait: an outage, sent again after `countdown` s without counting it; retry: a counted failure,
    sent again after `countdown` s; dead: the last failure, dead-lettered. `failures` and
    `outage_since` are what the next try is sent with."""

    action: Literal["wait", "retry", "dead"]
    countdown: float
    failures: int
    outage_since: float | None


def decide(
    error: BaseException, failures: int, outage_since: float | None, retries: int, now: float, run: RunConfig
) -> Decision:
    """The policy. `failures`: failures counted before this one; `outage_since`: when the outage
    this task is waiting out began (None: none); `retries`: times the task was sent again (Celery's
    count, outages included)."""
    if is_outage(error):
        since = outage_since or now
        if now - since < run.outage_seconds:
            return Decision("wait", min(2 ** min(retries, 5), 30), failures, since)
    if failures >= run.max_retries:
        return Decision("dead", 0, failures, None)
    return Decision("retry", min(2**failures, 60), failures + 1, None)


class StageTask(Task):
    """The base class of every stage's task: runs `handler(payload, context)` and applies `decide`.

    `register_stage` makes one subclass per stage, with `stage`, `context` and `handler` set."""

    stage: str
    context: Context
    handler: Handler
    max_retries = None  # run.max_retries bounds the counted failures (outages are not counted)

    def run(self, payload: dict, failures: int = 0, outage_since: float | None = None) -> None:
        try:
            self.handler(payload, self.context)
            return
        except Exception as exc:  # noqa: BLE001 - every error is waited out, retried or dead-lettered below
            error = exc
        self.failed(payload, error, failures, outage_since)

    def failed(self, payload: dict, error: Exception, failures: int, outage_since: float | None) -> None:
        """Count the error, then wait it out, retry it or dead-letter it (the retries raise)."""
        self.context.metrics.errors.labels(self.stage, type(error).__name__).inc()
        run = self.context.settings.run
        step = decide(error, failures, outage_since, self.request.retries, time.time(), run)
        if step.action == "wait":
            log.warning(
                "%s: a server is unreachable (%s: %s); trying again in %ss, for up to %.0fs",
                self.stage,
                type(error).__name__,
                str(error)[:200],
                step.countdown,
                run.outage_seconds,
            )
            self.send_again(error, step)
        log.error("%s failed (attempt %s of %s)", self.stage, failures + 1, run.max_retries + 1, exc_info=error)
        self.record_failure(payload, error, final=step.action == "dead", attempt=failures + 1)
        if step.action == "retry":
            self.send_again(error, step)
        send_dead_letter(self.app, self.stage, payload, f"{type(error).__name__}: {error}")

    def record_failure(self, payload: dict, error: Exception, final: bool, attempt: int) -> None:
        try:
            shards.record_failure(self.context.sessions, self.stage, payload, error, final=final, attempt=attempt)
        except Exception:
            log.exception("%s: could not record the failure", self.stage)

    def send_again(self, error: Exception, step: Decision) -> NoReturn:
        """Schedule the retry. If even that cannot be published (the broker is down too), hand the
        message back to the broker instead of dropping it, as Celery would by default."""
        try:
            raise self.retry(
                exc=error,
                countdown=step.countdown,
                kwargs={"failures": step.failures, "outage_since": step.outage_since},
            )
        except Reject as reject:
            log.warning(
                "%s: the retry could not be published (%s); returning the message to its queue",
                self.stage,
                reject.reason,
            )
            raise Reject(reject.reason, requeue=True) from error


def register_stage(app: Celery, ctx: Context, handler: Handler) -> StageTask:
    """`handler` as the task of stage `ctx.stage` on `app` (one StageTask subclass per stage)."""
    attributes = {
        "name": task_name(ctx.stage),
        "stage": ctx.stage,
        "context": ctx,
        "handler": staticmethod(handler),
        "acks_late": ctx.stage != "trainer",
    }
    return app.register_task(type(f"{ctx.stage.title()}Task", (StageTask,), attributes))


def worker_argv(stage: str, loglevel: str) -> list[str]:
    """solo: the task runs in the main process (one per GPU, no fork). The trainer uses one thread
    instead, so its message is acked on receipt (the solo pool acks only afterwards)."""
    pool = "threads" if stage == "trainer" else "solo"
    return [
        "worker",
        "-Q",
        stage,
        "-P",
        pool,
        "-c",
        "1",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"{stage}-{os.getpid()}@%h",
        "--loglevel",
        loglevel,
    ]


def serve(settings: Settings, stage: str, handler: Handler, loglevel: str) -> None:
    """Run one stage's worker until it is stopped: the dead-letter queue declared, metrics served."""
    app = make_celery(settings)
    declare_dead_letters(app)
    metrics = Metrics()
    metrics.serve(settings.metrics.port, settings.metrics.addr)
    ctx = make_context(settings, stage, CeleryBus(app), metrics=metrics)
    if stage == "trainer":
        watch_trainings(ctx)
    register_stage(app, ctx, handler)
    app.worker_main(worker_argv(stage, loglevel))


def watch_trainings(ctx: Context) -> None:
    """A trainer worker re-sends any training whose trainer died (its lease ran out), now and periodically."""
    lease = ctx.settings.run.train_lease_seconds

    def check() -> None:
        for run_id, iteration, judge_id in shards.stale_trainings(ctx.sessions, lease):
            log.warning("trainer lease of run %s iteration %s ran out: sending the training again", run_id, iteration)
            ctx.bus.send("trainer", TrainTask(run_id=run_id, iteration=iteration, judge_checkpoint_id=judge_id))

    def loop_forever() -> None:
        while True:
            try:
                check()
            except Exception:
                log.exception("checking trainer leases failed")
            time.sleep(max(1.0, lease / 3))

    threading.Thread(target=loop_forever, name="trainer-leases", daemon=True).start()
