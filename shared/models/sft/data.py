"""Training data for `sft`: examples read one at a time, encoded per micro-batch, packed without padding.

- A source is anything with `len()` and `[i] -> SFTExample` (a list; `launch.FolderExamples`;
  the trainer stage's store-backed source). An optional `identity(i) -> str` names an example
  without reading its images (the resume fingerprint); otherwise the example's image bytes are hashed.
- `encode_example`: chat template + images, then the answer and the end-of-turn token; labels only
  on the answer. Images are first capped at `max_pixels`; an example longer than `max_length` is
  shortened on the prompt side only, by downscaling its images (never below `min_pixels`); if it
  still does not fit it raises `ExampleTooLong` and the caller drops and counts it. The answer (and
  so the verdict) is never cut.
- `measure`: one pass over the examples (DataLoader workers encode ahead) for their lengths; under
  DDP/FSDP each rank measures its own slice and the lengths are gathered, so every rank cuts the same
  plan having read only 1/world of the data.
- `pack`: a padding-free micro-batch, the examples concatenated into one row with per-example
  position ids and no attention mask (transformers builds a block-diagonal mask, or varlen
  attention, from position ids that restart). Qwen2/2.5-VL's mrope positions come from the model's
  own `get_rope_index` per example (run in the workers, `rope_index`), with the text positions as
  row 0 of a (4, 1, L) tensor: the layout transformers reads as packed sequences. `collate` pads instead, for
  families whose image tensors are per example (Mllama, Idefics3).
- `loader`: a DataLoader over this rank's micro-batches in plan order; workers fetch and encode.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..chat_format import answer_format, chat_messages

IGNORE = -100
# per-token tensors of shape (T,) after encoding: right-padded (or concatenated, packed) in a batch
SEQ_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")
# per-token tensors with more dims (Mllama: (1, T, n_images, n_tiles)): the answer attends like the last prompt token
TOKEN_GRID_KEYS = ("cross_attention_mask",)
# image tensors that are lists of patches/images (Qwen-VL): concatenated along dim 0 across a batch
CONCAT_KEYS = ("image_grid_thw", "video_grid_thw", "pixel_values_videos", "second_per_grid_ts")
MAX_SHRINK = 4  # downscaling rounds for an over-long example before it is dropped


@dataclass
class SFTExample:
    text: str
    images: list[Image.Image]
    answer: str
    system: str | None = None


@dataclass(frozen=True)
class EncodeSpec:
    """How examples are encoded: the token limit and the image pixel bounds (0 = no cap)."""

    max_length: int = 1024
    max_pixels: int = 0
    min_pixels: int = 0


class ExampleTooLong(ValueError):
    """The example does not fit max_length even with its images at min_pixels: dropped, never cut."""


@dataclass
class Measured:
    """Lengths of the trainable examples (source indices) and the dropped ones with their reasons."""

    index: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    answer: list[int] = field(default_factory=list)  # supervised tokens per example
    dropped: list[tuple[int, str]] = field(default_factory=list)


# --- images ---------------------------------------------------------------------------------


def fit_pixels(image: Image.Image, max_pixels: int, min_pixels: int = 0) -> Image.Image:
    """The image scaled (aspect kept) to at most max_pixels, never below min_pixels; as is if it fits."""
    w, h = image.size
    area = w * h
    target = area if not max_pixels or area <= max_pixels else max_pixels
    target = max(target, min(min_pixels, area))
    if target >= area:
        return image
    s = math.sqrt(target / area)
    return image.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)


def load_processor(path: str, max_pixels: int = 0, min_pixels: int = 0) -> Any:
    """AutoProcessor with the image pixel bounds passed to it where its image processor sizes by
    pixel count (Qwen2/2.5-VL: size = {shortest_edge: min, longest_edge: max pixels}). max_pixels
    only lowers the processor's own cap; min_pixels (0: the processor's) lets an over-long
    example's images shrink that far. Other families get their images capped by `fit_pixels`."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(path)
    image_proc = getattr(proc, "image_processor", None)
    size = getattr(image_proc, "size", None)
    if not (max_pixels or min_pixels) or "Qwen" not in type(image_proc).__name__ or size is None:
        return proc
    hi = min(size.longest_edge, max_pixels) if max_pixels else size.longest_edge
    lo = min(min_pixels if min_pixels else size.shortest_edge, hi)
    if (lo, hi) == (size.shortest_edge, size.longest_edge):
        return proc
    return AutoProcessor.from_pretrained(path, size={"shortest_edge": lo, "longest_edge": hi})


