"""`selfjudge replicate` at toy size: the table, the plot and the JSON agree with the runs' databases."""
from __future__ import annotations

import json
import subprocess
import sys

from sqlalchemy import select

from selfjudge.shared.db import EvalSummary, make_sessionmaker


def test_replicate_prints_the_table_and_writes_plot_and_json(tmp_path, tiny_base):
    out = tmp_path / "rep"
    run = subprocess.run([sys.executable, "-m", "selfjudge.cli", "replicate", "--out", str(out), "--iterations", "1",
                          "--base", str(tiny_base), "--ceiling", "8",
                          "--arms", "majority", "gold", "--set", "run.prompts_per_iteration=24",
                          "--set", "run.heldout_pairs=12", "--set", "run.shard_size=12",
                          "--set", "model.cpu_threads=1"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"majority", "gold"}
    assert (out / "heldout_accuracy.png").stat().st_size > 10_000
    for arm, rows in summary["results"].items():
        assert [r["iteration"] for r in rows] == [0, 1]
        assert f"{arm}: held-out accuracy, best iteration vs iteration 0" in run.stdout
        sessions = make_sessionmaker(f"sqlite:///{out / arm / 'selfjudge.db'}")
        with sessions() as s:
            for r in rows:
                db = s.scalar(select(EvalSummary.value).where(
                    EvalSummary.iteration == r["iteration"], EvalSummary.benchmark == "heldout",
                    EvalSummary.category == "overall", EvalSummary.metric == "accuracy"))
                assert abs(db - r["accuracy"]) < 1e-9          # the table's numbers are the database's
                assert sum(v["items"] for v in r["by_question_type"].values()) == 12
                assert sum(v["items"] for v in r["by_error_type"].values()) == 12
                lo, hi = r["ci"]
                assert lo <= r["accuracy"] <= hi
        assert rows[1]["kept_examples"] is not None
        gain = max(r["accuracy"] for r in rows) - rows[0]["accuracy"]
        assert abs(summary["gain"][arm] - gain) < 1e-9
    # the base model's skills, measured on the same 12 held-out pairs (8 of them closed-ended)
    skills = summary["base_skills"]
    assert set(skills) == {"count", "colour", "choice", "position"}
    assert sum(v["pairs"] for v in skills.values()) == 8 and "agrees_own" in run.stdout
    assert all(0 <= v[k] <= 1 for v in skills.values() for k in ("qa", "format", "agrees_own", "verdict_a"))
    # the supervised ceiling: the loop's trainer on 8 gold traces, scored on the same 12 held-out pairs
    ceiling = summary["ceiling"]
    assert ceiling["examples"] == 8 and ceiling["steps"] >= 1 and "supervised ceiling (8 gold traces" in run.stdout
    assert ceiling["scores"]["overall"]["judgments"] == 24
    assert sum(v["judgments"] for k, v in ceiling["scores"].items() if k != "overall") == 24
    assert all(0 <= v["accuracy"] <= 1 and 0 <= v["verdict_a"] <= 1 for v in ceiling["scores"].values())
    assert (out / "ceiling" / "config.json").exists()
    # the gold arm really used gold labels on closed prompts (the ablation), the other majority votes
    assert "closed_labels: gold" in (out / "gold.yaml").read_text()
    assert "closed_labels: majority" in (out / "majority.yaml").read_text()
