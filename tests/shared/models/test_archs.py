"""Mllama (Llama-3.2-Vision) and Idefics3 tiny checkpoints through the same paths as Qwen2.5-VL:
AutoProcessor + AutoModelForImageTextToText, TransformersBackend generation, answer-only SFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.chat_format import answer_format
from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
from selfjudge.shared.models.sft.data import IGNORE, SFTExample, collate, encode_example
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import META_FILE, VISION_ENCODER, answer_loss_sum

ARCHS = ["mllama", "idefics3"]
CLASSES = {
    "mllama": ("MllamaProcessor", "MllamaForConditionalGeneration", "<|eot_id|>", ""),
    "idefics3": ("Idefics3Processor", "Idefics3ForConditionalGeneration", "<end_of_utterance>", " "),
}


def examples() -> list[SFTExample]:
    return [
        SFTExample(
            text=f"Is the {c} circle left of the square?",
            images=[Image.new("RGB", (112, 112), c)] if i != 2 else [],  # one text-only example in the batch
            answer=f"Response {v} is better because the {c} circle is correct. [[{v}]]",
            system="You are a judge." if i == 1 else None,
        )
        for i, (c, v) in enumerate([("red", "A"), ("blue", "B"), ("green", "A")])
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_reloads_and_generates_from_image_and_text(arch: str, request: pytest.FixtureRequest) -> None:
    tiny = request.getfixturevalue(f"tiny_{arch}")
    proc_cls, model_cls, end, prefix = CLASSES[arch]
    be = TransformersBackend(str(tiny), batch_size=4)
    assert type(be.processor).__name__ == proc_cls and type(be.model).__name__ == model_cls, arch
    assert answer_format(be.processor).end_token == end and answer_format(be.processor).prefix == prefix
    assert be.processor.tokenizer.convert_tokens_to_ids(end) in be.stop_ids
    reqs = [
        ChatRequest(text="Which shape is red?", images=[Image.new("RGB", (112, 112), "red")], key="img"),
        ChatRequest(text="Which shape is blue?", images=[Image.new("RGB", (112, 112), "blue")], key="img2",
                    system="You are a judge."),
        ChatRequest(text="Name a shape.", images=[], key="txt"),
    ]  # fmt: skip
    out = be.generate(reqs, SamplingParams(max_new_tokens=6))
    assert [g.key for g in out] == ["img", "img2", "txt"]
    for g in out:
        assert len(g.texts) == 1 and 1 <= g.token_counts[0] <= 6 and g.prompt_tokens > 0
    assert out[0].prompt_tokens > out[2].prompt_tokens  # the image adds tokens (Idefics3) or <|image|> (Mllama)
    assert be.generate(reqs[:1], SamplingParams(max_new_tokens=6))[0] == out[0]  # batch-invariant, deterministic


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_only_labels_and_one_train_step(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tiny_arch = request.getfixturevalue(f"tiny_{arch}")
    proc = AutoProcessor.from_pretrained(tiny_arch)
    fmt = answer_format(proc)
    exs = examples()
    enc = [encode_example(proc, ex, 1024) for ex in exs]
    for ex, e in zip(exs, enc):
        answer = e["labels"] != IGNORE
        start = int(answer.nonzero()[0])
        assert answer[start:].all() and not answer[:start].any()
        assert proc.tokenizer.decode(e["labels"][answer]) == fmt.prefix + ex.answer + fmt.end_token
        # the prompt + answer tokens are what the chat template renders for the whole conversation
        msgs = [{"role": "user", "content": [{"type": "image"}] * len(ex.images) + [{"type": "text", "text": ex.text}]}]
        if ex.system:
            msgs.insert(0, {"role": "system", "content": [{"type": "text", "text": ex.system}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": ex.answer}]})
        full = proc.apply_chat_template(msgs, tokenize=False)
        ref = proc(text=[full], images=[ex.images] if ex.images else None, return_tensors="pt")
        assert ref["input_ids"][0].tolist()[: len(e["input_ids"])] == e["input_ids"].tolist()
    # a mixed batch (2 with an image, 1 without): our answer-only loss == HF's full-logits loss
    batch = collate(enc, proc.tokenizer.pad_token_id)
    model = AutoModelForImageTextToText.from_pretrained(tiny_arch, use_safetensors=True)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    with torch.no_grad():
        ref_loss = model(**batch).loss
        ours = answer_loss_sum(model, batch) / n
    assert torch.isfinite(ours) and torch.allclose(ours, ref_loss, atol=1e-5)
    # one optimizer step through sft, and the folder it writes generates
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=3, warmup_ratio=0.0, lr_scheduler="constant")
    res = sft(str(tiny_arch), exs, tmp_path / "out", cfg)
    assert res.steps == 1 and res.answer_tokens == n
    assert json.loads((tmp_path / "out" / META_FILE).read_text())["format"] == "full"
    be = TransformersBackend(str(tmp_path / "out"))
    assert be.generate([ChatRequest(text=exs[0].text, images=exs[0].images)], SamplingParams(max_new_tokens=4))[0].texts


@pytest.mark.parametrize("arch", ["qwen", *ARCHS])
def test_freeze_vision_keeps_the_encoder_and_trains_the_projector(
    arch: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    tiny_arch = request.getfixturevalue(f"tiny_{arch}")
    # two steps: Mllama's cross-attention gates start at 0, so its projector gets a gradient from step 2 on
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=3, warmup_ratio=0.0, lr_scheduler="constant", freeze_vision=True)
    sft(str(tiny_arch), examples(), tmp_path / "out", cfg)
    before = AutoModelForImageTextToText.from_pretrained(tiny_arch, use_safetensors=True).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "out", use_safetensors=True).state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    encoder = {name for name in before if VISION_ENCODER.search(name)}
    projector = {"qwen": "visual.merger.", "mllama": "multi_modal_projector.", "idefics3": "connector."}[arch]
    assert encoder and not changed & encoder, sorted(changed & encoder)[:5]
    assert any(projector in name for name in changed), "the projector into the language model trained"
    assert any("lm_head" in name or "language_model" in name or "text_model" in name for name in changed)
