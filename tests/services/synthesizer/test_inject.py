"""Error injection: the alteration check (change, length bound, overlap), error types, and the
open-pair flow with a scripted model (alteration accepted / rejected -> rule fallback)."""

import random
from types import SimpleNamespace

import pytest

from selfjudge.services.synthesizer import stage
from selfjudge.services.synthesizer.inject import (
    alteration_prompt,
    check_alteration,
    clean_candidate,
    error_types,
    word_overlap,
)
from selfjudge.shared.config import Settings, SynthConfig
from selfjudge.shared.metrics import Metrics
from selfjudge.shared.models.generation.backend import Generation
from selfjudge.shared.records import PromptRecord

ORIGINAL = "There are two objects: a large red circle on the left and a small blue star at the top right."


def test_style_mimic_length_bound():
    # 100 characters of original; r = 1.3 allows 77..130 characters
    original = "x " * 49 + "ab"
    assert len(original) == 100
    assert check_alteration(original, original[:-2] + "cd" + "y" * 30, 1.3).ok  # 130: on the bound
    assert check_alteration(original, original[:-2] + "cd" + "y" * 31, 1.3).reason == "length"  # 131
    short = "x " * 38 + "cd"  # 78 >= 100/1.3
    assert check_alteration(original, short, 1.3).ok
    assert check_alteration(original, "x " * 37 + "cd", 1.3).reason == "length"  # 76 < 76.9
    assert check_alteration(original, "x " * 37 + "cd", 2.0).ok  # detail bound


def test_check_alteration_accepts_a_real_edit():
    altered = "There are three objects: a large green circle on the right and a small blue star at the top right."
    c = check_alteration(ORIGINAL, altered, 1.3, 0.5)
    assert c.ok and c.reason == "ok"
    assert c.errors == ["colour", "count", "position"]
    assert c.changes == [("two", "three"), ("red", "green"), ("left", "right")]
    assert c.length_ratio == pytest.approx(len(altered) / len(ORIGINAL)) and c.overlap == pytest.approx(17 / 20)


@pytest.mark.parametrize(
    "candidate, reason",
    [
        ("", "empty"),
        (ORIGINAL, "no_change"),
        (ORIGINAL.upper().replace(".", "!"), "no_change"),  # case and punctuation are no error
        (ORIGINAL + " A green triangle, a purple square and a tiny orange diamond sit at the bottom.", "length"),
        ("A cat sat on a warm mat by the old door of the big house on the hill, it is sunny today.", "rewritten"),
    ],
)
def test_check_alteration_rejects(candidate, reason):
    assert check_alteration(ORIGINAL, candidate, 1.3, 0.5).reason == reason


def test_clean_candidate_and_overlap():
    assert clean_candidate('Sure! Here is the modified response:\n"A red star."') == "A red star."
    assert clean_candidate("Rewritten response: A red star.") == "A red star."
    assert word_overlap("a red star", "a blue star") == pytest.approx(2 / 3)
    assert error_types("A dog sits on a sofa.", "A cat sits on a sofa.") == (["object"], [("dog", "cat")])
    assert error_types("It is 3.5 metres tall.", "It is 4.5 metres tall.")[0] == ["number"]
    assert error_types("The cup is small.", "The cup is large.")[0] == ["size"]


def test_alteration_prompts_name_the_error_kinds():
    for variant in ("detail", "style_mimic"):
        text = alteration_prompt(variant, "Describe the image.", ORIGINAL, 2)
        assert ORIGINAL in text and "2 " in text and "spatial relations" in text
    assert "same length" in alteration_prompt("style_mimic", "q", "r")


