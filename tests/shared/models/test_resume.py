"""A training run killed mid-way and resumed from its last save ends where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from selfjudge.shared.models.sft.config import TrainConfig
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.loop import sft


class Crash(RuntimeError):
    pass


def examples(answer: str = "is correct") -> list[SFTExample]:
    return [
        SFTExample(
            text=f"Is the {c} star above the circle?",
            images=[Image.new("RGB", (112, 112), c)] * (i % 2),
            answer=f"The {c} star {answer}. [[{'AB'[i % 2]}]]",
        )
        for i, c in enumerate(["red", "green", "blue", "yellow", "black", "white"])
    ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resumed_run_ends_with_the_same_weights(tiny_qwen: Path, tmp_path: Path, method: str) -> None:
    # 4 examples, batch 2: 2 steps per epoch, 4 in all; a save every 2 steps; LoRA with dropout (RNG state matters)
    cfg = TrainConfig(method=method, lora_r=4, lora_alpha=8, lora_dropout=0.1, lr=3e-3, epochs=2, batch_size=2,
                      warmup_ratio=0.2, save_every=2)  # fmt: skip
    data = examples()[:4]
    ref = sft(str(tiny_qwen), data, tmp_path / "ref", cfg)
    assert ref.steps == 4 and ref.resumed_from == 0

    def die_after_step_3(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise Crash("worker killed")

    resume = tmp_path / "resume"
    with pytest.raises(Crash):
        sft(str(tiny_qwen), data, tmp_path / "run", cfg, progress=die_after_step_3, resume_from=resume)
    assert sorted(p.name for p in resume.iterdir()) == ["step-000002"]
    (resume / "step-000003.tmp").mkdir()  # a save cut short by the crash: ignored

    seen: list[int] = []
    res = sft(str(tiny_qwen), data, tmp_path / "run", cfg, resume_from=resume, progress=lambda s, t, l: seen.append(s))
    assert res.resumed_from == 2 and res.steps == 4 and seen == [3, 4]
    assert res.losses == pytest.approx(ref.losses, rel=1e-5)
    assert res.answer_tokens == ref.answer_tokens and res.meta["resumed_from_step"] == 2
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "run")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    base = weights(tiny_qwen)
    moved = max(float((a[k] - base[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training did change the weights


def test_a_save_from_other_data_is_not_resumed(tiny_qwen: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, save_every=1)
    resume = tmp_path / "resume"
    with pytest.raises(Crash):
        sft(str(tiny_qwen), examples()[:4], tmp_path / "a", cfg, resume_from=resume,
            progress=lambda s, t, l: (_ for _ in ()).throw(Crash()))  # fmt: skip
    assert [p.name for p in resume.iterdir()] == ["step-000001"]
    res = sft(str(tiny_qwen), examples("is wrong")[:4], tmp_path / "b", cfg, resume_from=resume)
    assert res.resumed_from == 0 and res.steps == 2
