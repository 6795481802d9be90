"""Shared bench fixtures: a tiny Qwen2.5-VL built offline, judge-style SFT data, judge prompts.

All comparisons in one `make bench` run use the same model folder and the same data/prompts.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `selfjudge` is imported as installed (`pip install -e .` or a wheel), never from ROOT: the source
# folder ROOT/selfjudge holds only the CLI part of the package (selfjudge.shared is ROOT/shared,
# mapped by the install), so putting ROOT first broke non-editable installs.
try:
    from selfjudge.shared.models import vision_compat
except ModuleNotFoundError as exc:  # pragma: no cover - said plainly instead of a confusing trace
    sys.exit(f"bench: selfjudge is not installed in this Python ({exc}); run `pip install .` (or `make install`) first")

vision_compat.ensure_torchvision()


@dataclass
class Result:
    name: str
    ratio: float  # ours / baseline, higher is better
    target: float
    detail: str = ""
    extra_ok: bool = True  # a side condition (e.g. same final loss) held
    at_most: bool = False  # the target is an upper bound (memory ratios, shares): lower is better
    percent: bool = False  # a share, printed as a percentage

    @property
    def ok(self) -> bool:
        met = self.ratio <= self.target if self.at_most else self.ratio >= self.target
        return met and self.extra_ok

    def line(self) -> str:
        bound = "<= " if self.at_most else ""
        if self.percent:
            return f"{self.name}: {100 * self.ratio:.1f}% (target {bound}{100 * self.target:g}%)"
        return f"{self.name}: {self.ratio:.2f}x (target {bound}{self.target:g}x)"


def build_model(folder: Path, arch: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """The tiny offline model (random init, the project's tokenizer corpus); built once per folder."""
    from selfjudge.shared.models.tiny import build_tiny
    from selfjudge.shared.sources.scenes.source import tokenizer_corpus

    if not (folder / "config.json").exists():
        build_tiny(arch, folder, tokenizer_corpus(), seed=seed)
    return folder


def sft_examples(n: int, seed: int = 0) -> list:
    """What the trainer sees: scene QA (short answers) and judge traces (long prompt, long answer), 1:1."""
    from selfjudge.basemodel import format_examples
    from selfjudge.shared.models.sft.data import SFTExample
    from selfjudge.shared.sources.scenes.source import pretraining_prompts

    prompts = pretraining_prompts(seed, n)
    qa = [SFTExample(text=p.instruction, images=[img], answer=p.gold) for img, p in prompts[: n // 2]]
    judge = format_examples(prompts, random.Random(seed), n - len(qa))
    return qa + judge


def chat_requests(n: int, seed: int = 1) -> list:
    """Judge prompts with an image each (as the reasoner/evaluator send them)."""
    from selfjudge.shared.judge import JUDGE_SYSTEM
    from selfjudge.shared.models.generation.backend import ChatRequest

    return [
        ChatRequest(text=ex.text, images=ex.images, system=JUDGE_SYSTEM if i % 2 else None, key=str(i))
        for i, ex in enumerate(sft_examples(n, seed))
    ]
