"""Tiny Qwen2.5-VL, Mllama and Idefics3 checkpoints, built offline once per test session."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from selfjudge.shared.models.tiny import build_tiny, build_tiny_qwen25vl

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["left of", "right of", "above", "below"]


def requests() -> list:
    """The backends' shared request set: mixed image counts (0, 1, 2), prompt lengths and one
    system turn, so batches need grouping and padding."""
    from PIL import Image

    from selfjudge.shared.models.generation.backend import ChatRequest

    return [
        ChatRequest(
            text=f"Is the {c} circle above the square? " * (1 + i % 2),
            images=[Image.new("RGB", (112, 112), c)] * (i % 3),
            system="You judge shapes." if i == 4 else None,
            key=f"r{i}",
        )
        for i, c in enumerate(COLOURS)
    ]


def check_n_samples(backend) -> None:
    """The n-samples contract every backend keeps: n texts and counts per request, samples that
    differ, the same samples for the same seed, and n copies of one greedy completion."""
    from selfjudge.shared.models.generation.backend import SamplingParams

    reqs = requests()[:3]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8, seed=7)
    out = backend.generate(reqs, params)
    assert [g.key for g in out] == [r.key for r in reqs]
    for g in out:
        assert len(g.texts) == 3 and len(g.token_counts) == 3
        assert all(1 <= c <= 8 for c in g.token_counts)
    assert len(set(out[0].texts)) > 1  # samples differ
    assert backend.generate(reqs, params) == out  # same seed, same samples
    greedy = backend.generate(reqs[:1], SamplingParams(n=2, max_new_tokens=8))[0]
    assert len(greedy.texts) == 2 and greedy.texts[0] == greedy.texts[1]


def shape_corpus() -> list[str]:
    """A few hundred short sentences about shapes and colours, plus judge-style verdicts."""
    out = []
    for (c1, s1), rel, (c2, s2) in itertools.product(
        itertools.product(COLOURS[:4], SHAPES), RELATIONS, [("black", "square"), ("white", "star")]
    ):
        out.append(f"The {c1} {s1} is {rel} the {c2} {s2}.")
    for v, c, s in itertools.product("AB", COLOURS, SHAPES):
        out.append(f"Response {v} is better because the {c} {s} is correct. [[{v}]]")
    return out


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_qwen25vl"), shape_corpus(), seed=0)


# --- vLLM: one in-process engine and one OpenAI-compatible server per session, on tiny_qwen ----

NO_VLLM_ENV = "SELFJUDGE_NO_VLLM"


def require_vllm() -> None:
    """Skip when SELFJUDGE_NO_VLLM=1; otherwise vLLM must import, or the test fails with the reason."""
    import os

    if os.environ.get(NO_VLLM_ENV) == "1":
        pytest.skip(f"{NO_VLLM_ENV}=1: vLLM tests skipped")
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure is the reason to report
        pytest.fail(
            f"vllm does not import ({type(exc).__name__}: {exc}); run `make vllm` "
            f"(scripts/install-vllm.sh) or set {NO_VLLM_ENV}=1 to skip the vLLM tests",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def vllm_tiny(tiny_qwen: Path):
    """A VLLMBackend on tiny_qwen in fp32 (the engine runs in this process; ~10 s to start)."""
    require_vllm()
    from selfjudge.shared.models.generation.vllm_backend import VLLMBackend

    backend = VLLMBackend(str(tiny_qwen), model_id="tiny", dtype="float32", max_images=2, max_model_len=2048)
    yield backend
    backend.close()


VLLM_SERVER_API_KEY = "sk-selfjudge-test"


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` on a folder, on a free 127.0.0.1 port, started
    at once; wait() blocks until GET /health answers 200 (it takes three Python processes on CPU:
    ~40 s idle, minutes on a loaded machine), so callers can overlap the boot with other work."""

    def __init__(self, model_dir: Path, log_path: Path, model: str = "tiny", api_key: str = VLLM_SERVER_API_KEY):
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url, self.model, self.api_key, self.log_path = f"http://127.0.0.1:{port}", model, api_key, log_path
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--enforce-eager", "--max-model-len", "2048", "--limit-mm-per-prompt", '{"image": 2}',
            "--seed", "0", "--api-key", api_key,
            "--enable-lora", "--max-lora-rank", "8",  # judges arrive as adapters (POST /v1/load_lora_adapter)
        ]  # fmt: skip
        env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server needs its engine process
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.ready = False

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def wait(self, timeout: float = 600) -> "VLLMServer":
        import subprocess
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while not self.ready:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.ready = True
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vllm server not healthy after {timeout:.0f} s; log tail:\n{self.log_tail()}", pytrace=False
                )
            try:  # the poll interval doubles as the crash check
                code = self.proc.wait(timeout=0.5)
                pytest.fail(f"vllm server exited with {code}; log tail:\n{self.log_tail()}", pytrace=False)
            except subprocess.TimeoutExpired:
                pass
        return self

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        for sig in (signal.SIGTERM, signal.SIGKILL):  # the server and the engine processes it started
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def vllm_server_boot(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory):
    """Starts vLLM's OpenAI server on tiny_qwen without waiting (None under SELFJUDGE_NO_VLLM=1)."""
    import os

    if os.environ.get(NO_VLLM_ENV) == "1":
        yield None
        return
    server = VLLMServer(tiny_qwen, tmp_path_factory.mktemp("vllm_server") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_server_boot):
    """The running server (url, model, api_key), healthy; fails with its log if it did not come up."""
    require_vllm()
    return vllm_server_boot.wait()


@pytest.fixture(scope="session")
def tiny_mllama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("mllama", tmp_path_factory.mktemp("tiny_mllama"), shape_corpus(), seed=0)


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny("idefics3", tmp_path_factory.mktemp("tiny_idefics3"), shape_corpus(), seed=0)
