"""Issue #6: the bad-input corpus (tests/badinputs.py), one test per case, through the real readers:
the JSONL prompt source, the two benchmark loaders and the judge-output parser. Every bad case is
set aside under its record id with a reason naming what is wrong; every good one is kept."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from selfjudge.services.evaluator.benchmarks import BenchItem, Excluded, iter_benchmark
from selfjudge.shared.sources.files import JsonlSource
from selfjudge.shared.verdict import parse_verdict

_spec = importlib.util.spec_from_file_location("badinputs", Path(__file__).parents[1] / "badinputs.py")
bi = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("badinputs", bi)
_spec.loader.exec_module(bi)

BENCHMARK = {
    "vl-jsonl": ("vl-rewardbench", "vl_jsonl"),
    "vl-parquet": ("vl-rewardbench", "vl_parquet"),
    "mm": ("mm-rewardbench", "mm"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return bi.build(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def outcomes(corpus):
    """family -> (record id -> accepted item | reason), each reader run once over its file."""
    src = JsonlSource(corpus.manifest)
    items = list(src.items())
    out = {"source": {i.prompt_id.removeprefix("jsonl:"): i for i in items}}
    out["source_kept"] = [i.prompt_id.removeprefix("jsonl:") for i in items]
    out["source_rejected"] = list(src.rejected)
    out["source"].update(dict(src.rejected))
    for family, (benchmark, attr) in BENCHMARK.items():
        records = list(iter_benchmark(benchmark, str(getattr(corpus, attr))))
        out[family] = {
            (r.item_id if isinstance(r, BenchItem) else r.record_id): (r if isinstance(r, BenchItem) else r.reason)
            for r in records
        }
        out[family + "_all"] = records
    return out


def test_the_corpus_is_large_enough():
    assert len(bi.CASES) >= 30
    bad = [c for c in bi.CASES if c.expect == "set_aside"]
    assert len(bad) >= 30 and {c.family for c in bi.CASES} == {"source", "vl-jsonl", "vl-parquet", "mm", "verdict"}


@pytest.mark.parametrize("case", [c for c in bi.CASES if c.family != "verdict"], ids=lambda c: c.name)
def test_record(case, corpus, outcomes):
    rid = corpus.record_id(case)
    got = outcomes[case.family].get(rid)
    assert got is not None, f"{case.name}: nothing reported under {rid!r}: {sorted(outcomes[case.family])}"
    if case.expect == "set_aside":
        assert isinstance(got, str), f"{case.name}: accepted, expected set aside ({case.reason})"
        assert case.reason.lower() in got.lower(), (case.name, got)
        if case.image and case.family == "source":  # an image reason names the file
            assert case.image in got, (case.name, got)
        return
    assert not isinstance(got, str), f"{case.name}: set aside: {got}"
    if case.family == "source":  # converted: an RGB image of the expected look
        assert got.image.mode == "RGB"
        if case.size:
            assert got.image.size == case.size
        if case.pixel:
            px = got.image.getpixel((0, 0))
            assert all(abs(a - b) <= 12 for a, b in zip(px, case.pixel)), (case.name, px)
    else:
        assert isinstance(got, BenchItem) and got.better == 0 and got.image
        if "query" in case.extra:
            assert got.query == case.extra["query"]


@pytest.mark.parametrize("case", [c for c in bi.CASES if c.family == "verdict"], ids=lambda c: c.name)
def test_judge_output(case):
    text = case.extra["text"]()
    start = time.perf_counter()
    verdict = parse_verdict(text)
    assert (verdict.reason, verdict.choice) == (case.reason, case.choice)
    assert time.perf_counter() - start < 2.0  # no pathological regex time on huge or odd text


def test_nothing_else_is_lost(corpus, outcomes):
    """Exactly the bad cases are set aside, each once and under its own id; every good record is kept."""
    source = bi.SOURCE_CASES
    rejected = outcomes["source_rejected"]
    assert len({rid for rid, _ in rejected}) == len(rejected)  # unique ids: each one can be reported
    assert sorted(rid for rid, _ in rejected) == sorted(corpus.record_id(c) for c in source if c.expect == "set_aside")
    assert sorted(outcomes["source_kept"]) == sorted(corpus.good_ids)
    for family, cases in (("vl-jsonl", bi.VL_JSONL_CASES), ("vl-parquet", bi.VL_PARQUET_CASES), ("mm", bi.MM_CASES)):
        records = outcomes[family + "_all"]
        assert len(records) == len(cases)  # one outcome per record
        excluded = sorted(r.record_id for r in records if isinstance(r, Excluded))
        assert excluded == sorted(corpus.record_id(c) for c in cases if c.expect == "set_aside")
        assert len(set(excluded)) == len(excluded)
        assert all(
            r.kind in ("missing_image", "bad_image", "duplicate", "bad_record")
            for r in records
            if isinstance(r, Excluded)
        )
