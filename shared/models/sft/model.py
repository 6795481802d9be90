"""The model being trained: loaded (a full checkpoint, LoRA over it, an adapter over its base), its
vision encoder optionally frozen, its answer-only loss, and the folder written at the end."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from ...config import TrainConfig
from ..dtypes import DTYPES
from . import varlen
from .data import IGNORE

META_FILE = "selfjudge_training.json"
# the vision encoder without its projector into the language model: Qwen2/2.5-VL `visual.*` less
# `visual.merger.*`; Mllama and Idefics3 `vision_model.*` (projectors: multi_modal_projector, connector)
VISION_ENCODER = re.compile(r"(^|\.)(visual|vision_model|vision_tower)\.(?!merger\.)")


def core_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss_sum(
    model: Any, batch: dict[str, torch.Tensor], fused: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """Summed cross-entropy over answer tokens; the LM head runs only at those positions.

    `fused(weight, hidden, targets, bias)` (speed.fused_loss: Liger's fused linear cross-entropy)
    computes the head and the loss together instead.
    """
    core = core_model(model)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = core.model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    head = core.get_output_embeddings()
    if fused is not None:
        return fused(head.weight, hidden[:, :-1][keep], targets[keep], head.bias)
    logits = head(hidden[:, :-1][keep])  # (n_answer, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


class AnswerLoss(torch.nn.Module):
    """The model with the answer-only loss as its forward: what DDP/FSDP wrap, so their hooks fire."""

    def __init__(self, model: Any, fused: Callable[..., torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.fused = fused  # the loss with the LM head fused in (answer_loss_sum), or None
        self.touch: list[str] = []  # FSDP: parameters every micro-batch must give a gradient to

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = answer_loss_sum(self.model, batch, self.fused)
        if self.touch:  # 0 * w: a text-only micro-batch still "uses" the vision tower, as its peers do
            loss = loss + 0.0 * sum(self.get_parameter(n).reshape(-1)[0].float() for n in self.touch)
        return loss


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def adapter_base(path: str | Path) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_target,
        bias="none",
    )  # fmt: skip


def load_trainable(model_path: str, cfg: TrainConfig, dtype: torch.dtype) -> Any:
    """The model to train: a full checkpoint, or for LoRA a PEFT model over it.

    An adapter folder (a LoRA judge written with lora_merge=False) is loaded over its base: LoRA
    continues training that adapter (so the result is again an adapter of the same base); full
    fine-tuning merges it first.
    """
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.attn_implementation == varlen.NAME:
        varlen.register()
    if is_adapter(model_path):
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(
            adapter_base(model_path), dtype=dtype, use_safetensors=True, **attn
        )
        if cfg.method == "lora":
            return PeftModel.from_pretrained(base, model_path, is_trainable=True)
        model = PeftModel.from_pretrained(base, model_path).merge_and_unload().requires_grad_(True)  # PEFT froze them
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype, use_safetensors=True, **attn)
        if cfg.method == "lora":
            from peft import get_peft_model

            return get_peft_model(model, lora_config(cfg))
    if cfg.freeze_vision:  # full fine-tuning only: LoRA leaves the vision encoder alone anyway
        freeze_vision_encoder(model)
    return model


def freeze_vision_encoder(model: Any) -> int:
    """Stop training the vision encoder's weights (`VISION_ENCODER`); returns how many were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if VISION_ENCODER.search(name):
            p.requires_grad_(False)
            frozen += p.numel()
    if frozen == 0:
        raise ValueError(
            f"freeze_vision: no vision encoder weights ({VISION_ENCODER.pattern}) in {type(model).__name__}"
        )
    return frozen


def export(model: Any, processor: Any, out_dir: str | Path, cfg: TrainConfig, meta: dict | None = None) -> Path:
    """Write the trained model: a full HF folder, or the adapter (LoRA, lora_merge=False); plus META_FILE.

    The model is cast to cfg.dtype on the way out (a merged LoRA is merged before the cast).
    `model` is changed (merged / cast): call this last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora = hasattr(model, "get_base_model")
    if lora and cfg.lora_merge:
        model = model.merge_and_unload()
        lora = False
    model = model.to(DTYPES[cfg.dtype])
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    info = meta if meta is not None else {}  # filled in place: the caller sees format / base_model
    info |= {"format": "peft_adapter" if lora else "full", "method": cfg.method}
    if lora:
        info["base_model"] = adapter_base(out)
    (out / META_FILE).write_text(json.dumps(info, indent=1, default=str))
    return out
