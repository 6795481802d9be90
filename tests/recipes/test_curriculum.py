"""The replication's base model (its three-phase curriculum, recipes/replicate/curriculum.py) and its
diagnostics (base skills, gold ceiling traces, recipes/replicate/diagnostics.py): the lessons teach the
format, never which response to prefer, and the diagnostics score what the model wrote."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import torch

from recipes.replicate.curriculum import ANSWER_WORDS, build_curriculum_model, reading_examples
from recipes.replicate.diagnostics import base_skills, gold_judge_examples, parse_reasoning
from selfjudge.basemodel import format_examples, judge_reasoning
from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.sources.scenes.source import pretraining_prompts
from selfjudge.shared.verdict import parse_verdict


def test_ceiling_traces_are_right_in_every_part():
    """The diagnostic's traces (never the base model's or the loop's): own answer = gold, the clause
    names the gold response, the verdict too, and A / B come about equally often."""
    prompts = pretraining_prompts(7, 400, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    assert len(gold_judge_examples(prompts, random.Random(0), 300)) == 300
    rng, letters = random.Random(0), Counter()
    for image, p in prompts:
        examples = gold_judge_examples([(image, p)], rng, 1)
        if not examples:  # no wrong answer / no perturbation for this prompt
            continue
        [ex] = examples
        assert ex.images == [image] and ex.system == JUDGE_SYSTEM and f"Question: {p.instruction}\n" in ex.text
        a, b = re.search(r"\[Response A\]\n(.*)\n\[Response B\]\n(.*)\nExplain", ex.text, re.S).groups()
        verdict = parse_verdict(ex.answer).choice
        assert a != b and (a if verdict == "A" else b) == p.gold
        letters[verdict] += 1
        if p.kind == "closed":
            assert parse_reasoning(ex.answer) == (a, b, p.gold, verdict)
        else:
            assert ex.answer.startswith(f"My answer: {p.gold} ")
    assert sum(letters.values()) > 350 and 0.4 < letters["A"] / sum(letters.values()) < 0.6


def test_reasoning_reads_back():
    for own, a, b, letter in [("red", "blue", "red", "B"), ("2", "2", "3", "A"), ("4", "2", "3", "-")]:
        assert parse_reasoning(judge_reasoning(own, a, b, short=True) + " [[A]]") == (a, b, own, letter)
    assert parse_reasoning("My answer: There is one object. [[B]]") is None
    assert parse_reasoning("Response A says: 2. Response B says: 3. My answer: 2 [[A]]") is None


def test_base_skills_score_what_the_model_wrote(tiny_base):
    """The skills table of a base model, checked against the model's own outputs read back separately."""
    from selfjudge.shared.judge import judge_prompt
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.sources.scenes.source import heldout_pairs

    pairs = heldout_pairs(3, 12)
    skills = base_skills(tiny_base, pairs)
    closed = [p for p in pairs if p.question_type in skills]
    assert sorted(skills) == ["choice", "colour", "count", "position"] and len(closed) == 8
    backend = TransformersBackend(str(tiny_base))
    gens = backend.generate(
        [
            ChatRequest(
                text=judge_prompt(p.instruction, p.preferred, p.rejected), images=[p.image], system=JUDGE_SYSTEM
            )
            for p in closed
        ],
        SamplingParams(max_new_tokens=64),
    )
    for qtype in skills:
        mine = [(p, g.texts[0]) for p, g in zip(closed, gens) if p.question_type == qtype]
        assert skills[qtype]["pairs"] == len(mine) == 2
        # the preferred-first order is half of what was scored: its verdicts bound the [[A]] rate
        said_a = sum(parse_verdict(t).choice == "A" for _, t in mine)
        assert said_a / 4 <= skills[qtype]["verdict_a"] <= (said_a + 2) / 4
        parsed = sum(parse_reasoning(t) is not None for _, t in mine)
        assert parsed / 4 <= skills[qtype]["format"] <= (parsed + 2) / 4


def test_reading_lesson_restates_and_concludes_without_an_image():
    prompts = pretraining_prompts(0, 60)
    examples = reading_examples(prompts, random.Random(0), 200)
    assert len(examples) == 200
    agrees, neither_a = {"A": 0, "B": 0, "-": 0}, 0
    for ex in examples:
        a, b = re.search(r"\[Response A\]\n(.*)\n\[Response B\]\n(.*)\nExplain", ex.text, re.S).groups()
        assert a != b and {a, b} <= set(ANSWER_WORDS)
        mine = re.search(r"My answer: (.*?), ", ex.answer).group(1)
        verdict = parse_verdict(ex.answer).choice
        assert ex.images == [] and ex.answer == f"{judge_reasoning(mine, a, b, short=True)} [[{verdict}]]"
        letter = "A" if mine == a else "B" if mine == b else "-"
        assert verdict == letter or letter == "-"  # the verdict follows the (random) own answer
        agrees[letter] += 1
        neither_a += letter == "-" and verdict == "A"
    assert min(agrees.values()) > 40  # one of the responses or neither, about a third each
    assert 0.3 < neither_a / agrees["-"] < 0.7  # neither: a coin flip


