from selfjudge.services.filter.stage import keep_consistent
from selfjudge.shared.records import JudgmentRecord


def j(pair, order, correct, sample=0):
    verdict = ("A" if order == "AB" else "B") if correct else ("B" if order == "AB" else "A")
    return JudgmentRecord(
        judgment_id=0,
        pair_id=pair,
        order=order,
        sample=sample,
        image_key="images/x.png",
        prompt_text="",
        output="",
        verdict=verdict,
        parse_reason="ok",
        correct=correct,
        question_type="count",
        errors=[],
        method="rule_perturb",
        source="scenes",
        prompt_id=pair,
        holdout=False,
    )


def test_keeps_only_pairs_right_in_both_orders():
    judgments = [
        j(1, "AB", True),
        j(1, "BA", True),  # kept
        j(2, "AB", True),
        j(2, "BA", False),  # position bias: always "A"
        j(3, "AB", False),
        j(3, "BA", False),  # wrong both times
        j(4, "AB", True),
    ]  # one order missing
    kept = keep_consistent(judgments)
    assert [(k.pair_id, k.order) for k in kept] == [(1, "AB"), (1, "BA")]
    assert sorted(k.verdict for k in kept) == ["A", "B"]  # balanced by construction


def test_every_sample_must_be_right():
    judgments = [
        j(1, "AB", True, 0),
        j(1, "AB", True, 1),
        j(1, "BA", True, 0),
        j(1, "BA", False, 1),
        j(2, "AB", True, 0),
        j(2, "AB", True, 1),
        j(2, "BA", True, 0),
        j(2, "BA", True, 1),
    ]
    kept = keep_consistent(judgments)
    assert {k.pair_id for k in kept} == {2} and len(kept) == 4


def test_empty():
    assert keep_consistent([]) == []
