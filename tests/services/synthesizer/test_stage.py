"""The synthesizer's handler on one shard, with a scripted model: classification by cues and by
samples (kind_reason stored), duplicates set aside, closed pairs by vote, open pairs by model
alteration, and everything written to the database, the store and the bus."""

import io
import json

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from selfjudge.services.synthesizer import stage
from selfjudge.shared.config import Settings
from selfjudge.shared.context import Context
from selfjudge.shared.db import Base, Checkpoint, Image, Pair, Prompt, Run, SetAside, make_sessionmaker
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.metrics import Metrics
from selfjudge.shared.models.generation.backend import Generation
from selfjudge.shared.queue import LocalBus
from selfjudge.shared.store import LocalStore, put_image, put_jsonl

ORIGINAL = "There are two red apples on the left of a blue plate."
ALTERED = "There are three red apples on the right of a blue plate."
SAMPLES = {
    "How many dogs?": ["3", "three", "3 dogs", "4"],
    "What is on the table?": ["A cup", "a cup.", "cup", "A mug"],
    "Tell me something.": [
        "Apples lie next to a plate in the sun today.",
        "A still life with fruit and a plate.",
        "Some fruit.",
        "It is a kitchen scene with apples and a plate.",
    ],
    "Describe the image.": ["unused"],
}


class Scripted:
    def __init__(self):
        self.calls = []

    def generate(self, requests, params, progress=None):
        self.calls.append((params.n, params.temperature, [r.text for r in requests]))
        out = []
        for r in requests:
            if ORIGINAL in r.text:  # an alteration request
                texts = [ALTERED] * params.n
            elif params.temperature == 0:  # the greedy original
                texts = [ORIGINAL]
            else:
                texts = next(v for k, v in SAMPLES.items() if r.text.lower().startswith(k.lower()))
            out.append(Generation(r.key, list(texts), [2] * len(texts), 5))
        return out


@pytest.fixture
def env(tmp_path):
    settings = Settings.model_validate(
        {
            "run": {"work_dir": str(tmp_path)},
            "synth": {"n_samples": 4, "majority_threshold": 2, "injection": "model", "style_mimic_share": 1.0},
        }
    )
    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 's.db'}")
    Base.metadata.create_all(sessions.kw["bind"])
    store = LocalStore(tmp_path / "store")
    ctx = Context(
        settings=settings, stage="synthesizer", sessions=sessions, store=store, bus=LocalBus(), metrics=Metrics()
    )
    backend = Scripted()
    ctx.models.backend = lambda checkpoint_id: backend
    images = {}
    for colour in ("red", "blue"):
        buf = io.BytesIO()
        PILImage.new("RGB", (4, 4), colour).save(buf, format="PNG")
        images[colour] = put_image(store, buf.getvalue())
    prompts = [  # (image, instruction, kind)
        ("red", "How many dogs? Answer with a number.", "auto"),
        ("red", "What is on the table?", "auto"),
        ("blue", "Tell me something.", "auto"),
        ("red", "how many dogs?  answer with a number", "auto"),  # duplicate of the first
        ("blue", "Describe the image.", "open"),
    ]
    records = []
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=1))
        s.flush()
        s.add(Checkpoint(id=1, run_id=1, iteration=0, uri="hf:x", content_hash="a" * 64))
        for digest, key in images.values():
            s.add(Image(id=digest, key=key, width=4, height=4))
        s.flush()
        for i, (colour, text, kind) in enumerate(prompts, 1):
            s.add(
                Prompt(
                    id=i,
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    source_id=f"jsonl:{i}",
                    source="jsonl",
                    image_id=images[colour][0],
                    instruction=text,
                    kind=kind,
                    question_type="user",
                )
            )
            records.append(
                {
                    "prompt_id": i,
                    "source_id": f"jsonl:{i}",
                    "image_key": images[colour][1],
                    "instruction": text,
                    "kind": kind,
                    "question_type": "user",
                    "options": None,
                }
            )
    put_jsonl(store, "runs/1/iter1/prompts/00000.jsonl", records)
    task = ShardTask(
        run_id=1, iteration=1, index=0, input_key="runs/1/iter1/prompts/00000.jsonl", judge_checkpoint_id=1
    )
    return ctx, task, backend


