"""The evaluator service with a scripted judge (no model): sharding, per-item rows, summaries,
metrics, set-aside records, resuming, `selfjudge eval --json`, and the report."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, func, select

from selfjudge.services.evaluator import stage
from selfjudge.services.evaluator.protocols import make_protocol
from selfjudge.services.evaluator.report import write_report
from selfjudge.shared import loop
from selfjudge.shared.config import load_settings
from selfjudge.shared.context import make_context
from selfjudge.shared.db import (
    Checkpoint,
    EvalResult,
    EvalSummary,
    Iteration,
    Run,
    SetAside,
    Shard,
    make_sessionmaker,
    migrate,
)
from selfjudge.shared.messages import EvalTask
from selfjudge.shared.queue import LocalBus
from selfjudge.shared.store import open_store

K = 3
VL_PREFERRED_SECOND = {"RLAIF-V-14", "mathverse_2028"}
MM_OUTPUT2_BETTER = {"knowledge", "mmmu-s_101", "RealworldQA_4", "EMMA-Coding_7"}


def always_first(first, second, request):
    return 1


@pytest.fixture(params=["sqlite"])
def env(request, tmp_path, gen):
    vl = gen.write_vl_parquet(
        tmp_path / "vl.parquet", gen.vl_records(VL_PREFERRED_SECOND), image_override={"wildvision-battle-3443": b""}
    )  # an empty image: excluded
    gen.write_mm(tmp_path / "mm" / "data", gen.mm_records(MM_OUTPUT2_BETTER), skip_images={"pairs_occupation_3"})
    database = {"url": request.getfixturevalue("postgres_url")} if request.param == "postgres" else {}
    settings = load_settings(
        overrides={
            "database": database,
            "run": {"work_dir": str(tmp_path / "work"), "shard_size": 3, "heldout_pairs": 4, "iterations": 1},
            "eval": {
                "max_new_tokens": 16,
                "benchmarks": [
                    {"name": "vl-rewardbench", "path": str(vl), "k": K},
                    {"name": "mm-rewardbench", "path": str(tmp_path / "mm")},
                ],
            },
        }
    )
    migrate(settings.database_url())
    sessions = make_sessionmaker(settings.database_url())
    bus = LocalBus()
    ctx = make_context(
        settings, "evaluator", bus, sessions=sessions, store=open_store(settings.store, settings.run.work_dir)
    )
    with sessions.begin() as s:
        run = Run(name="t", config=settings.redacted(), iterations=1)
        s.add(run)
        s.flush()
        ckpts = [Checkpoint(run_id=run.id, iteration=i, uri=f"file:/nowhere/{i}", content_hash=f"h{i}") for i in (0, 1)]
        s.add_all(ckpts)
        s.flush()
        s.add(Iteration(run_id=run.id, number=0, judge_checkpoint_id=ckpts[0].id, output_checkpoint_id=ckpts[0].id))
        s.add(
            Iteration(
                run_id=run.id,
                number=1,
                judge_checkpoint_id=ckpts[0].id,
                output_checkpoint_id=ckpts[1].id,
                status="trained",
            )
        )
        run_id, ckpt_ids = run.id, [c.id for c in ckpts]
    loop.write_heldout(ctx, run_id)
    return ctx, bus, run_id, ckpt_ids


def drain(bus, ctx, limit=None):
    n = 0
    while bus.pending and (limit is None or n < limit):
        stage_name, payload = bus.pending.popleft()
        assert stage_name == "evaluator"
        stage.handle(payload, ctx)
        n += 1
    return n


def summaries(ctx, run_id, iteration):
    with ctx.sessions() as s:
        return {
            (e.benchmark, e.category, e.metric): (e.value, e.n)
            for e in s.scalars(
                select(EvalSummary).where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration)
            )
        }


@pytest.mark.parametrize("env", ["sqlite", "postgres"], indirect=True)
def test_loop_evaluation_of_a_position_biased_judge(env, gen):
    ctx, bus, run_id, (ckpt, _) = env
    judge = gen.ScriptedJudge(always_first)
    ctx.models.backend = lambda checkpoint_id: judge
    bus.send("evaluator", EvalTask(run_id=run_id, iteration=0, checkpoint_id=ckpt))
    drain(bus, ctx)
    got = summaries(ctx, run_id, 0)
    # held-out: always "A" -> half the judgments right, never right in both orders, always biased
    assert got[("heldout", "overall", "accuracy")] == (0.5, 8)
    assert got[("heldout", "overall", "both_orders")] == (0.0, 4)
    assert got[("heldout", "overall", "position_bias")] == (1.0, 4)
    # VL-RewardBench: a sample is right iff its coin put the preferred response first; k = 3 majority
    vl = make_protocol("vl-rewardbench", K, seed=0)
    items = {r["id"]: r for r in gen.vl_records(VL_PREFERRED_SECOND)}
    del items["wildvision-battle-3443"]
    right = {i: sum(o == "AB" for o in vl.official_orders(i, 1 if i in VL_PREFERRED_SECOND else 0)) >= 2 for i in items}
    assert got[("vl-rewardbench", "overall", "accuracy")] == (pytest.approx(sum(right.values()) / 6), 6)
    cats = {i: gen.VL_IDS[i][1] for i in items}
    per_cat = {c: [right[i] for i in items if cats[i] == c] for c in ("general", "hallucination", "reasoning")}
    for c, v in per_cat.items():
        assert got[("vl-rewardbench", c, "accuracy")] == (pytest.approx(sum(v) / len(v)), len(v))
    assert got[("vl-rewardbench", "macro", "accuracy")][0] == pytest.approx(
        sum(sum(v) / len(v) for v in per_cat.values()) / 3
    )
    assert got[("vl-rewardbench", "overall", "position_bias")] == (1.0, 6)
    assert got[("vl-rewardbench", "overall", "items_total")][0] == 7
    assert got[("vl-rewardbench", "overall", "items_excluded")][0] == 1
    # Multimodal RewardBench: "A" is right iff Output1 is better; 8 of 9 items (one image missing)
    mm_items = [rid for rid, _, _ in gen.MM_RECORDS if rid != "pairs_occupation_3"]
    mm_right = [rid not in MM_OUTPUT2_BETTER for rid in mm_items]
    assert got[("mm-rewardbench", "overall", "accuracy")] == (pytest.approx(sum(mm_right) / 8), 8)
    assert got[("mm-rewardbench", "knowledge", "accuracy")] == (0.0, 1)
    assert got[("mm-rewardbench", "reasoning", "accuracy")] == (pytest.approx(2 / 3), 3)  # math + 2 coding
    assert got[("mm-rewardbench", "safety", "accuracy")] == (1.0, 1)  # only toxicity is left
    assert ("mm-rewardbench", "safety/bias", "accuracy") not in got
    assert got[("mm-rewardbench", "overall", "accuracy_ci_low")][0] <= got[("mm-rewardbench", "overall", "accuracy")][0]
    with ctx.sessions() as s:
        counts = dict(
            s.execute(
                select(EvalResult.benchmark, func.count())
                .where(EvalResult.run_id == run_id)
                .group_by(EvalResult.benchmark)
            ).all()
        )
        assert counts == {
            "heldout": 8,
            "vl-rewardbench": 6 * K,
            "vl-rewardbench:both": 12,
            "mm-rewardbench": 8,
            "mm-rewardbench:both": 16,
        }
        samples = sorted(
            s.scalars(
                select(EvalResult.sample).where(
                    EvalResult.benchmark == "vl-rewardbench", EvalResult.item_id == "RLAIF-V-14"
                )
            )
        )
        assert samples == [0, 1, 2]
        aside = {
            r.record_id: r.reason
            for r in s.scalars(select(SetAside).where(SetAside.stage == "evaluator", SetAside.run_id == run_id))
        }
        assert aside["vl-rewardbench:wildvision-battle-3443"].startswith("empty (zero-byte) image")
        assert aside["mm-rewardbench:pairs_occupation_3"].startswith("missing image")
        shards = list(s.scalars(select(Shard).where(Shard.stage == "evaluator", Shard.run_id == run_id)))
        assert len(shards) == 2 + 2 + 3 and all(sh.state == "done" for sh in shards)
        assert s.scalar(select(Iteration.status).where(Iteration.number == 0, Iteration.run_id == run_id)) == "done"
    # Prometheus: selfjudge_eval_accuracy_ratio{run,iteration,benchmark,category}
    value = ctx.metrics.registry.get_sample_value(
        "selfjudge_eval_accuracy_ratio",
        {"run": str(run_id), "iteration": "0", "benchmark": "vl-rewardbench", "category": "macro"},
    )
    assert value == pytest.approx(got[("vl-rewardbench", "macro", "accuracy")][0])
    # MM's greedy official judgment is shared with the both-orders pass: one generation per order
    assert sum(n for n, t in judge.calls if t == 0.2) == 6 * K


def test_a_restarted_evaluation_does_not_redo_finished_items(env, gen):
    ctx, bus, run_id, (ckpt, _) = env
    judge = gen.ScriptedJudge(always_first)
    ctx.models.backend = lambda checkpoint_id: judge
    task = EvalTask(run_id=run_id, iteration=0, checkpoint_id=ckpt)
    bus.send("evaluator", task)
    drain(bus, ctx, limit=3)  # the plan and two shards, then the worker "dies"
    shard_messages = len(bus.pending)
    assert shard_messages == 5
    bus.pending.clear()
    done_before = sum(n for n, _ in judge.calls)
    bus.send("evaluator", task)  # redelivery / `selfjudge run --resume`
    drain(bus, ctx)
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Shard).where(Shard.state != "done")) == 0
    first = summaries(ctx, run_id, 0)
    total = sum(n for n, _ in judge.calls)
    # item level: forget one finished item and its shard's state, as if the worker died mid-shard
    with ctx.sessions.begin() as s:
        s.execute(delete(EvalResult).where(EvalResult.item_id == "RLAIF-V-14"))
        s.execute(delete(EvalSummary))
        shard = s.scalar(select(Shard).where(Shard.input_key.like("%vl-rewardbench/shards/00000%")))
        shard.state = "pending"
    judge.calls.clear()
    bus.send("evaluator", task)
    drain(bus, ctx)
    assert sum(n for n, _ in judge.calls) == K + 2  # that one item: k samples + both orders
    assert summaries(ctx, run_id, 0) == first
    assert done_before == 4 * 2  # the two held-out shards ran before the "crash"
    assert total - done_before == 6 * (K + 2) + 8 * 2  # after it: only the other shards, none twice


def test_selfjudge_eval_json(tmp_path, gen, monkeypatch, capsys):
    from selfjudge import cli
    from selfjudge.shared import context

    judge = gen.ScriptedJudge(gen.good_first)
    monkeypatch.setattr(context.ModelCache, "backend", lambda self, checkpoint_id: judge)
    data = gen.write_mm(tmp_path / "mm", gen.mm_records(MM_OUTPUT2_BETTER), corrupt={"vqa_x", "RealworldQA_4"})
    work = tmp_path / "work"
    argv = [
        "eval",
        "--benchmark",
        "mm-rewardbench",
        "--data",
        str(data),
        "--model",
        str(tmp_path),
        "--json",
        "--set",
        f"run.work_dir={work}",
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == {"total": 9, "used": 8, "excluded": 1, "scored": 8, "unscored": 0, "agree": 8}
    assert out["overall"] == 1.0 and out["macro"] == 1.0 and out["n"]["overall"] == 8
    assert set(out["accuracy"]) == {
        "overall",
        "macro",
        "open_generation/correctness_task",
        "open_generation/preference_task",
        "knowledge",
        "reasoning/math",
        "reasoning/coding",
        "safety/bias",
        "safety/toxicity",
        "reasoning",
        "safety",
    }
    assert out["excluded"][0]["record_id"] == "RealworldQA_4"
    assert out["both_orders"]["overall"] == 1.0 and out["position_bias"]["overall"] == 0.0
    assert out["protocol"]["k"] == 1 and out["protocol"]["parser"] == "official"
    settings = load_settings(overrides={"run": {"work_dir": str(work)}})
    with make_sessionmaker(settings.database_url())() as s:
        rows = {
            (e.category, e.metric): e.value
            for e in s.scalars(
                select(EvalSummary).where(
                    EvalSummary.run_id == out["run_id"], EvalSummary.benchmark == "mm-rewardbench"
                )
            )
        }
        assert s.get(Run, out["run_id"]).status == "done"
    assert {c: v for c, v in out["accuracy"].items()} == {c: v for (c, m), v in rows.items() if m == "accuracy"}
    assert out["ci"]["overall"] == [rows[("overall", "accuracy_ci_low")], rows[("overall", "accuracy_ci_high")]]
    assert cli.main([a for a in argv if a != "--json"]) == 0  # plain text output works too
    assert "mm-rewardbench (run 2)" in capsys.readouterr().out


def test_report_numbers_equal_the_database(env, gen, tmp_path):
    ctx, bus, run_id, ckpts = env
    from selfjudge.shared.store import get_jsonl

    preferred = {r["preferred"] for r in get_jsonl(ctx.store, loop.heldout_key(run_id))}

    def oracle(first, second, request):
        return 1 if "GOOD" in first or first.strip() in preferred else 2

    judges = [gen.ScriptedJudge(always_first), gen.ScriptedJudge(oracle)]
    ctx.models.backend = lambda checkpoint_id: judges[ckpts.index(checkpoint_id)]
    for iteration, ckpt in enumerate(ckpts):
        bus.send("evaluator", EvalTask(run_id=run_id, iteration=iteration, checkpoint_id=ckpt))
        drain(bus, ctx)
    with ctx.sessions() as s:
        assert s.get(Run, run_id).status == "done"
    assert ctx.store.exists(f"runs/{run_id}/report/report.md")  # published at the end of the run
    assert ctx.store.get_bytes(f"runs/{run_id}/report/accuracy.png")[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_report(ctx.sessions, run_id, tmp_path / "report")
    md = path.read_text()
    assert "![accuracy per iteration](accuracy.png)" in md
    assert gen.check_report_matches_database(md, ctx.sessions, run_id) > 20
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    comps = {(c["benchmark"], c["a"], c["b"]): c for c in data["comparisons"]}
    held = comps[("heldout", 0, 1)]  # 0 of 4 right in both orders -> 4 of 4
    assert (held["n"], held["a_only"], held["b_only"]) == (4, 0, 4)
    assert held["mcnemar_p"] == pytest.approx(2 / 16)
    assert "| heldout | 0 | 1 | right in both orders | 4 | 0.0 | 100.0 | 100.0" in md


def test_a_benchmark_file_that_cannot_be_loaded_is_skipped_in_the_loop(env, gen, tmp_path):
    ctx, bus, run_id, (ckpt, _) = env
    ctx.settings.eval.benchmarks[0].path = str(tmp_path / "missing.parquet")
    ctx.models.backend = lambda checkpoint_id: gen.ScriptedJudge(always_first)
    bus.send("evaluator", EvalTask(run_id=run_id, iteration=0, checkpoint_id=ckpt))
    drain(bus, ctx)
    got = summaries(ctx, run_id, 0)
    assert {b for b, _, _ in got} == {"heldout", "mm-rewardbench"}
    with ctx.sessions() as s:
        reason = s.scalar(select(SetAside.reason).where(SetAside.record_id == "vl-rewardbench:*"))
        assert reason.startswith("benchmark not loaded: FileNotFoundError") and "missing.parquet" in reason
        assert s.scalar(select(Iteration.status).where(Iteration.number == 0)) == "done"


def test_selfjudge_eval_reports_bad_arguments(tmp_path, capsys):
    from selfjudge import cli

    base = ["eval", "--model", str(tmp_path), "--set", f"run.work_dir={tmp_path / 'w'}"]
    assert cli.main(base + ["--benchmark", "mm-rewardbench", "--data", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "all_data.json").write_text("{}")
    assert cli.main(base + ["--benchmark", "mm-rewardbench", "--data", str(tmp_path)]) == 2
    assert "must hold a JSON list" in capsys.readouterr().err
    assert cli.main(base + ["--benchmark", "mm-rewardbench", "--data", str(tmp_path), "--k", "3"]) == 2
    assert "judges each item once" in capsys.readouterr().err


def test_two_checkpoints_compared_with_paired_tests(tmp_path, gen, monkeypatch, capsys):
    """`selfjudge eval` twice on the same file (two checkpoints), then `selfjudge report --compare`."""
    from selfjudge import cli
    from selfjudge.shared import context

    judges = {"a": gen.ScriptedJudge(always_first), "b": gen.ScriptedJudge(gen.good_first)}
    monkeypatch.setattr(
        context.ModelCache, "backend", lambda self, checkpoint_id: judges["a" if checkpoint_id == 1 else "b"]
    )
    data = gen.write_mm(tmp_path / "mm", gen.mm_records(MM_OUTPUT2_BETTER))
    common = ["--benchmark", "mm-rewardbench", "--data", str(data), "--json", "--set", f"run.work_dir={tmp_path / 'w'}"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        assert cli.main(["eval", "--model", str(tmp_path / name), *common]) == 0
        capsys.readouterr()
    assert cli.main(["report", "--compare", "1", "2:0", "--set", f"run.work_dir={tmp_path / 'w'}"]) == 0
    (c,) = json.loads(capsys.readouterr().out)
    wrong_for_a = sum(rid in MM_OUTPUT2_BETTER for rid, _, _ in gen.MM_RECORDS)  # "A" is wrong where Output2 won
    assert c["benchmark"] == "mm-rewardbench" and c["n"] == 9
    assert (c["a_only"], c["b_only"]) == (0, wrong_for_a)
    assert c["accuracy_a"] == pytest.approx(1 - wrong_for_a / 9) and c["accuracy_b"] == 1.0
    assert c["mcnemar_p"] == pytest.approx(min(1.0, 2 / 2**wrong_for_a))
