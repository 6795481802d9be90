from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from selfjudge.shared.models import vision_compat
from selfjudge.shared.models.tiny import build_tiny


def test_torchvision_imports_and_ensure_is_idempotent() -> None:
    vision_compat.ensure_torchvision()
    vision_compat.ensure_torchvision()
    import torchvision.transforms.v2.functional  # noqa: F401

    assert "torchvision" in sys.modules


def test_reload_like_a_hub_checkpoint(tiny_qwen: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert (tiny_qwen / "model.safetensors").exists()
    proc = AutoProcessor.from_pretrained(tiny_qwen)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    tok = proc.tokenizer
    assert type(proc).__name__ == "Qwen2_5_VLProcessor" and type(tok).__name__ == "Qwen2Tokenizer"
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    for t in ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]:
        assert tok.tokenize(t) == [t]
    assert tok.decode(tok("The red circle is above the box.")["input_ids"]) == "The red circle is above the box."


def test_chat_template_renders_image_placeholders(tiny_qwen: Path) -> None:
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_qwen)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which shape is red?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Which shape is red?<|im_end|>\n<|im_start|>assistant\n"
    )
    enc = proc(text=[text], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    n_image_tokens = int((enc["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image_tokens == 16 and enc["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_unknown_arch_not_implemented(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="idefics3"):
        build_tiny("llava_next", tmp_path, ["a b c"])
