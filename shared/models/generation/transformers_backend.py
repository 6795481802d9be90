"""Text generation from a VLM checkpoint folder with transformers' `generate` (the default backend)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from ..chat_format import answer_format, chat_messages
from ..dtypes import DTYPES
from .backend import ChatRequest, Generation, SamplingParams, free_memory, stop_token_ids

DECODE_MODES = ("plain", "static")
STATIC_PAD = 64  # static decode: prompts padded to a multiple of this, so compiled shapes repeat


class TransformersBackend:
    """A GenerationBackend over transformers' `generate`, in batches of `batch_size` requests.

    `decode`: "plain" (a dynamic KV cache), or "static": a static KV cache, which transformers
    decodes through `torch.compile` (CUDA graphs) on CUDA; prompts are then left-padded to a
    multiple of STATIC_PAD tokens so that compiled shapes repeat across batches. Both give the same
    greedy tokens (tested on CPU); bench/gpu_generate.py measures them on the card.
    """

    def __init__(
        self,
        model_path: str,
        model_id: str = "",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        trust_remote_code: bool = False,
        decode: str = "plain",
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode {decode!r}: expected one of {', '.join(DECODE_MODES)}")
        self.decode = decode
        self.model_id = model_id or str(model_path)
        self.device, self.batch_size = torch.device(device), batch_size
        self.processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right
        self.model = self._load(str(model_path), dtype, trust_remote_code).eval()
        self.stop_ids = stop_token_ids(self.processor, self.model)
        # the template's end-of-turn token (e.g. <end_of_utterance> for Idefics3) also ends a completion
        self.answer_format = answer_format(self.processor)
        if self.answer_format.end_token_id not in self.stop_ids:
            self.stop_ids.append(self.answer_format.end_token_id)
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.stop_ids[0]

    def _load(self, model_path: str, dtype: str, trust_remote_code: bool) -> Any:
        """A full checkpoint folder, or a PEFT adapter folder (loaded over its base, then merged for speed)."""
        from pathlib import Path

        kw = dict(
            dtype=DTYPES[dtype], device_map=str(self.device), use_safetensors=True, trust_remote_code=trust_remote_code
        )
        adapter = Path(model_path) / "adapter_config.json"
        if not adapter.exists():
            return AutoModelForImageTextToText.from_pretrained(model_path, **kw)  # straight onto the device
        import json

        from peft import PeftModel

        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        if Path(base_path).is_absolute() and not Path(base_path).is_dir():
            raise FileNotFoundError(f"adapter {model_path}: its base model folder {base_path} is not on this machine")
        base = AutoModelForImageTextToText.from_pretrained(base_path, **kw)
        return PeftModel.from_pretrained(base, model_path).merge_and_unload()

    def _gen_config(self, p: SamplingParams) -> GenerationConfig:
        # Every sampling knob is set explicitly: generate() fills unset (None) fields from the
        # checkpoint's generation_config.json (the hub's Qwen2.5-VL has repetition_penalty=1.05,
        # top_k=1, ...) and then from global defaults (top_k=50). Only SamplingParams counts.
        sample = p.temperature > 0
        return GenerationConfig(
            max_new_tokens=p.max_new_tokens,
            do_sample=sample,
            temperature=p.temperature if sample else 1.0,
            top_p=p.top_p if sample else 1.0,
            top_k=p.top_k if sample else 0,
            repetition_penalty=1.0,
            num_return_sequences=p.n if sample else 1,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            bos_token_id=self.model.generation_config.bos_token_id,
            use_cache=True,
            cache_implementation="static" if self.decode == "static" else None,
        )

    def _encode(self, reqs: list[ChatRequest]) -> dict[str, torch.Tensor]:
        texts = [
            self.processor.apply_chat_template(
                chat_messages(r.text, r.images, r.system), add_generation_prompt=True, tokenize=False
            )
            for r in reqs
        ]
        images = [list(r.images) for r in reqs] if any(r.images for r in reqs) else None
        pad = {"pad_to_multiple_of": STATIC_PAD} if self.decode == "static" else {}
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt", **pad)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def generate(
        self,
        requests: list[ChatRequest],
        params: SamplingParams,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        cfg = self._gen_config(params)
        copies = params.n if params.temperature > 0 else 1
        # Homogeneous batches: group by image count, then by text length to limit padding.
        order = sorted(range(len(requests)), key=lambda i: (len(requests[i].images), len(requests[i].text)))
        batches, cur = [], []
        for i in order:
            if cur and (len(cur) == self.batch_size or len(requests[cur[0]].images) != len(requests[i].images)):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)

        results: list[Generation | None] = [None] * len(requests)
        done = 0
        for b, idx in enumerate(batches):
            enc = self._encode([requests[i] for i in idx])
            torch.manual_seed(params.seed + b)
            out = self.model.generate(**enc, generation_config=cfg)
            prompt_len = enc["input_ids"].shape[1]
            new = out[:, prompt_len:].cpu()
            for j, i in enumerate(idx):
                rows = new[j * copies : (j + 1) * copies]
                counts = [self._count(row) for row in rows]
                texts = self.processor.tokenizer.batch_decode(
                    [row[:c] for row, c in zip(rows, counts)], skip_special_tokens=True
                )
                prefix = self.answer_format.prefix  # e.g. Idefics3's " " after "Assistant:"
                if prefix:
                    texts = [t[len(prefix) :] if t.startswith(prefix) else t for t in texts]
                if copies < params.n:  # greedy: every sample is the same completion
                    texts, counts = texts * params.n, counts * params.n
                results[i] = Generation(
                    key=requests[i].key,
                    texts=texts,
                    token_counts=counts,
                    prompt_tokens=int(enc["attention_mask"][j].sum()),
                )
            done += len(idx)
            if progress is not None:
                progress(done, len(requests))
        return results  # type: ignore[return-value]

    def _count(self, row: torch.Tensor) -> int:
        """Generated tokens up to and including the first stop token (the rest is padding)."""
        stops = torch.isin(row, torch.tensor(self.stop_ids))
        return int(stops.nonzero()[0, 0]) + 1 if stops.any() else len(row)

    def close(self) -> None:
        """Drop the model and free its memory (GPU memory back to what it was before loading).
        Static decode on CUDA: torch.compile's graphs hold the weights, so its caches are reset."""
        if self.__dict__.pop("model", None) is None:
            return
        if self.decode == "static" and self.device.type == "cuda":
            torch.compiler.reset()
        free_memory()
