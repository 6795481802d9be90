"""The per-iteration reports over the database: keep rates by group, parse failures, the
label-free selection signal (and its pure core), on a small hand-built SQLite database."""

import pytest

from selfjudge.shared.db import (
    Base,
    Checkpoint,
    Image,
    Iteration,
    Judgment,
    Pair,
    Prompt,
    Run,
    TrainingExample,
    make_sessionmaker,
)
from selfjudge.shared.filter_stats import keep_rate_by, parse_failures, selection_signal, signal_from_judgments


def test_signal_from_judgments():
    js = [
        (1, "AB", "A"),
        (1, "BA", "B"),  # right both orders
        (2, "AB", "A"),
        (2, "BA", "A"),  # position bias: not consistent
        (3, "AB", "B"),
        (3, "BA", "A"),  # consistent, but against the synthetic label
        (4, "AB", None),
        (4, "BA", "B"),  # unparsed
        (5, "AB", "A"),
        (5, "AB", "A"),
        (5, "AB", "B"),
        (5, "BA", "B"),
        (5, "BA", None),
    ]  # majority of samples
    sig = signal_from_judgments(js)
    # pair 5: AB majority A (2/3); BA: B 1 of 2 is no strict majority -> not agreeing
    assert sig == {"pairs": 5, "agreement": 0.2, "consistency": 0.4, "parse_rate": round(11 / 13, 4), "score": 0.2}
    assert signal_from_judgments([]) is None


@pytest.fixture(scope="module")
def pg_url(fresh_database):
    """A database of its own on the machine's Postgres (the JSON and GROUP BY SQL differ from SQLite)."""
    return fresh_database("selfjudge_report")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    sessions = make_sessionmaker(url)
    Base.metadata.drop_all(sessions.kw["bind"])
    Base.metadata.create_all(sessions.kw["bind"])
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=2))
        s.flush()
        s.add(Checkpoint(id=1, run_id=1, iteration=0, uri="hf:x", content_hash="0" * 64))
        s.flush()
        s.add(Checkpoint(id=2, run_id=1, iteration=1, uri="hf:y", content_hash="1" * 64, parent_id=1))
        s.add(Image(id="i" * 64, key="images/ii/x.png", width=1, height=1))
        s.flush()
        s.add_all(
            [
                Iteration(run_id=1, number=0, judge_checkpoint_id=1, output_checkpoint_id=1),
                Iteration(run_id=1, number=1, judge_checkpoint_id=1, output_checkpoint_id=2),
            ]
        )
        specs = [  # (qtype, method, errors, holdout, kept)
            ("count", "majority_vote", ["wrong_answer"], False, True),
            ("count", "majority_vote", ["wrong_answer"], False, False),
            ("describe", "rule_perturb", ["colour", "count"], False, True),
            ("list", "model_style_mimic", ["position"], False, False),
            ("describe", "rule_perturb", ["size"], True, False),  # selection holdout
        ]
        for i, (qtype, method, errors, holdout, kept) in enumerate(specs, 1):
            s.add(
                Prompt(
                    id=i,
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    source_id=f"s{i}",
                    source="scenes",
                    image_id="i" * 64,
                    instruction="q",
                    kind="closed" if method == "majority_vote" else "open",
                    question_type=qtype,
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
                    preferred="p",
                    rejected="r",
                    method=method,
                    errors=errors,
                    checkpoint_id=1,
                    meta={"holdout": holdout},
                )
            )
            s.flush()
            for order, verdict in (("AB", "A" if kept or holdout else "B"), ("BA", "B" if kept else None)):
                j = Judgment(
                    run_id=1,
                    iteration=1,
                    shard_index=0,
                    pair_id=i,
                    order=order,
                    sample=0,
                    prompt_text="t",
                    output="o",
                    verdict=verdict,
                    parse_reason="ok" if verdict else "no_verdict",
                    correct=verdict == ("A" if order == "AB" else "B"),
                    checkpoint_id=1,
                )
                s.add(j)
                s.flush()
                if kept:
                    s.add(
                        TrainingExample(
                            run_id=1, iteration=1, shard_index=0, judgment_id=j.id, pair_id=i, label=verdict
                        )
                    )
    return sessions


def test_keep_rate_by(db):
    with db() as s:
        by = keep_rate_by(s, 1, 1)
    assert by["question_type"] == {
        "count": {"pairs": 2, "kept": 1, "rate": 0.5},
        "describe": {"pairs": 1, "kept": 1, "rate": 1.0},
        "list": {"pairs": 1, "kept": 0, "rate": 0.0},
    }
    assert by["error_type"] == {
        "colour": {"pairs": 1, "kept": 1, "rate": 1.0},
        "count": {"pairs": 1, "kept": 1, "rate": 1.0},
        "position": {"pairs": 1, "kept": 0, "rate": 0.0},
        "wrong_answer": {"pairs": 2, "kept": 1, "rate": 0.5},
    }
    assert by["source"] == {"scenes": {"pairs": 4, "kept": 2, "rate": 0.5}}
    assert by["method"]["rule_perturb"] == {"pairs": 1, "kept": 1, "rate": 1.0}
    assert by["kind"] == {"closed": {"pairs": 2, "kept": 1, "rate": 0.5}, "open": {"pairs": 2, "kept": 1, "rate": 0.5}}
    with db() as s:
        assert keep_rate_by(s, 1, 2) == {g: {} for g in ("question_type", "error_type", "source", "method", "kind")}


def test_parse_failures_and_selection(db):
    with db() as s:
        assert parse_failures(s, 1, 1) == {"no_verdict": 3}
        # checkpoint 1 (the output of iteration 0) judged iteration 1; only the holdout pair counts
        sig = selection_signal(s, 1, 0)
        assert sig["set"] == "holdout" and sig["pairs"] == 1 and sig["checkpoint_id"] == 1
        assert sig["judged_in_iteration"] == 1 and sig["agreement"] == 0.0 and sig["parse_rate"] == 0.5
        assert selection_signal(s, 1, 1) is None  # no iteration 2 yet
        assert selection_signal(s, 1, 5) is None


def test_injection_counts_and_the_fallback_share(db):
    from selfjudge.shared.status import format_table, injection_counts, run_status

    with db.begin() as s:
        s.get(Pair, 5).meta = {"holdout": True, "fallback": "rule"}  # a rejected alteration, then the rule
    with db() as s:
        assert injection_counts(s, 1, 1) == {
            "model": 1,
            "rule": 1,
            "rule_fallback": 1,
            "open_pairs": 3,
            "fallback_share": round(1 / 3, 4),
        }
        assert injection_counts(s, 1, 0)["fallback_share"] is None
        status = run_status(s, 1)
    assert status["iterations"][1]["injection"]["rule_fallback"] == 1
    assert "open pairs 3: model alteration 1, rule 1, rule fallback 1 (33.3%)" in format_table(status)
