"""Generation over an OpenAI-compatible HTTP API (e.g. a fleet of `vllm serve`): same interface as
TransformersBackend.

- `endpoints`: one or several base URLs ("http://host:8000" or ".../v1"); requests are spread
  round-robin, and a retried request moves on to the next endpoint.
- `model`: the served model name; empty -> the first id that GET /v1/models lists.
- API key: the `api_key` argument, else env SELFJUDGE__MODEL__API_KEY, else OPENAI_API_KEY; sent as
  a Bearer token and never logged (repr and error messages leave it out).
- `concurrency` requests in flight at once (a thread pool over one httpx.Client).
- Images go as base64 PNG data URLs, placed before the text in the user turn (as the chat
  template of the transformers backend places them); the server applies the model's chat template.
- n samples: one request with `n`; per-sample token counts come from the returned logprobs (one
  entry per generated token), prompt tokens from `usage`. Greedy (temperature 0) asks for one
  completion and repeats it n times, as the other backends do.
- Retries with exponential backoff (Retry-After honoured) on connection errors, timeouts, 429 and
  5xx; other 4xx fail at once with the server's message. `request_timeout` is per HTTP request.
- `vllm_extras` (default on) sends vLLM's sampling fields top_k and repetition_penalty=1.0 so the
  server's generation_config.json defaults do not change sampling; turn off for servers that
  reject unknown fields.
- A new judge reaches the servers as a LoRA adapter: `load_adapter(name, path)` POSTs vLLM's
  /v1/load_lora_adapter to every endpoint (the servers run with --enable-lora and
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; `path` is the adapter folder as the servers see it), and
  requests then ask for `name`. A full fine-tuned checkpoint cannot reach a running server, so
  `selfjudge run` refuses that plan at start (`plan_problem`).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import httpx
from PIL import Image

from .backend import ChatRequest, Generation, SamplingParams

log = logging.getLogger(__name__)

API_KEY_ENV = ("SELFJUDGE__MODEL__API_KEY", "OPENAI_API_KEY")


class OpenAIBackendError(RuntimeError):
    """A request failed for good (a 4xx other than 429, or retries spent)."""


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_payload_messages(req: ChatRequest) -> list[dict[str, Any]]:
    """OpenAI chat messages: an optional system turn, then images (data URLs) and the text."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in req.images]
    content.append({"type": "text", "text": req.text})
    msgs: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if req.system is not None:
        msgs.insert(0, {"role": "system", "content": req.system})
    return msgs


