"""The worker's failure policy (shared/worker.py) on an in-memory broker (kombu memory://): the pure
`decide`, the task's methods called under a pushed request (what they publish, record and raise),
and the same cases through a real Celery worker consuming the stage's queue."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from celery.canvas import Signature
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Reject, Retry
from kombu import Queue
from kombu.exceptions import OperationalError
from sqlalchemy import select

from selfjudge.shared.config import RunConfig, Settings
from selfjudge.shared.context import make_context
from selfjudge.shared.db import Base, Run, Shard, make_sessionmaker
from selfjudge.shared.messages import ShardTask, task_name
from selfjudge.shared.queue import DEAD_QUEUE, CeleryBus, dead_letters, make_celery
from selfjudge.shared.store import LocalStore
from selfjudge.shared.worker import Decision, StageTask, decide, register_stage, worker_argv

PAYLOAD = ShardTask(
    run_id=1, iteration=1, index=3, input_key="runs/1/iter1/pairs/00003.jsonl", judge_checkpoint_id=1
).model_dump()
OUTAGE = ConnectionRefusedError("the database is restarting")


# --- the policy itself ----------------------------------------------------------------------


def test_a_failure_is_counted_and_retried_with_backoff_then_given_up():
    run = RunConfig(max_retries=3)
    steps = [decide(ValueError("bad"), failures, None, retries=failures, now=100.0, run=run) for failures in range(4)]
    assert steps == [
        Decision("retry", 1, 1, None),
        Decision("retry", 2, 2, None),
        Decision("retry", 4, 3, None),
        Decision("dead", 0, 3, None),
    ]
    assert decide(ValueError("bad"), 7, None, 7, 0.0, RunConfig(max_retries=10)).countdown == 60  # capped


def test_an_outage_is_waited_out_without_counting():
    run = RunConfig(max_retries=0, outage_seconds=60)
    first = decide(OUTAGE, 0, None, retries=0, now=1000.0, run=run)
    assert first == Decision("wait", 1, 0, 1000.0)  # the outage's start is kept
    assert decide(OUTAGE, 0, 1000.0, retries=3, now=1030.0, run=run) == Decision("wait", 8, 0, 1000.0)
    assert decide(
        OUTAGE, 2, 1000.0, retries=9, now=1059.0, run=RunConfig(max_retries=5, outage_seconds=60)
    ) == Decision("wait", 30, 2, 1000.0)  # capped; earlier failures stay counted
    wrapped = RuntimeError("while reading the shard")
    wrapped.__cause__ = OUTAGE  # the cause decides (queue.is_outage)
    assert decide(wrapped, 0, None, 0, 5.0, run).action == "wait"


def test_an_outage_that_lasts_too_long_counts_as_a_failure():
    run = RunConfig(max_retries=2, outage_seconds=60)
    assert decide(OUTAGE, 0, 1000.0, retries=6, now=1060.0, run=run) == Decision("retry", 1, 1, None)
    assert decide(OUTAGE, 2, 1000.0, retries=8, now=1200.0, run=run) == Decision("dead", 0, 2, None)
    assert decide(OUTAGE, 0, None, 0, 5.0, RunConfig(max_retries=0, outage_seconds=0)).action == "dead"


# --- the task's methods on the memory broker ---------------------------------------------------


class Env:
    """A Celery app on memory:// (the project's make_celery config), a context with an SQLite
    database, and a scripted handler: `script` lists what each call raises (None: succeeds)."""

    def __init__(self, tmp_path, stage: str = "reasoner", **run: object):
        self.settings = Settings.model_validate(
            {"run": {"work_dir": str(tmp_path), **run}, "broker": {"url": "memory://"}}
        )
        self.app = make_celery(self.settings)
        self.app.conf.broker_transport_options = {"polling_interval": 0.05}
        sessions = make_sessionmaker(f"sqlite:///{tmp_path / 'worker.db'}")
        Base.metadata.create_all(sessions.kw["bind"])
        with sessions.begin() as s:
            s.add(Run(id=1, name="t", config={}, iterations=1))
        self.ctx = make_context(
            self.settings, stage, CeleryBus(self.app), sessions=sessions, store=LocalStore(tmp_path / "store")
        )
        self.script: list[BaseException | None] = []
        self.calls: list[dict] = []
        self.task = register_stage(self.app, self.ctx, self.handle)
        self.purge()

    def handle(self, payload: dict, ctx) -> None:
        from celery.worker import state

        self.calls.append(
            {
                "payload": payload,
                "kwargs": dict(self.task.request.kwargs or {}),
                "acked": [r.acknowledged for r in state.active_requests],
            }
        )
        error = self.script.pop(0) if self.script else None
        if error is not None:
            raise error

    def purge(self) -> None:
        with self.app.connection_for_write() as conn:
            for name in (self.ctx.stage, DEAD_QUEUE.name):
                Queue(name).bind(conn.default_channel).purge()

    def queued(self) -> list:
        """The messages waiting on the stage's queue (taken off it)."""
        out = []
        with self.app.connection_for_write() as conn:
            queue = Queue(self.ctx.stage).bind(conn.default_channel)
            while (message := queue.get(no_ack=True, accept=["json"])) is not None:
                out.append(message)
        return out

    def shard(self) -> Shard | None:
        with self.ctx.sessions() as s:
            return s.scalar(select(Shard))

    def errors(self, kind: str) -> float:
        return self.ctx.metrics.errors.labels(self.ctx.stage, kind)._value.get()

    @contextlib.contextmanager
    def delivered(self, retries: int = 0, **kwargs: object) -> Iterator[StageTask]:
        """The task as a worker runs it: a request for a delivered message is on its stack."""
        self.task.push_request(
            id="task-1",
            args=[PAYLOAD],
            kwargs=kwargs,
            retries=retries,
            called_directly=False,
            delivery_info={"exchange": "selfjudge", "routing_key": self.ctx.stage},
        )
        try:
            yield self.task
        finally:
            self.task.pop_request()


