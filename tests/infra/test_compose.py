"""Static checks of the deployment: docker-compose.yml (+ the CPU override), the image files,
RabbitMQ / Prometheus / Grafana config and the dashboards' PromQL.

No Docker engine is needed. Tools are used when present and skipped with a message when not:
  - `docker compose` (the CLI plugin) validates the compose files with `.env.example`;
  - `promtool` (Debian package `prometheus`) checks both Prometheus configs and parses every
    dashboard expression (written into a rules file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

# tests/infra is on sys.path (conftest.py)
from promql import DASHBOARD_DIR, dashboard_exprs, dashboard_panels, metric_names

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
PROM_DIR = REPO / "infra" / "prometheus"
GRAFANA_DIR = REPO / "infra" / "grafana"
RABBIT_DIR = REPO / "infra" / "rabbitmq"

STAGES = ["synthesizer", "reasoner", "filter", "trainer", "evaluator"]
GPU_STAGES = ["synthesizer", "reasoner", "trainer", "evaluator"]
SELFJUDGE_SERVICES = STAGES + ["launcher", "migrate"]
INFRA = ["rabbitmq", "postgres", "minio", "minio-init", "prometheus", "grafana"]
IMAGE = "${SELFJUDGE_IMAGE:-selfjudge:latest}"

# RabbitMQ metrics (rabbitmq_prometheus plugin) that dashboards may use. A name outside this
# list is most likely a typo; add real ones here when a dashboard needs them.
KNOWN_RABBITMQ_METRICS = {
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_messages_bytes",
    "rabbitmq_queues",
    "rabbitmq_connections",
    "rabbitmq_channels",
    "rabbitmq_consumers",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_queue_messages_delivered_ack_total",
    "rabbitmq_queue_messages_acked_total",
    "rabbitmq_queue_messages_redelivered_total",
}
PROMETHEUS_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


class ComposeLoader(yaml.SafeLoader):
    """A YAML loader that knows compose's merge tags: `!reset` (drop) and `!override` (replace)."""


