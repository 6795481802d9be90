"""The official scorers against accuracies computed by hand from fixed lists of verdict texts."""

import math

import pytest

from selfjudge.services.evaluator import scoring
from selfjudge.services.evaluator.protocols import (
    MM_REWARDBENCH_PROMPT,
    VL_REWARDBENCH_PROMPT,
    make_protocol,
    parse_mm_rewardbench,
    parse_vl_rewardbench,
)

VL = make_protocol("vl-rewardbench", k=5)
MM = make_protocol("mm-rewardbench")

# texts for a judge shown the preferred response FIRST (order AB): agree = "Answer 1"
AGREE = "Accuracy: ...\n**Overall Judgment**: Answer 1 is better."
REJECT = "Clarity: fine.\nOverall Judgment: Answer 2 is better"
UNPARSED = "Overall Judgment: Both answers are equally good."  # a tie is no verdict


def vl_rows(item: str, category: str, texts: list[str], orders: list[str] | None = None) -> list[scoring.Judged]:
    """Rows of one item's samples; with order BA the text's answer number refers to the other response,
    so an AGREE text under BA picks the rejected one: callers pass orders with matching texts."""
    orders = orders or ["AB"] * len(texts)
    return [
        scoring.Judged(item, category, o, VL.parse(t).choice, sample=s) for s, (t, o) in enumerate(zip(texts, orders))
    ]


def test_official_vl_parser():
    p = parse_vl_rewardbench
    assert p("Overall Judgment: Answer 2 is better.").choice == "B"
    assert p("**Overall Judgment:** **Answer 1** is slightly better").choice == "A"
    assert p("1. Accuracy ...\nTherefore, Answer 2 is the better one.").choice == "B"
    assert p("Overall Judgment:\n- Answer 1 is better").choice == "A"  # newlines are removed first
    assert p("Answer 1 is better.").choice is None  # no "Overall Judgment"/"Therefore"
    assert p(UNPARSED).reason == "no_verdict"
    assert p("Overall Judgment: Answer 3 is better").reason == "answer_out_of_range"
    assert p("").reason == "empty"
    # the regex is greedy: the last "Answer N is better" after the first label counts
    assert p("Therefore Answer 1 is better. On reflection, Overall Judgment: Answer 2 is better").choice == "B"


def test_official_mm_parser_is_a_substring_test():
    p = parse_mm_rewardbench
    assert p("... Final verdict: [[B]]").choice == "B"
    assert p('Output "[[A]]" if A is better, "[[B]]" if B. [[B]]').choice == "A"  # "[[A]]" anywhere wins
    assert p("Verdict: B").choice is None  # only the [[X]] form counts
    assert p("[[C]]").choice is None  # a tie


def test_official_prompts_are_quoted_faithfully():
    assert VL_REWARDBENCH_PROMPT.startswith(" You are a highly capable multimodal AI assistant")
    assert "For example: Overall Judgment: Answer X is better." in VL_REWARDBENCH_PROMPT
    assert VL_REWARDBENCH_PROMPT.endswith("both the visual and textual elements of the task.")
    text, system = VL.prompt("<image>\nWhat is this?", "good", "bad", "BA")
    assert system is None and "Question: What is this?" in text and "<image>" not in text
    assert text.index("Answer 1: bad") < text.index("Answer 2: good")
    text, _ = MM.prompt("Q?", "good", "bad", "AB")
    assert text.startswith("Please act as an impartial judge and evaluate the quality of the responses")
    assert (
        "[User Question]\nQ?\n\n[The Start of Assistant A's Answer]\ngood\n[The End of Assistant A's Answer]"
        "\n\n[The Start of Assistant B's Answer]\nbad\n[The End of Assistant B's Answer]" in text
    )
    assert MM_REWARDBENCH_PROMPT.count('"[[A]]" if assistant A is better, "[[B]]" if assistant B is better.') == 1


def test_vl_order_is_a_seeded_coin_per_sample_and_mm_keeps_the_file_order():
    orders = [VL.official_orders(f"item{i}", 0) for i in range(40)]
    assert all(len(o) == 5 for o in orders)
    flat = [o for os in orders for o in os]
    assert 60 < flat.count("AB") < 140  # both orders, about half each
    assert VL.official_orders("item3", 0) == orders[3]  # the same for every checkpoint
    assert MM.official_orders("x", 0) == ["AB"] and MM.official_orders("x", 1) == ["BA"]  # Output1 is A


