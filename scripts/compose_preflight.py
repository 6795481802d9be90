"""Check a compose deployment before anything starts; one line per problem, naming the fix.

    python scripts/compose_preflight.py [--env-file .env] [-f docker-compose.yml ...]
                                        [--project NAME] [--checks env,ports,engine]

  env      every ${VAR:?...} the compose files require has a non-empty value (the environment
           or the env file; compose reads both, the environment wins)
  ports    every port the stack publishes on 127.0.0.1 is free (ports held by this project's
           own running containers count as free: `up` again is fine)
  engine   a Docker engine answers, and the CLI has the compose plugin

Exit status 0 when all pass, 1 otherwise. `make compose-test` runs it first; users can run it
before `docker compose up`.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
REQUIRED = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")
PORT_SPEC = re.compile(r"^127\.0\.0\.1:(?:\$\{([A-Z0-9_]+):-(\d+)\}|(\d+)):\d+$")


class _ComposeLoader(yaml.SafeLoader):
    """Reads compose files with their merge tags (`!reset`, `!override`)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
_ComposeLoader.add_multi_constructor(
    "!",
    lambda loader, suffix, node: (
        loader.construct_mapping(node)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node)
        if isinstance(node, yaml.SequenceNode)
        else loader.construct_scalar(node)
    ),
)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments, blanks and `export ` skipped; one level of quotes removed)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def check_env(files: list[Path], env_file: Path, environ: dict[str, str]) -> list[str]:
    if not env_file.is_file() and not all(environ.get(v) for f in files for v in REQUIRED.findall(f.read_text())):
        return [f"{env_file} does not exist: run `cp .env.example {env_file.name}` and replace every change-me value"]
    values = {**(read_env_file(env_file) if env_file.is_file() else {}), **environ}
    required = sorted({var for f in files for var in REQUIRED.findall(f.read_text())})
    return [
        f"{var} is not set: add {var}=<value> to {env_file} (see .env.example)"
        for var in required
        if not values.get(var)
    ]


def published_ports(files: list[Path], values: dict[str, str]) -> list[tuple[str, int, str]]:
    """(service, host port, the variable that sets it) of every active service's published port."""
    profiles = {p for p in values.get("COMPOSE_PROFILES", "").split(",") if p}
    services: dict[str, dict] = {}
    for file in files:
        for name, svc in (yaml.load(file.read_text(), Loader=_ComposeLoader).get("services") or {}).items():
            services.setdefault(name, {}).update(svc or {})
    found = []
    for name, svc in services.items():
        if svc.get("profiles") and not profiles & set(svc["profiles"]):
            continue
        for spec in svc.get("ports") or []:
            match = PORT_SPEC.match(str(spec))
            if not match:
                continue
            variable, default, fixed = match.groups()
            port = int(values.get(variable) or default) if variable else int(fixed)
            found.append((name, port, variable or ""))
    return found


def ports_of_project(project: str) -> set[int]:
    """Host ports published by this compose project's running containers (free for `up` again)."""
    run = subprocess.run(
        ["docker", "ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Ports}}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)->", run.stdout)} if run.returncode == 0 else set()


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(files: list[Path], env_file: Path, environ: dict[str, str], project: str) -> list[str]:
    values = {**(read_env_file(env_file) if env_file.is_file() else {}), **environ}
    ours: set[int] | None = None
    problems = []
    for service, port, variable in published_ports(files, values):
        if port_free(port):
            continue
        if ours is None:
            ours = ports_of_project(project) if engine_problem() is None else set()
        if port in ours:
            continue
        fix = f"set {variable}=<a free port> in {env_file}" if variable else "free it"
        problems.append(f"port 127.0.0.1:{port} ({service}) is in use: stop what listens there or {fix}")
    return problems


def engine_problem() -> str | None:
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20
        )
    except FileNotFoundError:
        return "no docker CLI: install Docker (`scripts/docker-engine.sh install` on Debian, as root)"
    except subprocess.TimeoutExpired:
        return f"the Docker engine at {where} did not answer in 20 s: restart it, or set DOCKER_HOST"
    if info.returncode != 0:
        return (
            f"no Docker engine answers at {where}: start one (`scripts/docker-engine.sh start` as root, "
            "or `systemctl start docker`) or set DOCKER_HOST to a running engine"
        )
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=20)
    if compose.returncode != 0:
        return "the docker CLI has no compose plugin: install it (`bash scripts/install-tools.sh`)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=REPO / ".env")
    parser.add_argument("-f", "--file", dest="files", type=Path, action="append")
    parser.add_argument("--project", default="selfjudge", help="compose project name (for ports it holds)")
    parser.add_argument("--checks", default="env,ports,engine")
    args = parser.parse_args(argv)
    files = args.files or [REPO / "docker-compose.yml"]
    checks = set(args.checks.split(","))
    environ = dict(os.environ)
    problems: list[str] = []
    if "env" in checks:
        problems += check_env(files, args.env_file, environ)
    if "ports" in checks:
        problems += check_ports(files, args.env_file, environ, args.project)
    if "engine" in checks and (problem := engine_problem()):
        problems.append(problem)
    for problem in problems:
        print(f"compose-preflight: {problem}", file=sys.stderr)
    if not problems:
        print(f"compose-preflight: ok ({', '.join(sorted(checks))})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
