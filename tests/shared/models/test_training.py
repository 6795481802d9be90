from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.models.backend import ChatRequest, SamplingParams, TransformersBackend
from selfjudge.shared.models.training import (
    IGNORE,
    SFTExample,
    TrainConfig,
    answer_loss_sum,
    collate,
    encode_example,
    sft,
)

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


def test_encode_example_truncates_answer_never_prompt(processor) -> None:
    ex = examples()[1]
    n_prompt = int((encode_example(processor, ex, 1024)["labels"] == IGNORE).sum())
    enc = encode_example(processor, ex, n_prompt + 3)
    assert len(enc["input_ids"]) == n_prompt + 3 and int((enc["labels"] != IGNORE).sum()) == 3
    with pytest.raises(ValueError):
        encode_example(processor, ex, n_prompt)


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