def test_vl_k1():
    rows = (
        vl_rows("g1", "general", [AGREE])
        + vl_rows("g2", "general", [REJECT])
        + vl_rows("h1", "hallucination", [AGREE])
        + vl_rows("h2", "hallucination", [UNPARSED])
        + vl_rows("r1", "reasoning", [REJECT], ["BA"])
    )  # "Answer 2" with the preferred second: agree
    s = scoring.vl_rewardbench(rows, k=1)
    assert s.status == {"g1": "agree", "g2": "reject", "h1": "agree", "h2": "doesntMatch", "r1": "agree"}
    assert s.accuracy("general") == (0.5, 2)
    assert s.accuracy("hallucination") == (1.0, 1)  # the unparsed item leaves the denominator
    assert s.accuracy("reasoning") == (1.0, 1)
    assert s.accuracy() == (0.75, 4)  # pooled: 3 of 4
    assert s.macro() == (pytest.approx((0.5 + 1 + 1) / 3), ["general", "hallucination", "reasoning"])


def test_vl_k3_majorities_ties_and_unparsed():
    rows = (
        vl_rows("a", "general", [AGREE, AGREE, REJECT])  # agree 2 > 1.5
        + vl_rows("b", "general", [AGREE, REJECT, UNPARSED])  # no majority: other, not scored
        + vl_rows("c", "general", [AGREE, AGREE, UNPARSED])  # agree
        + vl_rows("d", "hallucination", [UNPARSED, UNPARSED, AGREE])  # doesntMatch, not scored
        + vl_rows("e", "hallucination", [REJECT, REJECT, AGREE])  # reject
        + vl_rows("f", "reasoning", [AGREE, AGREE, AGREE, REJECT, REJECT])
    )  # only the first k=3 count
    s = scoring.vl_rewardbench(rows, k=3)
    assert s.status == {"a": "agree", "b": "other", "c": "agree", "d": "doesntMatch", "e": "reject", "f": "agree"}
    assert s.accuracy("general") == (1.0, 2)
    assert s.accuracy("hallucination") == (0.0, 1)
    assert s.accuracy("reasoning") == (1.0, 1)
    assert s.accuracy() == (0.75, 4)
    assert s.macro()[0] == pytest.approx(2 / 3)


def test_vl_k5_and_an_even_k_tie():
    rows = (
        vl_rows("a", "general", [AGREE, AGREE, AGREE, REJECT, REJECT])  # 3 > 2.5: agree
        + vl_rows("b", "general", [AGREE, AGREE, REJECT, REJECT, UNPARSED])  # other
        + vl_rows("c", "hallucination", [UNPARSED, UNPARSED, UNPARSED, AGREE, AGREE])  # doesntMatch
        + vl_rows("d", "hallucination", [REJECT, REJECT, REJECT, AGREE, UNPARSED])  # reject
        + vl_rows("e", "hallucination", [AGREE, AGREE, AGREE, UNPARSED, UNPARSED])  # agree
        + vl_rows("f", "reasoning", [AGREE, REJECT, AGREE, REJECT, AGREE], ["AB", "BA", "AB", "BA", "AB"])
    )  # "Answer 2" under BA agrees: 5 of 5
    s = scoring.vl_rewardbench(rows, k=5)
    assert s.status == {"a": "agree", "b": "other", "c": "doesntMatch", "d": "reject", "e": "agree", "f": "agree"}
    assert s.accuracy() == (0.75, 4)
    assert s.macro()[0] == pytest.approx((1 + 0.5 + 1) / 3)
    tie = scoring.vl_rewardbench(vl_rows("t", "general", [AGREE, REJECT, AGREE, REJECT]), k=4)
    assert tie.status == {"t": "other"} and tie.accuracy() == (None, 0) and tie.macro() == (None, [])


def test_vl_overall_is_pooled_and_macro_is_the_mean_of_the_three():
    rows = []
    for i in range(8):  # general 6 of 8, hallucination 1 of 2, reasoning 0 of 1
        rows += vl_rows(f"g{i}", "general", [AGREE if i < 6 else REJECT])
    rows += vl_rows("h0", "hallucination", [AGREE]) + vl_rows("h1", "hallucination", [REJECT])
    rows += vl_rows("r0", "reasoning", [REJECT])
    s = scoring.vl_rewardbench(rows, k=1)
    assert s.accuracy() == (pytest.approx(7 / 11), 11)
    assert s.macro()[0] == pytest.approx((0.75 + 0.5 + 0.0) / 3)


def mm_rows(specs):
    """(item, category, order, text)."""
    return [scoring.Judged(i, c, o, MM.parse(t).choice) for i, c, o, t in specs]


