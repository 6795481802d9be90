"""Label-free checkpoint selection (shared/selection.py, `selfjudge select`, the report's section), on a
hand-built run in SQLite and Postgres with a real local store. The judges are scripted by checkpoint
(a right judge, a position-biased one), so the scores and the choice are known in advance."""

import io
import json
from types import SimpleNamespace

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from selfjudge.services.evaluator.report import collect, render_markdown
from selfjudge.shared import selection
from selfjudge.shared.config import Settings
from selfjudge.shared.db import (
    Base,
    Checkpoint,
    EvalSummary,
    Image,
    Iteration,
    Judgment,
    Pair,
    Prompt,
    Run,
    make_sessionmaker,
)
from selfjudge.shared.models.generation.backend import Generation
from selfjudge.shared.store import LocalStore, put_image

HOLDOUT, TRAINABLE = [1, 2, 3, 4], [5, 6]


class Judges:
    """checkpoint id -> behaviour: "right" (always the preferred), "biased" (always A), "half" (right on
    even pair ids, biased on odd)."""

    def __init__(self, behaviour: dict[int, str]):
        self.behaviour, self.calls = behaviour, []

    def backend(self, checkpoint_id):
        judges = self

        class Scripted:
            def generate(self, requests, params, progress=None):
                judges.calls.append((checkpoint_id, len(requests), params))
                out = []
                for r in requests:
                    pair_id, order = r.key.split(":")
                    how = judges.behaviour[checkpoint_id]
                    right = how == "right" or (how == "half" and int(pair_id) % 2 == 0)
                    letter = ("A" if order == "AB" else "B") if right else "A"
                    out.append(
                        Generation(r.key, [f"Looking at the image... [[{letter}]]"] * params.n, [5] * params.n, 10)
                    )
                return out

        return Scripted()


@pytest.fixture(scope="module")
def pg_url(fresh_database):
    """A database of its own on the machine's Postgres."""
    return fresh_database("selfjudge_selection")


@pytest.fixture(params=["sqlite", "postgres"])
def run(request, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    sessions = make_sessionmaker(url)
    Base.metadata.drop_all(sessions.kw["bind"])
    Base.metadata.create_all(sessions.kw["bind"])
    store = LocalStore(tmp_path / "store")
    buf = io.BytesIO()
    PILImage.new("RGB", (16, 16), "red").save(buf, format="PNG")
    digest, key = put_image(store, buf.getvalue())
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=3))
        s.add(Image(id=digest, key=key, width=16, height=16))
        s.flush()
        for k in range(4):  # checkpoint k + 1 is the output of iteration k
            s.add(Checkpoint(id=k + 1, run_id=1, iteration=k, uri=f"hf:c{k}", content_hash=str(k) * 64, meta={}))
            s.flush()
            s.add(Iteration(run_id=1, number=k, judge_checkpoint_id=max(1, k), output_checkpoint_id=k + 1))
        for i in HOLDOUT + TRAINABLE:
            s.add(
                Prompt(
                    id=i,
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    source_id=f"s{i}",
                    source="jsonl",
                    image_id=digest,
                    instruction=f"What is {i}?",
                    kind="open",
                    question_type="user",
                )
            )
            s.flush()
            s.add(
                Pair(
                    id=i,
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    prompt_id=i,
                    preferred="a red square",
                    rejected="a blue square",
                    method="model_detail",
                    errors=["colour"],
                    checkpoint_id=1,
                    meta={"holdout": i in HOLDOUT},
                )
            )
            s.flush()
            for order in ("AB", "BA"):  # iteration 1's reasoner: the base judge, biased towards A
                s.add(
                    Judgment(
                        run_id=1,
                        iteration=1,
                        shard_index=0,
                        pair_id=i,
                        order=order,
                        sample=0,
                        prompt_text="t",
                        output="[[A]]",
                        verdict="A",
                        parse_reason="ok",
                        correct=order == "AB",
                        checkpoint_id=1,
                    )
                )
        s.add(
            EvalSummary(
                run_id=1,
                iteration=2,
                checkpoint_id=3,
                benchmark="vl-rewardbench",
                category="overall",
                metric="accuracy",
                value=0.44,
                n=100,
            )
        )
    settings = Settings.model_validate(
        {
            "filter": {"selection_holdout": 0.1, "selection_max_pairs": 3},
            "database": {"url": url},
            "run": {"work_dir": str(tmp_path)},
            "store": {"root": str(tmp_path / "store")},
        }
    )
    return SimpleNamespace(settings=settings, sessions=sessions, store=store)


