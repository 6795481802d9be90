"""Tiny, randomly initialised VLM checkpoints built offline, saved exactly like hub folders.

`build_tiny_qwen25vl` trains a byte-level BPE tokenizer on a corpus, wraps it in the real
Qwen2 tokenizer class with Qwen2.5-VL's special tokens and chat template, builds a small
Qwen2.5-VL model from a config and saves model + processor with `save_pretrained`, so
`AutoProcessor.from_pretrained(out)` / `AutoModelForImageTextToText.from_pretrained(out)` work.
`build_tiny_mllama` (Llama-3.2-Vision) and `build_tiny_idefics3` do the same with a Llama-3-style
byte-level BPE (Llama 3's split regex, hub special tokens) in the generic fast tokenizer class the
hub's Llama 3 tokenizers use. `build_tiny(arch, ...)` picks one of `ARCHS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tk_models
from transformers import (
    AutoModelForImageTextToText,
    GenerationConfig,
    Idefics3Config,
    Idefics3ImageProcessor,
    Idefics3Processor,
    MllamaConfig,
    MllamaImageProcessor,
    MllamaProcessor,
    PreTrainedTokenizerFast,
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


@dataclass(frozen=True)
class TinySize:
    """The tiny Qwen2.5-VL's shape (defaults: the CPU miniature's ~4M parameters). Text heads are
    64 wide (hidden / heads = 64: the mrope sections [8, 12, 12] cover half a head)."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    vision_depth: int = 4
    vision_hidden: int = 128


def build_qwen_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Byte-level BPE trained on `corpus`, inside Qwen2Tokenizer, specials appended after the vocab."""
    base = Qwen2Tokenizer()  # the real Qwen2 pipeline (regex split + byte-level), empty vocab
    scaffold = ["system", "user", "assistant", "You are a helpful assistant."] * 50  # chat template text
    n_regular = vocab_size - len(QWEN_SPECIAL_TOKENS)
    trained = base.train_new_from_iterator(  # +1: <|endoftext|>
        list(corpus) + scaffold, vocab_size=n_regular + 1, show_progress=False
    )
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
    size: TinySize | None = None,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = size or TinySize()
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

    hidden, heads = size.hidden, size.heads
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.layers,
            num_attention_heads=heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=2 * size.vision_hidden,
            num_heads=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=list(range(1, size.vision_depth, 2)),  # every other block (4 deep: [1, 3])
            out_hidden_size=hidden,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if sum(config.text_config.rope_parameters["mrope_section"]) * 2 != hidden // heads:
        raise ValueError(
            f"tiny Qwen2.5-VL: hidden {hidden} / heads {heads} must be 64 per head (mrope sections [8, 12, 12])"
        )
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


# --- Llama 3 family (Mllama = Llama-3.2-Vision, Idefics3 = Idefics3-8B-Llama3) ------------------

# Llama 3's pre-tokenizer split (tiktoken cl100k-style), before byte-level mapping.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# The hub's first Llama 3 special tokens (128000...), in id order; the reserved ones are left out.
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
]  # fmt: skip
MLLAMA_IMAGE_TOKEN = "<|image|>"  # id == text vocab_size: Mllama's embedding has 8 extra rows for it
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)
]

# meta-llama/Llama-3.2-11B-Vision-Instruct's template, less its tool-calling and date/system preamble:
# bos, one header per turn, <|image|> where an image goes, each turn closed by <|eot_id|>.
LLAMA32_VISION_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# The template shipped with HuggingFaceM4/Idefics3-8B-Llama3.
IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_llama3_tokenizer(
    corpus: Iterable[str], specials: list[str], eos: str, pad: str, vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Llama 3's split regex trained on `corpus`; `specials` appended after the vocab."""
    tk = Tokenizer(tk_models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    scaffold = ["system user assistant System User Assistant You are a helpful assistant."] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tk.train_from_iterator(list(corpus) + scaffold, trainer)
    tk.add_special_tokens(specials)  # ids vocab..vocab+len(specials)-1, in list order
    bos = "<|begin_of_text|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=[t for t in specials if t not in (bos, eos, pad)],
        model_max_length=131072,
    )


def _llama_text(tok: PreTrainedTokenizerFast, vocab_size: int, eos: str, hidden: int = 256, layers: int = 4) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=tok.convert_tokens_to_ids("<|begin_of_text|>"),
        eos_token_id=tok.convert_tokens_to_ids(eos),
        pad_token_id=tok.convert_tokens_to_ids("<|finetune_right_pad_id|>"),
        tie_word_embeddings=False,
    )


