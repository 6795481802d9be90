"""LoRA on the language model only: adapter save/reload and merged save/reload reproduce the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
from selfjudge.shared.models.sft.data import IGNORE, SFTExample, collate, encode_example
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import META_FILE, answer_loss_sum, export, load_trainable


def examples() -> list[SFTExample]:
    return [
        SFTExample(
            text=f"Which response is right about the {c} square?",
            images=[Image.new("RGB", (112, 112), c)],
            answer=f"The {c} square is correct. [[{v}]]",
        )
        for c, v in [("red", "A"), ("blue", "B"), ("green", "A"), ("yellow", "B")]
    ]


@pytest.fixture(scope="module")
def trained(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory):
    """A LoRA model after 3 AdamW steps (so B != 0), its logits on a batch, and the batch."""
    torch.manual_seed(0)
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0, lr=1e-2)
    proc = AutoProcessor.from_pretrained(tiny_qwen)
    batch = collate([encode_example(proc, ex, 512) for ex in examples()], proc.tokenizer.pad_token_id)
    model = load_trainable(str(tiny_qwen), cfg, torch.float32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    for _ in range(3):
        answer_loss_sum(model, batch).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return {"model": model, "proc": proc, "batch": batch, "logits": logits, "cfg": cfg,
            "dir": tmp_path_factory.mktemp("lora")}  # fmt: skip


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_lora_targets_language_model_projections_only(trained) -> None:
    names = [n for n, p in trained["model"].named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert all("language_model" in n for n in names) and not any("visual" in n for n in names)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_adapter_reload_then_merged_reload_reproduce_logits(trained, tiny_qwen: Path) -> None:
    model, proc, batch, cfg, root = trained["model"], trained["proc"], trained["batch"], trained["cfg"], trained["dir"]
    # adapter folder: only the adapter + processor + metadata, pointing at the base
    adapter = export(model, proc, root / "adapter", TrainConfig(**{**cfg.__dict__, "lora_merge": False}), {"steps": 3})
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
    meta = json.loads((adapter / META_FILE).read_text())
    assert meta["format"] == "peft_adapter" and meta["base_model"] == str(tiny_qwen) and meta["steps"] == 3
    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    reloaded = PeftModel.from_pretrained(base, adapter)
    adapter_logits = _logits(reloaded, batch)
    assert torch.allclose(adapter_logits, trained["logits"], atol=1e-5)
    # merged folder (export merges the model in place: done last)
    merged = export(model, proc, root / "merged", cfg)
    assert json.loads((merged / META_FILE).read_text())["format"] == "full"
    full = AutoModelForImageTextToText.from_pretrained(merged, use_safetensors=True)
    assert torch.allclose(_logits(full, batch), adapter_logits, atol=1e-4)
    # and the generation backend serves both folders alike (the adapter over its base, merged on load)
    req = [ChatRequest(text=examples()[0].text, images=examples()[0].images)]
    params = SamplingParams(max_new_tokens=8)
    assert TransformersBackend(str(adapter)).generate(req, params) == TransformersBackend(str(merged)).generate(
        req, params
    )


def test_sft_lora_writes_adapter_and_continues_it(tiny_qwen: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(method="lora", lora_r=4, lora_alpha=8, lora_merge=False, lr=5e-3, epochs=2, batch_size=2,
                      warmup_ratio=0.0)  # fmt: skip
    res = sft(str(tiny_qwen), examples(), tmp_path / "a1", cfg)
    assert res.steps == 4 and res.meta["format"] == "peft_adapter"
    a1 = json.loads((tmp_path / "a1" / "adapter_config.json").read_text())
    assert a1["base_model_name_or_path"] == str(tiny_qwen) and a1["r"] == 4
    # the next iteration trains from the adapter: the result is again an adapter over the same base
    res2 = sft(str(tmp_path / "a1"), examples(), tmp_path / "a2", TrainConfig(**{**cfg.__dict__, "epochs": 1}))
    assert json.loads((tmp_path / "a2" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_qwen
    )
    assert res2.losses[0] < res.losses[0]  # it starts where the first adapter left off
    # a full fine-tune from an adapter merges it first (lr 0: its loss is the adapter's own)
    two = examples()[:2]
    res3 = sft(str(tmp_path / "a1"), two, tmp_path / "f", TrainConfig(epochs=1, batch_size=2, lr=0.0))
    assert res3.meta["format"] == "full" and (tmp_path / "f" / "model.safetensors").exists()
    proc = AutoProcessor.from_pretrained(tmp_path / "a1")
    batch = collate([encode_example(proc, ex, 1024) for ex in two], proc.tokenizer.pad_token_id)
    with torch.no_grad():
        own = answer_loss_sum(load_trainable(str(tmp_path / "a1"), cfg, torch.float32).eval(), batch)
    assert res3.losses[0] == pytest.approx(float(own) / int((batch["labels"][:, 1:] != IGNORE).sum()), rel=1e-4)
