"""A tiny Qwen2.5-VL checkpoint, built offline once per test session."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from selfjudge.shared.models.tiny import build_tiny_qwen25vl

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["left of", "right of", "above", "below"]


def shape_corpus() -> list[str]:
    """A few hundred short sentences about shapes and colours, plus judge-style verdicts."""
    out = []
    for (c1, s1), rel, (c2, s2) in itertools.product(
        itertools.product(COLOURS[:4], SHAPES), RELATIONS, [("black", "square"), ("white", "star")]
    ):
        out.append(f"The {c1} {s1} is {rel} the {c2} {s2}.")
    for v, c, s in itertools.product("AB", COLOURS, SHAPES):
        out.append(f"Response {v} is better because the {c} {s} is correct. [[{v}]]")
    return out


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny_qwen25vl"), shape_corpus(), seed=0)

