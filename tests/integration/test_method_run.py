"""The method end to end on the scenes source (embedded mode, the tiny offline judge): keep rates
by question type / error type / source in `selfjudge status --json`, the full lineage of a kept
example, the label-free selection signal, and the Hugging Face export read back with `datasets`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from sqlalchemy import select

from selfjudge.shared.db import (
    Checkpoint,
    Image,
    Iteration,
    Judgment,
    Pair,
    Prompt,
    SetAside,
    TrainingExample,
    make_sessionmaker,
)
from selfjudge.shared.sources.scenes.prompts import QUESTION_TYPES

from ..conftest import loop_config

CLI = [sys.executable, "-m", "selfjudge.cli"]


@pytest.fixture(scope="module")
def method_run(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("method")
    # one iteration; two samples per order with the "half of the samples" rule and a cap of two traces
    # per prompt, so the weak tiny judge still yields kept examples; both injection methods; a holdout.
    config = loop_config(
        work / "config.yaml",
        "method-test",
        work,
        tiny_base,
        run={"iterations": 1, "prompts_per_iteration": 18, "shard_size": 9, "heldout_pairs": 4},
        synth={"max_new_tokens": 8, "injection": "both", "alter_samples": 1, "alter_max_new_tokens": 48},
        reason={"samples_per_order": 2, "max_new_tokens": 80},
        filter={
            "require_all_samples": False,
            "min_sample_agreement": 0.5,
            "max_per_prompt": 2,
            "selection_holdout": 0.2,
        },
        eval={"max_new_tokens": 64},
    )
    run = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    status = subprocess.run(
        [*CLI, "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stderr[-2000:]
    out = {}
    for fmt in ("parquet", "jsonl"):
        exp = subprocess.run(
            [
                *CLI,
                "export",
                "--config",
                str(config),
                "--run",
                "1",
                "--iteration",
                "1",
                "--out",
                str(work / f"export-{fmt}"),
                "--format",
                fmt,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert exp.returncode == 0, exp.stderr[-2000:]
        out[fmt] = json.loads(exp.stdout)
    sessions = make_sessionmaker(f"sqlite:///{work / 'selfjudge.db'}")
    return {"status": json.loads(status.stdout), "log": run.stderr, "work": work, "sessions": sessions, "export": out}


def _row(status, k):
    return next(r for r in status["iterations"] if r["iteration"] == k)


def test_keep_rates_by_question_type_error_type_and_source(method_run):
    r = _row(method_run["status"], 1)
    by = r["keep_rate_by"]
    assert set(by) == {"question_type", "error_type", "source", "method", "kind"}
    assert set(by["question_type"]) <= set(QUESTION_TYPES) and len(by["question_type"]) >= 4
    assert set(by["source"]) == {"scenes"}
    assert "wrong_answer" in by["error_type"]  # closed pairs
    assert set(by["error_type"]) & {"colour", "count", "position", "shape", "size", "object"}  # open pairs
    for group in by.values():
        for entry in group.values():
            assert 0 <= entry["kept"] <= entry["pairs"] and entry["rate"] == round(entry["kept"] / entry["pairs"], 4)
    trainable = sum(e["pairs"] for e in by["question_type"].values())
    kept = sum(e["kept"] for e in by["question_type"].values())
    assert kept == r["kept_pairs"] > 0 and trainable <= r["pairs"]
    assert sum(e["pairs"] for e in by["source"].values()) == trainable
    # unparseable judge outputs, by reason
    assert set(r["parse_failures"]) <= {"empty", "no_verdict", "conflicting", "too_long"}
    assert sum(r["parse_failures"].values()) == r["judged"] - _parsed(method_run, 1)


def _parsed(method_run, k):
    with method_run["sessions"]() as s:
        return len(s.scalars(select(Judgment.id).where(Judgment.iteration == k, Judgment.verdict.is_not(None))).all())


def test_set_aside_reasons_are_counted(method_run):
    r = _row(method_run["status"], 1)
    codes = {
        "closed_no_majority",
        "closed_tie",
        "closed_no_alternative",
        "closed_empty",
        "open_empty_response",
        "open_perturb_no_change",
        "open_perturb_length",
        "open_alteration_rejected",
        "duplicate",
        "bad_image",
    }
    assert set(r["set_aside"]) <= codes
    assert r["prompts"] == r["pairs"] + sum(r["set_aside"].values())


def test_selection_signal_is_reported_per_checkpoint(method_run):
    status = method_run["status"]
    base = _row(status, 0)["selection"]  # the base judge, scored by iteration 1's reasoner
    assert (
        base is not None
        and base["judged_in_iteration"] == 1
        and base["checkpoint_id"] == _row(status, 0)["checkpoint_id"]
    )
    assert base["set"] in ("holdout", "all") and base["pairs"] > 0
    for key in ("agreement", "consistency", "parse_rate", "score"):
        assert 0 <= base[key] <= 1
    assert base["agreement"] <= base["consistency"]
    assert _row(status, 1)["selection"] is None  # the last checkpoint has no next iteration yet


def test_lineage_of_a_kept_example(method_run):
    """example -> judgment -> pair (method, errors, meta) -> prompt (kind_reason) -> image -> checkpoints."""
    from selfjudge.shared.store import LocalStore

    store = LocalStore(method_run["work"] / "store")
    with method_run["sessions"]() as s:
        examples = s.scalars(select(TrainingExample).where(TrainingExample.iteration == 1)).all()
        assert examples
        labels = [e.label for e in examples]
        assert labels.count("A") == labels.count("B")  # filter.balance
        for ex in examples:
            j = s.get(Judgment, ex.judgment_id)
            assert j.correct and j.verdict == ex.label and j.pair_id == ex.pair_id and j.order in ("AB", "BA")
            assert j.parse_reason == "ok" and j.prompt_text.startswith("Look at the image")
            pair = s.get(Pair, ex.pair_id)
            assert not (pair.meta or {}).get("holdout")  # the selection set is never trained on
            assert pair.method in ("majority_vote", "rule_perturb", "model_detail", "model_style_mimic")
            assert pair.errors
            if pair.method == "majority_vote":
                assert pair.meta["label_source"] == "majority" and pair.vote_count >= 2
                assert sum(pair.meta["votes"].values()) <= pair.n_samples == 4
            else:
                assert pair.meta["injection"] in ("model", "rule") and pair.meta["injection_requested"]
                assert pair.rejected != pair.preferred and pair.meta["changes"]
                if pair.method.startswith("model"):
                    assert pair.meta["attempts"][0]["reason"] == "ok" and pair.meta["alteration_prompt"]
            prompt = s.get(Prompt, pair.prompt_id)
            assert prompt.kind_reason == "given by the source (scenes)" and prompt.source == "scenes"
            assert prompt.kind == ("closed" if pair.method == "majority_vote" else "open")
            image = s.get(Image, prompt.image_id)
            assert hashlib.sha256(store.get_bytes(image.key)).hexdigest() == image.id
            it = s.scalar(select(Iteration).where(Iteration.number == 1))
            judge, writer = s.get(Checkpoint, j.checkpoint_id), s.get(Checkpoint, pair.checkpoint_id)
            assert judge.id == it.judge_checkpoint_id and judge.iteration == 0 and writer.id == judge.id
            trained = s.get(Checkpoint, it.output_checkpoint_id)
            assert trained.parent_id == judge.id and trained.iteration == 1 and len(trained.content_hash) == 64
    # a prompt that made no pair says why, in a set-aside row of the synthesizer
    with method_run["sessions"]() as s:
        paired = {p.prompt_id for p in s.scalars(select(Pair))}
        unpaired = {p.source_id for p in s.scalars(select(Prompt).where(Prompt.iteration == 1)) if p.id not in paired}
        aside = {a.record_id: a.reason for a in s.scalars(select(SetAside).where(SetAside.stage == "synthesizer"))}
        assert unpaired == set(aside) and all(reason.split(":")[0] for reason in aside.values())


def test_export_is_a_hugging_face_dataset(method_run, tiny_base, tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL.Image import Image as PILImage
    from transformers import AutoProcessor

    files = method_run["export"]["parquet"]
    cache = str(tmp_path / "hf-cache")  # never a cached dataset from an earlier run at the same path
    traces = datasets.load_dataset("parquet", data_files=files["traces"], split="train", cache_dir=cache)
    pairs = datasets.load_dataset("parquet", data_files=files["pairs"], split="train", cache_dir=cache)
    r = _row(method_run["status"], 1)
    assert len(traces) == r["training_examples"] and len(pairs) == r["pairs"]
    assert isinstance(traces[0]["images"][0], PILImage) and isinstance(pairs[0]["images"][0], PILImage)
    for col in (
        "messages",
        "label",
        "pair_id",
        "prompt_id",
        "source_id",
        "judgment_id",
        "judge_checkpoint_hash",
        "writer_checkpoint_hash",
        "trained_checkpoint_hash",
        "image_sha256",
        "errors",
        "method",
    ):
        assert col in traces.column_names
    for col in (
        "prompt",
        "chosen",
        "rejected",
        "pair_id",
        "source_id",
        "kind_reason",
        "pair_meta",
        "writer_checkpoint_hash",
        "holdout",
        "kept_traces",
    ):
        assert col in pairs.column_names
    t = traces[0]
    assert [m["role"] for m in t["messages"]] == ["system", "user", "assistant"]
    assert t["messages"][1]["content"][0]["type"] == "image"
    assert t["messages"][2]["content"][0]["text"].strip()
    p = pairs[0]
    assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
    assert p["chosen"][0]["content"][0]["text"] != p["rejected"][0]["content"][0]["text"]
    assert json.loads(p["pair_meta"]) is not None
    # the chat template of the judge renders the rows as they are (what TRL's trainers do)
    processor = AutoProcessor.from_pretrained(tiny_base)
    rendered = processor.apply_chat_template(t["messages"], tokenize=False)
    assert "<|image_pad|>" in rendered and t["messages"][2]["content"][0]["text"].strip()[:20] in rendered
    assert processor.apply_chat_template(p["prompt"] + p["chosen"], tokenize=False)
    # the dataset card names both subsets; jsonl also loads
    card = (method_run["work"] / "export-parquet" / "README.md").read_text()
    assert "config_name: traces" in card and "config_name: pairs" in card
    by_card = datasets.load_dataset(
        str(method_run["work"] / "export-parquet"), "traces", split="train", cache_dir=cache
    )
    assert len(by_card) == len(traces)
    jsonl = datasets.load_dataset(
        "json", data_files=method_run["export"]["jsonl"]["traces"], split="train", cache_dir=cache
    )
    assert len(jsonl) == len(traces) and (method_run["work"] / "export-jsonl" / jsonl[0]["images"][0]).is_file()


def test_export_of_a_hand_built_iteration(tmp_path):
    """The export alone, fast: a database and store built by hand, read back with `datasets`."""
    datasets = pytest.importorskip("datasets")
    import io

    from PIL import Image as PILImageModule

    from selfjudge.export import export_iteration
    from selfjudge.shared.db import Base, Run
    from selfjudge.shared.store import LocalStore, put_image

    store = LocalStore(tmp_path / "store")
    buf = io.BytesIO()
    PILImageModule.new("RGB", (8, 6), (255, 0, 0)).save(buf, format="PNG")
    digest, key = put_image(store, buf.getvalue())
    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(sessions.kw["bind"])
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=1))
        s.flush()
        s.add(Checkpoint(id=1, run_id=1, iteration=0, uri="hf:x", content_hash="a" * 64))
        s.add(Image(id=digest, key=key, width=8, height=6))
        s.flush()
        s.add(Checkpoint(id=2, run_id=1, iteration=1, uri="store:y", content_hash="b" * 64, parent_id=1))
        s.add(Iteration(run_id=1, number=1, judge_checkpoint_id=1, output_checkpoint_id=2))
        s.add(
            Prompt(
                id=1,
                run_id=1,
                iteration=1,
                shard_index=0,
                source_id="scenes:train:0:count",
                source="scenes",
                image_id=digest,
                instruction="How many?",
                kind="closed",
                kind_reason="given by the source",
                question_type="count",
            )
        )
        s.flush()
        s.add(
            Pair(
                id=1,
                run_id=1,
                iteration=1,
                shard_index=0,
                prompt_id=1,
                preferred="3",
                rejected="4",
                method="majority_vote",
                errors=["wrong_answer"],
                vote_count=5,
                n_samples=16,
                checkpoint_id=1,
                meta={"votes": {"3": 5, "4": 2}},
            )
        )
        s.flush()
        for jid, order, verdict in ((1, "AB", "A"), (2, "BA", "B")):
            s.add(
                Judgment(
                    id=jid,
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    pair_id=1,
                    order=order,
                    sample=0,
                    prompt_text="Look at the image ...",
                    output=f"Reasoning. [[{verdict}]]",
                    verdict=verdict,
                    parse_reason="ok",
                    correct=True,
                    checkpoint_id=1,
                )
            )
            s.flush()
            s.add(TrainingExample(run_id=1, iteration=1, shard_index=0, judgment_id=jid, pair_id=1, label=verdict))
    files = export_iteration(sessions, store, 1, 1, tmp_path / "out")
    assert [f.name for f in files["traces"]] == ["train-00000-of-00001.parquet"]
    traces = datasets.load_dataset("parquet", data_files=[str(f) for f in files["traces"]], split="train")
    pairs = datasets.load_dataset("parquet", data_files=[str(f) for f in files["pairs"]], split="train")
    assert traces["label"] == ["A", "B"] and traces["order"] == ["AB", "BA"]
    assert traces[0]["images"][0].size == (8, 6) and traces[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)
    assert traces[0]["messages"][2] == {"role": "assistant", "content": [{"type": "text", "text": "Reasoning. [[A]]"}]}
    assert traces[0]["judge_checkpoint_hash"] == "a" * 64 and traces[0]["trained_checkpoint_hash"] == "b" * 64
    assert traces[0]["source_id"] == "scenes:train:0:count" and traces[0]["image_sha256"] == digest
    row = pairs[0]
    assert row["prompt"] == [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "How many?"}]}
    ]
    assert row["chosen"][0]["content"][0]["text"] == "3" and row["rejected"][0]["content"][0]["text"] == "4"
    assert row["kept_traces"] == 2 and json.loads(row["pair_meta"]) == {"votes": {"3": 5, "4": 2}}
    assert row["errors"] == ["wrong_answer"] and row["writer_checkpoint_hash"] == "a" * 64
    with pytest.raises(LookupError):
        export_iteration(sessions, store, 1, 7, tmp_path / "none")
