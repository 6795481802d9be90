"""`make compose-test`: the real docker-compose.yml (+ the CPU overlay) on a real Docker engine.

Steps, each printed with its duration:
   1. engine      install what is missing (docker.io, iptables, debootstrap, the compose
                  plugin) and start dockerd unless one answers (scripts/docker-engine.sh)
   2. images      build every image locally, cached by inputs (scripts/compose_images.py)
   3. env         a throwaway env file: random passwords, free ports, the local images, no
                  Grafana profile; then the preflight (scripts/compose_preflight.py) must pass
   4. up          `docker compose up -d`: infra, migrate, minio-init, five workers, launcher
                  (configs/demo.yaml: 2 iterations of 64 prompts, tiny model, CPU)
   5. kill        SIGKILL of the synthesizer container while a shard of it is in progress; the
                  container's restart policy starts it again
   6. scale       `docker compose up -d --scale reasoner=2`: a second reasoner, mid-run
   7. run         the launcher exits 0 (the run is done)
   8. counts      Postgres, in its container: the counts the config implies (what an
                  undisturbed run gives), no duplicates, the killed shard redone
   9. metrics     Prometheus, in its container: every stage's metrics scraped, both reasoners
  10. down        `docker compose down -v`: no container, network or volume of the project left
  11. engine      the dockerd that step 1 started is stopped
Steps 10 and 11 run whether the test passed or failed. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_images
import compose_preflight

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".selfjudge" / "compose-test"
PROJECT = os.environ.get("SELFJUDGE_COMPOSE_PROJECT", "selfjudge-compose-test")
FILES = [
    REPO / "docker-compose.yml",
    REPO / "docker-compose.cpu.yml",
    REPO / "infra/compose-test/docker-compose.test.yml",
]
CONFIG = REPO / "configs" / "demo.yaml"  # what the CPU overlay's launcher runs
STAGES = ["synthesizer", "reasoner", "filter", "trainer", "evaluator"]
PORT_VARIABLES = [
    "POSTGRES_PORT",
    "RABBITMQ_PORT",
    "RABBITMQ_MANAGEMENT_PORT",
    "MINIO_API_PORT",
    "MINIO_CONSOLE_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
]
RUN_TIMEOUT_S = int(os.environ.get("SELFJUDGE_COMPOSE_RUN_TIMEOUT", "1500"))


class Failed(Exception):
    """A check of the test failed (the message says which and why)."""


@dataclass
class Timings:
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str):
        print(f"[compose-test] {name} ...", flush=True)
        start = time.monotonic()
        outcome = "FAILED"
        try:
            yield
            outcome = "ok"
        finally:
            seconds = time.monotonic() - start
            self.rows.append((name, seconds, outcome))
            print(f"[compose-test] {name}: {outcome} ({seconds:.1f} s)", flush=True)

    def summary(self) -> str:
        lines = [f"  {name:<66} {seconds:7.1f} s  {outcome}" for name, seconds, outcome in self.rows]
        total = sum(seconds for _, seconds, _ in self.rows)
        return "\n".join(["[compose-test] summary:", *lines, f"  {'total':<66} {total:7.1f} s"])


def say(message: str) -> None:
    print(f"[compose-test]   {message}", flush=True)


def run(
    cmd: list[str], timeout: float, check: bool = True, env: dict | None = None, quiet: bool = False
) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        raise Failed(f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    if not quiet and done.stdout.strip():
        print(done.stdout.rstrip(), flush=True)
    return done


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    """Calls probe() until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    env_file: Path
    values: dict[str, str]

    def env(self) -> dict[str, str]:
        """A clean environment: nothing of the caller's shell overrides the env file."""
        keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
        return {k: os.environ[k] for k in keep if k in os.environ}

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True, quiet: bool = False
    ) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-p", PROJECT, "--project-directory", str(REPO), "--env-file", str(self.env_file)]
        for file in FILES:
            cmd += ["-f", str(file)]
        return run(cmd + list(args), timeout, check=check, env=self.env(), quiet=quiet)

    def containers(self, service: str = "", all_states: bool = True) -> list[str]:
        """Container ids of `service` (every service when empty)."""
        args = ["ps", *(["-a"] if all_states else []), "-q", *([service] if service else [])]
        return self.compose(*args, quiet=True, timeout=60).stdout.split()

    def sql(self, query: str) -> list[list[str]]:
        """Rows of `query`, run by psql inside the postgres container."""
        out = self.compose(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            self.values["POSTGRES_USER"],
            "-d",
            self.values["POSTGRES_DB"],
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-F",
            "|",
            "-c",
            query,
            quiet=True,
            timeout=60,
        ).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def scalar(self, query: str) -> int:
        rows = self.sql(query)
        return int(rows[0][0]) if rows and rows[0][0] else 0

    def prometheus(self, query: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.values['PROMETHEUS_PORT']}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise Failed(f"Prometheus refused {query!r}: {body}")
        return body["data"]["result"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_env_file(images: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """Every variable the compose files require (names from .env.example, fresh random secrets),
    free host ports, the locally built images, and no profile (Grafana left out)."""
    example = compose_preflight.read_env_file(REPO / ".env.example")
    required = {var for f in FILES for var in compose_preflight.REQUIRED.findall(f.read_text())}
    values: dict[str, str] = {}
    for var in sorted(required):
        secret = var.endswith(("PASSWORD", "SECRET_KEY"))
        values[var] = secrets.token_hex(16) if secret else example[var]
    values |= {var: str(free_port()) for var in PORT_VARIABLES}
    values |= images | {"COMPOSE_PROFILES": "", "SELFJUDGE_MODEL_BASE": "tiny"}
    values |= test_knobs()
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "compose-test.env"
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


# --- the checks ------------------------------------------------------------------------------


def test_knobs() -> dict[str, str]:
    """SELFJUDGE_TEST_* from the caller's environment (infra/compose-test/docker-compose.test.yml)."""
    return {k: v for k, v in os.environ.items() if k.startswith("SELFJUDGE_TEST_") and v}


def expected_counts() -> dict[str, int]:
    """What the config implies for every undisturbed run (configs/demo.yaml, with the test knobs)."""
    cfg = yaml.safe_load(CONFIG.read_text())["run"]
    prompts = int(test_knobs().get("SELFJUDGE_TEST_PROMPTS", cfg["prompts_per_iteration"]))
    shards = -(-prompts // cfg["shard_size"])
    return {"iterations": cfg["iterations"], "prompts": prompts, "shards": shards}


def in_progress_shard(stack: Stack, stage: str) -> tuple[int, int] | None:
    rows = stack.sql(
        f"SELECT iteration, index FROM shards WHERE stage = '{stage}' AND state = 'pending' "
        "AND attempts >= 1 ORDER BY id LIMIT 1"
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


def restarted(container: str) -> bool:
    """The container was started again after dying (Docker's restart policy), and runs."""
    count, running = run(
        ["docker", "inspect", "-f", "{{.RestartCount}} {{.State.Running}}", container], 60, quiet=True
    ).stdout.split()
    return int(count) > 0 and running == "true"


def healthy(stack: Stack, service: str, replicas: int) -> bool:
    ids = stack.containers(service, all_states=False)
    if len(ids) < replicas:
        return False
    states = run(["docker", "inspect", "-f", "{{.State.Health.Status}}", *ids], 60, quiet=True).stdout.split()
    return states.count("healthy") >= replicas


def check_counts(stack: Stack, killed: tuple[int, int]) -> None:
    want = expected_counts()
    run_rows = stack.sql("SELECT id, status, iterations FROM runs")
    if len(run_rows) != 1 or run_rows[0][1] != "done" or int(run_rows[0][2]) != want["iterations"]:
        raise Failed(f"expected one finished run of {want['iterations']} iterations, got {run_rows}")
    iterations = stack.sql(
        "SELECT number, status, output_checkpoint_id IS NOT NULL, n_shards FROM iterations ORDER BY number"
    )
    numbers = [int(r[0]) for r in iterations]
    if numbers != list(range(0, want["iterations"] + 1)) or any(r[1] != "done" for r in iterations):
        raise Failed(f"iterations 0..{want['iterations']} should all be done: {iterations}")
    for number, _, trained, n_shards in iterations:
        if int(number) >= 1 and (trained != "t" or int(n_shards) != want["shards"]):
            raise Failed(f"iteration {number}: trained={trained}, n_shards={n_shards} (want {want['shards']})")
    say(f"run done; iterations {numbers} done, each loop iteration trained with {want['shards']} shards")

    per_stage = stack.sql(
        "SELECT iteration, stage, count(*), count(DISTINCT index), "
        "sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END) FROM shards "
        "GROUP BY iteration, stage ORDER BY iteration, stage"
    )
    for iteration, stage, rows, distinct, done in per_stage:
        if int(rows) != int(distinct) or int(done) != int(rows):
            raise Failed(f"iteration {iteration} {stage}: {rows} shard rows, {distinct} distinct, {done} done")
    for k in range(1, want["iterations"] + 1):
        for stage in ("synthesizer", "reasoner", "filter"):
            n = next((int(r[2]) for r in per_stage if int(r[0]) == k and r[1] == stage), 0)
            if n != want["shards"]:
                raise Failed(f"iteration {k}: {n} {stage} shards, the config implies {want['shards']}")
    say(
        "shards: one row per (iteration, stage, index), all done: "
        + ", ".join(f"{r[0]}/{r[1]}={r[2]}" for r in per_stage)
    )

    prompts = stack.sql(
        "SELECT iteration, count(*), count(DISTINCT source_id) FROM prompts GROUP BY iteration ORDER BY iteration"
    )
    if [(int(r[0]), int(r[1]), int(r[2])) for r in prompts] != [
        (k, want["prompts"], want["prompts"]) for k in range(1, want["iterations"] + 1)
    ]:
        raise Failed(f"prompts per iteration (rows, distinct) should be {want['prompts']}: {prompts}")
    duplicates = {
        "pairs": "SELECT count(*) - count(DISTINCT (iteration, prompt_id, preferred, rejected)) FROM pairs",
        "judgments": 'SELECT count(*) - count(DISTINCT (pair_id, "order", sample)) FROM judgments',
        "training_examples": "SELECT count(*) - count(DISTINCT judgment_id) FROM training_examples",
        "eval_results": 'SELECT count(*) - count(DISTINCT (run_id, iteration, benchmark, item_id, "order", '
        "sample)) FROM eval_results",
        "checkpoints": "SELECT count(*) - count(DISTINCT (iteration, content_hash)) FROM checkpoints",
    }
    for table, query in duplicates.items():
        if (extra := stack.scalar(query)) != 0:
            raise Failed(f"{table}: {extra} duplicate rows")
    # every pair judged in both orders, samples_per_order times (configs/demo.yaml)
    per_order = yaml.safe_load(CONFIG.read_text())["reason"]["samples_per_order"]
    pairs = stack.scalar("SELECT count(*) FROM pairs")
    judgments = stack.scalar("SELECT count(*) FROM judgments")
    if judgments != 2 * per_order * pairs:
        raise Failed(f"{pairs} pairs and {judgments} judgments: each pair should be judged 2 x {per_order} times")
    if pairs == 0:
        say("no pairs: the base model made none (an untrained one, SELFJUDGE_TEST_PRETRAIN_STEPS=0, makes none)")
    # base + one per iteration that kept traces (with none kept, the judge stays as it was)
    checkpoints = stack.scalar("SELECT count(*) FROM checkpoints")
    trained = stack.scalar("SELECT count(DISTINCT iteration) FROM training_examples")
    if checkpoints != 1 + trained:
        raise Failed(f"{checkpoints} checkpoints; base + one per iteration that kept traces = {1 + trained}")
    evals = stack.sql("SELECT iteration, count(*) FROM eval_results GROUP BY iteration ORDER BY iteration")
    if len({int(r[1]) for r in evals}) != 1 or len(evals) != want["iterations"] + 1:
        raise Failed(f"every checkpoint should be scored on the same held-out items: {evals}")
    say(
        f"{want['prompts']} prompts per iteration, {pairs} pairs, {judgments} judgments, {checkpoints} checkpoints, "
        f"{evals[0][1]} eval results per checkpoint; no duplicates in any table"
    )

    iteration, index = killed
    attempts = stack.scalar(
        f"SELECT attempts FROM shards WHERE stage = 'synthesizer' AND iteration = {iteration} AND index = {index}"
    )
    if attempts < 2:
        raise Failed(
            f"the killed synthesizer shard {iteration}/{index} shows {attempts} attempt(s); "
            "it should have been redelivered and redone"
        )
    say(f"the killed synthesizer shard (iteration {iteration}, index {index}) was redone: {attempts} attempts")


def check_metrics(stack: Stack) -> None:
    window = "[1h]"

    def scraped() -> dict[str, float] | None:
        rows = stack.prometheus(f'count by (job) (last_over_time({{__name__=~"selfjudge_.+"}}{window}))')
        jobs = {r["metric"].get("job", ""): float(r["value"][1]) for r in rows}
        return jobs if all(stage in jobs for stage in STAGES) else None

    jobs = wait_for("Prometheus to hold selfjudge metrics of every stage", scraped, timeout=90, every=5)
    say("selfjudge series per job: " + ", ".join(f"{job}={int(n)}" for job, n in sorted(jobs.items())))
    reasoners = stack.prometheus(f'count(count by (instance) (last_over_time(up{{job="reasoner"}}{window})))')
    if not reasoners or float(reasoners[0]["value"][1]) < 2:
        raise Failed(f"Prometheus should have scraped both reasoner replicas: {reasoners}")
    rabbit = stack.prometheus(f'max_over_time(up{{job="rabbitmq"}}{window})')
    if not rabbit or float(rabbit[0]["value"][1]) != 1:
        raise Failed(f"Prometheus never scraped RabbitMQ: {rabbit}")
    say("both reasoner replicas and RabbitMQ were scraped")


def project_leftovers() -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {}
    for kind, cmd in {
        "containers": ["docker", "ps", "-aq", "--filter", label],
        "networks": ["docker", "network", "ls", "-q", "--filter", label],
        "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
    }.items():
        found[kind] = run(cmd, 60, quiet=True).stdout.split()
    return found


def anonymous_volumes(stack: Stack) -> list[str]:
    ids = stack.containers()
    if not ids:
        return []
    out = run(
        ["docker", "inspect", "-f", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}', *ids],
        60,
        quiet=True,
    ).stdout
    return sorted(set(out.split()))


def engine_started_by_us() -> bool:
    return (REPO / ".selfjudge" / "docker" / "dockerd.pid").is_file()


# --- main ----------------------------------------------------------------------------------


def test_stack(t: Timings) -> None:
    engine = ["bash", str(REPO / "scripts" / "docker-engine.sh")]
    with t.step("1. engine: install what is missing, start dockerd"):
        run(engine + ["install"], 600)
        run(["bash", str(REPO / "scripts" / "install-tools.sh"), str(Path(sys.executable).parent / "pip")], 600)
        run(engine + ["start"], 120)

    with t.step("2. images: build or find every image (cached by inputs)"):
        images = compose_images.build_all(report=say)

    stack: Stack | None = None
    try:
        with t.step("3. env file + preflight"):
            env_file, values = write_env_file(images)
            stack = Stack(env_file, values)
            say(f"env file {env_file.relative_to(REPO)}; Prometheus on 127.0.0.1:{values['PROMETHEUS_PORT']}")
            if (
                compose_preflight.main(
                    ["--env-file", str(env_file), *sum((["-f", str(f)] for f in FILES), []), "--project", PROJECT]
                )
                != 0
            ):
                raise Failed("the preflight found problems (above)")
            stack.compose("config", "-q", timeout=60)

        with t.step("4. docker compose up -d (whole stack, CPU overlay, no Grafana)"):
            stack.compose("down", "-v", "--remove-orphans", timeout=300, quiet=True)  # a killed earlier run's
            stack.compose("up", "-d", "--no-build", timeout=600)
            say("running: " + " ".join(sorted(set(stack.compose("ps", "--services", quiet=True).stdout.split()))))

        with t.step("5. kill the synthesizer container mid-shard; its restart policy brings it back"):
            killed = wait_for(
                "a synthesizer shard in progress",
                lambda: in_progress_shard(stack, "synthesizer"),
                timeout=900,
                every=0.5,
            )
            (victim,) = stack.containers("synthesizer", all_states=False)
            # SIGKILL of the container's init process from the host: the container dies as in a crash.
            # (`docker kill` would do the same to it, but Engine 20.10 then counts the container as
            # stopped by hand, and `restart: unless-stopped` leaves such a container down.)
            pid = int(run(["docker", "inspect", "-f", "{{.State.Pid}}", victim], 60, quiet=True).stdout)
            os.kill(pid, signal.SIGKILL)
            say(f"killed {victim[:12]} (pid {pid}) while shard {killed[1]} of iteration {killed[0]} was in progress")
            wait_for(
                "the killed synthesizer restarted by its restart policy",
                lambda: restarted(victim),
                timeout=120,
                every=0.5,
            )
            if in_progress_shard(stack, "synthesizer") is None and stack.scalar(
                "SELECT count(*) FROM shards WHERE stage = 'synthesizer' AND state = 'done' "
                f"AND iteration = {killed[0]} AND index = {killed[1]}"
            ):
                raise Failed("the shard finished before the kill: nothing was interrupted")

        with t.step("6. docker compose up -d --scale reasoner=2"):
            stack.compose("up", "-d", "--no-build", "--scale", "reasoner=2", timeout=600)
            wait_for(
                "synthesizer and two reasoners healthy",
                lambda: healthy(stack, "synthesizer", 1) and healthy(stack, "reasoner", 2),
                timeout=300,
                every=2,
            )
            say(
                f"synthesizer {stack.containers('synthesizer', False)[0][:12]} is back; reasoners: "
                + ", ".join(c[:12] for c in stack.containers("reasoner", False))
            )

        with t.step("7. the run completes (launcher exits 0)"):
            (launcher,) = stack.containers("launcher")
            waited = run(["docker", "wait", launcher], RUN_TIMEOUT_S, quiet=True).stdout.strip()
            if waited != "0":
                logs = stack.compose("logs", "--tail", "40", "launcher", check=False, quiet=True)
                raise Failed(f"the launcher exited {waited}:\n{logs.stdout}")
            say(stack.compose("logs", "--tail", "3", "--no-log-prefix", "launcher", quiet=True).stdout.strip())

        with t.step("8. counts in Postgres: as the config implies, no duplicates"):
            check_counts(stack, killed)

        with t.step("9. Prometheus scraped every stage"):
            check_metrics(stack)
    except Failed as exc:
        print(f"[compose-test] FAILED: {exc}", file=sys.stderr, flush=True)
        if stack is not None:
            logs = stack.compose("logs", "--tail", "30", check=False, quiet=True, timeout=120)
            print(logs.stdout[-12000:] + logs.stderr[-2000:], flush=True)
        raise
    finally:
        if stack is not None:
            with t.step("10. docker compose down -v; nothing of the project left"):
                volumes = anonymous_volumes(stack)
                stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)
                left = project_leftovers()
                existing = set(run(["docker", "volume", "ls", "-q"], 60, quiet=True).stdout.split())
                left["anonymous volumes"] = sorted(set(volumes) & existing)
                stack.env_file.unlink(missing_ok=True)
                if any(left.values()):
                    raise Failed(f"left behind: {left}")
                say(f"no container, network or volume of {PROJECT} left ({len(volumes)} volumes removed)")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a CI timeout still tears down
    t = Timings()
    ok = False
    try:
        test_stack(t)
        ok = True
    except Failed as exc:
        print(f"[compose-test] FAILED: {str(exc).splitlines()[0]}", file=sys.stderr, flush=True)
    finally:
        if engine_started_by_us():
            with t.step("11. stop the dockerd we started"):
                run(["bash", str(REPO / "scripts" / "docker-engine.sh"), "stop"], 120)
                if engine_started_by_us():
                    ok = False
        print(t.summary(), flush=True)
    print(f"[compose-test] {'passed' if ok else 'FAILED'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
