"""Closed-ended pairs: majority labels (the paper) and gold labels (the ablation), with the vote
histogram and the majority-vs-gold agreement recorded in Pair.meta."""

import random

from selfjudge.services.synthesizer.stage import Draft, _closed_pair, normalize_instruction
from selfjudge.shared.config import SynthConfig
from selfjudge.shared.records import PromptRecord, SetAsideRecord

OPTIONS = ["circle", "square", "star", "triangle"]


def closed(gold="B", options=OPTIONS):
    prompt = PromptRecord(
        prompt_id=1,
        source_id="scenes:train:2:choice",
        image_key="images/x.png",
        instruction="What shape?",
        kind="closed",
        question_type="choice",
        options=options,
    )
    return Draft(prompt, image=None, gold=gold, source="scenes", options=options, options_from="source", kind="closed")


SAMPLES = ["B", "(b)", "square", "B. square", "The answer is B.", "A", "circle", "D"]


def test_majority_pair_and_meta():
    aside = []
    pair = _closed_pair(closed(), SAMPLES, SynthConfig(n_samples=8, majority_threshold=5), random.Random(0), aside)
    assert aside == [] and pair.method == "majority_vote" and pair.errors == ["wrong_answer"]
    assert pair.vote_count == 5 and pair.n_samples == 8
    meta = pair.meta
    assert meta["label_source"] == "majority" and meta["votes"] == {"b": 5, "a": 2, "d": 1}
    assert meta["majority_normalised"] == "b" and meta["rejected_normalised"] in {"a", "d"}
    assert meta["gold_agrees"] is True and meta["threshold"] == 5


def test_no_majority_is_set_aside_with_the_count():
    aside = []
    assert (
        _closed_pair(closed(), SAMPLES, SynthConfig(n_samples=8, majority_threshold=6), random.Random(0), aside) is None
    )
    assert aside == [
        SetAsideRecord(record_id="scenes:train:2:choice", code="closed_no_majority", detail="top answer 5/8")
    ]


def test_gold_labels_ablation():
    aside = []
    cfg = SynthConfig(n_samples=8, majority_threshold=5, closed_labels="gold")
    # the majority says B, the gold answer says A: gold wins in the ablation
    pair = _closed_pair(closed(gold="A"), SAMPLES, cfg, random.Random(0), aside)
    assert pair.method == "gold_label" and pair.preferred == "A" and pair.vote_count == 2
    assert pair.meta["gold_agrees"] is False and pair.meta["label_source"] == "gold"
    assert pair.meta["rejected_normalised"] in {"b", "d"}
    assert _closed_pair(closed(gold=None), SAMPLES, cfg, random.Random(0), aside) is None
    assert aside[-1].reason == "closed_no_gold: 0/8 samples agree with the gold answer"


def test_normalize_instruction_for_duplicates():
    assert normalize_instruction("<image>\nDescribe  the image.") == normalize_instruction("describe the image")
