"""Embedded mode: a stage that fails does not stop the run; `run --resume` finishes it without redoing work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..conftest import loop_config

CLI = [sys.executable, "-m", "selfjudge.cli"]


def test_failure_is_recorded_and_resume_finishes_without_redoing(tiny_base, tmp_path):
    config = loop_config(
        tmp_path / "config.yaml",
        "embedded-resume",
        tmp_path,
        tiny_base,
        run={"iterations": 1, "prompts_per_iteration": 8, "shard_size": 4, "heldout_pairs": 4},
        eval={"max_new_tokens": 48},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFJUDGE")}
    first = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(env, SELFJUDGE_FAILPOINTS="filter.before_commit=raise"),
    )
    assert first.returncode == 1, first.stderr[-3000:]  # the run is not done ...
    assert "filter failed" in first.stderr and "FailpointError" in first.stderr
    status = json.loads(
        subprocess.run(
            [*CLI, "status", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        ).stdout
    )
    it1 = [r for r in status["iterations"] if r["iteration"] == 1][0]
    assert {k: v for k, v in it1["shards"].items() if k.split(":")[0] in ("synthesizer", "reasoner", "filter")} == {
        "synthesizer:done": 2,
        "reasoner:done": 2,
        "filter:failed": 2,
    }  # ... the rest went on
    assert len(it1["failures"]) == 2 and all("FailpointError" in f["error"] for f in it1["failures"])
    assert status["iterations"][0]["status"] == "done"  # iteration 0 (base evaluation) finished

    second = subprocess.run(
        [*CLI, "run", "--config", str(config), "--resume", str(status["run"]["id"]), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    final = json.loads(second.stdout)
    assert final["run"]["status"] == "done"
    it1 = [r for r in final["iterations"] if r["iteration"] == 1][0]
    assert {k: v for k, v in it1["shards"].items() if k.split(":")[0] in ("synthesizer", "reasoner", "filter")} == {
        "synthesizer:done": 2,
        "reasoner:done": 2,
        "filter:done": 2,
    }
    assert not any(state.endswith((":failed", ":pending", ":running")) for state in it1["shards"])
    # finished shards were not redone: no synthesizer/reasoner shard ran again, the filter's did
    assert "synthesizer: run" not in second.stderr and "reasoner: run" not in second.stderr
    assert "filter: run 1 iter 1 shard 0" in second.stderr