def test_lesson_shows_the_own_answer_in_a_b_or_neither_for_every_question_type():
    """Whatever the question type, the model's belief is response A's, B's or neither's about a third
    of the time each, and the verdict follows it: no type teaches a prior for "neither"."""
    prompts = pretraining_prompts(0, 1500, image_size=56, max_objects=2, object_scale=1.6, layout="grid")
    own = [None if p.kind == "open" else p.gold if i % 3 else "9" for i, (_, p) in enumerate(prompts)]
    rng, letters = random.Random(0), {}
    for i in range(len(prompts)):
        for ex in format_examples([prompts[i]], rng, 1, [own[i]]):
            parsed = parse_reasoning(ex.answer)
            if parsed is None:  # open-ended: no clause
                continue
            a, b, mine, letter = parsed
            assert mine == own[i] and letter == ("A" if mine == a else "B" if mine == b else "-")
            if letter != "-":
                assert parse_verdict(ex.answer).choice == letter
            letters.setdefault(prompts[i][1].question_type, Counter())[letter] += 1
    assert set(letters) == {"count", "colour", "choice", "position"}
    for qtype, c in letters.items():
        n = sum(c.values())
        if qtype == "position":  # two values only (left/right or above/below): A or B
            assert c["-"] <= c["A"] + c["B"] and min(c["A"], c["B"]) / n > 0.25
        else:
            assert all(0.2 < c[k] / n < 0.45 for k in "AB-"), (qtype, c)


def test_three_phase_base_model_builds_and_loads(tmp_path):
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.models.sft.model import META_FILE

    out = build_curriculum_model(
        tmp_path / "base",
        pretrain_steps=3,
        perception_steps=3,
        reading_steps=3,
        batch_size=2,
        image_size=56,
        max_objects=4,
        object_scale=1.6,
        layout="grid",
        lr=1e-4,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # the phases' folders are gone
    import json

    meta = json.loads((out / META_FILE).read_text())
    assert meta["config"]["lr"] == 1e-4 and meta["parent"].endswith("base.phase2")  # phase 3 of 3
    assert meta["config"]["freeze_vision"] is True
    # the vision encoder is the random init's, untouched by three phases; its projector and the LM trained
    import torch
    from transformers import AutoModelForImageTextToText

    from selfjudge.shared.models.sft.model import VISION_ENCODER
    from selfjudge.shared.models.tiny import build_tiny
    from selfjudge.shared.sources.scenes.source import tokenizer_corpus

    init = build_tiny("qwen2_5_vl", tmp_path / "init", tokenizer_corpus(), seed=0, image_size=56)
    before = AutoModelForImageTextToText.from_pretrained(init).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if VISION_ENCODER.search(k)}
    assert any("visual.merger" in k for k in changed) and any("language_model" in k for k in changed)
    _, p = pretraining_prompts(0, 1, image_size=56, max_objects=4, object_scale=1.6, layout="grid")[0]
    image = pretraining_prompts(0, 1, image_size=56, max_objects=4, object_scale=1.6, layout="grid")[0][0]
    backend = TransformersBackend(str(out))
    [gen] = backend.generate([ChatRequest(text=p.instruction, images=[image])], SamplingParams(max_new_tokens=4))
    assert gen.prompt_tokens < 80  # 56 px: 4 image tokens, not 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where CUDA is missing")
def test_curriculum_trains_and_answers_on_the_device_asked_for(tmp_path, tiny_base):
    """`device` reaches the base model's trainer and the backend that scores it: asked for CUDA on a
    machine without it, both stop with an error that says so (nothing silently runs on the CPU)."""
    from selfjudge.shared.sources.scenes.source import heldout_pairs

    with pytest.raises(RuntimeError, match="TrainConfig.device is 'cuda'.*sees no CUDA device"):
        build_curriculum_model(tmp_path / "base", pretrain_steps=2, device="cuda")
    with pytest.raises(AssertionError, match="CUDA"):
        base_skills(tiny_base, heldout_pairs(3, 4), device="cuda")


def test_base_model_of_another_shape_with_capped_examples(tmp_path, caplog):
    """The GPU profile's knobs at toy size: the model's shape (TinySize), distinct examples capped per
    phase (more steps repeat them as epochs), exactly batch_size examples per forward pass."""
    import json
    import logging

    from selfjudge.shared.models.sft.model import META_FILE
    from selfjudge.shared.models.tiny import TinySize

    size = TinySize(hidden=64, layers=1, heads=1, kv_heads=1, intermediate=128, vision_depth=2, vision_hidden=32)
    with caplog.at_level(logging.INFO, logger="selfjudge.basemodel"):
        out = build_curriculum_model(
            tmp_path / "base",
            pretrain_steps=4,
            perception_steps=4,
            reading_steps=2,
            batch_size=4,
            image_size=56,
            max_objects=2,
            object_scale=1.6,
            layout="grid",
            size=size,
            max_examples=8,
            micro_batch_tokens=-1,
            answer_batch=5,
        )
    config = json.loads((out / "config.json").read_text())
    assert (config["text_config"]["hidden_size"], config["text_config"]["num_hidden_layers"]) == (64, 1)
    assert (config["vision_config"]["depth"], config["vision_config"]["fullatt_block_indexes"]) == (2, [1])
    phases = [r.getMessage() for r in caplog.records if "examples," in r.getMessage()]
    assert len(phases) == 3
    for line in phases[:2]:  # "base model, phase N: what, E examples, K epochs": 16 seen, ~8 distinct
        examples, epochs = map(int, re.search(r"(\d+) examples, (\d+) epochs", line).groups())
        assert examples <= 10 and epochs == 2, line  # (phase 3 makes at least 64 prompts, as before)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["config"]["micro_batch_tokens"] == -1 and meta["steps"] >= 4
    with pytest.raises(ValueError, match="64 per head"):
        build_curriculum_model(tmp_path / "bad", size=TinySize(hidden=96, heads=1))
