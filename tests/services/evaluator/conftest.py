"""Benchmark files written in exactly the published schemas (neither benchmark can be downloaded
here), and a scripted judge that needs no model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from selfjudge.shared.models.generation.backend import Generation

# VL-RewardBench ids as they occur in the real data (one per source), and what they map to
VL_IDS = {
    "LRVInstruction-000000007746": ("vlfeedback", "general"),
    "wildvision-battle-3443": ("wildvision-battle", "general"),
    "RLAIF-V-14": ("rlaif-v", "hallucination"),
    "RLHF-V-Dataset-52": ("rlhf-v", "hallucination"),
    "hallucination_pair-3921": ("povid", "hallucination"),
    "mathverse_2028": ("reasoning_tasks", "reasoning"),
    "mmmu_pro_test_Computer_Science_334": ("reasoning_tasks", "reasoning"),
}
# Multimodal RewardBench IDs and Categories as in all_data.json, and the scoring category
MM_RECORDS = [
    ("nocaps_13062", "open_generation/correctness_task", "open_generation/correctness_task"),
    ("visitbench_235", "open_generation/preference_task", "open_generation/preference_task"),
    ("mmmu-s_101", "knowledge", "knowledge"),
    ("mathvista_12", "reasoning", "reasoning/math"),
    ("EMMA-Coding_7", "reasoning", "reasoning/coding"),
    ("image2struct_a1b2", "reasoning", "reasoning/coding"),
    ("pairs_occupation_3", "safety", "safety/bias"),
    ("hateful_memes_42", "safety", "safety/toxicity"),
    ("RealworldQA_4", "vqa", "vqa"),
]


def image_bytes(seed: int, fmt: str = "JPEG", size: int = 48) -> bytes:
    img = Image.new("RGB", (size, size), ((40 * seed) % 256, (90 + 17 * seed) % 256, (200 - 13 * seed) % 256))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def vl_records(preferred_second: set[str] = frozenset()) -> list[dict]:
    """One record per source; the preferred response says GOOD. human_ranking [0, 1] (the
    preferred is response[0], as in almost all real rows) unless the id is in preferred_second."""
    out = []
    for n, (rid, (source, _)) in enumerate(VL_IDS.items()):
        good, bad = f"GOOD answer {n}: a red square.", f"BAD answer {n}: a blue circle."
        second = rid in preferred_second
        out.append(
            {
                "id": rid,
                "query": "<image>\nDescribe this image in detail." if source == "povid" else f"Question {n}?",
                "response": [bad, good] if second else [good, bad],
                "human_ranking": [1, 0] if second else [0, 1],
                "models": ["m1", "m2"],
                "judge": "human",
                "rationale": None,
                "query_source": source,
                "meta": {"note": "generated"},
                "human_error_analysis": ["hallucination"],
                "ground_truth": None,
                "_source": source,
                "_image": image_bytes(n),
                # the GitHub copy's path: images/<source>/<id>.jpg, except povid (COCO file names)
                "image_path": f"images/{source}/"
                + ("COCO_train2014_000000178181.jpg" if source == "povid" else f"{rid}.jpg"),
            }
        )
    return out


def write_vl_parquet(path: Path, records: list[dict], image_override: dict | None = None) -> Path:
    """The HF parquet (MMInstruction/VL-RewardBench): image = {bytes, path}; meta is a JSON string."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_override = image_override or {}
    rows = []
    for r in records:
        data = image_override.get(r["id"], r["_image"])
        rows.append(
            {
                "id": r["id"],
                "query": r["query"],
                "response": r["response"],
                "image": {"bytes": data, "path": None},
                "human_ranking": r["human_ranking"],
                "models": r["models"],
                "judge": r["judge"],
                "rationale": r["rationale"],
                "query_source": r["query_source"],
                "meta": json.dumps(r["meta"]),
                "human_error_analysis": r["human_error_analysis"],
                "ground_truth": r["ground_truth"],
            }
        )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("query", pa.string()),
            ("response", pa.list_(pa.string())),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("human_ranking", pa.list_(pa.int64())),
            ("models", pa.list_(pa.string())),
            ("judge", pa.string()),
            ("rationale", pa.string()),
            ("query_source", pa.string()),
            ("meta", pa.string()),
            ("human_error_analysis", pa.list_(pa.string())),
            ("ground_truth", pa.string()),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_vl_jsonl(
    folder: Path, records: list[dict], skip_images: set[str] = frozenset(), corrupt: set[str] = frozenset()
) -> Path:
    """The GitHub copy: data.jsonl with image_path, images under the jsonl's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        rec = {k: v for k, v in r.items() if not k.startswith("_") and k != "ground_truth"}
        lines.append(json.dumps(rec))
        if r["id"] in skip_images:
            continue
        img = folder / r["image_path"]
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(r["_image"][:40] if r["id"] in corrupt else r["_image"])
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def mm_records(output2_better: set[str] = frozenset()) -> list[dict]:
    out = []
    for n, (rid, category, _) in enumerate(MM_RECORDS):
        good, bad = f"GOOD output {n}: correct.", f"BAD output {n}: wrong."
        second = rid in output2_better
        out.append(
            {
                "ID": rid,
                "Text": f"Prompt {n}: what is shown?",
                "Image": f"images/{rid.split('_')[0]}/{n}.jpg",
                "Output1": bad if second else good,
                "Output2": good if second else bad,
                "Better": "Output2" if second else "Output1",
                "Category": category,
                "_image": image_bytes(n),
            }
        )
    return out


def write_mm(
    folder: Path, records: list[dict], skip_images: set[str] = frozenset(), corrupt: set[str] = frozenset()
) -> Path:
    """data/all_data.json and data/images/... as the repo's download script leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        if r["ID"] in skip_images:
            continue
        img = folder / r["Image"]
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(b"not an image at all" if r["ID"] in corrupt else r["_image"])
    (folder / "all_data.json").write_text(
        json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in records], indent=2)
    )
    return folder / "all_data.json"


