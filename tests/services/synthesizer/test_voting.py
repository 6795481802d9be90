import random

import pytest

from selfjudge.services.synthesizer.voting import Vote, majority_vote, normalize_answer


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3", "3"),
        ("Three.", "3"),
        ("three", "3"),
        ("3.0", "3"),
        ("**3**", "3"),
        ("3 objects", "3"),
        ("There are three circles.", "3"),
        ("The answer is 3.", "3"),
        ("The answer is: twenty-one", "21"),
        ("twenty one", "21"),
        ("1,000 apples", "1000"),
        ("$5", "5"),
        ("50%", "50"),
        ("2.50", "2.5"),
        ("-2.50", "-2.5"),
        ("3 or 4", "3 or 4"),
        ("Red.", "red"),
        ("  `RED`  ", "red"),
        ("It is red", "red"),
        ("The correct answer is: Left!", "left"),
        ("the square", "square"),
        ("Yes.", "yes"),
        ("", ""),
        ("...", ""),
        ("B", "b"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


OPTIONS = ["circle", "square", "a star", "3"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("B", "b"),
        ("b", "b"),
        ("(B)", "b"),
        ("B.", "b"),
        ("B)", "b"),
        ("[b]", "b"),
        ("B. square", "b"),
        ("Option C", "c"),
        ("The answer is (A).", "a"),
        ("square", "b"),
        ("A square", "b"),  # the article is not option A
        ("the square.", "b"),
        ("star", "c"),
        ("three", "d"),
        ("**D**", "d"),
        ("hexagon", "hexagon"),
    ],
)
def test_normalize_with_options(text, expected):
    assert normalize_answer(text, OPTIONS) == expected


def test_majority_with_threshold_5_of_16():
    samples = ["3"] * 3 + ["Three."] + ["3.0"] + ["4"] * 4 + ["five"] * 3 + ["2"] * 3 + [""]
    vote = majority_vote(samples, threshold=5, rng=random.Random(0))
    assert (vote.count, vote.total, vote.reason) == (5, 16, "ok")
    assert vote.majority == "3"  # the most common spelling of the majority
    assert normalize_answer(vote.rejected) in {"4", "5", "2"}
    # only 4 votes for the top answer: below the threshold
    vote = majority_vote(samples[1:], threshold=5, rng=random.Random(0))
    assert vote == Vote(None, 4, 15, "no_majority", None)


def test_rejected_is_random_but_seeded():
    samples = ["red"] * 6 + ["blue", "green", "yellow", "purple"]
    picks = {majority_vote(samples, 5, random.Random(s)).rejected for s in range(40)}
    assert picks == {"blue", "green", "yellow", "purple"}
    assert majority_vote(samples, 5, random.Random(1)) == majority_vote(samples, 5, random.Random(1))


def test_tie_and_empty_and_no_alternative():
    assert majority_vote(["a", "a", "b", "b"], 2, random.Random(0)) == Vote(None, 2, 4, "tie", None)
    assert majority_vote(["cat"] * 5 + ["dog"] * 5 + ["fox"], 5, random.Random(0)).reason == "tie"
    assert majority_vote([], 1, random.Random(0)) == Vote(None, 0, 0, "empty", None)
    assert majority_vote(["", "  ", "**"], 1, random.Random(0)) == Vote(None, 0, 3, "empty", None)
    vote = majority_vote(["Left", "left.", "LEFT", "", " left. "], 3, random.Random(0))
    assert vote == Vote("left.", 4, 5, "no_alternative", None)  # the most common spelling (stripped)


def test_option_letter_and_option_text_are_one_vote():
    options = ["circle", "square", "star", "triangle"]
    samples = ["B", "(b)", "square", "B. square", "The answer is B.", "A", "circle", "D"]
    vote = majority_vote(samples, 5, random.Random(3), options=options)
    assert vote.reason == "ok" and vote.count == 5
    assert normalize_answer(vote.majority, options) == "b"
    assert normalize_answer(vote.rejected, options) in {"a", "d"}
    # without options the same samples do not agree
    assert majority_vote(samples, 5, random.Random(3)).reason == "no_majority"


# ---- extended normalisation: units, maths, yes/no, fractions, option letter vs text


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5 cm", "5"),
        ("5cm", "5"),
        ("five centimeters", "5"),
        ("50 percent", "50"),
        ("$\\boxed{3}$", "3"),
        ("\\boxed{\\text{B}}", "b"),
        ("$\\frac{1}{2}$", "0.5"),
        ("1/2", "0.5"),
        ("0.50", "0.5"),
        ("two hundred", "200"),
        ("a hundred apples", "100"),
        ("$1,000", "1000"),
        ("Yes, there is a cat.", "yes"),
        ("yes it is", "yes"),
        ("Yep", "yes"),
        ("No.", "no"),
        ("Nope, there isn't", "no"),
        ("left/right", "left right"),
    ],
)
def test_normalize_units_maths_yes_no(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("B: square", "b"),
        ("(B) square", "b"),
        ("The answer is B. square", "b"),
        ("b square", "b"),
        ("B circle", "b circle"),  # a letter with another option's text is not a clean vote
        ("There are 3.", "d"),  # option text "3"
        ("\\boxed{C}", "c"),
    ],
)
def test_option_letter_with_its_text(text, expected):
    assert normalize_answer(text, OPTIONS) == expected


def test_threshold_boundary_and_histogram():
    rng = random.Random(0)
    five = ["3"] * 5 + ["4"] * 4 + ["2"] * 4 + ["1"] * 3
    vote = majority_vote(five, 5, rng)
    assert vote.reason == "ok" and vote.count == 5 and vote.total == 16
    assert vote.counts == {"3": 5, "4": 4, "2": 4, "1": 3}
    four = ["3"] * 4 + ["4"] * 3 + ["2"] * 3 + ["1"] * 3 + ["5"] * 3
    assert majority_vote(four, 5, rng).reason == "no_majority"
    assert majority_vote(four, 4, rng).reason == "ok"


def test_gold_vote():
    from selfjudge.services.synthesizer.voting import gold_vote

    rng = random.Random(0)
    samples = ["three", "3", "4", "4", "4", "4", "4"]
    vote = gold_vote(samples, "3", rng)  # the gold answer wins even in a minority
    assert (vote.majority, vote.count, vote.reason) == ("3", 2, "ok")
    assert normalize_answer(vote.rejected) == "4"
    assert gold_vote(samples, None, rng).reason == "no_gold"
    assert gold_vote(["3", "three"], "3", rng).reason == "no_alternative"
    assert gold_vote(["", " "], "3", rng).reason == "empty"
    options = ["circle", "square"]
    vote = gold_vote(["square", "B", "A"], "B", rng, options=options)
    assert vote.reason == "ok" and vote.count == 2 and normalize_answer(vote.rejected, options) == "a"
