"""Verdict strings in the formats real judges write (beyond tests/shared/test_verdict.py):
Prometheus, JSON, XML-ish tags, ordinals, "worse", labelled lines and per-response scores."""

import pytest

from selfjudge.shared.verdict import Verdict, parse_verdict

CASES = [
    # Prometheus / Prometheus-Vision pairwise
    ("[RESULT] B", "B"),
    ("Feedback: Response A misses the dog, Response B counts correctly. [RESULT] B", "B"),
    ("Response B hallucinates a cat. [RESULT] A", "A"),
    # JSON output (structured-output judges)
    ('{"reasoning": "A is wrong about the colour", "verdict": "B"}', "B"),
    ('{"better_response": "Response 2"}', "B"),
    ('{"choice": 1}', "A"),
    ("{'winner': 'A'}", "A"),
    ('```json\n{"preferred": "Answer 2", "confidence": 0.8}\n```', "B"),
    # tags
    ("<verdict>A</verdict>", "A"),
    ("<think>B counts two stars.</think>\n<choice> Response B </choice>", "B"),
    ("<judgment>2</judgment>", "B"),
    # labelled lines
    ("Better response: B", "B"),
    ("Preferred: Answer 1", "A"),
    ("Decision: Response 1", "A"),
    ("Answer: 2", "B"),
    ("Rating: [[A]]", "A"),
    ("**Final Verdict:** Response A is better", "A"),
    ("The winner is Assistant B", "B"),
    # ordinals
    ("The better response is the second one.", "B"),
    ("Verdict: the first response", "A"),
    ("The first response is better.", "A"),
    ("The second answer is more accurate.", "B"),
    ("I prefer the second one.", "B"),
    ("The first one is clearly better.", "A"),
    ("My verdict is the second.", "B"),
    # comparatives
    ("Response B is worse because it miscounts the circles.", "A"),
    ("Response A is less accurate than B.", "B"),
    ("Response A is the better one.", "A"),
    ("Response 2 is better than Response 1.", "B"),
    ("Therefore, Response B is preferred.", "B"),
    ("Assistant B's response is more helpful.", "B"),
    ("Output (b) is better.", "B"),
    ("At first, I thought A. Overall Judgment: Answer 2 is better", "B"),
    ("The answer in response A is wrong, so B wins. [[B]]", "B"),
    # scores per response (only when nothing stronger is there)
    ("Score for Response A: 8\nScore for Response B: 6", "A"),
    ("Response A score: 4\nResponse B score: 9", "B"),
    ("Answer 1: 7/10\nAnswer 2: 9/10", "B"),
    ("Score for Response A: 9\nScore for Response B: 2\nOverall, Response B is better.", "B"),
]
NO_VERDICT = [
    ("Response A: 3\nResponse B: 4", "no_verdict"),  # quoted answers, not scores
    ("Score for Response A: 5\nScore for Response B: 5", "no_verdict"),
    ("The first response is better at style, but the second is more accurate overall.", "conflicting"),
    ("Both responses are wrong, but Response B is not worse than A.", "no_verdict"),
    ("The correct answer is A. Response B says A.", "no_verdict"),
    ("<verdict>tie</verdict>", "no_verdict"),
]


@pytest.mark.parametrize("text,choice", CASES)
def test_real_world_verdicts(text, choice):
    assert parse_verdict(text) == Verdict(choice, "ok")


@pytest.mark.parametrize("text,reason", NO_VERDICT)
def test_not_a_verdict(text, reason):
    assert parse_verdict(text) == Verdict(None, reason)


def test_at_least_thirty_real_formats():
    assert len(CASES) + len(NO_VERDICT) >= 30
