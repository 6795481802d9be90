"""Supervised fine-tuning of a VLM checkpoint, with the loss on the assistant answer tokens only."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import vision_compat

vision_compat.ensure_torchvision()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup  # noqa: E402

from .backend import DTYPES, chat_messages  # noqa: E402

log = logging.getLogger(__name__)
IGNORE = -100
MAX_GRAD_NORM = 1.0  # as HF Trainer / TRL default
SEQ_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


@dataclass
class SFTExample:
    text: str
    images: list[Image.Image]
    answer: str
    system: str | None = None


@dataclass
class TrainConfig:
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"


@dataclass
class TrainResult:
    steps: int  # optimizer steps
    losses: list[float]  # mean loss per answer token, one per optimizer step
    answer_tokens: int  # supervised tokens seen over the whole run (all epochs)
    seconds: float


def encode_example(processor: Any, ex: SFTExample, max_length: int) -> dict[str, torch.Tensor]:
    """Prompt (chat template + generation prompt, images expanded) followed by answer + eos.

    The answer is tokenized on its own, exactly as the model would emit it after the generation
    prompt; labels are -100 everywhere except the answer tokens and the closing eos (<|im_end|>).
    Too-long examples lose the end of their answer; a prompt that leaves no room raises ValueError.
    """
    tok = processor.tokenizer
    prompt = processor.apply_chat_template(
        chat_messages(ex.text, ex.images, ex.system), add_generation_prompt=True, tokenize=False
    )
    enc = processor(text=[prompt], images=[list(ex.images)] if ex.images else None, return_tensors="pt")
    prompt_ids = enc["input_ids"][0]
    answer_ids = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    room = max_length - len(prompt_ids)
    if room < 1:
        raise ValueError(f"prompt is {len(prompt_ids)} tokens, max_length is {max_length}")
    answer = torch.tensor(answer_ids[:room], dtype=prompt_ids.dtype)
    out: dict[str, torch.Tensor] = {
        "input_ids": torch.cat([prompt_ids, answer]),
        "attention_mask": torch.ones(len(prompt_ids) + len(answer), dtype=torch.long),
        "labels": torch.cat([torch.full_like(prompt_ids, IGNORE), answer]),
    }
    for k, v in enc.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if k in SEQ_KEYS:  # per-token extras (e.g. mm_token_type_ids): answer tokens are text (0)
            out[k] = torch.cat([v[0], torch.zeros(len(answer), dtype=v.dtype)])
        else:  # image tensors (pixel_values, image_grid_thw, ...), concatenated across a batch
            out[k] = v
    return out


def collate(examples: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the per-token tensors; concatenate the image tensors along dim 0."""
    n = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "labels": IGNORE}
    batch: dict[str, torch.Tensor] = {}
    for k in dict.fromkeys(k for e in examples for k in e):
        have = [e[k] for e in examples if k in e]
        if k in SEQ_KEYS:
            batch[k] = torch.stack([F.pad(v, (0, n - len(v)), value=fill.get(k, 0)) for v in have])
        else:
            batch[k] = torch.cat(have)
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within chunks of 8 batches, cut into batches, shuffle the batches."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 8
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def answer_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over answer tokens; the LM head runs only at those positions."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def sft(
    model_path: str,
    examples: list[SFTExample],
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=DTYPES[cfg.dtype], use_safetensors=True)
    model.to(cfg.device).train()
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    data = []
    for ex in examples:
        try:
            data.append(encode_example(processor, ex, cfg.max_length))
        except ValueError as e:
            log.warning("skipping example: %s", e)
    if not data:
        raise ValueError("no trainable examples")
    lengths = [len(d["input_ids"]) for d in data]
    per_epoch = math.ceil(math.ceil(len(data) / cfg.batch_size) / cfg.grad_accum)
    total = per_epoch * cfg.epochs

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)

    losses: list[float] = []
    seen = 0
    for _ in range(cfg.epochs):
        batches = length_grouped_batches(lengths, cfg.batch_size, rng)
        for g in range(0, len(batches), cfg.grad_accum):
            group = [collate([data[i] for i in b], pad_id) for b in batches[g : g + cfg.grad_accum]]
            n_tok = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in group)
            loss_sum = 0.0
            for batch in group:  # token-weighted mean over the whole accumulation group
                batch = {k: v.to(cfg.device) for k, v in batch.items()}
                loss = answer_loss_sum(model, batch) / n_tok
                loss.backward()
                loss_sum += loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss_sum)
            seen += n_tok
            if progress is not None:
                progress(len(losses), total, loss_sum)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return TrainResult(steps=len(losses), losses=losses, answer_tokens=seen, seconds=time.time() - t0)
