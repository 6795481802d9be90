"""What every generation backend shares: chat requests (text + images) in, completions out.

The request and result types, the `GenerationBackend` protocol the stages call, and the helpers
the backends share (stop tokens, freeing memory on a model swap). The backends themselves are
`transformers_backend`, `vllm_backend` and `openai_backend`; `load.load_backend` picks one. This
module imports none of them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


@dataclass
class ChatRequest:
    text: str  # the user message text
    images: list[Image.Image]  # 0..n images, placed before the text in the user turn
    system: str | None = None
    key: str = ""  # caller's id, returned untouched


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 -> off
    max_new_tokens: int = 128
    seed: int = 0


@dataclass
class Generation:
    key: str
    texts: list[str]  # n completions, special tokens stripped
    token_counts: list[int]  # generated tokens per completion, the stop token included
    prompt_tokens: int


@runtime_checkable
class GenerationBackend(Protocol):
    model_id: str  # identity of the loaded checkpoint (content hash given by caller)

    def generate(
        self,
        requests: list[ChatRequest],
        params: SamplingParams,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]: ...


def free_memory() -> None:
    """Collect garbage and hand cached CUDA blocks back to the driver (what a model swap needs)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def close_backend(backend: object) -> None:
    """Shut a backend down (its `close()`, when it has one) and free its memory now, not at
    some later garbage collection: a checkpoint swap must not hold two models at once."""
    close = getattr(backend, "close", None)
    if callable(close):
        close()
    free_memory()


def stop_token_ids(processor: Any, model: Any) -> list[int]:
    """The tokenizer's eos (<|im_end|> for chat models) plus whatever the checkpoint's generation config stops on."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    eos = processor.tokenizer.eos_token_id
    return ids + ([eos] if eos is not None and eos not in ids else [])
