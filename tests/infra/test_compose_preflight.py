"""scripts/compose_preflight.py: bad configuration gets one clear line naming the fix, before
anything starts. Runs the script as users do (a subprocess); needs no Docker engine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "compose_preflight.py"
PORT_VARIABLES = [
    "POSTGRES_PORT",
    "RABBITMQ_PORT",
    "RABBITMQ_MANAGEMENT_PORT",
    "MINIO_API_PORT",
    "MINIO_CONSOLE_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_file(tmp_path: Path, drop: str = "", **overrides: str) -> Path:
    """.env.example with free ports, `drop` removed and `overrides` applied."""
    lines = [
        line for line in (REPO / ".env.example").read_text().splitlines() if not (drop and line.startswith(drop + "="))
    ]
    values = {var: str(free_port()) for var in PORT_VARIABLES} | overrides
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines + [f"{k}={v}" for k, v in values.items()]) + "\n")
    return path


def preflight(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")} | env
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=clean)


def problems(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("compose-preflight:")]


def test_a_complete_env_file_with_free_ports_passes(tmp_path):
    done = preflight("--env-file", str(env_file(tmp_path)), "--checks", "env,ports")
    assert done.returncode == 0, done.stderr
    assert "compose-preflight: ok" in done.stdout


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "SELFJUDGE_S3_SECRET_KEY", "RABBITMQ_USER"])
def test_a_missing_env_value_is_one_line_naming_it(tmp_path, variable):
    path = env_file(tmp_path, drop=variable)
    done = preflight("--env-file", str(path), "--checks", "env,ports")
    assert done.returncode == 1
    (line,) = problems(done)
    assert f"{variable} is not set: add {variable}=<value> to {path}" in line


def test_an_empty_value_counts_as_missing(tmp_path):
    done = preflight("--env-file", str(env_file(tmp_path, POSTGRES_PASSWORD="")), "--checks", "env")
    assert done.returncode == 1 and "POSTGRES_PASSWORD is not set" in problems(done)[0]


def test_no_env_file_says_how_to_make_one(tmp_path):
    done = preflight("--env-file", str(tmp_path / ".env"), "--checks", "env")
    assert done.returncode == 1
    (line,) = problems(done)
    assert "does not exist" in line and "cp .env.example .env" in line


def test_a_port_in_use_names_the_service_and_the_variable(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = env_file(tmp_path, POSTGRES_PORT=str(port))
        done = preflight("--env-file", str(path), "--checks", "ports", DOCKER_HOST="unix:///nonexistent.sock")
    assert done.returncode == 1
    (line,) = problems(done)
    assert (
        f"port 127.0.0.1:{port} (postgres) is in use" in line and f"set POSTGRES_PORT=<a free port> in {path}" in line
    )


def test_grafana_port_counts_only_with_its_profile(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        without = preflight(
            "--env-file",
            str(env_file(tmp_path, GRAFANA_PORT=port, COMPOSE_PROFILES="")),
            "--checks",
            "ports",
            DOCKER_HOST="unix:///nonexistent.sock",
        )
        with_profile = preflight(
            "--env-file",
            str(env_file(tmp_path, GRAFANA_PORT=port, COMPOSE_PROFILES="grafana")),
            "--checks",
            "ports",
            DOCKER_HOST="unix:///nonexistent.sock",
        )
    assert without.returncode == 0, without.stderr
    assert with_profile.returncode == 1 and "(grafana) is in use" in problems(with_profile)[0]


def test_an_unreachable_engine_is_one_line_naming_the_fix(tmp_path):
    done = preflight("--checks", "engine", DOCKER_HOST="unix:///nonexistent.sock")
    assert done.returncode == 1
    (line,) = problems(done)
    if shutil.which("docker") is None:
        assert "no docker CLI: install Docker (`scripts/docker-engine.sh install`" in line
    else:
        assert "no Docker engine answers at unix:///nonexistent.sock" in line
        assert "scripts/docker-engine.sh start" in line and "DOCKER_HOST" in line
