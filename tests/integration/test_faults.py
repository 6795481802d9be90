"""Faults on the real servers: workers SIGKILLed mid-shard, RabbitMQ/Postgres/S3 restarted mid-run,
a task that keeps failing (dead letter, then retried by command), pickle on the wire.

Every faulty run is compared with the undisturbed reference run (same seed, same settings):
iteration 1 must end with exactly the same pairs, judgments and examples, and no duplicates.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from selfjudge.shared.db import EvalResult, Iteration, Judgment, Pair, Prompt, Run, Shard, TrainingExample
from selfjudge.shared.messages import STAGES

CLI = [sys.executable, "-m", "selfjudge.cli"]


def snapshot(sessions, name: str, iteration: int = 1) -> dict:
    """What iteration `iteration` of run `name` produced, in a form comparable across runs."""
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == name))
        assert run is not None and run.status == "done", f"run {name} did not finish"
        pairs = s.execute(
            select(Prompt.source_id, Pair.preferred, Pair.rejected, Pair.method)
            .join(Pair, Pair.prompt_id == Prompt.id)
            .where(Pair.run_id == run.id, Pair.iteration == iteration)
            .order_by(Prompt.source_id)
        ).all()
        judgments = s.execute(
            select(Prompt.source_id, Judgment.order, Judgment.sample, Judgment.output)
            .join(Pair, Pair.id == Judgment.pair_id)
            .join(Prompt, Prompt.id == Pair.prompt_id)
            .where(Judgment.run_id == run.id, Judgment.iteration == iteration)
            .order_by(Prompt.source_id, Judgment.order, Judgment.sample)
        ).all()
        examples = s.scalar(
            select(func.count())
            .select_from(TrainingExample)
            .where(TrainingExample.run_id == run.id, TrainingExample.iteration == iteration)
        )
        evals = s.scalar(
            select(func.count())
            .select_from(EvalResult)
            .where(EvalResult.run_id == run.id, EvalResult.iteration == iteration)
        )
        shards = {
            (sh.stage, sh.index): sh.attempts
            for sh in s.scalars(select(Shard).where(Shard.run_id == run.id, Shard.iteration == iteration))
        }
        trained = (
            s.scalar(
                select(Iteration.output_checkpoint_id).where(Iteration.run_id == run.id, Iteration.number == iteration)
            )
            is not None
        )
    return {
        "pairs": [tuple(p) for p in pairs],
        "judgments": [tuple(j) for j in judgments],
        "examples": examples,
        "evals": evals,
        "shards": shards,
        "trained": trained,
    }


def assert_same_outcome(faulty: dict, reference: dict) -> None:
    assert faulty["pairs"] == reference["pairs"]
    assert faulty["judgments"] == reference["judgments"]
    assert faulty["examples"] == reference["examples"] and faulty["evals"] == reference["evals"]
    assert faulty["trained"] and reference["trained"]


def test_sigkill_of_every_stage_mid_shard_loses_nothing(cluster_factory, distributed_run, tmp_path):
    markers = {stage: tmp_path / f"{stage}.killed" for stage in STAGES}
    failpoints = ",".join(f"{stage}.before_commit=kill:{markers[stage]}" for stage in STAGES)
    cluster = cluster_factory("it-sigkill", iterations=1, SELFJUDGE_FAILPOINTS=failpoints)
    cluster.wait(cluster.launch())
    cluster.stop()
    for stage in STAGES:
        assert markers[stage].exists(), f"the {stage} failpoint never fired"
        assert cluster.restarts[stage] >= 1, f"the {stage} worker was not killed"
    sessions = distributed_run["sessions"]
    faulty, reference = snapshot(sessions, "it-sigkill"), snapshot(sessions, "it-distributed")
    assert_same_outcome(faulty, reference)
    assert faulty["shards"][("synthesizer", 0)] == 2  # killed once, redelivered, finished
    assert faulty["shards"][("trainer", 0)] >= 2


def test_broker_database_and_store_restarts_mid_run(cluster_factory, distributed_run, s3_server, postgres_url):
    """RabbitMQ and Postgres restart; then the store stays down until the workers have waited
    out its absence at least twice. With max_retries 1, two counted failures would dead-letter
    the task: an outage must be waited out without using up the retries."""
    from selfjudge.shared.db import make_sessionmaker

    sessions = make_sessionmaker(postgres_url)
    cluster = cluster_factory(
        "it-restarts", iterations=1, SELFJUDGE__RUN__MAX_RETRIES="1", SELFJUDGE__STORE__RETRIES="1"
    )  # the store's own retries give up sooner
    done: list[str] = []
    store_down_at: list[float] = []

    def progress(stage: str) -> int | None:
        try:
            with sessions() as s:
                return (
                    s.scalar(
                        select(func.count())
                        .select_from(Shard)
                        .join(Run, Run.id == Shard.run_id)
                        .where(Run.name == "it-restarts", Shard.stage == stage, Shard.state == "done")
                    )
                    or 0
                )
        except Exception:  # noqa: BLE001 - the database itself may be restarting; ask again next tick
            sessions.kw["bind"].dispose()
            return None

    def outages_waited() -> int:
        return sum(text.count("a server is unreachable") for text in cluster.log_texts())

    def inject(elapsed: float) -> None:
        if not done and (progress("synthesizer") or 0) >= 1:
            done.append("rabbitmq")
            subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        elif done == ["rabbitmq"] and (progress("reasoner") or 0) >= 1:
            done.append("postgres")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", pg_version(), "main", "restart"],
                check=True,
                capture_output=True,
                timeout=120,
            )
        elif done == ["rabbitmq", "postgres"] and (progress("filter") or 0) >= 1:
            done.append("s3 down")
            s3_server.stop()
            store_down_at.append(time.monotonic())
        elif done[-1:] == ["s3 down"] and (outages_waited() >= 2 or time.monotonic() - store_down_at[0] > 240):
            done.append("s3 up")
            s3_server.start()

    cluster.wait(cluster.launch(), during=inject)
    cluster.stop()
    assert done == ["rabbitmq", "postgres", "s3 down", "s3 up"]
    assert outages_waited() >= 2, "no worker met the store's absence; the test proves nothing"
    status = json.loads(
        subprocess.run(
            [*CLI, "status", "--json", "--run", str(_run_id(sessions, "it-restarts"))],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    assert status["dead_letters"] == []
    assert_same_outcome(snapshot(sessions, "it-restarts"), snapshot(distributed_run["sessions"], "it-distributed"))


def _run_id(sessions, name: str) -> int:
    with sessions() as s:
        return s.scalar(select(Run.id).where(Run.name == name))


def pg_version() -> str:
    import os

    return sorted(os.listdir("/etc/postgresql"))[-1]


def test_failing_task_is_dead_lettered_shown_and_retried(cluster_factory, distributed_run):
    cluster = cluster_factory("it-deadletter", iterations=1, start=False, SELFJUDGE__RUN__MAX_RETRIES="1")
    for stage in STAGES:
        if stage != "reasoner":
            cluster.start_worker(stage)
    cluster.start_worker("reasoner", SELFJUDGE_FAILPOINTS="reasoner.before_commit=raise")
    launcher = cluster.launch()
    sessions = distributed_run["sessions"]
    deadline = time.monotonic() + 300
    status = {}
    while time.monotonic() < deadline:
        status = json.loads(
            subprocess.run(
                [*CLI, "status", "--json"], env=cluster.env, capture_output=True, text=True, timeout=60, check=True
            ).stdout
        )
        it1 = [r for r in status["iterations"] if r["iteration"] == 1]
        failed = [f for f in (it1[0]["failures"] if it1 else []) if f["state"] == "failed"]
        if len(failed) == 2 and len(status.get("dead_letters", [])) == 2:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the reasoner's failures never showed: {status}\n{cluster.logs()}")
    assert all("FailpointError" in f["error"] and f["attempts"] == 2 for f in failed)
    assert {letter["stage"] for letter in status["dead_letters"]} == {"reasoner"}
    rows = {r["iteration"]: r for r in status["iterations"]}
    assert rows[0]["status"] == "done"  # the rest of the run went on
    assert rows[1]["shards"].get("synthesizer:done") == 2
    table = subprocess.run([*CLI, "status"], env=cluster.env, capture_output=True, text=True, timeout=60).stdout
    assert "dead letter: reasoner" in table and "FailpointError" in table

    # fix the cause (a healthy reasoner) and retry by command
    cluster.workers["reasoner"].terminate()
    cluster.workers["reasoner"].wait(30)
    cluster.start_worker("reasoner")
    retry = subprocess.run(
        [*CLI, "retry", "--run", str(status["run"]["id"])], env=cluster.env, capture_output=True, text=True, timeout=120
    )
    assert retry.returncode == 0 and "2 dead-lettered tasks cleared" in retry.stdout, retry.stderr[-2000:]
    cluster.wait(launcher)
    cluster.stop()
    assert_same_outcome(snapshot(sessions, "it-deadletter"), snapshot(sessions, "it-distributed"))
    after = json.loads(
        subprocess.run(
            [*CLI, "status", "--json"], env=cluster.env, capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    assert after["dead_letters"] == []


def test_stop_everything_and_resume(cluster_factory, distributed_run):
    sessions = distributed_run["sessions"]
    cluster = cluster_factory("it-resume", iterations=1)
    launcher = cluster.launch()

    def reasoned_once() -> bool:
        with sessions() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Shard)
                    .join(Run, Run.id == Shard.run_id)
                    .where(Run.name == "it-resume", Shard.stage == "reasoner", Shard.state == "done")
                )
                or 0
            ) >= 1

    deadline = time.monotonic() + 300
    while not reasoned_once():
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    # stop everything: launcher and every worker, without warning
    launcher.kill()
    for proc in cluster.workers.values():
        proc.kill()
    for proc in cluster.workers.values():
        proc.wait(10)
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == "it-resume"))
        before = {
            (sh.iteration, sh.stage, sh.index): (sh.attempts, sh.updated_at)
            for sh in s.scalars(select(Shard).where(Shard.run_id == run.id, Shard.state == "done"))
        }
        run_id = run.id
    cluster.start()
    cluster.wait(cluster.launch("--resume", str(run_id)))
    cluster.stop()
    assert_same_outcome(snapshot(sessions, "it-resume"), snapshot(sessions, "it-distributed"))
    with sessions() as s:
        after = {
            (sh.iteration, sh.stage, sh.index): (sh.attempts, sh.updated_at)
            for sh in s.scalars(select(Shard).where(Shard.run_id == run_id))
        }
    for key, value in before.items():
        assert after[key] == value, f"finished shard {key} was redone"


def test_pickle_is_refused_on_the_wire(cluster_factory, distributed_run):
    """A pickled message never runs: the worker refuses it, keeps going, and nothing is written."""
    from kombu import Connection

    cluster = cluster_factory("it-pickle", iterations=1, start=False)
    cluster.start_worker("filter")
    with Connection(cluster.env["SELFJUDGE__BROKER__URL"]) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            [[{"run_id": 999999, "iteration": 1, "index": 0, "input_key": "x", "judge_checkpoint_id": 1}], {}, {}],
            exchange="selfjudge",
            routing_key="filter",
            headers={"task": "selfjudge.filter", "id": "pickled-1", "lang": "py"},
        )
    log = cluster.root / "filter.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "ContentDisallowed" in text or "Refusing to deserialize" in text:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the pickled message was not refused:\n{cluster.logs()}")
    assert cluster.workers["filter"].poll() is None  # still running
    with distributed_run["sessions"]() as s:
        assert s.scalar(select(func.count()).select_from(Shard).where(Shard.run_id == 999999)) == 0
    cluster.stop()


def test_training_longer_than_consumer_timeout_runs_once(cluster_factory, distributed_run, rabbit_url):
    """RabbitMQ closes a channel holding a delivery unacked past consumer_timeout (checked about once a
    minute). With the timeout at 2 s, a late-acking consumer is cut off, but a 70 s training is neither
    killed nor run twice: the trainer acks on receipt and holds a database lease instead."""
    from kombu import Connection, Exchange, Queue

    def set_timeout(ms: int) -> None:
        subprocess.run(
            ["rabbitmqctl", "eval", f"application:set_env(rabbit, consumer_timeout, {ms})."],
            check=True,
            capture_output=True,
            timeout=60,
        )

    set_timeout(2000)
    try:
        cluster = cluster_factory(
            "it-longtrain", iterations=1, start=False, SELFJUDGE__RUN__TRAIN_LEASE_SECONDS="600"
        )  # the sleep renews no lease
        for stage in STAGES:
            cluster.start_worker(
                stage, **({"SELFJUDGE_FAILPOINTS": "trainer.start=sleep:70"} if stage == "trainer" else {})
            )
        # the control: a consumer that holds its delivery unacked is cut off by the broker
        probe = Queue("consumer-timeout-probe", Exchange("probe", type="direct"), routing_key="p")
        with Connection(rabbit_url, heartbeat=0) as conn:
            conn.Producer().publish({"probe": 1}, exchange=probe.exchange, routing_key="p", declare=[probe])
            consumer = conn.Consumer(probe, callbacks=[lambda body, message: None])
            consumer.qos(prefetch_count=1)
            consumer.consume()
            launcher = cluster.launch()
            cut_off = None
            start = time.monotonic()
            while cut_off is None and time.monotonic() - start < 150:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
                except Exception as exc:  # noqa: BLE001 - PreconditionFailed: the broker closed the channel
                    cut_off = exc
                cluster.supervise()
            assert cut_off is not None and "timed out" in str(cut_off)
        cluster.wait(launcher)
        cluster.stop()
    finally:
        set_timeout(1800000)
    sessions = distributed_run["sessions"]
    faulty = snapshot(sessions, "it-longtrain")
    assert_same_outcome(faulty, snapshot(sessions, "it-distributed"))
    assert faulty["shards"][("trainer", 0)] == 1  # trained exactly once
    log = (cluster.root / "trainer.log").read_text()
    trained = re.findall(r"trainer: run \d+ iter \d+: \d+ examples \(\d+ dropped\), \d+ steps", log)
    assert len(trained) == 1 and "Connection to broker lost" not in log
