"""Checkpoints are loaded as safetensors only: a pickled `pytorch_model.bin` (which can run code
when unpickled) is refused by generation and by training, even when it is the only weights file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.loop import sft


@pytest.fixture(scope="module")
def pickled_checkpoint(tiny_qwen: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pickled") / "ckpt"
    shutil.copytree(tiny_qwen, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")  # the same weights, pickled
    return folder


def test_generation_refuses_a_pickled_checkpoint(pickled_checkpoint: Path) -> None:
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        TransformersBackend(str(pickled_checkpoint))


def test_training_refuses_a_pickled_checkpoint(pickled_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    example = SFTExample(text="What colour?", images=[Image.new("RGB", (112, 112), "red")], answer="red")
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        sft(str(pickled_checkpoint), [example], tmp_path / "out", TrainConfig(epochs=1, batch_size=1))


def test_the_same_weights_load_as_safetensors(tiny_qwen: Path) -> None:
    assert TransformersBackend(str(tiny_qwen)).model is not None
