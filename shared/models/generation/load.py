"""The generation backend a config names (model.backend): the one module that imports every backend."""

from __future__ import annotations

from typing import Any

from .backend import GenerationBackend
from .openai_backend import OpenAIBackend
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend

BACKENDS = ("transformers", "vllm", "openai")
# what the openai backend takes from load_backend's keywords (ModelConfig field -> OpenAIBackend argument)
_OPENAI_KW = {"model_id": "model_id", "endpoints": "endpoints", "served_model_name": "model", "api_key": "api_key",
              "concurrency": "concurrency", "request_timeout": "request_timeout"}  # fmt: skip


def load_backend(kind: str, model_path: str, **kw: Any) -> GenerationBackend:
    """The generation backend `kind` (ModelConfig.backend) for the checkpoint folder `model_path`.

    Every ModelConfig setting may be passed to every kind; each takes what applies to it.
    transformers / vllm: load `model_path` here (model_id, device, dtype, batch_size,
    trust_remote_code, ...; vllm ignores batch_size; the openai-only endpoints,
    served_model_name, api_key, concurrency, request_timeout are dropped). transformers also takes
    `decode` (ModelConfig.hf_decode); vllm takes `vllm`, a dict of its engine settings
    (ModelConfig.vllm.backend_kwargs()). openai: `model_path` is not read (the servers serve the
    model); model_id and those openai settings are used.
    """
    local = {k: v for k, v in kw.items() if k not in _OPENAI_KW or k == "model_id"}  # server settings dropped
    engine = local.pop("vllm", None) or {}
    if kind == "transformers":
        return TransformersBackend(model_path, **local)
    if kind == "vllm":
        local.pop("decode", None)
        return VLLMBackend(model_path, **(local | engine))
    if kind == "openai":
        args = {_OPENAI_KW[k]: v for k, v in kw.items() if k in _OPENAI_KW}
        if not args.get("endpoints"):
            raise ValueError("model.backend 'openai' needs model.endpoints (base URLs of OpenAI-compatible servers)")
        return OpenAIBackend(**args)
    raise NotImplementedError(f"generation backend {kind!r} not implemented (have: {', '.join(BACKENDS)})")
