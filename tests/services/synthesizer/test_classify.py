import pytest

from selfjudge.services.synthesizer.classify import classify


@pytest.mark.parametrize("instruction, options, kind", [
    ("How many circles are there? Answer with a number.", None, "closed"),
    ("What colour is the square? Answer with one word.", None, "closed"),
    ("Which shape is largest?\nA. circle\nB. star\nAnswer with the option letter.", None, "closed"),
    ("Pick one", ["circle", "star"], "closed"),
    ("Is the red circle left of the blue square?", None, "closed"),
    ("Describe the image.", None, "open"),
    ("List the objects in the image.", None, "open"),
    ("Explain why the sky looks orange in this photo.", None, "open"),
    ("Write a poem about this picture", None, "open"),
])
def test_classify(instruction, options, kind):
    assert classify(instruction, options)[0] == kind
