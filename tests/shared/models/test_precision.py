"""bf16: autocast over fp32 weights on CUDA by default; the same path runs on CPU when asked."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open

from selfjudge.shared.models.sft.config import TrainConfig
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import META_FILE
from selfjudge.shared.models.sft.runtime import resolve_precision


def test_precision_resolution() -> None:
    assert resolve_precision("auto", "cuda", "float32") == (torch.float32, torch.bfloat16)
    assert resolve_precision("auto", "cuda", "bfloat16") == (torch.float32, torch.bfloat16)  # master weights fp32
    assert resolve_precision("auto", "cpu", "float32") == (torch.float32, None)
    assert resolve_precision("auto", "cpu", "bfloat16") == (torch.bfloat16, None)
    assert resolve_precision("bf16", "cuda", "float32") == (torch.bfloat16, None)
    assert resolve_precision("fp32", "cuda", "bfloat16") == (torch.float32, None)


def test_bf16_mixed_trains_fp32_weights_and_writes_the_checkpoint_dtype(tiny_qwen: Path, tmp_path: Path) -> None:
    ex = [SFTExample(text=f"Is the {c} star big?", images=[Image.new("RGB", (112, 112), c)], answer=f"The {c} star is big.")
          for c in ("red", "blue")]  # fmt: skip
    cfg = TrainConfig(precision="bf16-mixed", dtype="bfloat16", lr=1e-3, epochs=1, batch_size=2)
    res = sft(str(tiny_qwen), ex, tmp_path / "out", cfg)
    assert res.steps == 1 and torch.isfinite(torch.tensor(res.losses)).all()
    meta = json.loads((tmp_path / "out" / META_FILE).read_text())
    assert meta["weight_dtype"] == "float32" and meta["precision"] == "bf16-mixed"
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
