from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
from selfjudge.shared.models.sft.data import (
    IGNORE,
    ExampleTooLong,
    SFTExample,
    collate,
    encode_example,
    fit_pixels,
    load_processor,
)
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import answer_loss_sum

COLOURS = ["red", "green", "blue", "yellow"]


def examples() -> list[SFTExample]:
    return [
        SFTExample(
            text=f"Which response is right about the {c} circle?",
            images=[Image.new("RGB", (112, 112), c)] * (i % 2),
            answer=f"Response {'AB'[i % 2]} is better because the {c} circle is correct. [[{'AB'[i % 2]}]]",
            system="You are a judge." if i == 3 else None,
        )
        for i, c in enumerate(COLOURS * 2)
    ]


@pytest.fixture(scope="module")
def processor(tiny_qwen: Path):
    return AutoProcessor.from_pretrained(tiny_qwen)


def test_encode_example_labels_only_the_answer(processor) -> None:
    tok = processor.tokenizer
    for ex in examples()[:2]:
        enc = encode_example(processor, ex, max_length=1024)
        labels, ids = enc["labels"], enc["input_ids"]
        answer = labels != IGNORE
        start = int(answer.nonzero()[0])
        assert answer[start:].all() and not answer[:start].any()  # one contiguous tail
        assert (labels[answer] == ids[answer]).all()
        assert tok.decode(labels[answer]) == ex.answer + "<|im_end|>"
        assert len(ids) == len(enc["attention_mask"]) == len(enc["mm_token_type_ids"])
        # the same tokens as rendering the full conversation with the chat template
        msgs = [{"role": "user", "content": [{"type": "image"}] * len(ex.images) + [{"type": "text", "text": ex.text}]}]
        if ex.system:
            msgs.insert(0, {"role": "system", "content": ex.system})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": ex.answer}]})
        full = processor.apply_chat_template(msgs, tokenize=False)
        ref = processor(text=[full], images=[ex.images] if ex.images else None, return_tensors="pt")
        assert ref["input_ids"][0].tolist()[: len(ids)] == ids.tolist()
        assert ("pixel_values" in enc) == bool(ex.images)
        if ex.images:
            assert torch.equal(enc["pixel_values"], ref["pixel_values"])


def _answer_text(processor, enc) -> str:
    return processor.tokenizer.decode(enc["labels"][enc["labels"] != IGNORE])


def test_an_over_long_example_gets_smaller_images_never_a_cut_answer(tiny_qwen: Path) -> None:
    # a processor that takes 448 x 448 images (the tiny one's own cap is 112 x 112), down to 56 x 56
    processor = AutoProcessor.from_pretrained(tiny_qwen, size={"shortest_edge": 56 * 56, "longest_edge": 448 * 448})
    ex = SFTExample(text="Which response is right about the big picture?", images=[Image.new("RGB", (448, 448), "red")],
                    answer="Response A is right about the red square. [[A]]")  # fmt: skip
    full = encode_example(processor, ex, 4096)
    image_tokens = int((full["input_ids"] == processor.image_token_id).sum())
    assert image_tokens == 256  # 448 px / 28 px per merged patch, squared
    fitted = encode_example(processor, ex, len(full["input_ids"]) - 100)  # must lose >= 100 image tokens
    assert len(fitted["input_ids"]) <= len(full["input_ids"]) - 100
    assert 0 < int((fitted["input_ids"] == processor.image_token_id).sum()) <= image_tokens - 100
    assert _answer_text(processor, fitted) == ex.answer + "<|im_end|>"  # the verdict is kept whole
    # images may not go below min_pixels: then the example is dropped, not cut
    with pytest.raises(ExampleTooLong, match="too long"):
        encode_example(processor, ex, len(full["input_ids"]) - 100, min_pixels=448 * 448)
    # a text-only example that does not fit is dropped too
    with pytest.raises(ExampleTooLong):
        encode_example(processor, examples()[0], 10)


def test_max_pixels_caps_the_image_before_the_processor(tiny_qwen: Path) -> None:
    processor = load_processor(str(tiny_qwen), max_pixels=10**6, min_pixels=56 * 56)
    assert processor.image_processor.size.longest_edge == 112 * 112  # a cap never raises the processor's own
    processor = load_processor(str(tiny_qwen), max_pixels=56 * 56)
    assert (processor.image_processor.size.shortest_edge, processor.image_processor.size.longest_edge) == (3136, 3136)
    processor = load_processor(str(tiny_qwen), min_pixels=56 * 56)
    ex = SFTExample(text="Describe.", images=[Image.new("RGB", (448, 224), "blue")], answer="A blue picture.")
    enc = encode_example(processor, ex, 4096, max_pixels=112 * 56)  # fit_pixels before the processor
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == (112 // 28) * (56 // 28)
    assert fit_pixels(ex.images[0], 112 * 56).size == (112, 56)
    assert fit_pixels(ex.images[0], 0) is ex.images[0]


def test_answer_loss_matches_full_logits_loss(tiny_qwen: Path, processor) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    batch = collate([encode_example(processor, ex, 1024) for ex in examples()[:3]], processor.tokenizer.pad_token_id)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    with torch.no_grad():
        ref = model(**batch).loss  # HF: full-vocabulary logits at every position
        ours = answer_loss_sum(model, batch) / n
    assert torch.allclose(ours, ref, atol=1e-5)


def test_sft_loss_falls_and_checkpoint_reloads(tiny_qwen: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int, float]] = []
    cfg = TrainConfig(lr=3e-3, epochs=10, batch_size=4, warmup_ratio=0.1, seed=0)
    res = sft(str(tiny_qwen), examples(), tmp_path / "sft", cfg, progress=lambda s, t, l: seen.append((s, t, l)))
    assert res.steps == 20 and len(res.losses) == 20 and seen[-1][:2] == (20, 20)
    assert sum(res.losses[-3:]) / 3 < 0.6 * sum(res.losses[:3]) / 3
    assert res.answer_tokens > 0 and res.seconds > 0
    be = TransformersBackend(str(tmp_path / "sft"))
    out = be.generate([ChatRequest(text=examples()[0].text, images=[])], SamplingParams(max_new_tokens=8))
    assert len(out[0].texts) == 1 and out[0].token_counts[0] >= 1
