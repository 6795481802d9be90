"""End to end: `selfjudge eval` drives the tiny offline judge through the evaluator service on files
generated in each benchmark's schema; the printed JSON is what the database holds."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from selfjudge import cli
from selfjudge.services.evaluator import scoring
from selfjudge.services.evaluator.protocols import correct_letter, make_protocol
from selfjudge.shared.config import load_settings
from selfjudge.shared.db import EvalResult, EvalSummary, make_sessionmaker

# the first test to ask for the session's tiny_base builds it (minutes on a busy 2-core machine)
pytestmark = pytest.mark.timeout(3600)


def run_eval(capsys, *args: str) -> dict:
    assert cli.main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_selfjudge_eval_with_the_tiny_judge(tiny_base, tmp_path, gen, capsys):
    work = tmp_path / "work"
    common = [
        "--model",
        str(tiny_base),
        "--max-new-tokens",
        "40",
        "--set",
        f"run.work_dir={work}",
        "--set",
        "run.shard_size=4",
    ]
    records = [
        r
        for r in gen.vl_records({"RLAIF-V-14"})
        if r["id"] in ("wildvision-battle-3443", "RLAIF-V-14", "mathverse_2028", "mmmu_pro_test_Computer_Science_334")
    ]
    vl = gen.write_vl_parquet(
        tmp_path / "vl" / "test-00000-of-00001.parquet",
        records,
        image_override={"mathverse_2028": b"\x89PNG\r\n\x1a\n broken"},
    )
    mm = gen.write_mm(
        tmp_path / "mm",
        [
            r
            for r in gen.mm_records({"mmmu-s_101"})
            if r["ID"] in ("mmmu-s_101", "EMMA-Coding_7", "hateful_memes_42", "RealworldQA_4")
        ],
        skip_images={"hateful_memes_42"},
    )
    out_vl = run_eval(capsys, "--benchmark", "vl-rewardbench", "--data", str(vl.parent), "--k", "3", *common)
    out_mm = run_eval(capsys, "--benchmark", "mm-rewardbench", "--data", str(mm), *common)

    assert out_vl["items"]["total"] == 4 and out_vl["items"]["used"] == 3 and out_vl["items"]["excluded"] == 1
    assert out_vl["excluded"] == [{"record_id": "mathverse_2028", "reason": out_vl["excluded"][0]["reason"]}]
    assert out_vl["excluded"][0]["reason"].startswith("not a recognised image")
    assert out_mm["items"] == {**out_mm["items"], "total": 4, "used": 3, "excluded": 1, "scored": 3}  # coin flips
    assert set(out_mm["accuracy"]) == {"overall", "macro", "knowledge", "reasoning/coding", "reasoning", "vqa"}

    settings = load_settings(overrides={"run": {"work_dir": str(work)}})
    with make_sessionmaker(settings.database_url())() as s:
        for out, k in ((out_vl, 3), (out_mm, 1)):
            name, run_id = out["benchmark"], out["run_id"]
            rows = list(s.scalars(select(EvalResult).where(EvalResult.run_id == run_id)))
            official = [r for r in rows if r.benchmark == name]
            both = [r for r in rows if r.benchmark == f"{name}:both"]
            assert len(official) == 3 * k
            assert len(both) == 2 * len({r.item_id for r in official})
            protocol = make_protocol(name, k)
            for r in rows:  # the model wrote them; the protocol's parser read them
                assert r.output.strip() and r.checkpoint_id == out["checkpoint_id"]
                assert r.verdict == protocol.parse(r.output).choice
                assert r.correct == (r.verdict == correct_letter(r.order))
            # re-scoring the stored outputs gives the printed numbers
            judged = [scoring.Judged(r.item_id, r.category, r.order, r.verdict, r.sample) for r in official]
            score = scoring.official_score(name, judged, k)
            assert out["overall"] == score.accuracy()[0] and out["n"].get("overall", 0) == score.accuracy()[1]
            assert out["macro"] == score.macro()[0]
            assert out["items"]["scored"] == len(score.outcome)
            summary = {
                (e.category, e.metric): e.value
                for e in s.scalars(select(EvalSummary).where(EvalSummary.run_id == run_id))
            }
            assert out["accuracy"] == {c: v for (c, m), v in summary.items() if m == "accuracy"}
            assert out["both_orders"] == {c: v for (c, m), v in summary.items() if m == "both_orders"}
        assert (
            s.scalar(
                select(func.count())
                .select_from(EvalResult)
                .where(
                    EvalResult.run_id == out_vl["run_id"],
                    EvalResult.benchmark == "vl-rewardbench",
                    EvalResult.sample == 2,
                )
            )
            == 3
        )  # k = 3 samples per item

    # the lenient parser reads the tiny judge's "[[A]]"-style verdicts under the VL prompt too
    lenient = run_eval(
        capsys,
        "--benchmark",
        "vl-rewardbench",
        "--data",
        str(vl),
        "--k",
        "1",
        "--limit",
        "2",
        "--parser",
        "selfjudge",
        *common,
    )
    assert lenient["items"]["total"] == 2 and lenient["protocol"]["parser"] == "selfjudge"
    assert lenient["run_id"] not in (out_vl["run_id"], out_mm["run_id"])