class ScriptedBackend:
    """Returns, for each request, the scripted texts of the first key found in its text."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.requests = script, []

    def generate(self, requests, params, progress=None):
        self.requests.extend(requests)
        out = []
        for r in requests:
            texts = next(v for k, v in self.script.items() if k in r.text)
            out.append(Generation(r.key, (texts * params.n)[: params.n], [3] * params.n, 10))
        return out


CTX = SimpleNamespace(metrics=Metrics(), settings=Settings())  # source: the scenes world


def prompt(i):
    record = PromptRecord(
        prompt_id=i,
        source_id=f"s:{i}",
        image_key="images/x.png",
        instruction=f"Describe image {i}.",
        kind="open",
        question_type="describe",
    )
    return stage.Draft(record, image=None, source="scenes", kind="open")


def open_pairs(script, originals, ctx=CTX, **cfg):
    backend = ScriptedBackend(script)
    gens = [Generation(str(i), [o], [5], 10) for i, o in enumerate(originals)]
    aside = []
    pairs = stage._open_pairs(
        ctx,
        backend,
        [prompt(i) for i in range(len(originals))],
        gens,
        SynthConfig(**cfg),
        random.Random(0),
        aside,
        seed=1,
    )
    return pairs, [(a.record_id, a.code, a.detail) for a in aside], backend


GOOD = "There are two objects: a large green circle on the left and a small blue star at the top right."


def test_model_alteration_accepted():
    pairs, aside, backend = open_pairs(
        {ORIGINAL: ["Sure, here it is:\n" + GOOD]}, [ORIGINAL], injection="model", style_mimic_share=1.0
    )
    assert aside == [] and len(pairs) == 1
    p = pairs[0]
    assert (p.preferred, p.rejected, p.method, p.errors) == (ORIGINAL, GOOD, "model_style_mimic", ["colour"])
    meta = p.meta
    assert meta["injection"] == "model" and meta["variant"] == "style_mimic" and "fallback" not in meta
    assert meta["max_length_ratio"] == 1.3 and meta["attempts"][0]["reason"] == "ok"
    assert meta["changes"] == [["red", "green"]] and "same length" in meta["alteration_prompt"]
    assert len(backend.requests) == 1 and ORIGINAL in backend.requests[0].text


def test_model_alteration_rejected_falls_back_to_rule():
    too_long = ORIGINAL + " Also a dog, a cat, a horse, a sun and a tree stand behind them in a big field."
    pairs, aside, _ = open_pairs(
        {ORIGINAL: [ORIGINAL, too_long]}, [ORIGINAL], injection="model", style_mimic_share=1.0, alter_samples=2
    )
    assert aside == [] and len(pairs) == 1
    p = pairs[0]
    assert p.method == "rule_perturb" and p.meta["fallback"] == "rule"
    assert [a["reason"] for a in p.meta["attempts"]] == ["no_change", "length"]
    assert p.rejected != ORIGINAL and p.errors and p.meta["rule"]["reason"] == "ok"


def test_outside_the_scenes_world_there_is_no_fallback_by_default():
    too_long = ORIGINAL + " Also a dog, a cat, a horse, a sun and a tree stand behind them in a big field."
    user_data = SimpleNamespace(metrics=Metrics(), settings=Settings.model_validate({"source": {"kind": "jsonl"}}))
    pairs, aside, _ = open_pairs(
        {ORIGINAL: [too_long]}, [ORIGINAL], ctx=user_data, injection="model", style_mimic_share=1.0
    )
    assert pairs == [] and aside == [("s:0", "open_alteration_rejected", "length")]
    pairs, aside, _ = open_pairs(
        {ORIGINAL: [too_long]},
        [ORIGINAL],
        ctx=user_data,
        injection="model",
        style_mimic_share=1.0,
        fallback_to_rule=True,
    )  # asked for: it falls back
    assert aside == [] and pairs[0].meta["fallback"] == "rule"


def test_an_alteration_gets_at_least_1_3x_the_original_budget():
    class Budget(ScriptedBackend):
        def generate(self, requests, params, progress=None):
            self.params = params
            return super().generate(requests, params, progress)

    for open_tokens, alter_tokens, expected in ((96, 64, 125), (512, 128, 666), (32, 128, 128)):
        backend = Budget({ORIGINAL: [GOOD]})
        stage._open_pairs(
            CTX,
            backend,
            [prompt(0)],
            [Generation("0", [ORIGINAL], [5], 10)],
            SynthConfig(open_max_new_tokens=open_tokens, alter_max_new_tokens=alter_tokens, injection="model"),
            random.Random(0),
            [],
            seed=1,
        )
        assert backend.params.max_new_tokens == expected >= 1.3 * open_tokens


def test_no_fallback_sets_aside_with_the_reasons():
    pairs, aside, _ = open_pairs({ORIGINAL: [ORIGINAL]}, [ORIGINAL], injection="model", fallback_to_rule=False)
    assert pairs == [] and aside == [("s:0", "open_alteration_rejected", "no_change")]


def test_rule_only_makes_no_model_call_and_unperturbable_text_is_set_aside():
    pairs, aside, backend = open_pairs({}, [ORIGINAL, "Nothing to see here."], injection="rule")
    assert backend.requests == []
    assert [p.method for p in pairs] == ["rule_perturb"]
    assert aside == [("s:1", "open_perturb_no_change", "Nothing to see here.")]


def test_both_splits_by_model_share():
    originals = [ORIGINAL] * 40
    pairs, _, backend = open_pairs(
        {ORIGINAL: [GOOD]}, originals, injection="both", model_share=0.5, style_mimic_share=0.0
    )
    methods = [p.method for p in pairs]
    assert (
        10 <= methods.count("model_detail") <= 30
        and methods.count("model_detail") + methods.count("rule_perturb") == 40
    )
    assert len(backend.requests) == methods.count("model_detail")