def test_one_shard(env):
    ctx, task, backend = env
    stage.handle(task.model_dump(), ctx)
    with ctx.sessions() as s:
        prompts = {p.id: p for p in s.scalars(select(Prompt))}
        pairs = {p.prompt_id: p for p in s.scalars(select(Pair))}
        aside = {a.record_id: a.reason for a in s.scalars(select(SetAside))}
    # classification: a strong cue, samples (short + agreeing), samples (long), the source's word
    assert (prompts[1].kind, prompts[1].kind_reason) == ("closed", "cue: answer-format instruction")
    assert prompts[2].kind == "closed" and prompts[2].kind_reason.startswith(
        "samples: median 2 words (<= 5), top answer 3/4"
    )
    assert prompts[2].kind_reason.endswith("; cue: none (no closed-answer cue) (weak)")
    assert prompts[3].kind == "open" and prompts[3].kind_reason.startswith(
        "samples: median 9 words (> 5), top answer 1/4 (< 0.3)"
    )
    assert prompts[5].kind_reason == "given by the source (jsonl)"
    assert aside == {"jsonl:4": "duplicate: same image and instruction as jsonl:1"}
    assert prompts[4].kind_reason is None
    # closed pairs from the votes; the probe's samples are the votes (no second sampling)
    assert (pairs[1].preferred, pairs[1].rejected, pairs[1].method, pairs[1].vote_count) == (
        "3",
        "4",
        "majority_vote",
        3,
    )
    assert pairs[2].meta["votes"] == {"cup": 3, "mug": 1} and pairs[2].rejected == "A mug"
    # open pairs: the greedy original, a style-mimic alteration that passed the checks
    for pid in (3, 5):
        p = pairs[pid]
        assert (p.preferred, p.rejected, p.method) == (ORIGINAL, ALTERED, "model_style_mimic")
        assert p.errors == ["count", "position"] and p.meta["changes"] == [["two", "three"], ["left", "right"]]
        assert p.meta["holdout"] is False and p.checkpoint_id == 1
    sampled, greedy, altered = backend.calls
    assert sampled[:2] == (4, 0.6) and len(sampled[2]) == 3  # prompts 1, 2, 3 sampled once
    assert greedy[:2] == (1, 0.0) and len(greedy[2]) == 2  # prompts 3 and 5
    assert altered[0] == 2 and all("same length" in t for t in altered[2])
    # the shard's pairs in the store, the reasoner's message on the bus
    lines = ctx.store.get_bytes("runs/1/iter1/pairs/00000.jsonl").decode().splitlines()
    assert sorted(json.loads(line)["pair_id"] for line in lines) == sorted(p.id for p in pairs.values())
    assert [m[0] for m in ctx.bus.pending] == ["reasoner"]
    # redelivered: nothing is done twice
    stage.handle(task.model_dump(), ctx)
    with ctx.sessions() as s:
        assert len(s.scalars(select(Pair)).all()) == 4


def test_gold_labels_and_source_kinds_not_trusted(env):
    ctx, task, backend = env
    ctx.settings.synth.closed_labels = "gold"
    ctx.settings.synth.trust_source_kind = False
    with ctx.sessions.begin() as s:
        s.get(Prompt, 1).gold = "4"
    stage.handle(task.model_dump(), ctx)
    with ctx.sessions() as s:
        prompts = {p.id: p for p in s.scalars(select(Prompt))}
        pairs = {p.prompt_id: p for p in s.scalars(select(Pair))}
        aside = {a.record_id: a.reason for a in s.scalars(select(SetAside))}
    assert prompts[5].kind_reason == "cue: asks for a description/explanation; the source says open"
    assert (pairs[1].preferred, pairs[1].method, pairs[1].meta["gold_agrees"]) == ("4", "gold_label", False)
    assert pairs[1].rejected in ("3", "three", "3 dogs")
    assert aside["jsonl:2"] == "closed_no_gold: 0/4 samples agree with the gold answer"