def test_every_checkpoint_is_judged_on_the_same_fixed_set_and_the_best_is_chosen(run):
    judges = Judges({2: "half", 3: "right", 4: "biased"})
    ctx = SimpleNamespace(settings=run.settings, sessions=run.sessions, store=run.store, models=judges)
    with run.sessions() as s:
        assert [p.id for p in selection.selection_pairs(s, 1, 3)] == [1, 2, 3]  # holdout only, capped
    signals = [selection.judge_selection(ctx, 1, k, k + 1) for k in (1, 2, 3)]  # the last one too
    assert [(c, n) for c, n, _ in judges.calls] == [(2, 6), (3, 6), (4, 6)]  # 3 pairs x 2 orders each
    assert judges.calls[0][2].temperature == run.settings.reason.temperature
    assert [sig["score"] for sig in signals] == [round(1 / 3, 4), 1.0, 0.0]  # pair 2 only / all / none
    with run.sessions() as s:
        stored = selection.signals(s, 1)
    assert sorted(stored) == [0, 1, 2, 3] and stored[0]["score"] == 0.0 and stored[0]["pairs"] == 3
    assert stored[0]["checkpoint_id"] == 1 and stored[3]["checkpoint_id"] == 4
    assert (
        selection.judge_selection(ctx, 1, 3, 4)["score"] == 0.0 and len(judges.calls) == 3
    )  # stored: not judged again
    with run.sessions() as s:
        assert s.query(EvalSummary).filter_by(benchmark="selection", iteration=3).count() == 4
    choice = selection.choose(stored)
    assert (choice["iteration"], choice["checkpoint_id"], choice["score"]) == (2, 3, 1.0)
    assert "highest selection score 1.000" in choice["reason"] and "iteration 3 0.000" in choice["reason"]


def test_select_command_prints_and_records_and_the_report_shows_it(run, tmp_path, capsys):
    from selfjudge.cli import main

    ctx = SimpleNamespace(
        settings=run.settings,
        sessions=run.sessions,
        store=run.store,
        models=Judges({2: "right", 3: "half", 4: "right"}),
    )
    for k in (1, 2, 3):
        selection.judge_selection(ctx, 1, k, k + 1)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(run.settings.model_dump(include={"filter", "database", "run", "store"})))
    assert main(["select", "--config", str(config), "--run", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run 1: checkpoint 2 (iteration 1)") and "reason: iteration 1" in out  # a tie: the earlier
    with run.sessions() as s:
        marked = {c.id: c.meta.get("selected") for c in s.scalars(select(Checkpoint))}
        assert marked[2]["score"] == 1.0 and all(v is None for k, v in marked.items() if k != 2)
        data = collect(s, 1)
    assert json.loads(run.store.get_bytes("runs/1/selection/choice.json"))["checkpoint_id"] == 2
    text = render_markdown(data, [])
    assert "## Checkpoint selection (label-free)" in text and "vl-rewardbench overall %" in text
    assert "| 1 | 100.0 | 100.0 | 100.0 | - | **yes** |" in text  # the choice beside the benchmark
    assert "| 2 | 33.3 | 33.3 | 100.0 | 44.0 (n=100) |  |" in text and text.count("**yes**") == 1
    assert "| 1 | 6 | 6 | 0 | 0 | 0.0% |" in text  # open pairs: all by model alteration, no fallback
    assert "selection" not in data["benchmarks"]


def test_no_selection_set_no_choice(run, tmp_path, capsys):
    from selfjudge.cli import main

    with run.sessions.begin() as s:
        for p in s.scalars(select(Pair)):
            p.meta = {"holdout": False}
    ctx = SimpleNamespace(settings=run.settings, sessions=run.sessions, store=run.store, models=Judges({}))
    assert selection.judge_selection(ctx, 1, 1, 2) is None
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(run.settings.model_dump(include={"filter", "database", "run", "store"})))
    assert main(["select", "--config", str(config), "--run", "1"]) == 2
    assert "no selection scores" in capsys.readouterr().err
