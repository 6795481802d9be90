"""The base model's judge-format lesson teaches the format, never which response to prefer."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from selfjudge.basemodel import format_examples, judge_reasoning
from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.sources.scenes.source import pretraining_prompts
from selfjudge.shared.verdict import parse_verdict


def test_format_lesson_verdicts_carry_no_preference():
    prompts = pretraining_prompts(0, 1200, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    rng = random.Random(0)
    right, with_gold, both_wrong = 0, 0, 0
    clause = Counter()
    for image, p in prompts:
        [ex] = format_examples([(image, p)], rng, 1)
        assert ex.system == JUDGE_SYSTEM and ex.images == [image] and f"Question: {p.instruction}\n" in ex.text
        a, b = re.search(r"\[Response A\]\n(.*)\n\[Response B\]\n(.*)\nExplain", ex.text, re.S).groups()
        assert a != b
        verdict = parse_verdict(ex.answer).choice
        assert verdict in ("A", "B")
        if p.kind == "open":
            assert ex.answer == f"My answer: {p.gold} [[{verdict}]]"
        else:
            mine = re.search(r"My answer: (.*?), (as Response|which neither)", ex.answer).group(1)
            assert ex.answer == f"{judge_reasoning(mine, a, b, short=True)} [[{verdict}]]"
            if mine in (a, b):  # the verdict follows the judge's own answer, whatever the gold one is
                assert verdict == ("A" if mine == a else "B")
            if p.gold in (a, b):  # with no belief given, the clause names the gold response by chance only
                clause[mine == p.gold, mine in (a, b)] += 1
        if p.gold in (a, b):
            with_gold += 1
            right += verdict == ("A" if a == p.gold else "B")
        else:
            both_wrong += 1
    # the verdict points at the gold response about half of the time: chance, no preference signal
    assert 0.45 < right / with_gold < 0.55
    assert 0.8 < clause[True, True] / clause[False, True] < 1.25
    # many lessons show two wrong answers: copying a response is no way to the own (gold) answer
    assert 0.3 < both_wrong / len(prompts) < 0.6


def test_reasoning_format():
    assert (
        judge_reasoning("red", "blue", "red", short=True)
        == "Response A says: blue. Response B says: red. My answer: red, as Response B says."
    )
    assert judge_reasoning("2", "2", "3", short=True).endswith("My answer: 2, as Response A says.")
    assert judge_reasoning("4", "2", "3", short=True).endswith("My answer: 4, which neither response says.")
    assert (
        judge_reasoning("There is one object: a red star.", "x", "y", short=False)
        == "My answer: There is one object: a red star."
    )


def test_lesson_states_the_models_own_answers():
    prompts = pretraining_prompts(0, 30)
    own = [None if p.kind == "open" else "7" for _, p in prompts]
    for ex in format_examples(prompts, random.Random(0), 30, own):
        assert ("My answer: 7, " in ex.answer) == ("Response A says" in ex.answer)  # closed: the model's, not gold


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where CUDA is missing")
def test_base_model_trains_on_the_device_asked_for(tmp_path):
    """`device` reaches the base model's trainer: asked for CUDA on a machine without it, it stops
    with an error that says so (nothing silently runs on the CPU)."""
    from selfjudge.basemodel import build_base_model

    with pytest.raises(RuntimeError, match="TrainConfig.device is 'cuda'.*sees no CUDA device"):
        build_base_model(tmp_path / "base", pretrain_steps=2, device="cuda")
