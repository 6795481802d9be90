"""The OpenAI-compatible HTTP backend: against small local stub servers (retries, timeouts,
round-robin, concurrency, API key, request format) and against vLLM's own OpenAI server on the
tiny Qwen2.5-VL (parity with the transformers backend). The real-server tests need vLLM
(`make vllm`); SELFJUDGE_NO_VLLM=1 skips them."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from selfjudge.shared.models.generation.backend import ChatRequest, GenerationBackend, SamplingParams
from selfjudge.shared.models.generation.load import load_backend
from selfjudge.shared.models.generation.openai_backend import OpenAIBackend, OpenAIBackendError
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

from .conftest import requests

KEY = "sk-from-env-1234"


@pytest.fixture(scope="module", autouse=True)
def _boot_vllm_server_early(vllm_server_boot) -> None:
    """Start vLLM's server now, so it boots while the stub tests and the reference run."""


Script = Callable[[int, dict[str, Any]], "tuple[int, dict[str, Any]]"]


def completion(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A well-formed answer: choice k says "answer k" in k+1 tokens (logprobs entries)."""
    n = body.get("n", 1)
    choices = [
        {"index": k, "message": {"role": "assistant", "content": f"answer {k}"},
         "logprobs": {"content": [{"token": "t", "logprob": 0.0}] * (k + 1)} if body.get("logprobs") else None,
         "finish_reason": "stop"}
        for k in range(n)
    ]  # fmt: skip
    return 200, {"choices": choices, "usage": {"prompt_tokens": 42, "completion_tokens": 5 * n}}


class Stub:
    """A tiny OpenAI-style server on 127.0.0.1: `script(call_number, body)` decides each answer."""

    def __init__(self, script: Script = lambda i, body: completion(body)):
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200, {"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    i = len(stub.calls)
                status, payload = script(i, body)
                try:
                    self._reply(status, payload)
                except OSError:  # the client gave up on this one (timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs():
    made: list[Stub] = []

    def make(script: Script | None = None) -> Stub:
        made.append(Stub(script) if script else Stub())
        return made[-1]

    yield make
    for s in made:
        s.close()


def image(colour: str = "red") -> Image.Image:
    img = Image.new("RGB", (112, 112), colour)
    img.putpixel((3, 5), (1, 2, 3))
    return img


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_retries_503_twice_then_answers(
    stubs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SELFJUDGE__MODEL__API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    stub = stubs(lambda i, body: (503, {"error": "warming up"}) if i <= 2 else completion(body))
    be = OpenAIBackend([stub.url], model="m", backoff=0.01, max_retries=5)
    assert isinstance(be, GenerationBackend)
    req = ChatRequest(text="Which shape is red?", images=[image()], system="You judge shapes.", key="q1")
    with caplog.at_level(logging.DEBUG):
        out = be.generate([req], SamplingParams(max_new_tokens=7))
    assert len(stub.calls) == 3
    assert [(g.key, g.texts, g.token_counts, g.prompt_tokens) for g in out] == [("q1", ["answer 0"], [5], 42)]
    for call in stub.calls:
        assert call["path"] == "/v1/chat/completions"
        assert call["headers"]["Authorization"] == f"Bearer {KEY}"
    body = stub.calls[-1]["body"]
    assert body["model"] == "m" and body["n"] == 1 and body["temperature"] == 0 and body["max_tokens"] == 7
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You judge shapes."}
    assert user["role"] == "user" and [c["type"] for c in user["content"]] == ["image_url", "text"]
    assert user["content"][1]["text"] == "Which shape is red?"
    sent = decode_data_url(user["content"][0]["image_url"]["url"])
    assert np.array_equal(np.asarray(sent), np.asarray(req.images[0]))  # PNG: lossless
    assert "retry 2/5" in caplog.text and "503" in caplog.text
    assert KEY not in caplog.text and KEY not in repr(be)


def test_n_samples_token_counts_from_logprobs(stubs) -> None:
    stub = stubs()
    be = OpenAIBackend([stub.url + "/v1/"], model="m", api_key=KEY)
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=9, seed=5)
    out = be.generate([ChatRequest(text="a", images=[], key="x"), ChatRequest(text="b", images=[], key="y")], params)
    assert [g.texts for g in out] == [["answer 0", "answer 1", "answer 2"]] * 2
    assert [g.token_counts for g in out] == [[1, 2, 3]] * 2
    bodies = sorted((c["body"] for c in stub.calls), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [5, 6]  # seed + request index
    b = bodies[0]
    assert (b["n"], b["temperature"], b["top_p"], b["top_k"], b["logprobs"], b["repetition_penalty"]) == (
        3,
        0.7,
        0.9,
        20,
        True,
        1.0,
    )
    # greedy asks once and repeats, as the other backends do
    g = be.generate([ChatRequest(text="a", images=[], key="x")], SamplingParams(n=4))[0]
    assert g.texts == ["answer 0"] * 4 and g.token_counts == [5] * 4 and stub.calls[-1]["body"]["n"] == 1


def test_round_robin_and_failover(stubs) -> None:
    a, b = stubs(), stubs()
    reqs = [ChatRequest(text=str(i), images=[], key=str(i)) for i in range(6)]
    out = OpenAIBackend([a.url, b.url], model="m", concurrency=3).generate(reqs, SamplingParams())
    assert [g.key for g in out] == [r.key for r in reqs]
    assert sorted(c["body"]["messages"][0]["content"][0]["text"] for c in a.calls) == ["0", "2", "4"]
    assert len(b.calls) == 3
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    c = stubs()
    out = OpenAIBackend([dead, c.url], model="m", backoff=0.01).generate(reqs[:2], SamplingParams())
    assert [g.texts for g in out] == [["answer 0"]] * 2 and len(c.calls) == 2  # request 0 moved on to c


def test_client_errors_fail_fast_and_retries_give_up(stubs) -> None:
    bad = stubs(lambda i, body: (400, {"error": {"message": "max_tokens is too large"}}))
    with pytest.raises(OpenAIBackendError, match="HTTP 400.*max_tokens is too large"):
        OpenAIBackend([bad.url], model="m", backoff=0.01).generate([ChatRequest("a", [])], SamplingParams())
    assert len(bad.calls) == 1
    busy = stubs(lambda i, body: (429, {"error": "slow down"}))
    with pytest.raises(OpenAIBackendError, match="gave up after 3 attempts.*HTTP 429"):
        OpenAIBackend([busy.url], model="m", backoff=0.01, max_retries=2).generate(
            [ChatRequest("a", [])], SamplingParams()
        )
    assert len(busy.calls) == 3


def test_timeout_is_retried(stubs) -> None:
    release = threading.Event()

    def script(i: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if i == 1:
            release.wait(10)  # hold the first request past the client's timeout
        return completion(body)

    stub = stubs(script)
    try:
        out = OpenAIBackend([stub.url], model="m", request_timeout=0.3, backoff=0.01).generate(
            [ChatRequest("a", [], key="k")], SamplingParams()
        )
    finally:
        release.set()
    assert out[0].texts == ["answer 0"] and len(stub.calls) == 2


def test_concurrency_and_progress(stubs) -> None:
    barrier = threading.Barrier(4)
    inflight, peak, lock = [0], [0], threading.Lock()

    def script(i: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        barrier.wait(10)  # passes only with 4 requests in flight at once
        with lock:
            inflight[0] -= 1
        return completion(body)

    stub = stubs(script)
    calls: list[tuple[int, int]] = []
    reqs = [ChatRequest(text=str(i), images=[], key=str(i)) for i in range(8)]
    out = OpenAIBackend([stub.url], model="m", concurrency=4, max_retries=0).generate(
        reqs, SamplingParams(), progress=lambda d, t: calls.append((d, t))
    )
    assert [g.key for g in out] == [r.key for r in reqs]
    assert peak[0] == 4 and calls[-1] == (8, 8) and [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_model_discovered_when_not_configured(stubs) -> None:
    stub = stubs()
    be = OpenAIBackend([stub.url], api_key=KEY)
    be.generate([ChatRequest("a", [])], SamplingParams())
    assert be.model == "stub-model" and stub.calls[0]["body"]["model"] == "stub-model"


def test_load_backend_openai(stubs) -> None:
    stub = stubs()
    be = load_backend("openai", "/not/read", model_id="ckpt", device="cpu", dtype="float32", batch_size=8,
                      trust_remote_code=False, endpoints=[stub.url], served_model_name="m", concurrency=2,
                      request_timeout=5.0, api_key=KEY)  # fmt: skip
    assert isinstance(be, OpenAIBackend) and be.model_id == "ckpt" and be.model == "m" and be.concurrency == 2
    assert be.generate([ChatRequest("a", [])], SamplingParams())[0].texts == ["answer 0"]
    assert stub.calls[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    with pytest.raises(ValueError, match="model.endpoints"):
        load_backend("openai", "/not/read", model_id="ckpt")


# --- against vLLM's own OpenAI-compatible server --------------------------------------------------


def test_vllm_server_greedy_matches_transformers(
    request: pytest.FixtureRequest, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server applies the model's chat template to the OpenAI messages: same prompt, same tokens."""
    reqs = [requests()[i] for i in (0, 1, 2, 4)]  # 0, 1 and 2 images; a system turn
    params = SamplingParams(max_new_tokens=16)
    hf = TransformersBackend(str(tiny_qwen), batch_size=4)
    want = hf.generate(reqs, params)  # while the server boots
    enc = hf._encode([reqs[1]])
    with torch.inference_mode():
        ids = hf.model.generate(
            **enc, do_sample=False, max_new_tokens=16, eos_token_id=hf.stop_ids, pad_token_id=hf.pad_id
        )
    want_ids = ids[0, enc["input_ids"].shape[1] :].tolist()
    server = request.getfixturevalue("vllm_server")
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    be = OpenAIBackend([server.url], model=server.model, concurrency=4)
    got = be.generate(reqs, params)
    assert [(g.key, g.prompt_tokens, g.token_counts) for g in got] == [
        (w.key, w.prompt_tokens, w.token_counts) for w in want
    ]
    for g, w in zip(got, want):
        # the server detokenizes incrementally and drops a trailing partial UTF-8 sequence where
        # tokenizer.decode writes U+FFFD: compare the texts without replacement characters
        assert g.texts[0].replace("\ufffd", "") == w.texts[0].replace("\ufffd", ""), g.key
    # token for token: the ids the server generated for the image request (vLLM's
    # return_tokens_as_token_ids), against model.generate
    body = be.payload(reqs[1], params, 0) | {"logprobs": True, "return_tokens_as_token_ids": True}
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {server.api_key}"})  # fmt: skip
    resp.raise_for_status()
    got_ids = [int(t["token"].removeprefix("token_id:")) for t in resp.json()["choices"][0]["logprobs"]["content"]]
    assert got_ids == want_ids


def test_vllm_server_samples_discovery_and_auth(vllm_server) -> None:
    be = OpenAIBackend([vllm_server.url], api_key=vllm_server.api_key)  # model: discovered
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=8, seed=3)
    out = be.generate(requests()[:2], params)
    assert be.model == "tiny"
    for g in out:
        assert len(g.texts) == 3 and all(1 <= c <= 8 for c in g.token_counts) and g.prompt_tokens > 0
    assert len(set(out[0].texts)) > 1
    wrong = OpenAIBackend([vllm_server.url], model="tiny", api_key="sk-wrong", backoff=0.01)
    with pytest.raises(OpenAIBackendError, match="HTTP 401") as err:
        wrong.generate(requests()[:1], SamplingParams(max_new_tokens=2))
    assert "sk-wrong" not in str(err.value)