def test_mm_coin_flip_categories_areas_and_macro():
    coin = {i: scoring.mm_coin(i) for i in ("u1", "u2", "u3", "u4")}
    assert coin == {i: scoring.mm_coin(i) for i in coin}  # seeded: the same every time
    rows = mm_rows(
        [
            ("a", "open_generation/correctness_task", "AB", "... [[A]]"),  # right
            ("b", "open_generation/correctness_task", "BA", "... [[A]]"),  # wrong: Output2 was better
            ("c", "open_generation/preference_task", "BA", "[[B]]"),  # right
            ("d", "knowledge", "AB", "[[B]]"),  # wrong
            ("e", "reasoning/math", "AB", "[[A]]"),
            ("f", "reasoning/coding", "AB", "[[B]]"),
            ("g", "safety/bias", "AB", "[[A]]"),
            ("h", "safety/toxicity", "BA", "[[B]]"),
            ("u1", "vqa", "AB", "I cannot tell."),
            ("u2", "vqa", "BA", "[[C]]"),  # coin flips
            ("u3", "vqa", "AB", ""),
            ("u4", "vqa", "AB", "[[A]]"),
        ]
    )
    s = scoring.mm_rewardbench(rows)
    vqa_right = (coin["u1"] == "A") + (coin["u2"] == "B") + (coin["u3"] == "A") + 1
    assert s.status["u1"] == s.status["u2"] == s.status["u3"] == "coin_flip"
    assert s.accuracy("open_generation/correctness_task") == (0.5, 2)
    assert s.accuracy("knowledge") == (0.0, 1)
    assert s.accuracy("reasoning") == (0.5, 2) and s.accuracy("safety") == (1.0, 2)  # the halves pooled
    assert s.accuracy("vqa") == (vqa_right / 4, 4)
    assert s.accuracy() == (pytest.approx((5 + vqa_right) / 12), 12)  # every item counts
    macro, used = s.macro()
    assert used == ["general_correctness", "general_preference", "knowledge", "reasoning", "safety", "vqa"]
    assert macro == pytest.approx((0.5 + 1 + 0 + 0.5 + 1 + vqa_right / 4) / 6)
    assert scoring.mm_categories(s)[-2:] == ["reasoning", "safety"]


def test_mm_coin_matches_the_official_rule():
    # 2_get_accuracy.py: 'A' if random.random() < 0.5 else 'B', from a seeded generator
    import random

    assert scoring.mm_coin("x", 123) == ("A" if random.Random("123:x").random() < 0.5 else "B")
    flips = [scoring.mm_coin(f"item{i}") for i in range(200)]
    assert 70 < flips.count("A") < 130


def test_both_orders_and_position_bias():
    rows = [
        scoring.Judged("1", "c", "AB", "A"),  # right both
        scoring.Judged("1", "c", "BA", "B"),
        scoring.Judged("2", "c", "AB", "A"),  # always A: biased
        scoring.Judged("2", "c", "BA", "A"),
        scoring.Judged("3", "d", "AB", None),  # unparsed once
        scoring.Judged("3", "d", "BA", "B"),
        scoring.Judged("4", "d", "AB", "B"),  # wrong both: consistent but wrong
        scoring.Judged("4", "d", "BA", "A"),
    ]
    per = scoring.both_orders(rows)
    assert {i: (r.both, r.bias, r.right) for i, r in per.items()} == {
        "1": (1, 0, 2),
        "2": (1 - 1, 1, 1),
        "3": (0, 0, 1),
        "4": (0, 0, 0),
    }
    out = {(c, m): (v, n) for c, m, v, n in scoring.both_order_rows(rows, None, ["c", "d"])}
    assert out[("overall", "both_orders")] == (0.25, 4)
    assert out[("overall", "position_bias")] == (0.25, 4)
    assert out[("c", "both_orders")] == (0.5, 2) and out[("d", "position_bias")] == (0.0, 2)
    assert ("overall", "both_orders_ci_low") in out