def normalize_endpoint(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {url!r} is not an http(s) URL")
    return url if url.endswith("/v1") else url + "/v1"


def _retry_after(resp: httpx.Response | None) -> float | None:
    if resp is None:
        return None
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


class OpenAIBackend:
    def __init__(
        self,
        endpoints: Sequence[str] | str,
        model: str = "",
        model_id: str = "",
        api_key: str = "",
        concurrency: int = 16,
        request_timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        vllm_extras: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("the openai backend needs at least one endpoint (model.endpoints)")
        self.endpoints = [normalize_endpoint(e) for e in endpoints]
        self.model = model
        self.model_id = model_id or model or self.endpoints[0]
        self.concurrency = max(1, concurrency)
        self.request_timeout = request_timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.vllm_extras = vllm_extras
        key = api_key or next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), "")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(request_timeout),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            transport=transport,
        )
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIBackend(endpoints={self.endpoints!r}, model={self.model!r}, concurrency={self.concurrency})"

    def close(self) -> None:
        self._client.close()

    # --- HTTP with retries -----------------------------------------------------------------------

    def _call(
        self, method: str, path: str, start: int, body: dict[str, Any] | None = None, only: str | None = None
    ) -> dict[str, Any]:
        """One API call with retries; attempt k goes to endpoint (start + k) mod len(endpoints), or
        always to endpoint `only`. A reply that is not JSON comes back as {"text": ...}."""
        last = ""
        for attempt in range(self.max_retries + 1):
            url = (only or self.endpoints[(start + attempt) % len(self.endpoints)]) + path
            resp = None
            try:
                resp = self._client.request(method, url, json=body, headers=self._headers)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, protocol errors
                last = f"{url}: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    json_reply = resp.headers.get("content-type", "").startswith("application/json")
                    return resp.json() if json_reply else {"text": resp.text}
                last = f"{url}: HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code != 429 and resp.status_code < 500:
                    raise OpenAIBackendError(last)
            if attempt == self.max_retries:
                break
            delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
            after = _retry_after(resp)
            if after is not None:
                delay = min(self.max_backoff, max(delay, after))
            log.warning("openai backend: %s; retry %d/%d in %.2fs", last, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise OpenAIBackendError(f"gave up after {self.max_retries + 1} attempts: {last}")

    def served_model(self) -> str:
        """The model name requests carry: the configured one, else the first the server lists."""
        with self._lock:
            if not self.model:
                data = self._call("GET", "/models", 0).get("data") or []
                if not data:
                    raise OpenAIBackendError(f"{self.endpoints[0]}/models lists no model")
                self.model = data[0]["id"]
            return self.model

    def load_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter folder `path` into every server as `name`; requests then use it.
        A server that already holds `name` keeps it (names carry the checkpoint's content hash)."""
        for endpoint in self.endpoints:
            try:
                self._call("POST", "/load_lora_adapter", 0, {"lora_name": name, "lora_path": path}, only=endpoint)
            except OpenAIBackendError as exc:
                if "has already been loaded" in str(exc):
                    continue
                raise OpenAIBackendError(
                    f"could not load LoRA adapter {name!r} from {path} into {endpoint}: {exc} (the server needs "
                    "--enable-lora, a --max-lora-rank at least the adapter's rank, "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and the folder at that path: model.adapter_dir)"
                ) from None
        with self._lock:
            self.model = name
        log.info("openai backend: LoRA adapter %s (%s) loaded into %d server(s)", name, path, len(self.endpoints))

    # --- generation ------------------------------------------------------------------------------

    def payload(self, req: ChatRequest, p: SamplingParams, seed: int) -> dict[str, Any]:
        sample = p.temperature > 0
        copies = p.n if sample else 1
        body: dict[str, Any] = {
            "model": self.served_model(),
            "messages": chat_payload_messages(req),
            "max_tokens": p.max_new_tokens,
            "n": copies,
            "temperature": p.temperature if sample else 0.0,
            "top_p": p.top_p if sample else 1.0,
            "seed": seed,
        }
        if copies > 1:  # per-sample token counts: one logprobs entry per generated token
            body |= {"logprobs": True, "top_logprobs": 0}
        if self.vllm_extras:
            body |= {"top_k": p.top_k if sample and p.top_k > 0 else 0, "repetition_penalty": 1.0}
        return body

    def _one(self, i: int, req: ChatRequest, p: SamplingParams) -> Generation:
        copies = p.n if p.temperature > 0 else 1
        resp = self._call("POST", "/chat/completions", i, self.payload(req, p, p.seed + i))
        choices = sorted(resp.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != copies:
            raise OpenAIBackendError(f"asked for {copies} completions, got {len(choices)}")
        usage = resp.get("usage") or {}
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        counts = [len(((c.get("logprobs") or {}).get("content")) or []) for c in choices]
        if copies == 1 or not all(counts):  # no logprobs: spread usage.completion_tokens evenly
            total = int(usage.get("completion_tokens", 0))
            counts = [total // copies + (1 if k < total % copies else 0) for k in range(copies)]
        if copies < p.n:  # greedy: every sample is the same completion
            texts, counts = texts * p.n, counts * p.n
        return Generation(
            key=req.key, texts=texts, token_counts=counts, prompt_tokens=int(usage.get("prompt_tokens", 0))
        )

    def generate(
        self,
        requests: list[ChatRequest],
        params: SamplingParams,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        if not requests:
            return []
        self.served_model()  # once, before the fan-out
        results: list[Generation | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="openai-backend")
        try:
            futures = {pool.submit(self._one, i, r, params): i for i, r in enumerate(requests)}
            pending, done_count = set(futures), 0
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    exc = fut.exception()
                    if exc is not None:
                        raise exc
                    results[futures[fut]] = fut.result()
                    done_count += 1
                if progress is not None:
                    progress(done_count, len(requests))
        finally:  # on failure: drop what has not started, do not wait for what is in flight
            pool.shutdown(wait=False, cancel_futures=True)
        return results  # type: ignore[return-value]


def adapter_name(content_hash: str) -> str:
    """The name a judge checkpoint's adapter is served under."""
    return f"selfjudge-{content_hash[:16]}"


def plan_problem(backend: str, method: str, lora_merge: bool) -> str | None:
    """Why a run with these settings would judge with a model other than its checkpoints, or None.

    Every trained checkpoint is evaluated (and judges the next iteration), so with the openai
    backend each one must reach the servers: only LoRA adapters can (train.method lora,
    train.lora_merge false); a full or merged checkpoint would need the servers restarted on it.
    """
    if backend != "openai" or (method == "lora" and not lora_merge):
        return None
    what = "full fine-tuning" if method == "full" else "LoRA merged into full weights (train.lora_merge true)"
    return (
        f"model.backend openai with {what}: the trained checkpoints cannot be loaded into the running "
        "servers, so they would be evaluated and used as judges with whatever model the servers hold. "
        "Set train.method lora and train.lora_merge false (each new adapter is loaded into the servers "
        "by name), or use model.backend transformers or vllm"
    )
