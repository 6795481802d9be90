"""A 2-iteration embedded run (`selfjudge run --config FILE`, no broker) with both benchmarks
configured: every iteration is evaluated on the held-out set and the two benchmark files, and the
run's report renders, with its plot, and says what the database says."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image
from sqlalchemy import func, select

from selfjudge.shared.config import load_settings
from selfjudge.shared.db import EvalResult, EvalSummary, Run, make_sessionmaker

from ...conftest import loop_config

CMD = [sys.executable, "-m", "selfjudge.cli"]

# the first test to ask for the session's tiny_base builds it (minutes on a busy 2-core machine)
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def embedded(tiny_base, tmp_path_factory, gen):
    work = tmp_path_factory.mktemp("eval-embedded")
    vl = gen.write_vl_parquet(work / "vl.parquet", gen.vl_records({"RLAIF-V-14"})[1:4])  # 1 general, 2 hallucination
    mm = gen.write_mm(work / "mm", gen.mm_records({"visitbench_235"})[:3], corrupt={"mmmu-s_101"})
    config = loop_config(
        work / "config.yaml",
        "eval-embedded",
        work,
        tiny_base,
        run={"prompts_per_iteration": 8, "heldout_pairs": 4},
        reason={"max_new_tokens": 64},
        eval={
            "max_new_tokens": 48,
            "benchmarks": [
                {"name": "vl-rewardbench", "path": str(vl), "k": 1, "max_new_tokens": 40, "parser": "selfjudge"},
                {"name": "mm-rewardbench", "path": str(mm), "max_new_tokens": 40},
            ],
        },
    )
    run = subprocess.run([*CMD, "run", "--config", str(config)], capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-4000:]
    report = subprocess.run(
        [*CMD, "report", "--config", str(config), "--run", "1", "--out", str(work / "report")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-4000:]
    settings = load_settings(config)
    return {
        "work": work,
        "log": run.stderr,
        "report": work / "report",
        "printed": report.stdout.strip(),
        "sessions": make_sessionmaker(settings.database_url()),
    }


def test_every_iteration_is_evaluated_on_each_benchmark(embedded):
    with embedded["sessions"]() as s:
        assert s.get(Run, 1).status == "done"
        got = {(b, it) for b, it in s.execute(select(EvalSummary.benchmark, EvalSummary.iteration).distinct())}
        assert got == {(b, it) for b in ("heldout", "vl-rewardbench", "mm-rewardbench") for it in (0, 1, 2)}
        counts = dict(
            s.execute(
                select(EvalResult.benchmark, func.count())
                .where(EvalResult.iteration == 2)
                .group_by(EvalResult.benchmark)
            ).all()
        )
        assert counts == {
            "heldout": 8,
            "vl-rewardbench": 3,
            "vl-rewardbench:both": 6,
            "mm-rewardbench": 2,
            "mm-rewardbench:both": 4,
        }
    assert "evaluator: run 1 iter 2 checkpoint" in embedded["log"]


def test_the_report_renders_with_its_plot_and_the_databases_numbers(embedded, gen):
    folder = embedded["report"]
    assert embedded["printed"] == str(folder / "report.md")
    md = (folder / "report.md").read_text()
    assert "![accuracy per iteration](accuracy.png)" in md
    with Image.open(io.BytesIO((folder / "accuracy.png").read_bytes())) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300
    for name in ("heldout", "vl-rewardbench", "mm-rewardbench"):
        assert f"## {name}" in md
    assert "| category | iter 0 | iter 1 | iter 2 |" in md
    assert gen.check_report_matches_database(md, embedded["sessions"], 1) > 30
    assert "## Paired comparisons" in md and "| mm-rewardbench | 0 | 2 |" in md
    # the evaluator also left a copy in the store when the run finished
    store = embedded["work"] / "store" / "runs" / "1" / "report"
    assert (store / "report.md").read_text() == md
    assert (store / "accuracy.png").stat().st_size > 1000