def test_bootstrap_intervals():
    assert scoring.bootstrap_ci([1, 1, 1, 1]) == (1.0, 1.0)
    assert scoring.bootstrap_ci([]) is None
    values = [1] * 60 + [0] * 40
    lo, hi = scoring.bootstrap_ci(values)
    assert lo < 0.6 < hi and lo > 0.45 and hi < 0.75
    assert scoring.bootstrap_ci(values) == (lo, hi)  # seeded
    # weighted (ratio) form: judgments per item
    lo, hi = scoring.bootstrap_ci([2, 1, 0, 2], [2, 2, 2, 2])
    assert 0 <= lo <= 5 / 8 <= hi <= 1
    lo, hi = scoring.bootstrap_macro_ci([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert lo <= 0.75 <= hi and hi <= 1.0


def test_exact_mcnemar_and_paired_comparison():
    assert scoring.mcnemar_exact(0, 0) == 1.0
    assert scoring.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert scoring.mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert scoring.mcnemar_exact(4, 4) == 1.0
    assert scoring.mcnemar_exact(3, 7) == pytest.approx(2 * sum(math.comb(10, i) for i in range(4)) / 1024)
    a = {f"i{n}": int(n < 10) for n in range(30)}  # 10 of 30
    b = {f"i{n}": int(n < 25) for n in range(30)}  # 25 of 30: 15 items fixed, none broken
    b["extra"] = 1  # not in a: not paired
    c = scoring.compare(a, b)
    assert c["n"] == 30 and c["a_only"] == 0 and c["b_only"] == 15
    assert c["difference"] == pytest.approx(0.5)
    assert c["mcnemar_p"] == pytest.approx(2 / 2**15)
    assert c["ci"][0] > 0 and c["bootstrap_p"] < 0.01
    same = scoring.compare(a, a)
    assert same["difference"] == 0 and same["mcnemar_p"] == 1.0 and same["bootstrap_p"] == 1.0


def test_paired_bootstrap_of_two_iterations_on_the_same_items():
    """Known answers: no change gives [0, 0]; a fixed share p of items gaining one judgment of two
    gives p/2 with the binomial interval; pairing makes the interval far narrower than the two
    accuracies' own intervals; item weights make it a ratio of sums; unpaired items are left out."""
    a = {f"i{n}": n % 3 % 2 * 2 for n in range(300)}  # right judgments of 2 per item
    same = scoring.paired_bootstrap(a, a, {i: 2 for i in a})
    assert same["n"] == 300 and same["difference"] == 0 and same["ci"] == (0.0, 0.0) and same["p"] == 1.0
    # 120 of 1,000 items gain one right judgment of their 2: +0.06, its 95% interval
    # 0.5 * (0.12 +- 1.96 * sqrt(0.12 * 0.88 / 1000)) = [0.050, 0.070]; everything else unchanged
    before = {f"i{n}": n % 2 for n in range(1000)}
    after = {i: v + (int(i[1:]) % 50 < 6) for i, v in before.items()}
    r = scoring.paired_bootstrap(before, after, {i: 2 for i in before}, n_boot=4000)
    assert r["difference"] == pytest.approx(0.06)
    assert r["ci"][0] == pytest.approx(0.050, abs=0.002) and r["ci"][1] == pytest.approx(0.070, abs=0.002)
    assert r["p"] < 0.001
    # on 200 of those items the accuracies' own (unpaired) intervals overlap; the paired one is above 0
    few = sorted(before)[:200]
    lo_after = scoring.bootstrap_ci([after[i] for i in few], [2] * 200)[0]
    hi_before = scoring.bootstrap_ci([before[i] for i in few], [2] * 200)[1]
    paired = scoring.paired_bootstrap({i: before[i] for i in few}, {i: after[i] for i in few}, {i: 2 for i in few})
    assert lo_after < hi_before and paired["ci"][0] > 0
    # a loss is negative; half the items gaining, half losing: no change, interval around 0
    down = scoring.paired_bootstrap(after, before, {i: 2 for i in before})
    assert down["difference"] == pytest.approx(-0.06) and down["ci"][1] < 0
    mixed = {i: v + (1 if int(i[1:]) % 4 == 0 else -1 if int(i[1:]) % 4 == 1 else 0) for i, v in after.items()}
    m = scoring.paired_bootstrap(after, {i: max(0, min(2, v)) for i, v in mixed.items()}, {i: 2 for i in before})
    assert m["ci"][0] < m["difference"] < m["ci"][1]
    # weights: per-item judgment counts (a ratio of sums); items of one side only are not paired
    r = scoring.paired_bootstrap({"x": 0, "y": 1}, {"x": 2, "y": 1, "z": 4}, {"x": 2, "y": 2})
    assert r["n"] == 2 and r["difference"] == pytest.approx(0.5)
    assert scoring.paired_bootstrap({}, {"x": 1})["ci"] is None


def test_summaries_carry_counts_cis_and_both_order_metrics():
    official = (
        vl_rows("g", "general", [AGREE])
        + vl_rows("h", "hallucination", [UNPARSED])
        + vl_rows("r", "reasoning", [REJECT])
    )
    both = [
        scoring.Judged(i, c, o, v)
        for i, c in (("g", "general"), ("h", "hallucination"), ("r", "reasoning"))
        for o, v in (("AB", "A"), ("BA", "B"))
    ]
    rows = {(c, m): (v, n) for c, m, v, n in scoring.summarize_benchmark("vl-rewardbench", official, both, 1, 5, 2)}
    assert rows[("overall", "accuracy")] == (0.5, 2)
    assert rows[("macro", "accuracy")] == (0.5, 2)  # general 1, reasoning 0; hallucination has none
    assert ("hallucination", "accuracy") not in rows
    assert rows[("overall", "both_orders")] == (1.0, 3)
    assert rows[("overall", "items_total")][0] == 5 and rows[("overall", "items_excluded")][0] == 2
    assert rows[("overall", "items_judged")][0] == 3 and rows[("overall", "items_scored")][0] == 2
    assert rows[("overall", "items_doesntMatch")][0] == 1
    assert rows[("general", "accuracy_ci_low")][0] == 1.0