class ScriptedJudge:
    """A backend that needs no model: `choose(text_of_first, text_of_second, request) -> 1 | 2 | None`
    decides each judgment; the output is written in the prompt's own verdict format."""

    model_id = "scripted"

    def __init__(self, choose):
        self.choose = choose
        self.calls: list = []

    def generate(self, requests, params, progress=None):
        self.calls.append((len(requests), params.temperature))
        out = []
        for r in requests:
            t = r.text
            if "Answer 1:" in t:
                first, second = t.split("Answer 1:", 1)[1].split("Answer 2:", 1)
                fmt = lambda c: f"Reasoning.\nOverall Judgment: Answer {c} is better."  # noqa: E731
            elif "[The Start of Assistant A's Answer]" in t:
                first, second = t.split("[The Start of Assistant A's Answer]", 1)[1].split(
                    "[The Start of Assistant B's Answer]", 1
                )
                fmt = lambda c: f"Assistant {'AB'[c - 1]} is better. [[{'AB'[c - 1]}]]"  # noqa: E731
            else:
                first, second = t.split("[Response A]", 1)[1].split("[Response B]", 1)
                fmt = lambda c: f"[[{'AB'[c - 1]}]]"  # noqa: E731
            choice = self.choose(first, second, r)
            text = "I cannot decide." if choice is None else fmt(choice)
            out.append(Generation(key=r.key, texts=[text] * params.n, token_counts=[5] * params.n, prompt_tokens=10))
        return out


def good_first(first: str, second: str, _r) -> int:
    return 1 if "GOOD" in first else 2


def check_report_matches_database(md: str, sessions, run_id: int) -> int:
    """Every accuracy, both-orders and position-bias value in eval_summaries is in its report table
    cell, formatted from the database row; returns how many cells were checked."""
    from sqlalchemy import select

    from selfjudge.services.evaluator.report import cell
    from selfjudge.shared.db import EvalSummary

    tables, section, metric, header = {}, None, None, []
    for line in md.splitlines():
        if line.startswith("## "):
            section, metric = line[3:].strip(), None
        elif line.startswith("### "):
            metric = (
                "accuracy"
                if "Accuracy" in line
                else "both_orders"
                if "Position-consistent" in line
                else "position_bias"
                if "Position bias" in line
                else "items"
            )
        elif line.startswith("| category |"):
            header = [c.strip() for c in line.strip("|").split("|")][1:]
        elif line.startswith("| ") and metric not in (None, "items"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            for it, value in zip(header, cells[1:]):
                tables[(section, metric, cells[0], int(it.split()[1]))] = value
    checked = 0
    with sessions() as s:
        found: dict = {}
        for e in s.scalars(select(EvalSummary).where(EvalSummary.run_id == run_id)):
            found.setdefault((e.benchmark, e.iteration, e.category), {})[e.metric] = {"value": e.value, "n": e.n}
    for (bench, it, cat), metrics in found.items():
        for metric in ("accuracy", "both_orders", "position_bias"):
            if metric in metrics:
                assert tables[(bench, metric, cat, it)] == cell(metrics, metric), (bench, metric, cat, it)
                assert tables[(bench, metric, cat, it)].startswith(f"{100 * metrics[metric]['value']:.1f}")
                checked += 1
    return checked


@pytest.fixture(scope="session")
def gen():
    """The file writers and record makers above, for tests (conftest modules are not importable)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        vl_records=vl_records,
        write_vl_parquet=write_vl_parquet,
        write_vl_jsonl=write_vl_jsonl,
        mm_records=mm_records,
        write_mm=write_mm,
        image_bytes=image_bytes,
        VL_IDS=VL_IDS,
        MM_RECORDS=MM_RECORDS,
        ScriptedJudge=ScriptedJudge,
        good_first=good_first,
        check_report_matches_database=check_report_matches_database,
    )