def _tagged(loader, node):
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_constructor("!override", _tagged)


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _compose_cmd() -> list[str]:
    """The compose CLI, or skip with the reason."""
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not installed: compose files not validated by `docker compose config`")
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(
            "docker CLI has no compose plugin (`docker compose version` failed): "
            "compose files not validated by `docker compose config`"
        )
    return ["docker", "compose"]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`): Prometheus config not checked")
    return path


def _selfjudge_metric_names() -> set[str]:
    """Sample names selfjudge exports (counter foo_total, histogram foo_bucket/_sum/_count...)."""
    try:
        from selfjudge.shared.metrics import Metrics
    except ImportError:  # fall back to reading the file's text
        text = (REPO / "shared" / "metrics.py").read_text()
        families = re.findall(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"([a-zA-Z_:][\w:]*)"', text)
        defined = [(kind.lower(), name) for kind, name in families]
    else:
        defined = [(family.type, family.name) for family in Metrics().registry.collect()]
    names: set[str] = set()
    for kind, name in defined:
        base = name.removesuffix("_total")
        if kind == "counter":
            names |= {base + "_total", base + "_created"}
        elif kind in ("histogram", "summary"):
            names |= {base + "_bucket", base + "_sum", base + "_count", base + "_created", base}
        else:
            names.add(name)
    assert names, "no metrics found in shared/metrics.py"
    return names


# --- docker-compose.yml ----------------------------------------------------------------------


def test_every_service_is_defined(services):
    assert set(services) == set(INFRA + SELFJUDGE_SERVICES)


def test_selfjudge_services_build_the_one_image(services):
    for name in SELFJUDGE_SERVICES:
        svc = services[name]
        assert svc["image"] == IMAGE, name
        assert svc["build"]["context"] == "." and svc["build"]["dockerfile"] == "Dockerfile", name


def test_stage_commands(services):
    for stage in STAGES:
        assert services[stage]["command"] == ["worker", stage]
    launcher = services["launcher"]["command"]
    assert launcher[:3] == ["run", "--config", "/app/configs/compose.yaml"] and "--wait" in launcher
    assert services["migrate"]["command"] == ["migrate"]
    for one_shot in ("launcher", "migrate", "minio-init"):
        assert services[one_shot]["restart"] == "no", one_shot
    assert (REPO / "configs" / "compose.yaml").is_file()


IMAGE_VARIABLE = re.compile(r"^\$\{([A-Z_]+)_IMAGE:-([^}]+)\}$")


def test_infra_images_are_pinned_and_replaceable(services):
    """Each image comes from a variable (tests point them at local stand-ins) whose default is
    the pinned upstream image, so a user's `docker compose up` pulls what it always did."""
    defaults = {}
    for name in INFRA:
        match = IMAGE_VARIABLE.match(services[name]["image"])
        assert match, f"{name}: image should be ${{<NAME>_IMAGE:-upstream:tag}}, not {services[name]['image']}"
        image = defaults[name] = match.group(2)
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin a version, not {image}"
    assert defaults["postgres"].startswith("postgres:16")
    assert defaults["rabbitmq"].startswith("rabbitmq:")
    assert defaults["prometheus"].startswith("prom/prometheus:")
    assert defaults["grafana"].startswith("grafana/grafana:")


def test_grafana_is_a_profile_that_env_example_turns_on(services):
    assert services["grafana"]["profiles"] == ["grafana"]
    assert not any(services[name].get("profiles") for name in services if name != "grafana")
    assert "COMPOSE_PROFILES=grafana" in ENV_EXAMPLE.read_text().splitlines()


def test_published_ports_bind_loopback_only(services):
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port!r}"
    for name in SELFJUDGE_SERVICES:  # worker metrics stay inside the compose network
        assert "ports" not in services[name], name
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"rabbitmq", "postgres", "minio", "prometheus", "grafana"}


def test_named_volumes(compose, services):
    volumes = set(compose["volumes"])
    assert volumes >= {"postgres-data", "rabbitmq-data", "minio-data", "prometheus-data", "grafana-data", "model-cache"}

    def mounts(name):
        return {v.split(":")[0]: v.split(":")[1] for v in services[name].get("volumes", []) if ":" in v}

    assert mounts("postgres")["postgres-data"] == "/var/lib/postgresql/data"
    assert mounts("rabbitmq")["rabbitmq-data"] == "/var/lib/rabbitmq"
    assert mounts("minio")["minio-data"] == "/data"
    assert mounts("prometheus")["prometheus-data"] == "/prometheus"
    assert mounts("grafana")["grafana-data"] == "/var/lib/grafana"
    for name in SELFJUDGE_SERVICES:
        assert mounts(name)["model-cache"] == "/cache", name
        assert "/app/work" in services[name]["volumes"], f"{name}: work_dir must be per container"
    # every named volume used is declared; every bind mount source exists in the repo
    for name, svc in services.items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith("/") and ":" not in spec:
                continue  # an anonymous volume (per container)
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} missing"
            else:
                assert source in volumes, f"{name}: volume {source} not declared"


def test_rabbitmq_mounts_plugins_and_config(services):
    vols = services["rabbitmq"]["volumes"]
    assert "./infra/rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro" in vols
    assert any(v.startswith("./infra/rabbitmq/rabbitmq.conf:/etc/rabbitmq/") for v in vols)
    assert services["rabbitmq"]["hostname"] == "rabbitmq"


def test_healthchecks(services):
    def test_of(name):
        check = services[name]["healthcheck"]
        return " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]

    assert "rabbitmq-diagnostics" in test_of("rabbitmq") and "check_port_connectivity" in test_of("rabbitmq")
    assert "pg_isready" in test_of("postgres")
    assert "/minio/health/live" in test_of("minio")
    assert "/-/ready" in test_of("prometheus")
    assert "/api/health" in test_of("grafana")
    for stage in STAGES:
        assert ":9100/metrics" in test_of(stage), stage
        assert services[stage]["healthcheck"]["start_period"]


def test_depends_on_conditions(services):
    base = {
        "rabbitmq": "service_healthy",
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }
    for stage in STAGES:
        deps = {k: v["condition"] for k, v in services[stage]["depends_on"].items()}
        assert deps == base, stage
    launcher = {k: v["condition"] for k, v in services["launcher"]["depends_on"].items()}
    assert launcher == {**base, **{stage: "service_healthy" for stage in STAGES}}
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert {k: v["condition"] for k, v in services["migrate"]["depends_on"].items()} == {"postgres": "service_healthy"}
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # every service a healthy-condition points at has a healthcheck
    for svc in services.values():
        for dep, spec in (svc.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep] and not services[dep]["healthcheck"].get("disable"), dep


def test_gpu_reservations_on_model_stages_only(services):
    for name in GPU_STAGES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        assert "count" in devices[0] or "device_ids" in devices[0], name
    for name in ("filter", "launcher", "migrate"):
        assert "deploy" not in services[name], f"{name} needs no GPU"
    assert services["filter"]["environment"]["SELFJUDGE__MODEL__DEVICE"] == "cpu"
    # each model stage sees the GPUs of its own pool and every replica claims one (or
    # <STAGE>_GPUS_PER_REPLICA) of them (see infra/docker/entrypoint.sh)
    for stage in GPU_STAGES:
        env = services[stage]["environment"]
        assert env["SELFJUDGE_GPU_POOL"] == stage
        assert env["SELFJUDGE_GPU_IDS"] == f"${{{stage.upper()}_GPUS:-0}}"
        assert services[stage]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
            f"${{{stage.upper()}_GPUS:-0}}"
        ]
        assert env["SELFJUDGE_GPUS_PER_REPLICA"] == f"${{{stage.upper()}_GPUS_PER_REPLICA:-1}}"
        assert env["SELFJUDGE__MODEL__DEVICE"] == "cuda"
    trainer = services["trainer"]["environment"]
    assert trainer["SELFJUDGE__TRAIN__NPROC"] == trainer["SELFJUDGE_GPUS_PER_REPLICA"]  # one rank per GPU
    assert "SELFJUDGE_GPU_POOL" not in services["launcher"]["environment"]


def test_selfjudge_environment(services):
    for name in SELFJUDGE_SERVICES:
        env = services[name]["environment"]
        assert env["SELFJUDGE__DATABASE__URL"].startswith("postgresql+psycopg://${POSTGRES_USER")
        assert env["SELFJUDGE__DATABASE__URL"].endswith("@postgres:5432/${POSTGRES_DB:?set POSTGRES_DB in .env}")
        assert env["SELFJUDGE__BROKER__URL"].startswith("amqp://${RABBITMQ_USER")
        assert env["SELFJUDGE__BROKER__URL"].endswith("@rabbitmq:5672//")
        assert env["SELFJUDGE__STORE__KIND"] == "s3"
        assert env["SELFJUDGE__STORE__ENDPOINT"] == "minio:9000"
        assert env["SELFJUDGE__METRICS__PORT"] == "9100"
        assert env["SELFJUDGE__METRICS__ADDR"] == "0.0.0.0"


def test_selfjudge_env_overrides_name_real_config_keys(services):
    """Every SELFJUDGE__<SECTION>__<KEY> the stack sets is a field of shared/config.py."""
    from selfjudge.shared.config import Settings

    cpu = load_compose(COMPOSE_CPU)["services"]
    names = set()
    for svc in list(services.values()) + list(cpu.values()):
        names |= {k for k in (svc.get("environment") or {}) if k.startswith("SELFJUDGE__")}
    names |= set(re.findall(r"\bSELFJUDGE__[A-Z_]+\b", (REPO / "Dockerfile").read_text()))
    assert names
    for name in names:  # SELFJUDGE__MODEL__DTYPE, SELFJUDGE__MODEL__VLLM__MAX_NUM_SEQS, ...
        node = Settings()
        for key in name[len("SELFJUDGE__") :].lower().split("__"):
            assert key in type(node).model_fields, name
            node = getattr(node, key)


def _walk_strings(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


SECRET_KEY = re.compile(r"(PASSWORD|PASS|SECRET|ACCESS_KEY|TOKEN|_USER)$", re.IGNORECASE)
URL_WITH_CREDENTIALS = re.compile(r"://([^/@\s]+)@")


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_CPU], ids=lambda p: p.name)
def test_no_literal_secrets(path):
    data = load_compose(path)
    for name, svc in data.get("services", {}).items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}", str(value)), (
                    f"{path.name} {name}.{key} must come from .env as ${{VAR}}, not {value!r}"
                )
    for where, text in _walk_strings(data):
        for creds in URL_WITH_CREDENTIALS.findall(text):
            for part in creds.split(":"):
                assert part.startswith(("${", "$${")), f"{where}: literal credential in URL"
    assert not re.search(r"(?i)(password|secret)\s*[:=]\s*[\"']?(?!\$)[A-Za-z0-9]", path.read_text()), (
        f"{path.name}: a password/secret looks hard-coded"
    )


def test_env_example_defines_every_required_variable():
    text = COMPOSE.read_text() + COMPOSE_CPU.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    defined = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    assert required, "compose should require its credentials with ${VAR:?...}"
    assert required <= defined, f".env.example lacks {sorted(required - defined)}"
    for var in (
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "MINIO_ROOT_PASSWORD",
        "SELFJUDGE_S3_SECRET_KEY",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert var in required, f"{var} should be required (${{{var}:?...}})"
    # .env itself is never committed or sent to the image build
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_docker_compose_config_is_valid():
    cmd = _compose_cmd()
    test_overlay = ["-f", "infra/compose-test/docker-compose.test.yml"]  # make compose-test's knobs
    for files in (
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"],
        ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml", *test_overlay],
    ):
        run = subprocess.run(
            cmd + files + ["--env-file", ".env.example", "config", "-q"], cwd=REPO, capture_output=True, text=True
        )
        assert run.returncode == 0, f"{' '.join(files)}: {run.stderr}"


def _render(*env_files: str) -> dict:
    run = subprocess.run(
        _compose_cmd()
        + [arg for f in (".env.example", *env_files) for arg in ("--env-file", f)]
        + ["config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["services"]


def gpu_layout(services: dict) -> dict:
    """Per GPU stage: (pool ids, replicas, GPUs per replica, reservation device ids)."""
    out = {}
    for stage in GPU_STAGES:
        env, deploy = services[stage]["environment"], services[stage]["deploy"]
        ids = deploy["resources"]["reservations"]["devices"][0]["device_ids"]
        out[stage] = (env["SELFJUDGE_GPU_IDS"], deploy["replicas"], int(env["SELFJUDGE_GPUS_PER_REPLICA"]), ids)
    return out


def test_gpu_layout_defaults_to_one_gpu():
    services = _render()
    assert gpu_layout(services) == {stage: ("0", 1, 1, ["0"]) for stage in GPU_STAGES}
    trainer = services["trainer"]["environment"]
    assert (trainer["SELFJUDGE__TRAIN__NPROC"], trainer["SELFJUDGE__TRAIN__DISTRIBUTED"]) == ("1", "fsdp")
    for name in SELFJUDGE_SERVICES:  # the default image: no vLLM
        assert services[name]["build"]["target"] == "default" and services[name]["build"]["args"] == {
            "VLLM_VERSION": ""
        }
        assert services[name]["environment"]["SELFJUDGE__MODEL__BACKEND"] == "transformers"


def test_eight_gpu_layout_renders_from_the_environment():
    """infra/gpu-8.env (the README's layout): pools, replicas and GPUs per replica fit together."""
    services = _render("infra/gpu-8.env")
    layout = gpu_layout(services)
    assert layout == {
        "synthesizer": ("0,1", 2, 1, ["0,1"]),
        "reasoner": ("2,3,4,5", 4, 1, ["2,3,4,5"]),
        "evaluator": ("6,7", 2, 1, ["6,7"]),
        "trainer": ("0,1,2,3,4,5,6,7", 1, 8, ["0,1,2,3,4,5,6,7"]),
    }
    for stage, (ids, replicas, per, _) in layout.items():  # every replica gets its own GPUs, none idle
        assert len(ids.split(",")) == replicas * per, stage
    generation = sorted(g for s in ("synthesizer", "reasoner", "evaluator") for g in layout[s][0].split(","))
    assert generation == [str(i) for i in range(8)]  # one engine per GPU
    trainer = services["trainer"]["environment"]
    assert (trainer["SELFJUDGE__TRAIN__NPROC"], trainer["SELFJUDGE__TRAIN__DISTRIBUTED"]) == ("8", "fsdp")
    for name in SELFJUDGE_SERVICES:
        svc = services[name]
        assert svc["build"]["target"] == "gpu" and svc["build"]["args"] == {"VLLM_VERSION": "0.32.0"}, name
        assert svc["image"] == "selfjudge:gpu" and svc["environment"]["SELFJUDGE__MODEL__BACKEND"] == "vllm", name
        assert svc["environment"]["SELFJUDGE__MODEL__VLLM__GPU_MEMORY_UTILIZATION"] == "0.45", name
    from selfjudge.shared.config import load_settings

    env = {k: v for k, v in services["trainer"]["environment"].items() if k.startswith("SELFJUDGE__")}
    settings = load_settings(environ=env)  # the stack's settings are valid ones
    assert (settings.train.nproc, settings.train.distributed, settings.model.vllm.gpu_memory_utilization) == (
        8,
        "fsdp",
        0.45,
    )


def test_compose_refuses_to_start_without_credentials(tmp_path):
    cmd = _compose_cmd()
    empty = tmp_path / "empty.env"
    empty.write_text("")
    run = subprocess.run(
        cmd + ["--env-file", str(empty), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
    )
    assert run.returncode != 0 and "in .env" in run.stderr


def test_cpu_override_drops_gpus():
    cmd = _compose_cmd()
    run = subprocess.run(
        cmd
        + [
            "-f",
            "docker-compose.yml",
            "-f",
            "docker-compose.cpu.yml",
            "--env-file",
            ".env.example",
            "config",
            "--format",
            "json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    services = json.loads(run.stdout)["services"]
    for name in SELFJUDGE_SERVICES:
        svc = services[name]
        assert "deploy" not in svc or not svc["deploy"].get("resources"), name
        assert svc["environment"]["SELFJUDGE__MODEL__DEVICE"] == "cpu", name
        assert svc["environment"]["SELFJUDGE__MODEL__BASE"] == "tiny", name
        assert not svc["environment"].get("SELFJUDGE_GPU_POOL"), name
        assert svc["build"]["args"]["TORCH_INDEX_URL"].endswith("/cpu"), name
    assert services["launcher"]["command"][:3] == ["run", "--config", "/app/configs/demo.yaml"]


# --- image ---------------------------------------------------------------------------------


def test_dockerfile_gpu_target_adds_vllm_only():
    """`--target gpu` = the default image + vLLM at the same torch; the default target stays last
    and adds nothing; without VLLM_VERSION the gpu stage installs nothing (a builder that runs
    every stage on the way to the default target must not fetch vLLM)."""
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.MULTILINE)
    assert [name for _, name in stages] == ["app", "gpu", "default"]
    assert stages[1][0] == "app" and stages[2][0] == "app"
    gpu = text.split("FROM app AS gpu", 1)[1].split("FROM app AS default", 1)[0]
    assert "ARG VLLM_VERSION=\n" in gpu and 'if [ -z "$VLLM_VERSION" ]' in gpu
    assert 'pip install "vllm==${VLLM_VERSION}" "torch==' in gpu and "USER 10001:10001" in gpu
    assert not text.split("FROM app AS default", 1)[1].strip()


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    base = next(line for line in lines if line.startswith("ARG BASE_IMAGE="))
    assert base.split("=", 1)[1].startswith(("python:", "nvidia/cuda")), base
    assert any(line.startswith("FROM ${BASE_IMAGE}") for line in lines)
    torch_at = next(i for i, line in enumerate(lines) if "torch==" in line)
    install_at = next(i for i, line in enumerate(lines) if "pip install ." in line)
    assert torch_at < install_at, "torch must be installed before the project"
    users = [line for line in lines if line.startswith("USER ")]
    assert users and not users[-1].split()[1].startswith(("root", "0")), "the image must not run as root"
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert "selfjudge" in entry
    assert "infra/docker/entrypoint.sh" in text and (REPO / "infra/docker/entrypoint.sh").is_file()
    for path in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for src in path.split():
            assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


# --- loop configs --------------------------------------------------------------------------


def test_loop_configs_load():
    from selfjudge.shared.config import load_settings

    demo = load_settings(REPO / "configs" / "demo.yaml", environ={})
    assert demo.model.base == "tiny" and demo.model.device == "cpu"
    assert demo.run.iterations == 2 and demo.run.prompts_per_iteration == 64 and demo.run.shard_size == 32
    assert demo.synth.n_samples == 8 and demo.synth.majority_threshold == 4
    assert demo.embedded, "demo.yaml must not name a broker (embedded by default)"

    env = {
        "SELFJUDGE__BROKER__URL": "amqp://u:p@rabbitmq:5672//",
        "SELFJUDGE__STORE__KIND": "s3",
        "SELFJUDGE__MODEL__DEVICE": "cuda",
    }
    composed = load_settings(REPO / "configs" / "compose.yaml", environ=env)
    assert not composed.embedded and composed.store.kind == "s3"
    for path in ("compose.yaml", "demo.yaml"):
        raw = yaml.safe_load((REPO / "configs" / path).read_text())
        for section in ("database", "broker"):
            assert not (raw.get(section) or {}).get("url"), f"{path}: {section}.url belongs in the environment"
        store = raw.get("store") or {}
        assert not store.get("access_key") and not store.get("secret_key"), f"{path}: keys belong in .env"


# --- RabbitMQ ------------------------------------------------------------------------------


def test_rabbitmq_config():
    plugins = (RABBIT_DIR / "enabled_plugins").read_text()
    assert re.fullmatch(r"\s*\[[\w,\s]+\]\.\s*", plugins), "enabled_plugins must be an Erlang list term"
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    conf = {}
    for line in (RABBIT_DIR / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.strip().startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            conf[key] = value
    assert int(conf["consumer_timeout"]) >= 24 * 3600 * 1000
    assert conf["prometheus.return_per_object_metrics"] == "true"


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_every_service(services):
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in STAGES + ["launcher"]:  # the long-running processes that serve :9100
        (sd,) = jobs[name]["dns_sd_configs"]
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == 9100, name
        assert name in services
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]


def test_prometheus_local_config_uses_file_sd():
    config = yaml.safe_load((PROM_DIR / "prometheus.local.yml").read_text())
    assert config["global"]["scrape_interval"] == "5s"
    files = [f for job in config["scrape_configs"] for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    assert files == ["targets.json"]
    groups = json.loads((PROM_DIR / "targets.json").read_text())
    assert all(group["targets"] and all(t.startswith("127.0.0.1:") for t in group["targets"]) for group in groups)


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_check_config(name, tmp_path):
    promtool = _promtool()
    # checked from a copy: prometheus.yml's DNS names do not resolve here, which is fine,
    # and the local config gets a fresh targets.json beside it
    for file in PROM_DIR.iterdir():
        shutil.copy(file, tmp_path / file.name)
    run = subprocess.run([promtool, "check", "config", str(tmp_path / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


# --- Grafana -------------------------------------------------------------------------------


def _provisioned_datasource_uid() -> str:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = config["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return source["uid"]


def test_grafana_provisioning(services):
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    (provider,) = providers["providers"]
    path = provider["options"]["path"]
    assert f"./infra/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (DASHBOARD_DIR / Path(home).name).is_file()


def test_dashboards_are_valid_grafana_json():
    uid = _provisioned_datasource_uid()
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert len(files) >= 4
    titles, uids = set(), set()
    for path in files:
        board = json.loads(path.read_text())
        assert isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] >= 30, path.name
        assert board["title"] not in titles and board["uid"] not in uids, path.name
        titles.add(board["title"])
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, f"{path.name}: {panel['title']}"
        for var in board.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                assert var["datasource"]["uid"] == uid
    panels = dashboard_panels()
    assert panels
    for title, panel in panels:
        where = f"{title} / {panel['title']}"
        assert panel["datasource"]["uid"] == uid, where
        assert panel["targets"], f"{where}: no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: duplicate refId"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{where}: empty expr"
            assert target.get("datasource", {"uid": uid})["uid"] == uid, where


def test_dashboards_cover_the_brief():
    exprs = " ".join(expr for _, _, expr in dashboard_exprs(raw=True))
    for needle in (
        "selfjudge_iteration",
        "selfjudge_eval_accuracy_ratio",
        'selfjudge_items_out_total{stage="filter"}',
        "selfjudge_shard_duration_seconds_bucket",
        "selfjudge_generated_tokens_total",
        "selfjudge_generation_seconds_total",
        "selfjudge_samples_total",
        "selfjudge_parse_failures_total",
        "selfjudge_items_rejected_total",
        "rabbitmq_queue_messages_ready",
        "rabbitmq_queue_messages_unacked",
        "rabbitmq_queue_consumers",
        "selfjudge_model_load_duration_seconds",
        "selfjudge_train_loss",
        "selfjudge_train_tokens_total",
        "selfjudge_train_step_duration_seconds",
        "selfjudge_errors_total",
        "up",
    ):
        assert needle in exprs, needle


def test_dashboard_metrics_exist():
    known = _selfjudge_metric_names()
    for dashboard, panel, expr in dashboard_exprs():
        for name in metric_names(expr):
            ok = name in known or name in PROMETHEUS_METRICS or name in KNOWN_RABBITMQ_METRICS
            assert ok, f"{dashboard} / {panel}: unknown metric {name!r} in {expr!r}"


def test_dashboard_exprs_substituted():
    for dashboard, panel, expr in dashboard_exprs():
        assert "$" not in expr and "[[" not in expr, f"{dashboard} / {panel}: {expr}"


def test_dashboard_promql_parses(tmp_path):
    """promtool parses every expression (as a recording rule): catches PromQL syntax errors."""
    promtool = _promtool()
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, (_, _, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