# --- a new judge reaches the servers: LoRA adapters loaded by name ---------------------------------


def _adapter_and_merged(tiny_qwen: Path, out: Path) -> tuple[Path, Path]:
    """A LoRA adapter over tiny_qwen (non-zero B, so it changes outputs) and its merged full folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfjudge.shared.config import LORA_TARGET

    torch.manual_seed(2)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET, init_lora_weights=False)
    )
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    peft_model.save_pretrained(out / "adapter")
    processor.save_pretrained(out / "adapter")
    peft_model.merge_and_unload().save_pretrained(out / "merged")
    processor.save_pretrained(out / "merged")
    return out / "adapter", out / "merged"


def test_load_adapter_is_sent_to_every_endpoint(stubs) -> None:
    """Each server gets POST /v1/load_lora_adapter; "already loaded" is fine; requests then name it."""
    already = "The lora adapter 'j1' has already been loaded. If you want to load the adapter in place, ..."
    one = stubs()
    two = stubs(lambda i, body: (400, {"error": {"message": already}}) if "lora_name" in body else completion(body))
    be = OpenAIBackend([one.url, two.url], model="base", api_key=KEY)
    be.load_adapter("j1", "/adapters/h1")
    for stub in (one, two):
        assert [(c["path"], c["body"]) for c in stub.calls] == [
            ("/v1/load_lora_adapter", {"lora_name": "j1", "lora_path": "/adapters/h1"})
        ]
    be.generate([ChatRequest("a", [])], SamplingParams())
    chat = [c for c in one.calls + two.calls if c["path"] == "/v1/chat/completions"]
    assert len(chat) == 1 and chat[0]["body"]["model"] == "j1"
    refusing = stubs(lambda i, body: (404, {"error": {"message": "Not Found"}}))
    with pytest.raises(OpenAIBackendError, match="could not load LoRA adapter 'j2'.*--enable-lora"):
        OpenAIBackend([refusing.url], model="base").load_adapter("j2", "/adapters/h2")


def test_openai_run_plan_is_refused_unless_judges_are_adapters() -> None:
    from selfjudge.shared.models.generation.openai_backend import plan_problem

    assert plan_problem("openai", "lora", lora_merge=False) is None
    assert plan_problem("transformers", "full", lora_merge=True) is None
    assert "full fine-tuning" in plan_problem("openai", "full", lora_merge=False)
    assert "lora_merge true" in plan_problem("openai", "lora", lora_merge=True)


def test_selfjudge_run_refuses_a_full_finetune_plan_with_the_openai_backend(tmp_path: Path, capsys) -> None:
    """Refused at start with the reason, before anything is touched (the endpoint does not exist)."""
    from selfjudge import cli

    argv = [
        "run",
        "--set",
        f"run.work_dir={tmp_path / 'work'}",
        "--set",
        "model.backend=openai",
        "--set",
        "model.endpoints=http://127.0.0.1:9",
        "--set",
        "train.method=full",
    ]
    assert cli.main(argv) == 2
    message = capsys.readouterr().err
    assert "cannot start" in message and "train.lora_merge false" in message
    assert not (tmp_path / "work").exists()  # nothing was created


def test_each_new_judge_reaches_the_vllm_server(
    request: pytest.FixtureRequest, tiny_qwen: Path, tmp_path: Path
) -> None:
    """The loop's model cache on the openai backend: iteration 0 judges with the served base; a
    trained adapter (iteration 1) is loaded into vLLM's server and judges token for token like its
    merged weights; a full checkpoint is refused with the reason."""
    from selfjudge.shared import loop
    from selfjudge.shared.config import load_settings
    from selfjudge.shared.context import make_context
    from selfjudge.shared.db import migrate
    from selfjudge.shared.models.generation.openai_backend import adapter_name
    from selfjudge.shared.queue import LocalBus

    adapter, merged = _adapter_and_merged(tiny_qwen, tmp_path)
    reqs = [r for r in requests() if len(r.images) <= 1][:3]
    params = SamplingParams(max_new_tokens=8)
    want_base = TransformersBackend(str(tiny_qwen)).generate(reqs, params)
    want_judge = TransformersBackend(str(merged)).generate(reqs, params)
    assert want_judge != want_base
    server = request.getfixturevalue("vllm_server")
    settings = load_settings(
        environ={},
        overrides={
            "run": {"work_dir": str(tmp_path / "work")},
            "model": {
                "backend": "openai",
                "endpoints": [server.url],
                "served_model_name": server.model,
                "api_key": server.api_key,
                "adapter_dir": str(tmp_path / "served-adapters"),
            },
            "train": {"method": "lora", "lora_merge": False},
        },
    )
    migrate(settings.database_url())
    ctx = make_context(settings, "reasoner", LocalBus())
    base_id = loop.register_checkpoint(ctx, None, 0, str(tiny_qwen))
    judge_id = loop.register_checkpoint(ctx, None, 1, str(adapter), parent_id=base_id)
    full_id = loop.register_checkpoint(ctx, None, 2, str(merged), parent_id=judge_id)

    base = ctx.models.backend(base_id)
    assert base.model == server.model and base.generate(reqs, params) == want_base
    judge = ctx.models.backend(judge_id)
    assert judge.model.startswith("selfjudge-") and judge.model == adapter_name(judge.model_id)
    assert (tmp_path / "served-adapters" / judge.model_id / "adapter_config.json").is_file()
    assert judge.generate(reqs, params) == want_judge
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {server.api_key}"}).json()
    assert judge.model in [m["id"] for m in listed["data"]]
    ctx.models.release()
    assert ctx.models.backend(judge_id).generate(reqs, params) == want_judge  # loaded again: no error
    with pytest.raises(ValueError, match="full model folder.*LoRA adapters"):
        ctx.models.backend(full_id)
