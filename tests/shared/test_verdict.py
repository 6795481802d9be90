import pytest

from selfjudge.shared.verdict import MAX_CHARS, Verdict, format_verdict, parse_verdict

CASES = [
    # MT-Bench / Multimodal RewardBench style
    ("[[A]]", "A", "ok"),
    ("[[B]]", "B", "ok"),
    ("[[b]]", "B", "ok"),
    ("After comparing both responses carefully, my final verdict is: [[B]]", "B", "ok"),
    ("### Final Verdict\n\n**[[A]]**", "A", "ok"),
    ('Response A misses the dog.\n\nFinal verdict: "[[B]]"', "B", "ok"),
    ("I initially leaned towards [[A]]. On reflection, the count in B is right.\n[[B]]", "B", "ok"),
    ("[[A]]\n\nExplanation: Response B is better in style, but it hallucinates a cat.", "A", "ok"),
    # VL-RewardBench style
    ("Answer 1 is better", "A", "ok"),
    ("Overall Judgment: Answer 2 is better", "B", "ok"),
    ("Answer 1 mentions a red car, which is wrong.\nOverall Judgment: Answer 2 is better.", "B", "ok"),
    ("**Overall Judgment**: Answer 1 is better", "A", "ok"),
    # labelled verdicts
    ("**Verdict:** B", "B", "ok"),
    ("Verdict: (a)", "A", "ok"),
    ("VERDICT: RESPONSE B", "B", "ok"),
    ("Final answer: B", "B", "ok"),
    ("Final Answer: Response 1", "A", "ok"),
    ("The better response is A.", "A", "ok"),
    ("Therefore, the better answer is Answer 2.", "B", "ok"),
    ("Winner: Assistant B", "B", "ok"),
    ("Decision - Output 1", "A", "ok"),
    ("The final answer is \\boxed{B}", "B", "ok"),
    ("<think>A has an error.</think><answer>B</answer>", "B", "ok"),
    # phrases
    ("Response A is better", "A", "ok"),
    ("Response B is clearly better than Response A.", "B", "ok"),
    ("Assistant A's answer is better.", "A", "ok"),
    ("Overall, B is better.", "B", "ok"),
    ("Response (b) is more accurate.", "B", "ok"),
    ("I prefer Response B.", "B", "ok"),
    ("Output (a)", "A", "ok"),
    ("After careful thought:\n\nOutput (b)", "B", "ok"),
    ("B", "B", "ok"),
    ("Answer 2", "B", "ok"),
    ("The correct choice is B. Response A says B, so Response A is better.", "A", "ok"),
    ("The correct choice is B and Response A's answer: B", None, "no_verdict"),
    ("Response A is not better than Response B.", None, "no_verdict"),
    # Arena-Hard
    ("My final verdict is [[A>B]]", "A", "ok"),
    ("My final verdict is [[B>>A]]", "B", "ok"),
    ("My final verdict is tie: [[A=B]]", None, "no_verdict"),
    ("[[C]]", None, "no_verdict"),
    # format instructions echoed: the bracket tier conflicts, a weaker tier decides
    ('I must output "[[A]]" if assistant A is better, "[[B]]" if assistant B is better.\nVerdict: B', "B", "ok"),
    ("[[A]] or [[B]]", None, "conflicting"),
    ("[[A]]/[[B]]", None, "conflicting"),
    ("Response B is better at style, but Response A is better overall.", None, "conflicting"),
    # no verdict at all
    ("Both responses are equally good.", None, "no_verdict"),
    ("Verdict: a tie, neither is better.", None, "no_verdict"),
    ("I prefer a detailed answer.", None, "no_verdict"),
    ("The image shows a cat on a mat.", None, "no_verdict"),
    ("", None, "empty"),
    ("   \n\t ", None, "empty"),
]


@pytest.mark.parametrize("text,choice,reason", CASES)
def test_parse_verdict(text, choice, reason):
    assert parse_verdict(text) == Verdict(choice, reason)


def test_none_and_too_long():
    assert parse_verdict(None) == Verdict(None, "empty")
    assert parse_verdict("x" * MAX_CHARS + "[[A]]") == Verdict(None, "too_long")
    assert parse_verdict("x" * (MAX_CHARS - 10) + "[[A]]") == Verdict("A", "ok")


def test_format_verdict_round_trips():
    assert format_verdict("A") == "[[A]]" and format_verdict("B") == "[[B]]"
    for c in "AB":
        assert parse_verdict("Some reasoning.\n" + format_verdict(c)).choice == c
    with pytest.raises(ValueError):
        format_verdict("C")
