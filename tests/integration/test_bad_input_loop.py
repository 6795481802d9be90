"""Issue #6 end to end: one embedded run (1 iteration, tiny sizes) whose JSONL source mixes every bad
image/text record of the corpus (tests/badinputs.py) with the good ones, and whose evaluator reads
the corpus' VL-RewardBench data.jsonl and Multimodal RewardBench all_data.json. The run must finish,
every bad record must be in `set_aside` (stage, record id, reason) and counted in `selfjudge status
--json`, and every good record must become a prompt that gives a pair or is set aside by the
synthesizer with its reason (nothing lost)."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from selfjudge.shared.status import reason_kind

_spec = importlib.util.spec_from_file_location("badinputs", Path(__file__).parents[1] / "badinputs.py")
bi = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("badinputs", bi)
_spec.loader.exec_module(bi)

CLI = [sys.executable, "-m", "selfjudge.cli"]
# tiny sizes, rule-based error injection and 24-token benchmark answers: the run takes seconds


@pytest.fixture(scope="module")
def bad_run(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("bad_input_run")
    corpus = bi.build(work / "corpus")
    config = work / "config.yaml"
    lines = len(corpus.manifest.read_bytes().split(b"\n")) - 1  # draw every record: only drawn ones are read
    config.write_text(f"""
run: {{name: bad-inputs, iterations: 1, prompts_per_iteration: {lines}, shard_size: 8,
      heldout_pairs: 2, work_dir: "{work}"}}
model: {{base: "{tiny_base}", cpu_threads: 1}}
source: {{kind: jsonl, path: "{corpus.manifest}"}}
synth: {{n_samples: 2, majority_threshold: 2, max_new_tokens: 8, open_max_new_tokens: 16, injection: rule}}
reason: {{temperature: 1.0, max_new_tokens: 48}}
eval: {{max_new_tokens: 24, benchmarks: [
  {{name: vl-rewardbench, path: "{corpus.vl_jsonl}", k: 1, max_new_tokens: 24}},
  {{name: mm-rewardbench, path: "{corpus.mm}", k: 1, max_new_tokens: 24}}]}}
train: {{epochs: 1, lr: 1.0e-4, max_length: 384}}
""")
    run = subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    status = subprocess.run(
        [*CLI, "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stderr[-2000:]
    table = subprocess.run([*CLI, "status", "--config", str(config)], capture_output=True, text=True, timeout=120)
    db = sqlite3.connect(work / "selfjudge.db")
    aside = db.execute("SELECT iteration, stage, record_id, reason FROM set_aside").fetchall()
    prompts = db.execute("SELECT id, source_id FROM prompts WHERE iteration = 1").fetchall()
    pairs = db.execute("SELECT prompt_id FROM pairs WHERE iteration = 1").fetchall()
    db.close()
    return {
        "corpus": corpus,
        "status": json.loads(status.stdout),
        "table": table.stdout,
        "aside": aside,
        "prompts": prompts,
        "pairs": pairs,
    }


def test_the_run_finishes(bad_run):
    status = bad_run["status"]
    assert status["run"]["status"] == "done"
    assert [r["iteration"] for r in status["iterations"]] == [0, 1]
    assert all(not r["failures"] for r in status["iterations"])


def test_every_bad_source_record_is_set_aside_with_its_reason(bad_run):
    corpus = bad_run["corpus"]
    source = {rid: reason for k, stage, rid, reason in bad_run["aside"] if stage == "source" and k == 1}
    bad = [c for c in bi.SOURCE_CASES if c.expect == "set_aside"]
    assert len(source) == len(bad)
    for case in bad:
        reason = source.get(corpus.record_id(case))
        assert reason is not None, f"{case.name} not set aside under {corpus.record_id(case)!r}"
        assert case.reason.lower() in reason.lower(), (case.name, reason)


def test_every_bad_benchmark_record_is_set_aside_with_its_reason(bad_run):
    corpus = bad_run["corpus"]
    for k in (0, 1):  # each checkpoint's evaluation reports them
        got = {rid: reason for it, stage, rid, reason in bad_run["aside"] if stage == "evaluator" and it == k}
        expected = {f"vl-rewardbench:{corpus.record_id(c)}": c for c in bi.VL_JSONL_CASES if c.expect == "set_aside"}
        expected.update({f"mm-rewardbench:{corpus.record_id(c)}": c for c in bi.MM_CASES if c.expect == "set_aside"})
        assert sorted(got) == sorted(expected)
        for rid, case in expected.items():
            assert case.reason.lower() in got[rid].lower(), (rid, got[rid])


def test_status_counts_and_shows_them(bad_run):
    it1 = {r["iteration"]: r for r in bad_run["status"]["iterations"]}[1]
    bad = [c for c in bi.SOURCE_CASES if c.expect == "set_aside"]
    source_counts = it1["set_aside_by_stage"]["source"]
    assert sum(source_counts.values()) == len(bad)
    expected = Counter(reason_kind(reason) for _, stage, _, reason in bad_run["aside"] if stage == "source")
    assert source_counts == dict(expected)
    # counted by kind, not one entry per file: the four decompression bombs are one count of 4
    assert source_counts["decompression bomb"] == 4 and source_counts["corrupt image"] == 3
    assert all("/" not in kind for kind in source_counts)
    table = bad_run["table"]
    assert f"iteration 1 set aside by source ({len(bad)}): " in table and "decompression bomb 4" in table


def test_every_good_record_gives_a_prompt_and_a_pair_or_a_reason(bad_run):
    corpus = bad_run["corpus"]
    prompts = {source_id: pid for pid, source_id in bad_run["prompts"]}
    assert sorted(prompts) == sorted(f"jsonl:{rid}" for rid in corpus.good_ids)  # each good record once
    paired = {pid for (pid,) in bad_run["pairs"]}
    synth_aside = {rid for k, stage, rid, _ in bad_run["aside"] if stage == "synthesizer" and k == 1}
    for source_id, pid in prompts.items():
        assert (pid in paired) != (source_id in synth_aside), source_id  # a pair, or set aside with a reason
    assert paired, "no good record made a pair"
