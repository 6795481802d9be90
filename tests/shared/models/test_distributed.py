"""Two CPU processes over gloo (torchrun, DDP or FSDP2) take the same steps as one process with the
same global batch: same per-step losses and final weights within float tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from selfjudge.shared.models.sft.config import TrainConfig
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.launch import read_examples, train, write_spec


def examples() -> list[SFTExample]:
    red = Image.new("RGB", (112, 112), "red")
    return [
        SFTExample(
            text=f"Which response describes the {c} triangle?",
            images=[red] if i % 3 else [],
            answer=f"Response {'AB'[i % 2]} names the {c} triangle. [[{'AB'[i % 2]}]]",
        )
        for i, c in enumerate(["red", "green", "blue", "yellow", "black", "white"])
    ]


# 6 examples in micro-batches of 2 = 3 micro-batches per epoch; 2 per optimizer step: the second
# step of each epoch has one micro-batch, so one rank runs a zero-weight stand-in.
BASE = dict(lr=2e-3, epochs=2, batch_size=2, warmup_ratio=0.0, seed=3)


@pytest.fixture(scope="module")
def single(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("single")
    res = train(str(tiny_qwen), examples(), out, TrainConfig(**BASE, grad_accum=2))
    return res, load_file(out / "model.safetensors")


def test_spec_round_trip_is_lossless(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "m", examples(), tmp_path / "out", TrainConfig(), None)
    back = read_examples(spec.parent)
    assert len(list((tmp_path / "images").iterdir())) == 1  # one shared image object, written once
    for a, b in zip(examples(), back):
        assert (a.text, a.answer, a.system) == (b.text, b.answer, b.system) and len(a.images) == len(b.images)
        for x, y in zip(a.images, b.images):
            assert x.mode == y.mode and x.tobytes() == y.tobytes()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one(tiny_qwen: Path, tmp_path: Path, single, mode: str) -> None:
    ref, ref_weights = single
    seen: list[tuple[int, int]] = []
    cfg = TrainConfig(**BASE, grad_accum=1, distributed=mode, nproc=2)
    res = train(str(tiny_qwen), examples(), tmp_path / "out", cfg, progress=lambda s, t, l: seen.append((s, t)))
    assert res.world_size == 2 and res.steps == ref.steps == 4
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # rank 0's progress relayed to this process
    assert res.answer_tokens == ref.answer_tokens
    assert res.losses == pytest.approx(ref.losses, rel=1e-4)
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert got.keys() == ref_weights.keys()
    worst = max(float((got[k] - ref_weights[k]).abs().max()) for k in got)
    assert worst < 1e-4, worst
    assert res.meta["world_size"] == 2


def test_a_failing_rank_is_reported(tmp_path: Path) -> None:
    cfg = TrainConfig(distributed="ddp", nproc=2)
    with pytest.raises(RuntimeError, match="distributed training failed"):
        train(str(tmp_path / "no-such-model"), examples()[:2], tmp_path / "out", cfg)
