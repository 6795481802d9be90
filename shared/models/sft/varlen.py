"""Variable-length attention for packed training rows: each example attends only within itself,
with no (L x L) mask and no work spent on the masked-out blocks.

Registered with transformers' AttentionInterface as `NAME` (a name without "flash": transformers
would look for a flash-attn package). In the text model the boundaries come from the packed row's
text position ids (restarting at 0 per example, `data.packed_positions`), found once per
forward; Qwen-VL's vision tower calls it once per image/window, which goes to SDPA as before. On CUDA the kernel is torch's
FlashAttention varlen (`torch.nn.attention.varlen.varlen_attn`), used only after `usable(device)`
has checked it against SDPA on the device; elsewhere (CPU tests) each segment runs through SDPA.

`use_in_vision(model)` (TrainConfig.vision_varlen) sends a Qwen2/2.5-VL vision tower here too,
under `VISION_NAME`: with "flash" in its name the tower passes its window/image boundaries
(`cu_seqlens`) in one call per block, instead of calling once per window or image. The function is
kept out of torch.compile (`compile` in speed.py compiles the blocks around it).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F

NAME = "selfjudge_varlen"
# the vision towers' name: "flash" in it makes transformers pass cu_seqlens (set on the config directly,
# so transformers does not look for a flash-attn package)
VISION_NAME = "selfjudge_flash_varlen_vision"


def _cu_from_positions(position_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, int]:
    pos = position_ids.reshape(-1)[-length:]
    starts = (pos == 0).nonzero().flatten()
    if len(starts) == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([length])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _sdpa_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, causal: bool,
                   scale: float | None) -> torch.Tensor:  # fmt: skip
    """(L, H, D) in, (L, H, D) out: SDPA per segment (the reference, and the path off CUDA)."""
    out = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        o = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=causal, scale=scale, enable_gqa=qs.shape[1] != ks.shape[1]
        )
        out.append(o[0].transpose(0, 1))
    return torch.cat(out)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, causal: bool,
           scale: float | None) -> torch.Tensor:  # fmt: skip
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kw: dict[str, Any] = {}
    if "is_causal" in params:  # the argument's name differs across torch releases
        kw["is_causal"] = causal
    elif causal:
        kw["window_size"] = (-1, 0)
    if scale is not None and "scale" in params:
        kw["scale"] = scale
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw)


@torch.compiler.disable
def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,  # noqa: ARG001
              position_ids: torch.Tensor | None = None, cu_seq_lens_q: torch.Tensor | None = None,
              max_length_q: int | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip  # noqa: ARG001 - transformers' attention signature
    """transformers attention function: (1, H, L, D) q/k/v in, (1, L, H, D) out."""
    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"{NAME} takes one packed row without an attention mask (got batch {query.shape[0]})")
    length = query.shape[2]
    # the vision tower says is_causal=False; the text attention says nothing and is causal (as SDPA reads it)
    causal = bool(is_causal) if is_causal is not None else bool(getattr(module, "is_causal", True))
    if position_ids is None and cu_seq_lens_q is None:  # one segment (e.g. a vision window): plain SDPA, no sync
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])  # fmt: skip
        return out.transpose(1, 2), None
    if cu_seq_lens_q is not None:
        cu, max_len = cu_seq_lens_q.to(torch.int32), int(max_length_q or length)
    else:  # the text model: one segment per example, found once per forward (every layer gets this tensor)
        if not hasattr(position_ids, "_selfjudge_cu"):
            position_ids._selfjudge_cu = _cu_from_positions(position_ids, length)
        cu, max_len = position_ids._selfjudge_cu
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    if q.is_cuda and kernel_ok(q.device, q.shape[-1], causal):
        # rotary embeddings leave q/k in fp32 under autocast; the kernel takes bf16/fp16 (as SDPA casts)
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else v.dtype
        dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = _flash(q.to(dtype), k.to(dtype), v.to(dtype), cu, max_len, causal, scaling)
    else:
        out = _sdpa_segments(q, k, v, cu.to(q.device), causal, scaling)
    return out[None], None


def usable(device: torch.device) -> bool:
    """torch's varlen FlashAttention runs on `device` and matches SDPA (checked once per device)."""
    return device.type == "cuda" and kernel_ok(device, 64, True)


@functools.cache
def kernel_ok(device: torch.device, head_dim: int, causal: bool) -> bool:
    """The kernel runs for this head size (GQA 4/2 heads, two segments) and matches SDPA forward and
    backward; checked once per (device, head size, causal)."""
    if device.type != "cuda":
        return False
    try:  # also when first asked inside a forward: gradients on, no autocast
        with torch.enable_grad(), torch.autocast("cuda", enabled=False):
            return _check(device, head_dim, causal)
    except Exception:  # noqa: BLE001 - no kernel for this card/torch/shape: SDPA instead
        return False


def _check(device: torch.device, head_dim: int, causal: bool) -> bool:
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(96, h, head_dim, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
               for h in (4, 2, 2))  # fmt: skip
    cu = torch.tensor([0, 40, 96], device=device, dtype=torch.int32)
    got = _flash(q, k, v, cu, 56, causal, None)
    (dq,) = torch.autograd.grad(got.float().square().sum(), [q])  # training needs its backward too
    ref = _sdpa_segments(q, k, v, cu, causal, None)
    (rq,) = torch.autograd.grad(ref.float().square().sum(), [q])
    return bool((got - ref).abs().max() < 2e-2) and bool((dq - rq).abs().max() < 5e-2 * (rq.abs().max() + 1))


def register() -> str:
    """Make `NAME` a transformers attention implementation (idempotent); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    return NAME


def use_in_vision(model: Any) -> bool:
    """Route a Qwen2/2.5-VL vision tower's attention here, one call per block (False: no such tower)."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    if visual is None or not hasattr(visual, "blocks"):
        return False
    from transformers import AttentionInterface

    AttentionInterface.register(VISION_NAME, attention)
    visual.config._attn_implementation_internal = VISION_NAME  # not the setter: it would look for flash-attn
    return True
