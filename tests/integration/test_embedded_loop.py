"""The embedded mode: the whole loop in one process (SQLite, a local store, in-process queue),
through the same stage handlers the workers run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ..conftest import loop_config


@pytest.fixture(scope="module")
def embedded_run(tiny_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("embedded")
    config = loop_config(work / "config.yaml", "embedded-test", work, tiny_base)
    cmd = [sys.executable, "-m", "selfjudge.cli"]
    run = subprocess.run([*cmd, "run", "--config", str(config)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    status = subprocess.run(
        [*cmd, "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stderr[-2000:]
    return {"table": run.stdout, "log": run.stderr, "status": json.loads(status.stdout), "work": work}


def test_status_reports_every_iteration(embedded_run):
    status = embedded_run["status"]
    assert status["run"]["status"] == "done" and status["run"]["name"] == "embedded-test"
    rows = {r["iteration"]: r for r in status["iterations"]}
    assert sorted(rows) == [0, 1, 2]
    for k in (1, 2):
        r = rows[k]
        assert r["prompts"] == 16 and 0 < r["pairs"] <= 16
        assert r["judged"] == 2 * r["pairs"] and r["training_examples"] == 2 * r["kept_pairs"]
        assert r["checkpoint_uri"].startswith("store:runs/")
    for r in rows.values():
        assert r["eval_accuracy"] is not None and 0 <= r["eval_accuracy"] <= 1


def test_table_and_progress_are_printed(embedded_run):
    table = embedded_run["table"]
    lines = table.strip().splitlines()
    assert "heldout acc" in lines[0] and set(lines[1]) == {"-"}
    assert [line.split()[0] for line in lines[2:5]] == ["0", "1", "2"]  # one row per iteration
    log = embedded_run["log"]
    for stage in ("synthesizer", "reasoner", "filter", "evaluator"):
        assert f"{stage}: run 1 iter 1" in log
    assert "run 1: done" in log


def test_everything_is_in_the_local_store(embedded_run):
    store = embedded_run["work"] / "store" / "runs" / "1"
    assert sorted(p.name for p in (store / "iter1").iterdir()) == ["examples", "judgments", "pairs", "prompts"]
    assert (store / "heldout" / "pairs.jsonl").exists()
    assert any((store / "checkpoints" / "iter0").glob("*.safetensors"))