@pytest.fixture
def env(tmp_path):
    made: list[Env] = []

    def make(**kw: object) -> Env:
        made.append(Env(tmp_path / str(len(made)), **kw))
        return made[-1]

    yield make
    for e in made:
        e.purge()


def test_every_stage_task_has_the_policy_and_its_ack_mode(env):
    reasoner, trainer = env(), env(stage="trainer")
    for e in (reasoner, trainer):
        assert isinstance(e.task, StageTask) and e.app.tasks[task_name(e.ctx.stage)] is e.task
        assert e.task.max_retries is None
    assert reasoner.task.acks_late is True and reasoner.task.reject_on_worker_lost is True
    assert trainer.task.acks_late is False  # acked on receipt: the lease guards it
    assert worker_argv("reasoner", "INFO")[:7] == ["worker", "-Q", "reasoner", "-P", "solo", "-c", "1"]
    assert worker_argv("trainer", "INFO")[4] == "threads"


def test_a_failure_is_recorded_and_sent_again_with_its_count(env):
    e = env(max_retries=2)
    e.script = [ValueError("unparseable shard")]
    with e.delivered(), pytest.raises(Retry):
        e.task.run(PAYLOAD)
    (message,) = e.queued()
    args, kwargs, _ = message.decode()
    assert args == [PAYLOAD] and kwargs == {"failures": 1, "outage_since": None}
    assert message.headers["task"] == task_name("reasoner") and message.headers["retries"] == 1
    assert message.headers["eta"] is not None
    row = e.shard()
    assert (row.state, row.attempts, row.index) == ("pending", 1, 3) and row.error == "ValueError: unparseable shard"
    assert e.errors("ValueError") == 1


def test_the_last_failure_is_recorded_failed_and_dead_lettered(env):
    e = env(max_retries=1)
    e.script = [ValueError("still broken")]
    with e.delivered(retries=1, failures=1):
        e.task.run(PAYLOAD, failures=1)  # returns: the message is acked
    assert e.queued() == []
    row = e.shard()
    assert (row.state, row.attempts, row.error) == ("failed", 2, "ValueError: still broken")
    letters = dead_letters(e.app, take=lambda letter: True)
    assert letters == [{"stage": "reasoner", "payload": PAYLOAD, "error": "ValueError: still broken"}]


def test_an_outage_is_sent_again_uncounted_with_its_start(env):
    e = env(max_retries=0, outage_seconds=600)
    e.script = [OUTAGE, OUTAGE]
    with e.delivered(), pytest.raises(Retry):
        e.task.run(PAYLOAD)
    (message,) = e.queued()
    _, kwargs, _ = message.decode()
    since = kwargs["outage_since"]
    assert kwargs["failures"] == 0 and time.time() - since < 60
    with e.delivered(retries=1, **kwargs), pytest.raises(Retry):
        e.task.run(PAYLOAD, **kwargs)
    (message,) = e.queued()
    assert message.decode()[1] == {"failures": 0, "outage_since": since}
    assert e.shard() is None and e.errors("ConnectionRefusedError") == 2  # counted as errors, not failures