def _save(model_config: Any, processor: Any, tok: Any, eos: str, out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(model_config, dtype=torch.float32)
    ids = [
        tok.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", eos, "<|end_of_text|>", "<|finetune_right_pad_id|>")
    ]
    model.generation_config = GenerationConfig(bos_token_id=ids[0], eos_token_id=ids[1:3], pad_token_id=ids[3])
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_tiny_mllama(
    out_dir: str | Path, corpus: Iterable[str], seed: int = 0, vocab_size: int = 1024, image_size: int = 112
) -> Path:
    """Llama-3.2-Vision layout: a ViT with global layers over up to 2 tiles, cross-attention text layers."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eos = "<|eot_id|>"
    specials = LLAMA3_SPECIAL_TOKENS + [MLLAMA_IMAGE_TOKEN]  # the image token last: id == text vocab_size
    tok = build_llama3_tokenizer(corpus, specials, eos=eos, pad="<|finetune_right_pad_id|>", vocab_size=vocab_size)
    tok.chat_template = LLAMA32_VISION_CHAT_TEMPLATE
    # one image_size x image_size tile per square image; 1x2 / 2x1 tilings for wide / tall ones
    image_processor = MllamaImageProcessor(size={"height": image_size, "width": image_size}, max_image_tiles=2)
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=LLAMA32_VISION_CHAT_TEMPLATE
    )
    vision_hidden = 128
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=vision_hidden,
            num_hidden_layers=4,
            num_global_layers=1,
            attention_heads=4,
            intermediate_size=256,
            intermediate_layers_indices=[1, 3],
            vision_output_dim=vision_hidden * 3,  # last layer + the 2 intermediate layers, concatenated
            image_size=image_size,
            patch_size=14,
            max_num_tiles=2,
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],  # = the processor's tilings for 2 tiles
        ),
        text_config=_llama_text(tok, len(tok) - 1, eos, layers=5) | {"cross_attention_layers": [2]},
        image_token_index=tok.convert_tokens_to_ids(MLLAMA_IMAGE_TOKEN),
    )
    assert config.image_token_index == config.text_config.vocab_size
    return _save(config, processor, tok, eos, out, seed)


def build_tiny_idefics3(
    out_dir: str | Path, corpus: Iterable[str], seed: int = 0, vocab_size: int = 1024, image_size: int = 112
) -> Path:
    """Idefics3 layout: a SigLIP-style tower, pixel shuffle (scale 2) into a Llama text model; no image splitting."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eos = "<end_of_utterance>"
    specials = LLAMA3_SPECIAL_TOKENS + IDEFICS3_TOKENS
    tok = build_llama3_tokenizer(corpus, specials, eos=eos, pad="<|finetune_right_pad_id|>", vocab_size=vocab_size)
    tok.chat_template = IDEFICS3_CHAT_TEMPLATE
    patch, scale = 14, 2
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False
    )
    seq_len = (image_size // patch) ** 2 // scale**2  # 112 -> 64 patches -> 16 image tokens
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=IDEFICS3_CHAT_TEMPLATE
    )
    text = _llama_text(tok, len(tok), eos) | {"model_type": "llama"}
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            image_size=image_size,
            patch_size=patch,
        ),  # fmt: skip
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        pad_token_id=text["pad_token_id"],
        tie_word_embeddings=False,
    )
    return _save(config, processor, tok, eos, out, seed)


ARCHS = ("qwen2_5_vl", "mllama", "idefics3")


def build_tiny(
    arch: str,
    out_dir: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    image_size: int = 112,
    size: TinySize | None = None,
) -> Path:
    """Build a tiny checkpoint of model family `arch` (one of ARCHS) into `out_dir`, its processor
    sized for `image_size` x `image_size` images (a multiple of 28). `size`: Qwen2.5-VL only."""
    if size is not None and size != TinySize() and arch != "qwen2_5_vl":
        raise NotImplementedError(f"a tiny {arch} comes in one size; `size` is for qwen2_5_vl")
    if arch == "qwen2_5_vl":
        return build_tiny_qwen25vl(out_dir, corpus, seed=seed, image_size=image_size, size=size)
    if arch == "mllama":
        return build_tiny_mllama(out_dir, corpus, seed=seed, image_size=image_size)
    if arch == "idefics3":
        return build_tiny_idefics3(out_dir, corpus, seed=seed, image_size=image_size)
    raise NotImplementedError(f"tiny builder for arch {arch!r} not implemented (have: {', '.join(ARCHS)})")