def image_token_id(processor: Any) -> int | None:
    """The placeholder token the processor expands per image (None when it has none)."""
    tid = getattr(processor, "image_token_id", None)
    if tid is None and getattr(processor, "image_token", None):
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return tid


# --- encoding -------------------------------------------------------------------------------


def _encode_once(processor: Any, ex: SFTExample, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    tok = processor.tokenizer
    fmt = answer_format(processor)
    prompt = processor.apply_chat_template(
        chat_messages(ex.text, images, ex.system), add_generation_prompt=True, tokenize=False
    )
    enc = processor(text=[prompt], images=[list(images)] if images else None, return_tensors="pt")
    prompt_ids = enc["input_ids"][0]
    answer_ids = tok(fmt.prefix + ex.answer, add_special_tokens=False)["input_ids"] + [fmt.end_token_id]
    answer = torch.tensor(answer_ids, dtype=prompt_ids.dtype)
    n = len(answer)
    out: dict[str, torch.Tensor] = {
        "input_ids": torch.cat([prompt_ids, answer]),
        "attention_mask": torch.ones(len(prompt_ids) + n, dtype=torch.long),
        "labels": torch.cat([torch.full_like(prompt_ids, IGNORE), answer]),
    }
    for k, v in enc.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if k in SEQ_KEYS:  # per-token extras (e.g. mm_token_type_ids): answer tokens are text (0)
            out[k] = torch.cat([v[0], torch.zeros(n, dtype=v.dtype)])
        elif k in TOKEN_GRID_KEYS:  # (1, T, ...): answer tokens see what the last prompt token sees
            out[k] = torch.cat([v, v[:, -1:].expand(-1, n, *v.shape[2:])], dim=1)
        else:  # image tensors (pixel_values, image_grid_thw, aspect_ratio_ids, ...)
            out[k] = v
    return out


def _shrink(images: list[Image.Image], image_tokens: int, excess: int, min_pixels: int) -> list[Image.Image] | None:
    """Images scaled down so that about `excess` fewer image tokens remain (tokens ~ area); None: cannot."""
    if image_tokens <= 0:
        return None
    keep = max(0.0, (image_tokens - excess) / image_tokens) * 0.95
    out = [fit_pixels(im, max(1, int(im.size[0] * im.size[1] * keep)), min_pixels) for im in images]
    return None if all(a.size == b.size for a, b in zip(out, images)) else out


def encode_example(
    processor: Any, ex: SFTExample, max_length: int, max_pixels: int = 0, min_pixels: int = 0
) -> dict[str, torch.Tensor]:
    """Prompt (chat template + generation prompt, images expanded) followed by the answer and end of turn.

    The answer is tokenized on its own, exactly as the model emits it after the generation prompt
    (with the template's assistant prefix, e.g. Idefics3's leading space); labels are -100
    everywhere except the answer tokens and the token closing the turn (<|im_end|>, <|eot_id|>,
    <end_of_utterance>). Images are capped at max_pixels; an example over max_length gets smaller
    images (not below min_pixels) until it fits, else raises ExampleTooLong. Nothing is cut.
    """
    images = [fit_pixels(im, max_pixels) for im in ex.images]
    placeholder = image_token_id(processor)
    for _ in range(MAX_SHRINK + 1):
        enc = _encode_once(processor, ex, images)
        n = len(enc["input_ids"])
        if n <= max_length:
            return enc
        image_tokens = int((enc["input_ids"] == placeholder).sum()) if placeholder is not None else 0
        smaller = _shrink(images, image_tokens, n - max_length, min_pixels)
        if smaller is None:
            break
        images = smaller
    sizes = ", ".join(f"{im.size[0]}x{im.size[1]}" for im in images)
    raise ExampleTooLong(
        f"too long: {n} tokens > max_length {max_length}" + (f" with images at {sizes}" if images else "")
    )


def encode(processor: Any, ex: SFTExample, spec: EncodeSpec) -> dict[str, torch.Tensor]:
    return encode_example(processor, ex, spec.max_length, spec.max_pixels, spec.min_pixels)


# --- batching -------------------------------------------------------------------------------


def _pad_to(t: torch.Tensor, shape: tuple[int, ...], value: int | float = 0) -> torch.Tensor:
    pad: list[int] = []
    for have, want in zip(reversed(t.shape), reversed(shape)):
        pad += [0, want - have]
    return F.pad(t, pad, value=value) if any(pad) else t


def collate(examples: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad the per-token tensors; batch the image tensors the way the model family expects.

    Qwen-VL image tensors are patch lists (concatenated along dim 0). Mllama and Idefics3 ones
    carry a batch dim of 1 per example and an image dim: they are zero-padded to the largest shape
    in the batch (both models skip all-zero images; Mllama's aspect_ratio_mask keeps tile 0 on, as
    its processor does for padding images) and stacked; an example without images gets zeros.
    """
    n = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "labels": IGNORE}
    keys = list(dict.fromkeys(k for e in examples for k in e))
    qwen_style = "image_grid_thw" in keys or "video_grid_thw" in keys
    batch: dict[str, torch.Tensor] = {}
    for k in keys:
        have = [e[k] for e in examples if k in e]
        if k in SEQ_KEYS:
            rows = [e[k] if k in e else torch.zeros(len(e["input_ids"]), dtype=have[0].dtype) for e in examples]
            batch[k] = torch.stack([F.pad(v, (0, n - len(v)), value=fill.get(k, 0)) for v in rows])
        elif k in CONCAT_KEYS or (qwen_style and k == "pixel_values"):
            batch[k] = torch.cat(have)
        else:  # per-example (1, ...) tensors
            shape = [max(v.shape[d] for v in have) for d in range(have[0].ndim)]
            if k in TOKEN_GRID_KEYS:
                shape[1] = n
            rows = []
            for e in examples:
                v = e[k] if k in e else torch.zeros([1, *shape[1:]], dtype=have[0].dtype)
                v = _pad_to(v, tuple(shape))
                if k == "aspect_ratio_mask":
                    v[..., 0] = 1
                rows.append(v)
            batch[k] = torch.cat(rows)
    return batch


def pack(examples: list[dict[str, torch.Tensor]], rope: Callable | None = None) -> dict[str, torch.Tensor]:
    """One row of the examples end to end (no padding, no attention mask) with their position ids.

    Only for families whose image tensors are patch lists (Qwen-VL) or that have none: per-token
    tensors are concatenated to (1, L), image tensors along dim 0. `rope` (`rope_index(model)`)
    gives the mrope positions; see `packed_positions`.
    """
    batch: dict[str, torch.Tensor] = {}
    keys = list(dict.fromkeys(k for e in examples for k in e))
    for k in keys:
        if k == "attention_mask":
            continue
        if k in SEQ_KEYS:
            rows = [e[k] if k in e else torch.zeros(len(e["input_ids"]), dtype=torch.long) for e in examples]
            batch[k] = torch.cat(rows)[None]
        elif k in CONCAT_KEYS or k == "pixel_values":
            batch[k] = torch.cat([e[k] for e in examples if k in e])
        else:
            raise ValueError(f"cannot pack a per-example tensor {k!r}: use padded batches (train.packing off)")
    batch["position_ids"] = packed_positions(rope, [len(e["input_ids"]) for e in examples], batch)
    return batch


def supports_packing(model: Any) -> bool:
    """Packing needs position ids the model takes as given: Qwen2/2.5-VL (mrope) do; Mllama
    (cross-attention masks per example) and Idefics3 (per-example image tensors) are padded."""
    return hasattr(getattr(model, "model", None), "get_rope_index")


class _ConfigView:
    """The model class's methods bound to a holder of its config only (what get_rope_index reads),
    so DataLoader workers compute mrope positions without the model's weights."""

    def __init__(self, cls: type, config: Any) -> None:
        self._cls, self.config = cls, config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cls, name).__get__(self)


def rope_index(model: Any) -> Callable | None:
    """The model's `get_rope_index` (Qwen2/2.5-VL), usable in worker processes; None for 1-D rope."""
    inner = getattr(model, "model", None)
    if not hasattr(inner, "get_rope_index"):
        return None
    return _ConfigView(type(inner), inner.config).get_rope_index


def packed_positions(rope: Callable | None, lens: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(4, 1, L) position ids of a packed row: text positions restarting at 0 per example (row 0,
    from which transformers builds the block-diagonal mask, or varlen attention its boundaries),
    then the mrope positions of each example as in a padded batch; (1, L) without `rope`."""
    text = torch.cat([torch.arange(n) for n in lens])
    if rope is None:
        return text[None]
    rows = torch.split(batch["input_ids"][0], lens)
    types = torch.split(batch.get("mm_token_type_ids", torch.zeros_like(batch["input_ids"]))[0], lens)
    pad = lambda seqs: torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True)  # noqa: E731
    mask = pad([torch.ones(n, dtype=torch.long) for n in lens])
    pos, _ = rope(pad(rows), mm_token_type_ids=pad(types), image_grid_thw=batch.get("image_grid_thw"),
                  video_grid_thw=batch.get("video_grid_thw"), attention_mask=mask)  # fmt: skip
    return torch.cat([text[None], pos[:, mask.bool()]])[:, None, :]


# --- reading: identities, the length pass, the micro-batch loader ---------------------------


def identity(source: Sequence[SFTExample], i: int) -> str:
    """What names example i in a resume fingerprint: the source's own identity, else text + image bytes."""
    if hasattr(source, "identity"):
        return source.identity(i)
    return example_identity(source[i])


def example_identity(ex: SFTExample) -> str:
    images = [hashlib.sha256(im.mode.encode() + str(im.size).encode() + im.tobytes()).hexdigest() for im in ex.images]
    return json.dumps([ex.text, ex.answer, ex.system, images])


class _Encoded(torch.utils.data.Dataset):
    """Source index -> encoded example (what the workers run)."""

    def __init__(self, source: Sequence[SFTExample], processor: Any, spec: EncodeSpec) -> None:
        self.source, self.processor, self.spec = source, processor, spec

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return encode(self.processor, self.source[i], self.spec)


class _Lengths(_Encoded):
    """Source index -> (index, tokens, answer tokens, None) or (index, 0, 0, why it is dropped)."""

    def __getitem__(self, i: int) -> tuple[int, int, int, str | None]:  # type: ignore[override]
        try:
            enc = super().__getitem__(i)
        except ValueError as e:  # too long, or an unreadable image: dropped with the reason
            return i, 0, 0, str(e)
        return i, len(enc["input_ids"]), int((enc["labels"][1:] != IGNORE).sum()), None


def _loader_kwargs(workers: int) -> dict:
    if workers <= 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "prefetch_factor": 4, "multiprocessing_context": "fork"}


def measure(
    source: Sequence[SFTExample], processor: Any, spec: EncodeSpec, indices: Sequence[int], workers: int = 0
) -> Measured:
    """Lengths of `indices` (one rank's slice), read through a DataLoader."""
    out = Measured()
    dl = torch.utils.data.DataLoader(
        _Lengths(source, processor, spec), batch_size=None, sampler=list(indices), **_loader_kwargs(workers)
    )
    with torch.random.fork_rng(devices=[]):  # the loader draws its workers' seed: training's RNG stream stays as it was
        rows = list(dl)
    for i, n, n_answer, why in rows:
        if why is None:
            out.index.append(i)
            out.length.append(n)
            out.answer.append(n_answer)
        else:
            out.dropped.append((i, why))
    return out


def merge(parts: list[Measured]) -> Measured:
    """Measurements of all ranks' slices, in source order."""
    rows = sorted((i, n, a) for p in parts for i, n, a in zip(p.index, p.length, p.answer))
    dropped = sorted(d for p in parts for d in p.dropped)
    return Measured([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], dropped)


def loader(
    source: Sequence[SFTExample], processor: Any, spec: EncodeSpec, batches: list[list[int]],
    make_batch: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]], workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:  # fmt: skip
    """Micro-batches (lists of source indices) in order, each encoded and batched by `make_batch`."""
    return torch.utils.data.DataLoader(
        _Encoded(source, processor, spec), batch_sampler=batches, collate_fn=make_batch, pin_memory=pin_memory,
        **_loader_kwargs(workers),
    )  # fmt: skip
