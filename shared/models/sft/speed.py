"""Optional speed-ups of the trainer, each a `TrainConfig` switch that stays off until
bench/gpu_bench.py shows that it pays on a card (its `gpu_bench variant <name>` lines):

- `vision_varlen`: a Qwen2/2.5-VL vision tower attends through `varlen.attention` with its window
  and image boundaries, one FlashAttention varlen call per block on CUDA, instead of transformers'
  loop of one SDPA call per window or image (for a micro-batch of 64 images: hundreds of small
  kernels and a device sync per block). Off CUDA each segment still runs through SDPA.
- `compile`: regional torch.compile, each text decoder layer and vision block on its own with a
  dynamic sequence length (the layers of one kind share one compiled graph); the varlen attention
  stays eager inside them. A Qwen-VL vision block is compiled only with `vision_varlen` (else its
  loop over windows would be unrolled into the graph, recompiled for every other image count).
  Not with FSDP.
- `kernels="liger"`: Liger kernels (the optional `liger-kernel` package, CUDA + triton): fused
  RMSNorm and SwiGLU in the text model, RMSNorm in the vision blocks, and the answer-only loss as
  its fused linear cross-entropy (logits made and reduced chunk by chunk, never all at once).
  Liger's patch also replaces transformers' Qwen2/2.5-VL RMSNorm and MLP classes in this process,
  so models built later in it get them too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from ...config import TrainConfig
from . import varlen

# the repeated blocks compiled one by one: text decoder layers, vision blocks / encoder layers
BLOCKS = re.compile(
    r"((language_model|text_model)\.layers|(visual|vision_model)\.(blocks|encoder\.layers|transformer\.layers))\.\d+$"
)
QWEN_VISION_BLOCK = re.compile(r"(^|\.)visual\.blocks\.\d+$")
LIGER_PATCHES = {"qwen2_5_vl": "apply_liger_kernel_to_qwen2_5_vl", "qwen2_vl": "apply_liger_kernel_to_qwen2_vl"}


def apply(model: Any, cfg: TrainConfig) -> dict[str, Any]:
    """cfg's speed-ups on `model` (the transformers model, on its device); returns what was done."""
    done: dict[str, Any] = {}
    if cfg.vision_varlen:
        done["vision_attention"] = (
            varlen.VISION_NAME if varlen.use_in_vision(model) else "unchanged (no Qwen-VL vision tower)"
        )
    if cfg.kernels == "liger":
        done["kernels"] = apply_liger(model)
    if cfg.compile:
        done["compiled_blocks"] = compile_blocks(model)
    return done


def _liger() -> Any:
    try:
        import liger_kernel.transformers as lk
    except ImportError as exc:
        raise RuntimeError(
            f"train.kernels=liger needs the liger-kernel package and triton (pip install liger-kernel): {exc}"
        ) from exc
    return lk


def apply_liger(model: Any) -> str:
    """Liger's RMSNorm and SwiGLU on this Qwen2/2.5-VL model (its loss: `fused_loss`)."""
    name = LIGER_PATCHES.get(getattr(model.config, "model_type", ""))
    if name is None:
        raise ValueError(f"train.kernels=liger: no Liger patch for model type {model.config.model_type!r} "
                         f"(only {', '.join(LIGER_PATCHES)})")  # fmt: skip
    # rope: transformers >= 5.2 applies mrope in its rotary embedding, which Liger's patch does not reach
    getattr(_liger(), name)(rope=False, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True, swiglu=True,
                            model=model)  # fmt: skip
    return "liger"


def fused_loss(cfg: TrainConfig) -> Callable[..., torch.Tensor] | None:
    """The answer loss as `loss(lm_head.weight, hidden, targets, lm_head.bias)` summed, or None (plain)."""
    if cfg.kernels != "liger":
        return None
    return _liger().LigerFusedLinearCrossEntropyLoss(reduction="sum")


def compile_blocks(model: Any, backend: str = "inductor") -> int:
    """torch.compile each repeated block (`BLOCKS`; Qwen-VL vision blocks only once `varlen.use_in_vision`
    sent them to one attention call) in place, dynamic shapes; returns how many."""
    n = 0
    for name, module in model.named_modules():
        window_loop = QWEN_VISION_BLOCK.search(name) and module.attn.config._attn_implementation != varlen.VISION_NAME
        if BLOCKS.search(name) and not window_loop:
            module.compile(dynamic=True, backend=backend)
            n += 1
    if n == 0:
        raise ValueError(
            f"train.compile: no decoder layers or vision blocks ({BLOCKS.pattern}) in {type(model).__name__}"
        )
    return n
