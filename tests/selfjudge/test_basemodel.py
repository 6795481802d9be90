"""The base model's judge-format lesson teaches the format, never which response to prefer."""
from __future__ import annotations

import random
import re

from selfjudge.basemodel import format_examples, judge_reasoning
from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.sources.scenes import pretraining_prompts
from selfjudge.shared.verdict import parse_verdict


def test_format_lesson_verdicts_carry_no_preference():
    prompts = pretraining_prompts(0, 1200, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    rng = random.Random(0)
    right, with_gold, both_wrong = 0, 0, 0
    for image, p in prompts:
        [ex] = format_examples([(image, p)], rng, 1)
        assert ex.system == JUDGE_SYSTEM and ex.images == [image] and f"Question: {p.instruction}\n" in ex.text
        a, b = re.search(r"\[Response A\]\n(.*)\n\[Response B\]\n(.*)\nExplain", ex.text, re.S).groups()
        assert a != b
        verdict = parse_verdict(ex.answer).choice
        assert verdict in ("A", "B")
        assert ex.answer == f"{judge_reasoning(p.gold, a, b, short=p.kind == 'closed')} [[{verdict}]]"
        if p.gold in (a, b):
            with_gold += 1
            right += verdict == ("A" if a == p.gold else "B")
        else:
            both_wrong += 1
            assert p.kind == "closed"
    # the verdict points at the gold response about half of the time: chance, no preference signal
    assert 0.45 < right / with_gold < 0.55
    # some closed-ended lessons show two wrong answers, so the responses must be read, not guessed
    assert 0.1 < both_wrong / len(prompts) < 0.35


def test_reasoning_format():
    assert judge_reasoning("red", "blue", "red", short=True) == \
        "Response A says: blue. Response B says: red. My answer: red."
    assert judge_reasoning("There is one object: a red star.", "x", "y", short=False) == \
        "My answer: There is one object: a red star."
