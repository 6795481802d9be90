import pytest

from selfjudge.services.synthesizer.classify import classify


@pytest.mark.parametrize(
    "instruction, options, kind",
    [
        ("How many circles are there? Answer with a number.", None, "closed"),
        ("What colour is the square? Answer with one word.", None, "closed"),
        ("Which shape is largest?\nA. circle\nB. star\nAnswer with the option letter.", None, "closed"),
        ("Pick one", ["circle", "star"], "closed"),
        ("Is the red circle left of the blue square?", None, "closed"),
        ("Describe the image.", None, "open"),
        ("List the objects in the image.", None, "open"),
        ("Explain why the sky looks orange in this photo.", None, "open"),
        ("Write a poem about this picture", None, "open"),
    ],
)
def test_classify(instruction, options, kind):
    assert classify(instruction, options)[0] == kind


from selfjudge.services.synthesizer.classify import (  # noqa: E402
    classify_cues,
    classify_samples,
    decide,
    extract_options,
    needs_samples,
)


@pytest.mark.parametrize(
    "instruction, kind, strong",
    [
        ("How many circles are there? Answer with a number.", "closed", True),
        ("Answer in a single word: what is this?", "closed", True),
        ("Is the door open? Please answer yes or no.", "closed", True),
        ("Which animal is it?\nA. cat\nB. dog", "closed", True),
        ("Is the red circle left of the blue square?", "closed", False),  # a question, no format asked
        ("What is in the picture?", "open", False),  # no cue at all
        ("Describe the image in detail.", "open", True),
    ],
)
def test_cue_strength(instruction, kind, strong):
    d = classify_cues(instruction)
    assert (d.kind, d.strong) == (kind, strong) and d.reason.startswith("cue: ")


def test_extract_options():
    assert extract_options("What shape?\nA. circle\nB. square\nC. star\nAnswer with the option letter.") == [
        "circle",
        "square",
        "star",
    ]
    assert extract_options("Which one? (A) a cat (B) a dog (C) a bird") == ["a cat", "a dog", "a bird"]
    assert extract_options("A. cat\nC. dog") is None  # letters must run A, B, ...
    assert extract_options("Describe the image.") is None


def test_classify_from_samples():
    kind, reason = classify_samples(["Red."] * 10 + ["blue"] * 6)
    assert kind == "closed" and reason == "samples: median 1 words (<= 5), top answer 10/16 (>= 0.3)"
    long = ["The image shows a large red circle next to a small star."] * 16
    assert classify_samples(long)[0] == "open"  # they agree, but they are long
    short_disagree = ["cat", "dog", "bird", "fish", "cow", "pig", "hen", "fox", "owl", "bee"]
    kind, reason = classify_samples(short_disagree)
    assert kind == "open" and "1/10 (< 0.3)" in reason
    assert classify_samples([]) == ("open", "samples: none")


def test_decide_modes():
    weak = classify_cues("What is on the table?")
    strong = classify_cues("Describe the image.")
    samples = ["A cup"] * 8
    assert needs_samples("both", weak) and not needs_samples("both", strong)
    assert needs_samples("samples", strong) and not needs_samples("cues", weak)
    assert decide("both", strong, None) == ("open", "cue: asks for a description/explanation")
    kind, reason = decide("both", weak, samples)
    assert kind == "closed" and reason.startswith("samples: median 2 words") and reason.endswith("(weak)")
    assert decide("cues", weak, samples)[0] == "open"
