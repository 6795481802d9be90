"""`python -m recipes.replicate` at toy size: the table, the plot and the JSON agree with the runs' databases."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from recipes.replicate.miniature import PROFILES, Record, figure_lines, watch
from selfjudge.shared.db import EvalSummary, make_sessionmaker

ROOT = Path(__file__).resolve().parents[2]  # the recipe runs from a source checkout's root
RECIPE = [sys.executable, "-m", "recipes.replicate"]


def test_replicate_prints_the_table_and_writes_plot_and_json(tmp_path, tiny_base):
    out = tmp_path / "rep"
    run = subprocess.run(
        [
            *RECIPE,
            "--out",
            str(out),
            "--iterations",
            "1",
            "--base",
            str(tiny_base),
            "--ceiling",
            "8",
            "--arms",
            "majority",
            "gold",
            "--set",
            "run.prompts_per_iteration=24",
            "--set",
            "run.heldout_pairs=12",
            "--set",
            "run.shard_size=12",
            "--set",
            "model.cpu_threads=1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
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
                db = s.scalar(
                    select(EvalSummary.value).where(
                        EvalSummary.iteration == r["iteration"],
                        EvalSummary.benchmark == "heldout",
                        EvalSummary.category == "overall",
                        EvalSummary.metric == "accuracy",
                    )
                )
                assert abs(db - r["accuracy"]) < 1e-9  # the table's numbers are the database's
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


def test_gpu_profile_runs_at_tiny_sizes_on_cpu(tmp_path, tiny_base):
    """`--profile gpu` with every size overridden tiny: the arms and the ceiling side by side, progress
    lines as iterations finish, and iteration k vs 0 with a paired interval in the JSON and the table."""
    out = tmp_path / "gpu"
    run = subprocess.run(
        [
            *RECIPE,
            "--profile",
            "gpu",
            "--out",
            str(out),
            "--iterations",
            "1",
            "--base",
            str(tiny_base),
            "--ceiling",
            "6",
            "--deadline",
            "900",
            "--base-set",
            "answer_batch=12",
            *[
                a
                for kv in (
                    "model.device=cpu",
                    "model.dtype=float32",
                    "model.batch_size=12",
                    "model.cpu_threads=1",
                    "run.prompts_per_iteration=12",
                    "run.heldout_pairs=12",
                    "run.shard_size=12",
                    "train.batch_size=4",
                    "synth.n_samples=4",
                    "synth.majority_threshold=2",
                )
                for a in ("--set", kv)
            ],
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["profile"] == "gpu" and summary["recipe"]["size"]["hidden"] == 512
    assert summary["heldout_pairs"] == 12 and summary["errors"] == {}
    for arm in ("majority", "gold"):
        cfg = yaml.safe_load((out / f"{arm}.yaml").read_text())  # the profile's settings, --set over them
        assert cfg["train"]["micro_batch_tokens"] == -1 and cfg["train"]["warmup_ratio"] == 0.1
        assert cfg["model"]["dtype"] == "float32" and int(cfg["run"]["shard_size"]) == 12
        first, last = summary["results"][arm]
        paired = last["vs_first"]
        assert paired["n"] == 12 and abs(paired["difference"] - (last["accuracy"] - first["accuracy"])) < 1e-9
        assert paired["ci"][0] <= paired["difference"] <= paired["ci"][1]
        best = summary["best_vs_0"][arm]
        assert best["iteration"] == 1 and best["ci"] == paired["ci"] and best["pairs"] == 12
        assert f"{arm}: held-out accuracy, best iteration vs iteration 0" in run.stdout
        assert re.search(rf"\[\d\d:\d\d:\d\d\] {arm}: iteration 1 held-out", run.stdout)
    assert "vs 0 [paired 95% CI]" in run.stdout
    # the ceiling trained while the arms ran (side by side), scored on the same 12 pairs
    lines = run.stdout.splitlines()
    started = max(i for i, line in enumerate(lines) if "iterations of the loop" in line)
    assert started < next(i for i, line in enumerate(lines) if "ceiling: training the base judge on 6" in line)
    assert summary["ceiling"]["examples"] == 6 and summary["ceiling"]["scores"]["overall"]["judgments"] == 24
    assert summary["seconds"]["ceiling"] > 0 and (out / "heldout_accuracy.png").exists()
    assert any(line.startswith("majority best (iteration 1) vs 0:") for line in figure_lines(summary))


def test_a_deadline_stops_a_running_arm(tmp_path):
    """An arm still running at the deadline is stopped (SIGTERM), and results.json is written."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = Record(tmp_path / "results.json", {"results": {}, "seconds": {}, "errors": {}})
    began = time.monotonic()
    late = watch({"majority": (proc, tmp_path / "majority")}, record, deadline=began + 1, every=0.2)
    assert late == ["majority"] and proc.poll() is not None and time.monotonic() - began < 30
    record.arm("majority", [])
    assert json.loads((tmp_path / "results.json").read_text())["results"] == {"majority": []}


def test_base_recipe_settings_are_typed_and_checked():
    recipe = PROFILES["gpu"].base.with_settings({"hidden": "128", "heads": "2", "lr": "1e-4", "max_examples": "64"})
    assert (recipe.size.hidden, recipe.size.heads, recipe.lr, recipe.max_examples) == (128, 2, 1e-4, 64)
    assert recipe.size.layers == PROFILES["gpu"].base.size.layers and recipe.tag() != PROFILES["gpu"].base.tag()
    assert PROFILES["cpu"].base.tag() == ""  # the CPU miniature's folders keep their names
    with pytest.raises(ValueError, match="no such base model setting"):
        recipe.with_settings({"hiden": "3"})
    with pytest.raises(ValueError, match="not a number"):
        recipe.with_settings({"layers": "many"})


def test_bad_settings_stop_the_recipe_before_anything_runs(tmp_path):
    """The recipe's command line (from the checkout's root): a bad --base-set or --set is one message
    and exit status 2, before any model is built."""
    for bad in (["--base-set", "hiden=3"], ["--set", "train.lrr=1"]):
        run = subprocess.run(
            [*RECIPE, "--out", str(tmp_path / "out"), *bad], capture_output=True, text=True, timeout=300, cwd=ROOT
        )
        assert run.returncode == 2 and run.stderr.startswith("replicate: "), run.stderr[-2000:]
        assert not (tmp_path / "out").exists()
