"""One shard's life (shared/shards.py run_shard) and a training message's (run_training), on SQLite:
skip-if-done, the attempt counted, the finish in the stage's transaction, metrics, the hand-off."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from selfjudge.shared import shards
from selfjudge.shared.config import Settings
from selfjudge.shared.context import make_context
from selfjudge.shared.db import Base, Checkpoint, Iteration, Run, SetAside, Shard, make_sessionmaker
from selfjudge.shared.messages import ShardTask, TrainTask
from selfjudge.shared.queue import LocalBus
from selfjudge.shared.records import SetAsideRecord
from selfjudge.shared.store import LocalStore

TASK = ShardTask(run_id=1, iteration=1, index=0, input_key="runs/1/iter1/pairs/00000.jsonl", judge_checkpoint_id=1)


@pytest.fixture
def ctx(tmp_path):
    settings = Settings.model_validate({"run": {"work_dir": str(tmp_path), "train_lease_seconds": 60}})
    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 's.db'}")
    Base.metadata.create_all(sessions.kw["bind"])
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=1))
        s.flush()
        s.add(Checkpoint(id=1, run_id=1, iteration=0, uri="hf:x", content_hash="a" * 64))
        s.flush()
        s.add(Iteration(run_id=1, number=1, judge_checkpoint_id=1))
    return make_context(settings, "reasoner", LocalBus(), sessions=sessions, store=LocalStore(tmp_path / "store"))


def row(ctx, stage: str = "reasoner") -> Shard | None:
    with ctx.sessions() as s:
        return s.scalar(select(Shard).where(Shard.stage == stage))


def metric(ctx, name: str, *labels: str) -> float:
    return getattr(ctx.metrics, name).labels(*labels)._value.get()


def test_a_shard_is_worked_on_recorded_with_the_stage_rows_and_handed_on(ctx):
    seen, handed = [], []

    def work(attempt: shards.Attempt) -> None:
        seen.append(attempt.number)
        with ctx.sessions.begin() as s:
            attempt.set_aside(s, [SetAsideRecord(record_id="r1", code="bad_record", detail="no verdict")])
            attempt.finish(s, "out.jsonl", items_in=5, items_out=3)

    shards.run_shard(ctx, "reasoner", TASK, work, hand_off=lambda: handed.append(True))
    shard = row(ctx)
    assert seen == [1] and handed == [True]
    assert (shard.state, shard.attempts, shard.output_key, shard.items_in, shard.items_out) == (
        "done",
        1,
        "out.jsonl",
        5,
        3,
    )
    assert shard.seconds is not None and shard.error is None
    assert metric(ctx, "items_out", "reasoner") == 3 and metric(ctx, "shards", "reasoner", "done") == 1
    assert ctx.metrics.shard_seconds.labels("reasoner")._sum.get() == pytest.approx(shard.seconds)
    assert metric(ctx, "items_rejected", "reasoner", "bad_record") == 1
    with ctx.sessions() as s:
        aside = s.scalar(select(SetAside))
    assert (aside.stage, aside.record_id, aside.reason) == ("reasoner", "r1", "bad_record: no verdict")

    # redelivered: handed on again, not redone, not counted
    shards.run_shard(ctx, "reasoner", TASK, work, hand_off=lambda: handed.append(True))
    assert seen == [1] and handed == [True, True] and row(ctx).attempts == 1
    assert metric(ctx, "shards", "reasoner", "done") == 1


def test_a_failed_attempt_is_counted_and_leaves_nothing(ctx):
    def fails(attempt: shards.Attempt) -> None:
        with ctx.sessions.begin() as s:
            attempt.set_aside(s, [SetAsideRecord(record_id="r1", code="bad_record")])
            attempt.finish(s, "out.jsonl", 1, 1)
            raise ValueError("after the rows, before the commit")

    handed: list[bool] = []
    with pytest.raises(ValueError, match="before the commit"):
        shards.run_shard(ctx, "filter", TASK, fails, hand_off=lambda: handed.append(True))
    shard = row(ctx, "filter")
    assert (shard.state, shard.attempts) == ("pending", 1) and handed == []
    with ctx.sessions() as s:
        assert s.scalar(select(SetAside)) is None
    assert metric(ctx, "items_rejected", "filter", "bad_record") == 0  # counted only once done
    shards.run_shard(ctx, "filter", TASK, lambda a: _finish(ctx, a), hand_off=lambda: handed.append(True))
    assert (row(ctx, "filter").state, row(ctx, "filter").attempts) == ("done", 2) and handed == [True]


def _finish(ctx, attempt: shards.Attempt) -> None:
    with ctx.sessions.begin() as s:
        attempt.finish(s, None, 0, 0)


def test_work_that_does_not_record_its_shard_is_an_error(ctx):
    with pytest.raises(RuntimeError, match="not recorded"):
        shards.run_shard(ctx, "reasoner", TASK, lambda attempt: None, hand_off=lambda: None)


def test_a_training_is_claimed_once_handed_on_and_its_lease_given_back_on_failure(ctx):
    task = TrainTask(run_id=1, iteration=1, judge_checkpoint_id=1)
    handed: list[int] = []

    def fails() -> int:
        raise ValueError("out of memory")

    with pytest.raises(ValueError):
        shards.run_training(ctx, task, fails, hand_off=handed.append)
    assert (row(ctx, "trainer").state, row(ctx, "trainer").attempts) == ("pending", 1)  # given back

    # the lease held by another trainer: step aside
    assert shards.claim_training(ctx.sessions, 1, 1, lease_seconds=60)
    shards.run_training(ctx, task, lambda: pytest.fail("trained twice"), hand_off=handed.append)
    assert handed == []
    shards.release_training(ctx.sessions, 1, 1, "pending")

    def trains() -> int:
        shards.release_training(ctx.sessions, 1, 1, "done")
        with ctx.sessions.begin() as s:  # what on_trained records
            s.scalar(select(Iteration)).output_checkpoint_id = 1
        return 1

    shards.run_training(ctx, task, trains, hand_off=handed.append)
    shards.run_training(ctx, task, lambda: pytest.fail("trained twice"), hand_off=handed.append)  # redelivered
    assert handed == [1, 1] and row(ctx, "trainer").attempts == 3


def test_planned_shards_get_their_rows_and_stray_rows_go(ctx):
    with ctx.sessions.begin() as s:
        s.add(
            Shard(
                run_id=1,
                iteration=1,
                stage="evaluator",
                index=0,
                input_key="evaluator:iteration1",
                attempts=1,
                state="pending",
                error="made by a failure report",
            )
        )
        s.add(Shard(run_id=1, iteration=1, stage="evaluator", index=1, input_key="b", state="done"))
        s.add(Shard(run_id=1, iteration=1, stage="evaluator", index=7, input_key="stray", state="pending"))
        s.add(Shard(run_id=1, iteration=1, stage="filter", index=7, input_key="another stage's", state="pending"))
    with ctx.sessions.begin() as s:
        done = shards.plan_shards(s, "evaluator", 1, 1, {0: "a", 1: "b", 2: "c"})
    assert done == {1}
    with ctx.sessions() as s:
        rows = {(r.stage, r.index): (r.input_key, r.state, r.attempts) for r in s.scalars(select(Shard))}
    assert rows == {
        ("evaluator", 0): ("a", "pending", 1),
        ("evaluator", 1): ("b", "done", 0),
        ("evaluator", 2): ("c", "pending", 0),
        ("filter", 7): ("another stage's", "pending", 0),
    }
