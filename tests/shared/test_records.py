"""shared/records.py: the shard records round-trip through the store byte for byte as the stages wrote
them before the models existed; a bad line is an error naming the shard, the line, the record and
each bad field (or is handed to `invalid` and skipped); unknown keys are dropped on read and
refused on write."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from selfjudge.shared.records import (
    ExampleRecord,
    JudgmentRecord,
    PairRecord,
    PromptRecord,
    RecordError,
    SetAsideRecord,
    TrainTrace,
    parse_record,
    read_records,
    write_records,
)
from selfjudge.shared.store import LocalStore, put_jsonl

KEY = "runs/1/iter1/pairs/00000.jsonl"

# a pair as the synthesizer wrote it (the dict it built, in its key order)
PAIR = {
    "prompt_id": 7,
    "source_id": "scenes:train:3:count",
    "image_key": "images/ab/ab.png",
    "instruction": "How many circles?",
    "kind": "closed",
    "question_type": "count",
    "options": None,
    "source": "scenes",
    "holdout": False,
    "kind_reason": "given by the source (scenes)",
    "preferred": "3",
    "rejected": "4",
    "method": "majority_vote",
    "errors": ["wrong_answer"],
    "vote_count": 5,
    "n_samples": 8,
    "meta": {"votes": {"3": 5, "4": 3}, "threshold": 5, "options": None, "holdout": False},
    "pair_id": 12,
}
JUDGMENT = {
    "judgment_id": 3,
    "pair_id": 12,
    "order": "BA",
    "sample": 1,
    "image_key": "images/ab/ab.png",
    "prompt_text": "Question: ...",
    "output": "B is right. [[B]]",
    "verdict": "B",
    "parse_reason": "ok",
    "correct": True,
    "question_type": "count",
    "errors": ["wrong_answer"],
    "method": "majority_vote",
    "source": "scenes",
    "prompt_id": 7,
    "holdout": False,
}
EXAMPLE = {
    "example_id": 9,
    "judgment_id": 3,
    "pair_id": 12,
    "image_key": "images/ab/ab.png",
    "prompt_text": "Question: ... «ü»",
    "answer": "B is right. [[B]]",
    "label": "B",
}
PROMPT = {
    "prompt_id": 7,
    "source_id": "jsonl:a",
    "image_key": "images/ab/ab.png",
    "instruction": "Describe.",
    "kind": "auto",
    "question_type": "user",
    "options": ["cat", "dog"],
}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


@pytest.mark.parametrize(
    "model, record", [(PairRecord, PAIR), (JudgmentRecord, JUDGMENT), (ExampleRecord, EXAMPLE), (PromptRecord, PROMPT)]
)
def test_round_trip_is_byte_for_byte(store, model, record):
    put_jsonl(store, "old.jsonl", [record, record])
    records = list(read_records(store, "old.jsonl", model))
    assert records == [model.model_validate(record)] * 2
    assert write_records(store, "new.jsonl", records) == 2
    assert store.get_bytes("new.jsonl") == store.get_bytes("old.jsonl")


def test_an_invalid_line_names_the_shard_line_record_and_fields(store):
    bad = dict(PAIR, vote_count="5")
    del bad["preferred"]
    put_jsonl(store, KEY, [PAIR, bad])
    with pytest.raises(RecordError) as exc:
        list(read_records(store, KEY, PairRecord))
    message = str(exc.value)
    assert message.startswith(f"invalid pair record 12 ({KEY} line 2): ")
    assert "preferred: Field required" in message and "vote_count: Input should be a valid integer" in message
    assert (exc.value.key, exc.value.line, exc.value.record_id) == (KEY, 2, "12")


def test_invalid_lines_are_handed_over_and_skipped(store):
    store.put_bytes(
        KEY,
        (
            json.dumps(PAIR)
            + "\n{not json\n[1, 2]\n\n"
            + json.dumps(dict(PAIR, pair_id=13, order="AB", holdout=1))
            + "\n"
        ).encode(),
    )
    bad = []
    assert [r.pair_id for r in read_records(store, KEY, PairRecord, invalid=bad.append)] == [12]
    assert [(e.line, e.record_id) for e in bad] == [(2, ""), (3, ""), (5, "13")]
    assert "malformed JSON" in str(bad[0]) and "not a JSON object: list" in str(bad[1])
    assert "holdout: Input should be a valid boolean" in str(bad[2])  # strict: no 1 for true
    aside = [e.set_aside() for e in bad]
    assert aside[0] == SetAsideRecord(record_id=f"{KEY}:2", code="bad_record", detail=str(bad[0]))
    assert aside[2].record_id == "13" and aside[2].reason.startswith("bad_record: invalid pair record 13")


def test_unknown_keys_are_dropped_on_read_and_refused_on_write(store):
    put_jsonl(store, KEY, [dict(PAIR, added_by_a_newer_version=1)])
    (record,) = read_records(store, KEY, PairRecord)
    assert "added_by_a_newer_version" not in record.model_dump()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PairRecord(**PAIR, cue="strong")


def test_a_narrower_model_reads_what_it_needs():
    """The trainer reads the filter's example records as traces; a hand-made trace needs no more."""
    trace = parse_record(TrainTrace, json.dumps(EXAMPLE))
    assert (trace.example_id, trace.image_key, trace.answer) == (9, EXAMPLE["image_key"], EXAMPLE["answer"])
    bare = parse_record(TrainTrace, json.dumps({"prompt_text": "p", "image_key": "k", "answer": "a"}))
    assert bare.example_id is None


def test_literal_fields_are_checked():
    with pytest.raises(RecordError, match="kind: Input should be 'auto', 'open' or 'closed'"):
        parse_record(PromptRecord, json.dumps(dict(PROMPT, kind="medium")), "prompts.jsonl", 4)
    with pytest.raises(RecordError, match=r"order: Input should be 'AB' or 'BA'"):
        parse_record(JudgmentRecord, json.dumps(dict(JUDGMENT, order="AA")))
