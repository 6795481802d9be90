"""A tiny Qwen2.5-VL checkpoint (built offline) for the trainer stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfjudge.shared.models.tiny import build_tiny


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [
        f"The {c} circle is right. [[{v}]] Which response is right about the {c} circle?"
        for c in ("red", "green", "blue", "yellow")
        for v in "AB"
    ] * 20
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("trainer_tiny_qwen"), corpus, seed=0)
