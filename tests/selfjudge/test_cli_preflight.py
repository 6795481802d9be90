"""Config errors fail at start with one clear message, not a traceback deep in a worker."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "selfjudge.cli"]


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SELFJUDGE")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=dict(base, **env))


def test_unknown_key_and_wrong_type(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 1\nrun:\n  iterations: many\n")
    result = run("run", "--config", str(bad))
    assert result.returncode == 2
    assert "invalid config" in result.stderr and "train.lrr" in result.stderr and "run.iterations" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_servers_are_named_with_secrets_masked(tmp_path):
    result = run(
        "worker",
        "filter",
        SELFJUDGE__BROKER__URL="amqp://guest:sup3rsecret@127.0.0.1:1//",
        SELFJUDGE__DATABASE__URL="postgresql+psycopg://u:dbsecret@127.0.0.1:1/x",
        SELFJUDGE__RUN__WORK_DIR=str(tmp_path),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot start" in result.stderr and "database" in result.stderr and "broker" in result.stderr
    assert "sup3rsecret" not in result.stderr and "dbsecret" not in result.stderr


def test_missing_checkpoint_folder(tmp_path):
    result = run("run", SELFJUDGE__MODEL__BASE=str(tmp_path / "no-such-model"), SELFJUDGE__RUN__WORK_DIR=str(tmp_path))
    assert result.returncode == 2 and "is not a checkpoint folder" in result.stderr


def test_worker_refuses_embedded_settings(tmp_path):
    result = run("worker", "reasoner", SELFJUDGE__RUN__WORK_DIR=str(tmp_path))
    assert result.returncode == 2 and "needs broker.url" in result.stderr
