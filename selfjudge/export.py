"""`selfjudge export`: one iteration's pairs and kept judge traces as a Hugging Face dataset.

    OUT/README.md                          dataset card; its `configs:` name the two subsets
    OUT/pairs/train-00000-of-0000N.parquet  one row per preference pair   -> TRL DPOTrainer
    OUT/traces/train-00000-of-0000N.parquet one row per kept judge trace  -> TRL SFTTrainer

pairs:  images [Image], prompt [{role, content:[{type, text}]}] (the user turn: the image and the
        instruction), chosen / rejected [assistant turn] (TRL's conversational preference format);
        lineage: run_id, iteration, pair_id, prompt_id, source_id, source, question_type, kind,
        kind_reason, instruction, method, errors, pair_meta (JSON), vote_count, n_samples, holdout,
        writer_checkpoint_id/_hash, image_sha256, kept_traces.
traces: images [Image], messages [system, user (image + judge prompt), assistant (reasoning +
        verdict)] (TRL's conversational language-modelling format), label;
        lineage: example_id, judgment_id, pair_id, prompt_id, source_id, source, question_type,
        method, errors, order, sample, judge_checkpoint_id/_hash (who wrote the trace),
        writer_checkpoint_id/_hash (who wrote the pair), trained_checkpoint_id/_hash (the
        checkpoint this iteration trained on it), image_sha256.

Images are the stored PNGs, as the `datasets` Image feature ({bytes, path}); the parquet schema
carries the `datasets` feature metadata, so
    datasets.load_dataset("parquet", data_files="OUT/traces/*.parquet")
decodes them to PIL images without conversion (`datasets` itself is not needed to export).
`--format jsonl` writes OUT/{pairs,traces}/train.jsonl with the images as files under
OUT/images/ and relative paths in `images` (cast with `datasets.Image()` after joining OUT).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from selfjudge.shared.db import Checkpoint, Image, Iteration, Judgment, Pair, Prompt, TrainingExample
from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.store import Store

ROWS_PER_FILE = 5000
_TEXT = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_TEXT))]))
IMAGES = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
STR_LIST = pa.list_(pa.string())

PAIR_SCHEMA = pa.schema(
    [
        ("images", IMAGES),
        ("prompt", MESSAGES),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("run_id", pa.int64()),
        ("iteration", pa.int64()),
        ("pair_id", pa.int64()),
        ("prompt_id", pa.int64()),
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("question_type", pa.string()),
        ("kind", pa.string()),
        ("kind_reason", pa.string()),
        ("instruction", pa.string()),
        ("method", pa.string()),
        ("errors", STR_LIST),
        ("pair_meta", pa.string()),
        ("vote_count", pa.int64()),
        ("n_samples", pa.int64()),
        ("holdout", pa.bool_()),
        ("writer_checkpoint_id", pa.int64()),
        ("writer_checkpoint_hash", pa.string()),
        ("image_sha256", pa.string()),
        ("kept_traces", pa.int64()),
    ]
)
TRACE_SCHEMA = pa.schema(
    [
        ("images", IMAGES),
        ("messages", MESSAGES),
        ("label", pa.string()),
        ("run_id", pa.int64()),
        ("iteration", pa.int64()),
        ("example_id", pa.int64()),
        ("judgment_id", pa.int64()),
        ("pair_id", pa.int64()),
        ("prompt_id", pa.int64()),
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("question_type", pa.string()),
        ("method", pa.string()),
        ("errors", STR_LIST),
        ("order", pa.string()),
        ("sample", pa.int64()),
        ("judge_checkpoint_id", pa.int64()),
        ("judge_checkpoint_hash", pa.string()),
        ("writer_checkpoint_id", pa.int64()),
        ("writer_checkpoint_hash", pa.string()),
        ("trained_checkpoint_id", pa.int64()),
        ("trained_checkpoint_hash", pa.string()),
        ("image_sha256", pa.string()),
    ]
)


def hf_features(schema: pa.Schema, image_columns: tuple[str, ...] = ("images",)) -> dict:
    """The `datasets` Features dict (as stored in parquet metadata) for an arrow schema."""

    def feature(t: pa.DataType) -> object:
        if pa.types.is_list(t):
            return [feature(t.value_type)]
        if pa.types.is_struct(t):
            return {t.field(i).name: feature(t.field(i).type) for i in range(t.num_fields)}
        dtype = {
            pa.string(): "string",
            pa.int64(): "int64",
            pa.bool_(): "bool",
            pa.float64(): "float64",
            pa.binary(): "binary",
        }[t]
        return {"dtype": dtype, "_type": "Value"}

    return {f.name: [{"_type": "Image"}] if f.name in image_columns else feature(f.type) for f in schema}


def _with_features(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": hf_features(schema)}})})


def _text(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def _user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}


class _Images:
    """PNG bytes by image id, read from the store once."""

    def __init__(self, s: Session, store: Store) -> None:
        self.s, self.store, self.cache = s, store, {}

    def get(self, image_id: str) -> dict:
        if image_id not in self.cache:
            if len(self.cache) > 256:  # rows come in id order: a prompt's image is seldom needed again
                self.cache.clear()
            self.cache[image_id] = self.store.get_bytes(self.s.get(Image, image_id).key)
        return {"bytes": self.cache[image_id], "path": f"{image_id}.png"}


def pair_rows(s: Session, store: Store, run_id: int, iteration: int) -> Iterator[dict]:
    images = _Images(s, store)
    hashes = dict(s.execute(select(Checkpoint.id, Checkpoint.content_hash)).all())
    kept = dict(
        s.execute(
            select(TrainingExample.pair_id, func.count())
            .where(TrainingExample.run_id == run_id, TrainingExample.iteration == iteration)
            .group_by(TrainingExample.pair_id)
        ).all()
    )
    query = (
        select(Pair, Prompt)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Pair.run_id == run_id, Pair.iteration == iteration)
        .order_by(Pair.id)
    )
    for pair, prompt in s.execute(query):
        meta = pair.meta or {}
        yield {
            "images": [images.get(prompt.image_id)],
            "prompt": [_user(prompt.instruction)],
            "chosen": [_text("assistant", pair.preferred)],
            "rejected": [_text("assistant", pair.rejected)],
            "run_id": run_id,
            "iteration": iteration,
            "pair_id": pair.id,
            "prompt_id": prompt.id,
            "source_id": prompt.source_id,
            "source": prompt.source,
            "question_type": prompt.question_type,
            "kind": prompt.kind,
            "kind_reason": prompt.kind_reason,
            "instruction": prompt.instruction,
            "method": pair.method,
            "errors": [str(e) for e in pair.errors or []],
            "pair_meta": json.dumps(meta, sort_keys=True),
            "vote_count": pair.vote_count,
            "n_samples": pair.n_samples,
            "holdout": bool(meta.get("holdout")),
            "writer_checkpoint_id": pair.checkpoint_id,
            "writer_checkpoint_hash": hashes.get(pair.checkpoint_id),
            "image_sha256": prompt.image_id,
            "kept_traces": kept.get(pair.id, 0),
        }


def trace_rows(s: Session, store: Store, run_id: int, iteration: int) -> Iterator[dict]:
    images = _Images(s, store)
    hashes = dict(s.execute(select(Checkpoint.id, Checkpoint.content_hash)).all())
    it = s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == iteration))
    trained = it.output_checkpoint_id if it is not None and it.output_checkpoint_id != it.judge_checkpoint_id else None
    query = (
        select(TrainingExample, Judgment, Pair, Prompt)
        .join(Judgment, Judgment.id == TrainingExample.judgment_id)
        .join(Pair, Pair.id == TrainingExample.pair_id)
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .where(TrainingExample.run_id == run_id, TrainingExample.iteration == iteration)
        .order_by(TrainingExample.id)
    )
    for ex, j, pair, prompt in s.execute(query):
        yield {
            "images": [images.get(prompt.image_id)],
            "messages": [_text("system", JUDGE_SYSTEM), _user(j.prompt_text), _text("assistant", j.output)],
            "label": ex.label,
            "run_id": run_id,
            "iteration": iteration,
            "example_id": ex.id,
            "judgment_id": j.id,
            "pair_id": pair.id,
            "prompt_id": prompt.id,
            "source_id": prompt.source_id,
            "source": prompt.source,
            "question_type": prompt.question_type,
            "method": pair.method,
            "errors": [str(e) for e in pair.errors or []],
            "order": j.order,
            "sample": j.sample,
            "judge_checkpoint_id": j.checkpoint_id,
            "judge_checkpoint_hash": hashes.get(j.checkpoint_id),
            "writer_checkpoint_id": pair.checkpoint_id,
            "writer_checkpoint_hash": hashes.get(pair.checkpoint_id),
            "trained_checkpoint_id": trained,
            "trained_checkpoint_hash": hashes.get(trained),
            "image_sha256": prompt.image_id,
        }


def _write_parquet(rows: Iterator[dict], schema: pa.Schema, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    schema = _with_features(schema)
    chunks, chunk = [], []
    tmp: list[Path] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == ROWS_PER_FILE:
            chunks.append(chunk)
            tmp.append(folder / f".part-{len(tmp):05d}.parquet")
            pq.write_table(pa.Table.from_pylist(chunk, schema=schema), tmp[-1])
            chunk = []
    if chunk or not tmp:
        tmp.append(folder / f".part-{len(tmp):05d}.parquet")
        pq.write_table(pa.Table.from_pylist(chunk, schema=schema), tmp[-1])
    files = []
    for i, path in enumerate(tmp):  # the hub's shard names, once the count is known
        files.append(path.rename(folder / f"train-{i:05d}-of-{len(tmp):05d}.parquet"))
    return files


def _write_jsonl(rows: Iterator[dict], folder: Path, image_dir: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    with path.open("w") as f:
        for row in rows:
            paths = []
            for im in row["images"]:
                target = image_dir / im["path"]
                if not target.exists():
                    target.write_bytes(im["bytes"])
                paths.append(f"{image_dir.name}/{im['path']}")
            f.write(json.dumps(dict(row, images=paths)) + "\n")
    return [path]


CARD = """---
configs:
- config_name: traces
  data_files:
  - split: train
    path: traces/*.{ext}
- config_name: pairs
  data_files:
  - split: train
    path: pairs/*.{ext}
---
# selfjudge run {run_id}, iteration {iteration}

Synthetic data of one self-improvement iteration (no human labels).

- `traces` ({n_traces} rows): the judge traces the filter kept, as chat `messages` (system, user with
  the image and the pairwise judge prompt, assistant with reasoning and verdict) and `images`:
  TRL `SFTTrainer` reads it as is.
- `pairs` ({n_pairs} rows): the synthesized preference pairs as `prompt` / `chosen` / `rejected`
  messages and `images`: TRL `DPOTrainer` reads it as is.

Lineage columns link every row to its pair, prompt, image (sha256) and the checkpoints (id and
content hash) that wrote and judged it.
"""


def export_iteration(
    sessions: sessionmaker,
    store: Store,
    run_id: int,
    iteration: int,
    out: str | Path,
    fmt: str = "parquet",
) -> dict[str, list[Path]]:
    """Write the dataset; returns {"pairs": files, "traces": files}."""
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"format must be parquet or jsonl, not {fmt!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    with sessions() as s:
        if (
            s.scalar(select(func.count()).select_from(Pair).where(Pair.run_id == run_id, Pair.iteration == iteration))
            == 0
        ):
            raise LookupError(f"run {run_id} iteration {iteration} has no pairs")
        for name, rows, schema in (
            ("pairs", pair_rows(s, store, run_id, iteration), PAIR_SCHEMA),
            ("traces", trace_rows(s, store, run_id, iteration), TRACE_SCHEMA),
        ):
            written[name] = (
                _write_parquet(rows, schema, out / name)
                if fmt == "parquet"
                else _write_jsonl(rows, out / name, out / "images")
            )
        n_pairs = _count(written["pairs"], fmt)
        n_traces = _count(written["traces"], fmt)
    (out / "README.md").write_text(
        CARD.format(ext=fmt, run_id=run_id, iteration=iteration, n_pairs=n_pairs, n_traces=n_traces)
    )
    return written


def _count(files: list[Path], fmt: str) -> int:
    if fmt == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return sum(sum(1 for _ in f.open()) for f in files)
