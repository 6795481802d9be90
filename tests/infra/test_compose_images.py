"""The local images of `make compose-test` (scripts/compose_images.py) cover the whole stack:
every service the test starts gets its image from a variable that a local build sets, and the
stand-ins read the same environment as the upstream images. No Docker engine needed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import compose_images  # noqa: E402

VARIABLE = re.compile(r"^\$\{([A-Z_]+):-[^}]+\}$")


def services(*names: str) -> dict:
    merged: dict = {}
    for name in names:
        text = (REPO / name).read_text().replace("!reset", "")
        for service, svc in (yaml.safe_load(text).get("services") or {}).items():
            merged.setdefault(service, {}).update(svc or {})
    return merged


def test_every_service_the_test_starts_has_a_local_image():
    stack = services("docker-compose.yml", "docker-compose.cpu.yml", "infra/compose-test/docker-compose.test.yml")
    for name, svc in stack.items():
        if "grafana" in (svc.get("profiles") or []):
            continue  # left out by the test (no Grafana package reachable)
        match = VARIABLE.match(svc["image"])
        assert match, f"{name}: image {svc['image']!r} is not chosen by a variable"
        assert match.group(1) in compose_images.IMAGE_VARIABLES, f"{name}: nothing builds {match.group(1)}"


def test_each_standin_has_its_dockerfile_and_scripts():
    for name in set(compose_images.IMAGE_VARIABLES.values()) - {"selfjudge"}:
        dockerfile = compose_images.STANDINS / f"{name}.Dockerfile"
        text = dockerfile.read_text()
        assert "FROM ${DEBIAN_IMAGE}" in text, name
        for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
            if source.endswith(".sh"):
                assert (compose_images.STANDINS / source).is_file(), f"{name}: {source} missing"


def test_standins_read_the_upstream_environment():
    compose = services("docker-compose.yml")
    scripts = {
        "postgres": "postgres-entrypoint.sh",
        "rabbitmq": "rabbitmq-entrypoint.sh",
        "minio": "minio-entrypoint.sh",
    }
    for service, script in scripts.items():
        text = (compose_images.STANDINS / script).read_text()
        for variable in compose[service]["environment"]:
            assert variable in text, f"{script} ignores {variable}, which compose passes to {service}"


def test_tags_change_with_their_inputs():
    assert compose_images.digest("a", "b") == compose_images.digest("a", "b")
    assert compose_images.digest("a", "b") != compose_images.digest("ab")
    assert compose_images.digest("a", "b") != compose_images.digest("a", "c")
