"""Tiny, randomly initialised VLM checkpoints built offline, saved exactly like hub folders.

`build_tiny_qwen25vl` trains a byte-level BPE tokenizer on a corpus, wraps it in the real
Qwen2 tokenizer class with Qwen2.5-VL's special tokens and chat template, builds a small
Qwen2.5-VL model from a config and saves model + processor with `save_pretrained`, so
`AutoProcessor.from_pretrained(out)` / `AutoModelForImageTextToText.from_pretrained(out)` work.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from . import vision_compat

vision_compat.ensure_torchvision()

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# Qwen2.5-VL's added tokens, in the hub's id order (151643...).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# The Jinja chat template shipped with Qwen/Qwen2-VL-*-Instruct and Qwen/Qwen2.5-VL-*-Instruct.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Byte-level BPE trained on `corpus`, inside Qwen2Tokenizer, specials appended after the vocab."""
    base = Qwen2Tokenizer()  # the real Qwen2 pipeline (regex split + byte-level), empty vocab
    scaffold = ["system", "user", "assistant", "You are a helpful assistant."] * 50  # chat template text
    n_regular = vocab_size - len(QWEN_SPECIAL_TOKENS)
    trained = base.train_new_from_iterator(list(corpus) + scaffold, vocab_size=n_regular + 1)  # +1: <|endoftext|>
    bpe = json.loads(trained.backend_tokenizer.to_str())["model"]
    regular = sorted((i, t) for t, i in bpe["vocab"].items() if t not in QWEN_SPECIAL_TOKENS)
    vocab = {t: new_id for new_id, (_, t) in enumerate(regular)}
    vocab |= {t: len(vocab) + k for k, t in enumerate(QWEN_SPECIAL_TOKENS)}  # specials last, in hub order
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
        model_max_length=32768,
    )
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def build_tiny_qwen25vl(
    out_dir: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    vocab_size: int = 1024,
    image_size: int = 112,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_qwen_tokenizer(corpus, vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}

    # image_size x image_size pixels -> (image_size/14)^2 patches -> /4 merged tokens (112 -> 16)
    pixels = {"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size}
    image_processor = Qwen2VLImageProcessor(size=pixels, patch_size=14, temporal_patch_size=2, merge_size=2)
    video_processor = Qwen2VLVideoProcessor(size=pixels, patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )

    hidden, heads = 256, 4
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=4,
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1, 3],
            out_hidden_size=hidden,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    assert sum(config.text_config.rope_parameters["mrope_section"]) * 2 == hidden // heads
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_tiny(arch: str, out_dir: str | Path, corpus: Iterable[str], seed: int = 0) -> Path:
    """Build a tiny checkpoint of model family `arch` into `out_dir`."""
    if arch == "qwen2_5_vl":
        return build_tiny_qwen25vl(out_dir, corpus, seed=seed)
    raise NotImplementedError(f"tiny builder for arch {arch!r} not implemented (have: 'qwen2_5_vl')")
