"""A small cluster for integration tests: separate worker processes per stage over the real
RabbitMQ, Postgres and S3 servers, supervised (a dead worker is restarted, as compose would)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from selfjudge.shared.messages import STAGES

from ..conftest import TINY_LOOP

CLI = [sys.executable, "-m", "selfjudge.cli"]


def loop_env(
    name: str,
    postgres_url: str,
    rabbit_url: str,
    s3: dict,
    base: Path,
    work_dir: Path,
    iterations: int = 2,
    **extra: str,
) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFJUDGE")}
    env.update(
        {
            f"SELFJUDGE__{section.upper()}__{key.upper()}": str(value)
            for section, values in TINY_LOOP.items()
            for key, value in values.items()
        }
    )
    env.update(
        {
            "SELFJUDGE__RUN__NAME": name,
            "SELFJUDGE__RUN__ITERATIONS": str(iterations),
            "SELFJUDGE__RUN__WORK_DIR": str(work_dir),
            "SELFJUDGE__DATABASE__URL": postgres_url,
            "SELFJUDGE__BROKER__URL": rabbit_url,
            "SELFJUDGE__STORE__KIND": "s3",
            "SELFJUDGE__STORE__ENDPOINT": s3["endpoint"],
            "SELFJUDGE__STORE__BUCKET": s3["bucket"],
            "SELFJUDGE__STORE__ACCESS_KEY": s3["access_key"],
            "SELFJUDGE__STORE__SECRET_KEY": s3["secret_key"],
            "SELFJUDGE__MODEL__BASE": str(base),
            "SELFJUDGE__MODEL__CPU_THREADS": "1",  # six processes share two cores: no OpenMP oversubscription
            "SELFJUDGE__RUN__TRAIN_LEASE_SECONDS": "15",  # a killed trainer's work is re-sent soon
        }
    )
    env.update(extra)
    return env


class Prometheus:
    """A real Prometheus (Debian package) scraping the workers of a cluster and RabbitMQ."""

    def __init__(self, root: Path, port: int):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `make test` installs it (scripts/install-tools.sh)")
        self.root, self.port, self.url = root, port, f"http://127.0.0.1:{port}"
        self.targets = root / "targets.json"
        self.targets.write_text("[]")
        (root / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: selfjudge\n"
            "    file_sd_configs: [{files: [targets.json], refresh_interval: 1s}]\n"
            "  - job_name: rabbitmq\n"
            "    metrics_path: /metrics/per-object\n"
            "    static_configs: [{targets: ['127.0.0.1:15692']}]\n"
        )
        log = open(root / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready: {(self.root / 'prometheus.log').read_text()[-2000:]}")

    def set_targets(self, ports: dict[str, int]) -> None:
        self.targets.write_text(
            json.dumps(
                [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "selfjudge", "stage": stage}}
                    for stage, port in ports.items()
                ]
            )
        )

    def query(self, expr: str, at: float) -> list:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr, "time": at}, timeout=30)
        body = resp.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Cluster:
    """Five workers (one per stage) and a launcher; `supervise` restarts dead workers."""

    def __init__(self, root: Path, env: dict, free_port, prometheus: Prometheus | None = None):
        self.root, self.env, self.free_port, self.prometheus = root, env, free_port, prometheus
        self.ports: dict[str, int] = {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {stage: 0 for stage in STAGES}
        subprocess.run([*CLI, "migrate"], env=env, check=True, timeout=120, capture_output=True)

    def start_worker(self, stage: str, **extra: str) -> None:
        self.ports[stage] = self.free_port()
        env = dict(
            self.env,
            SELFJUDGE__RUN__WORK_DIR=str(self.root / stage),
            SELFJUDGE__METRICS__PORT=str(self.ports[stage]),
            **extra,
        )
        if self.prometheus is not None:
            self.prometheus.set_targets(self.ports)
        log = open(self.root / f"{stage}.log", "a")
        self.workers[stage] = subprocess.Popen([*CLI, "worker", stage], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self) -> None:
        for stage in STAGES:
            self.start_worker(stage)

    def supervise(self) -> None:
        for stage, proc in list(self.workers.items()):
            if proc.poll() is not None:
                self.restarts[stage] += 1
                self.start_worker(stage)

    def launch(self, *args: str, **extra: str) -> subprocess.Popen:
        out = open(self.root / "launcher.out", "w")
        err = open(self.root / "launcher.log", "a")
        proc = subprocess.Popen(
            [*CLI, "run", "--wait", "--timeout", "1500", "--json", *args],
            env=dict(self.env, **extra),
            stdout=out,
            stderr=err,
        )
        out.close()
        err.close()
        return proc

    def wait(self, launcher: subprocess.Popen, timeout: float = 600, during=None) -> None:
        """Supervise the workers until the launcher exits; `during(elapsed)` runs each tick (fault injection).

        `timeout` stays below pytest-timeout's, so a stuck run fails here with the workers' logs and the
        shards' states instead of a bare stack dump."""
        start = time.monotonic()
        while launcher.poll() is None:
            if time.monotonic() - start > timeout:
                launcher.kill()
                launcher.wait(10)
                pytest.fail(f"the run was not done after {timeout:.0f}s; shards: {self.shard_states()}\n{self.logs()}")
            self.supervise()
            if during is not None:
                during(time.monotonic() - start)
            time.sleep(0.2)
        if launcher.returncode != 0:
            pytest.fail(f"launcher exited {launcher.returncode}:\n{self.logs()}")

    def shard_states(self) -> dict:
        """(iteration, stage, index) -> (state, attempts) of this cluster's run, for failure messages."""
        from sqlalchemy import select

        from selfjudge.shared.db import Run, Shard, make_sessionmaker

        try:
            with make_sessionmaker(self.env["SELFJUDGE__DATABASE__URL"])() as s:
                return {
                    (sh.iteration, sh.stage, sh.index): (sh.state, sh.attempts)
                    for sh in s.scalars(
                        select(Shard)
                        .join(Run, Run.id == Shard.run_id)
                        .where(Run.name == self.env["SELFJUDGE__RUN__NAME"])
                    )
                }
        except Exception as exc:  # noqa: BLE001 - only for a failure message
            return {"unreadable": str(exc)[:200]}

    def log_texts(self) -> list[str]:
        return [path.read_text(errors="replace") for path in sorted(self.root.glob("*.log"))]

    def logs(self) -> str:
        parts = []
        for name in ("launcher", *STAGES):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text()[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def cluster_factory(postgres_url, rabbit_url, s3_server, tiny_base, tmp_path_factory, free_port):
    """make(name, **env) -> a started Cluster running run `name` on the shared servers.

    `make.clusters` lists every cluster made; `stop_clusters` stops each test's own at its end."""
    clusters: list[Cluster] = []

    def make(
        name: str, iterations: int = 2, start: bool = True, prometheus: Prometheus | None = None, **extra: str
    ) -> Cluster:
        root = tmp_path_factory.mktemp(name)
        env = loop_env(
            name,
            postgres_url,
            rabbit_url,
            dict(s3_server.config, bucket="selfjudge-it"),
            tiny_base,
            root / "launcher",
            iterations=iterations,
            **extra,
        )
        cluster = Cluster(root, env, free_port, prometheus)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    make.clusters = clusters
    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture(autouse=True)
def stop_clusters(request):
    """Workers of a test that failed midway must not live on: they share the queues with the next
    test's workers and would take its messages. Stop them, and drop what they left queued."""
    if "cluster_factory" not in request.fixturenames:
        yield
        return
    make = request.getfixturevalue("cluster_factory")
    before = len(make.clusters)
    yield
    mine = make.clusters[before:]
    for cluster in mine:
        cluster.stop()
    if mine:
        from kombu import Connection

        with Connection(mine[0].env["SELFJUDGE__BROKER__URL"]) as conn:
            for stage in STAGES:
                try:
                    conn.default_channel.queue_purge(stage)
                except Exception:  # noqa: BLE001 - a queue never declared
                    conn.close()
                    conn.connect()


@pytest.fixture(scope="session")
def distributed_run(cluster_factory, postgres_url, s3_server, tmp_path_factory, free_port):
    """The undisturbed reference run: 2 iterations through 5 worker processes, watched by Prometheus."""
    from selfjudge.shared.config import load_settings
    from selfjudge.shared.db import make_sessionmaker
    from selfjudge.shared.store import S3Store

    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), free_port())
    try:  # stopped whether the run passes or fails
        cluster = cluster_factory("it-distributed", prometheus=prometheus)
        cluster.wait(cluster.launch())
        time.sleep(3)  # let Prometheus scrape the final values before the workers go
        scraped_at = time.time()
        cluster.stop()
        settings = load_settings(environ=cluster.env)
        yield {
            "cluster": cluster,
            "root": cluster.root,
            "sessions": make_sessionmaker(postgres_url),
            "store": S3Store(settings.store),
            "settings": settings,
            "prometheus": prometheus,
            "scraped_at": scraped_at,
        }
    finally:
        prometheus.stop()
