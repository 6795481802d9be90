"""Any selfjudge process may start at the same instant as any number of others, against fresh servers.

`docker compose up` starts the launcher and every worker together; so does the test cluster. Each
trial here makes fresh servers (a new bucket, a new database, a new RabbitMQ vhost), starts N
processes that import everything first and then wait at one barrier (a file appearing), releases them
together, and checks that every one came up: opening the S3 store (bucket creation), migrating the
schema (which must end at head, upgraded by exactly one process), and starting a worker (queue,
exchange and dead-letter declarations).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from selfjudge.shared.config import StoreConfig, load_settings
from selfjudge.shared.queue import make_celery, queue_depths
from selfjudge.shared.store import S3Store

from ..conftest import RABBIT_HOST, wait_port

N = 12
TRIALS = 3
log = logging.getLogger(__name__)

# Runs in each of the N processes: import what the action needs, say "ready", wait for the barrier
# file, then act. argv: barrier-file ready-file action json-argument.
BARRIER = r"""
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
barrier, ready, action, arg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if action == "store":
    from selfjudge.shared.config import StoreConfig
    from selfjudge.shared.store import S3Store
    run = lambda: S3Store(StoreConfig(**arg))
elif action == "migrate":
    import alembic.command
    from selfjudge.shared.db import migrate
    run = lambda: migrate(arg)
else:
    os.environ.update(arg)
    from selfjudge import cli
    import selfjudge.services.filter.stage, selfjudge.shared.context, celery.apps.worker
    run = lambda: sys.exit(cli.main(["worker", "filter"]))
open(ready, "w").close()
while not os.path.exists(barrier):
    time.sleep(0.001)
run()
"""


def start_at_barrier(root: Path, action: str, args: list, env: dict | None = None) -> list[subprocess.Popen]:
    """Start one process per argument, wait until all are ready, then release them at one instant."""
    root.mkdir(parents=True)
    procs = []
    for i, arg in enumerate(args):
        out = open(root / f"{i}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BARRIER, str(root / "go"), str(root / f"{i}.ready"), action, json.dumps(arg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env or os.environ.copy(),
            )
        )
        out.close()
    deadline = time.monotonic() + 120
    while sum((root / f"{i}.ready").exists() for i in range(len(args))) < len(args):
        failed = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert not failed, f"process {failed[0]} exited before the barrier:\n{(root / f'{failed[0]}.log').read_text()}"
        assert time.monotonic() < deadline, "the processes did not all reach the barrier in 120 s"
        time.sleep(0.05)
    (root / "go").touch()
    return procs


def finish(root: Path, procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    """Wait for every process; each must exit 0. Returns their outputs."""
    for i, proc in enumerate(procs):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output = (root / f"{i}.log").read_text()
        assert proc.returncode == 0, f"process {i} of {len(procs)} failed (exit {proc.returncode}):\n{output[-3000:]}"
    return [(root / f"{i}.log").read_text() for i in range(len(procs))]


@pytest.fixture
def fresh_vhost():
    """make() -> the URL of a new, empty RabbitMQ vhost; all are deleted at the end."""
    vhosts: list[str] = []

    def make() -> str:
        vhosts.append(f"selfjudge_race_{uuid.uuid4().hex[:8]}")
        subprocess.run(["rabbitmqctl", "add_vhost", vhosts[-1]], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhosts[-1], "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        return f"amqp://{RABBIT_HOST}/{vhosts[-1]}"

    yield make
    for vhost in vhosts:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def head_revision() -> str:
    import selfjudge.shared.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_many_processes_create_one_bucket(trial, s3_server, tmp_path):
    config = dict(s3_server.config, bucket=f"race-{uuid.uuid4().hex[:10]}")
    procs = start_at_barrier(tmp_path / "store", "store", [config] * N)
    finish(tmp_path / "store", procs)
    store = S3Store(StoreConfig(**config))
    assert store.client.bucket_exists(config["bucket"])
    store.put_bytes("after/race.txt", b"usable")
    assert store.get_bytes("after/race.txt") == b"usable"


@pytest.mark.parametrize("trial", range(TRIALS))
def test_many_processes_migrate_once(trial, fresh_database, tmp_path):
    url = fresh_database("selfjudge_race")
    procs = start_at_barrier(tmp_path / "migrate", "migrate", [url] * N)
    outputs = finish(tmp_path / "migrate", procs)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert versions == [head_revision()]
    upgraded = [i for i, out in enumerate(outputs) if "Running upgrade" in out]
    assert len(upgraded) == 1, f"the schema was upgraded by processes {upgraded}, not by exactly one"


def test_many_sqlite_migrations_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'selfjudge.db'}"
    outputs = finish(tmp_path / "migrate", start_at_barrier(tmp_path / "migrate", "migrate", [url] * N))
    assert sum("Running upgrade" in out for out in outputs) == 1


@pytest.mark.parametrize("trial", range(TRIALS))
def test_many_workers_start_at_once(trial, fresh_database, fresh_vhost, s3_server, tmp_path, free_port):
    """N workers against a fresh vhost, database and bucket: all declare their queues and consume."""
    from selfjudge.shared.db import migrate

    database, broker = fresh_database("selfjudge_race"), fresh_vhost()
    migrate(database)  # the launcher's job (compose: the one-shot `migrate` service)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFJUDGE")}
    env.update(
        {
            "SELFJUDGE__DATABASE__URL": database,
            "SELFJUDGE__BROKER__URL": broker,
            "SELFJUDGE__STORE__KIND": "s3",
            "SELFJUDGE__STORE__ENDPOINT": s3_server.config["endpoint"],
            "SELFJUDGE__STORE__ACCESS_KEY": s3_server.config["access_key"],
            "SELFJUDGE__STORE__SECRET_KEY": s3_server.config["secret_key"],
            "SELFJUDGE__STORE__BUCKET": f"race-{uuid.uuid4().hex[:10]}",
            "SELFJUDGE__RUN__WORK_DIR": str(tmp_path / "work"),
        }
    )
    ports = [free_port() for _ in range(N)]
    procs = start_at_barrier(
        tmp_path / "workers", "worker", [{"SELFJUDGE__METRICS__PORT": str(p)} for p in ports], env=env
    )
    try:
        for port, proc in zip(ports, procs):
            wait_port(port, timeout=120, proc=proc)
        app = make_celery(load_settings(environ=env))
        deadline = time.monotonic() + 120
        while (consumers := queue_depths(app)["filter"]["consumers"]) < N:
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            assert not dead, (
                f"worker {dead[0]} exited:\n{(tmp_path / 'workers' / f'{dead[0]}.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"{consumers} of {N} workers consume after 120 s"
            time.sleep(0.2)
        with app.connection_for_write() as conn:  # the dead-letter queue exists (passive: not created here)
            conn.default_channel.queue_declare("selfjudge.dead", passive=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