def test_a_retry_that_cannot_be_published_returns_the_message(env, monkeypatch):
    e = env(max_retries=3)

    def broker_down(self, *args, **kwargs):
        raise OperationalError("the broker is down too")

    monkeypatch.setattr(Signature, "apply_async", broker_down)
    for error in (ValueError("bad"), OUTAGE):
        e.script = [error]
        with e.delivered(), pytest.raises(Reject) as info:
            e.task.run(PAYLOAD)
        assert info.value.requeue is True and isinstance(info.value.__cause__, type(error))
    assert e.shard().attempts == 1  # the failure was recorded; the outage not


def test_a_database_that_cannot_record_the_failure_does_not_stop_the_retry(env, caplog):
    e = env(max_retries=3)
    e.ctx.sessions = make_sessionmaker(f"sqlite:///{e.settings.run.work_dir}/no/such/folder/x.db")
    e.script = [ValueError("bad")]
    with e.delivered(), pytest.raises(Retry):
        e.task.run(PAYLOAD)
    assert len(e.queued()) == 1 and "could not record the failure" in caplog.text


# --- through a real worker on the memory broker ------------------------------------------------


@contextlib.contextmanager
def worker(e: Env, pool: str = "solo") -> Iterator[None]:
    with start_worker(
        e.app, pool=pool, perform_ping_check=False, queues=[e.ctx.stage], loglevel="WARNING", shutdown_timeout=30
    ):
        yield


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_worker_retries_failures_then_succeeds(env):
    e = env(max_retries=3)
    e.script = [ValueError("one"), ValueError("two"), None]
    with worker(e):
        e.ctx.bus.send("reasoner", ShardTask.model_validate(PAYLOAD))
        wait_for(lambda: len(e.calls) == 3)
        time.sleep(0.3)
    assert [c["kwargs"].get("failures", 0) for c in e.calls] == [0, 1, 2]
    assert all(c["payload"] == PAYLOAD and c["acked"] == [False] for c in e.calls)  # acks_late
    assert (e.shard().attempts, e.shard().state) == (2, "pending")
    assert dead_letters(e.app) == [] and e.queued() == []


def test_worker_dead_letters_after_max_retries(env):
    e = env(max_retries=1)
    e.script = [ValueError("broken"), ValueError("broken"), None]
    with worker(e):
        e.ctx.bus.send("reasoner", ShardTask.model_validate(PAYLOAD))
        wait_for(lambda: len(dead_letters(e.app)) == 1)
        time.sleep(0.3)
    assert len(e.calls) == 2 and e.queued() == []  # acked: not delivered again
    assert (e.shard().state, e.shard().attempts) == ("failed", 2)
    assert dead_letters(e.app)[0]["error"] == "ValueError: broken"


def test_worker_waits_out_an_outage_without_using_retries(env):
    e = env(max_retries=0, outage_seconds=600)
    e.script = [OUTAGE, OUTAGE, None]
    with worker(e):
        e.ctx.bus.send("reasoner", ShardTask.model_validate(PAYLOAD))
        wait_for(lambda: len(e.calls) == 3)
        time.sleep(0.3)
    kwargs = [c["kwargs"] for c in e.calls]
    assert [k.get("failures", 0) for k in kwargs] == [0, 0, 0]
    assert kwargs[1]["outage_since"] == kwargs[2]["outage_since"] is not None
    assert e.shard() is None and dead_letters(e.app) == []


def test_worker_requeues_a_message_whose_retry_cannot_be_published(env, monkeypatch):
    e = env(max_retries=3)
    e.script = [ValueError("bad"), None]
    real = Signature.apply_async
    refused: list[str] = []

    def broker_down_once(self, *args, **kwargs):
        if not refused and self.options.get("retries"):  # the retry, not the first send
            refused.append(self.task)
            raise OperationalError("the broker is down too")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Signature, "apply_async", broker_down_once)
    with worker(e):
        e.ctx.bus.send("reasoner", ShardTask.model_validate(PAYLOAD))
        wait_for(lambda: len(e.calls) == 2)
        time.sleep(0.3)
    assert refused == [task_name("reasoner")]
    assert [c["kwargs"].get("failures", 0) for c in e.calls] == [0, 0]  # the same message, back in its queue
    assert e.shard().attempts == 1 and e.queued() == [] and dead_letters(e.app) == []


def test_the_trainer_is_acked_on_receipt(env):
    e = env(stage="trainer")
    with worker(e, pool="threads"):
        e.ctx.bus.send("trainer", ShardTask.model_validate(PAYLOAD))
        wait_for(lambda: len(e.calls) == 1)
        time.sleep(0.3)
    assert e.calls[0]["acked"] == [True]
