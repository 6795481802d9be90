"""Loaders for the two published benchmarks, in their published schemas.

VL-RewardBench (arXiv 2411.17451)
  * HF parquet (`MMInstruction/VL-RewardBench`, data/test-00000-of-00001.parquet): columns
    id, query, response (2 strings), image ({bytes, path}), human_ranking (0 marks the preferred
    response), models, judge, rationale, query_source, meta (a JSON string), human_error_analysis,
    ground_truth. Give the .parquet file or a folder holding *.parquet files.
  * the older GitHub copy (github.com/vl-rewardbench/VL_RewardBench data/data.jsonl): the same
    fields with `image_path` ("images/<source>/<file>") relative to the jsonl's folder.
  Category: the source dataset maps to general / hallucination / reasoning as in the official
  cal.py `group_mapping`. The source is the image folder (`image_path.split("/")[1]`, the first
  cal.py); without a path (parquet) it comes from the id prefix, as in the later cal.py
  `get_dataset_from_id` (commit 7918386), whose povid branch names a misspelt variable there:
  here the povid ids ("hallucination_pair-3921", whose images are in images/povid/) map to povid.

Multimodal RewardBench (arXiv 2502.14191; github.com/facebookresearch/multimodal_rewardbench)
  * data/all_data.json: a list of {ID, Text, Image (path relative to the json's folder), Output1,
    Output2, Better ("Output1" | "Output2"), Category}. Give the file or its folder.
  Category: as scripts/2_get_accuracy.py: "safety" splits into safety/bias (ID starts with
  "pairs") and safety/toxicity, "reasoning" into reasoning/math (ID starts with "math") and
  reasoning/coding; other categories as in the file ("open_generation/correctness_task", ...).

Locations are local paths or s3://bucket/key URIs (read with the store's endpoint and keys).
Nothing here raises on a bad record: a record with a missing or undecodable image, or fields
that do not fit the schema, is returned as Excluded(record_id, reason).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from selfjudge.shared.config import StoreConfig

from .protocols import MM_REWARDBENCH, VL_REWARDBENCH

# official cal.py group_mapping
VL_GROUPS = {
    "vlfeedback": "general",
    "wildvision-battle": "general",
    "povid": "hallucination",
    "rlaif-v": "hallucination",
    "rlhf-v": "hallucination",
    "reasoning_tasks": "reasoning",
}
VL_CATEGORIES = ("general", "hallucination", "reasoning")

# the README leaderboard's six areas, each a union of the scoring categories
MM_AREAS = {
    "general_correctness": ("open_generation/correctness_task",),
    "general_preference": ("open_generation/preference_task",),
    "knowledge": ("knowledge",),
    "reasoning": ("reasoning/math", "reasoning/coding"),
    "safety": ("safety/bias", "safety/toxicity"),
    "vqa": ("vqa",),
}


@dataclass
class BenchItem:
    item_id: str
    category: str  # the scoring category
    source: str  # VL: source dataset; MM: the file's Category
    query: str
    responses: tuple[str, str]  # in the file's order
    better: int  # index of the preferred response
    image: bytes  # the file's bytes, checked to decode


@dataclass
class Excluded:
    record_id: str
    reason: str

    @property
    def kind(self) -> str:
        """A short label for metrics: missing_image | bad_image | duplicate | bad_record."""
        if self.reason.startswith("missing image"):
            return "missing_image"
        if " image" in self.reason.split("'")[0][:40] or self.reason.startswith("decompression bomb"):
            return "bad_image"
        return "duplicate" if self.reason.startswith("duplicate") else "bad_record"


# --- locations ------------------------------------------------------------------------------


class Location:
    """A folder, local or on S3, that the benchmark file and its images are read from."""

    def __init__(self, root: str, s3=None, bucket: str = "") -> None:  # noqa: ANN001
        self.root, self.s3, self.bucket = root, s3, bucket

    def join(self, rel: str) -> str:
        rel = rel.replace("\\", "/")
        if self.s3 is None:
            return str(Path(self.root) / rel)
        return str(PurePosixPath(self.root) / rel) if self.root else rel

    def describe(self, rel: str) -> str:
        return self.join(rel) if self.s3 is None else f"s3://{self.bucket}/{self.join(rel)}"

    def read(self, rel: str) -> bytes:
        """The bytes at `rel`; FileNotFoundError if there is nothing there."""
        if self.s3 is None:
            path = Path(self.join(rel))
            if not path.is_file():
                raise FileNotFoundError(f"no such file {str(path)!r}")
            return path.read_bytes()
        from minio.error import S3Error

        key = self.join(rel)
        try:
            resp = self.s3.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise FileNotFoundError(f"no such object 's3://{self.bucket}/{key}'") from None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def list(self, suffix: str) -> list[str]:
        """Names (relative to root) of the files directly inside it that end with `suffix`."""
        if self.s3 is None:
            return sorted(p.name for p in Path(self.root).glob(f"*{suffix}") if p.is_file())
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        return sorted(
            o.object_name[len(prefix) :]
            for o in self.s3.list_objects(self.bucket, prefix=prefix)
            if o.object_name.endswith(suffix) and "/" not in o.object_name[len(prefix) :]
        )

    def is_dir(self) -> bool:
        if self.s3 is None:
            return Path(self.root).is_dir()
        prefix = self.root.rstrip("/") + "/" if self.root else ""
        return any(True for _ in self.s3.list_objects(self.bucket, prefix=prefix))

    def child(self, rel: str) -> Location:
        return Location(self.join(rel), self.s3, self.bucket)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.root}" if self.s3 is not None else self.root


def split_location(uri: str, store_cfg: StoreConfig | None = None) -> tuple[Location, str]:
    """(folder, file name) for a local path or s3://bucket/key; a folder gives file name ''."""
    if uri.startswith("s3://"):
        from minio import Minio

        bucket, _, key = uri[len("s3://") :].partition("/")
        if store_cfg is None:
            raise ValueError(f"{uri}: an s3:// location needs the store's endpoint and keys")
        client = Minio(
            store_cfg.endpoint,
            access_key=store_cfg.access_key or None,
            secret_key=store_cfg.secret_key or None,
            secure=store_cfg.secure,
            region=store_cfg.region,
        )
        key = key.strip("/")
        whole = Location(key, client, bucket)
        if key and not key.endswith((".json", ".jsonl", ".parquet")) and whole.is_dir():
            return whole, ""
        parent = str(PurePosixPath(key).parent) if "/" in key else ""
        return Location(parent, client, bucket), PurePosixPath(key).name
    path = Path(uri).expanduser()
    if path.is_dir():
        return Location(str(path)), ""
    return Location(str(path.parent)), path.name


# --- images ---------------------------------------------------------------------------------


def check_image(data: bytes | None, where: str) -> str | None:
    """None if the bytes decode as an image, else the reason they cannot be used."""
    from PIL import Image, UnidentifiedImageError

    if data is None:
        return f"missing image {where}"
    if not data:
        return f"empty (zero-byte) image {where}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"decompression bomb {where}: {exc}"
    except UnidentifiedImageError:
        return f"not a recognised image {where}"
    except Exception as exc:  # noqa: BLE001 - bad input is set aside: truncated data raises OSError, SyntaxError, ...
        return f"corrupt image {where}: {type(exc).__name__}: {exc}"


def _read_image(loc: Location, rel: str) -> tuple[bytes | None, str]:
    where = repr(loc.describe(rel))
    try:
        return loc.read(rel), where
    except FileNotFoundError:
        return None, where
    except Exception as exc:  # noqa: BLE001 - unreadable (permissions, S3 errors): reported, not raised
        return b"", f"{where} ({type(exc).__name__}: {exc})"


# --- VL-RewardBench -------------------------------------------------------------------------


def vl_source_from_id(item_id: str) -> str:
    """The later cal.py's get_dataset_from_id: the id up to the first '_' or '-' names the source."""
    cut = [i for i in (item_id.find("_"), item_id.find("-")) if i != -1]
    prefix = item_id[: min(cut)] if cut else item_id
    if prefix == "RLAIF":
        return "rlaif-v"
    if prefix == "RLHF":
        return "rlhf-v"
    if prefix in ("mathverse", "mmmu"):
        return "reasoning_tasks"
    if prefix == "wildvision":
        return "wildvision-battle"
    if prefix.lower() in ("povid", "hallucination"):
        return "povid"
    return "vlfeedback"


def vl_source(item_id: str, image_path: str | None) -> str:
    if image_path:
        parts = image_path.replace("\\", "/").split("/")
        if len(parts) > 2 and parts[1] in VL_GROUPS:  # "images/<source>/<file>"
            return parts[1]
    return vl_source_from_id(item_id)


def _vl_record(rec: dict, image: bytes | None, where: str, label: str) -> BenchItem | Excluded:
    """`label` names a record without an id: "data.jsonl:<line>" or "<file>.parquet[<row>]"."""
    rid = str(rec.get("id") or "")
    if not rid:
        return Excluded(label, "record has no id")
    responses, ranking, query = rec.get("response"), rec.get("human_ranking"), rec.get("query")
    if not isinstance(query, str):
        return Excluded(rid, "query is not a string")
    if (
        not isinstance(responses, (list, tuple))
        or len(responses) != 2
        or not all(isinstance(r, str) for r in responses)
    ):
        return Excluded(rid, "response is not a list of 2 strings")
    try:
        ranking = [int(r) for r in ranking]
    except (TypeError, ValueError):
        return Excluded(rid, f"human_ranking is not a list of integers: {ranking!r}")
    if len(ranking) != 2 or ranking.count(0) != 1:
        return Excluded(rid, f"human_ranking {ranking} does not mark one preferred response with 0")
    problem = check_image(image, where)
    if problem is not None:
        return Excluded(rid, problem)
    source = vl_source(rid, rec.get("image_path"))
    return BenchItem(rid, VL_GROUPS[source], source, query, (responses[0], responses[1]), ranking.index(0), image)


def _iter_vl_jsonl(loc: Location, name: str, images: Location) -> Iterator[BenchItem | Excluded]:
    for n, line in enumerate(loc.read(name).decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            yield Excluded(f"{name}:{n}", f"malformed JSON line: {exc}")
            continue
        path = rec.get("image_path")
        if not isinstance(path, str) or not path:
            yield Excluded(str(rec.get("id") or f"{name}:{n}"), "record has no image_path")
            continue
        data, where = _read_image(images, path)
        yield _vl_record(rec, data, where, f"{name}:{n}")


def _iter_vl_parquet(loc: Location, names: list[str]) -> Iterator[BenchItem | Excluded]:
    import pyarrow.parquet as pq

    for name in names:
        source = loc.join(name) if loc.s3 is None else io.BytesIO(loc.read(name))
        row = 0
        for batch in pq.ParquetFile(source).iter_batches(batch_size=64):
            for rec in batch.to_pylist():
                row += 1
                image = rec.get("image")
                data = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
                where = f"in {name} (id {rec.get('id')!r})"
                if data is None and isinstance(image, dict) and image.get("path"):  # a path, no bytes
                    data, where = _read_image(loc, image["path"])
                yield _vl_record(rec, data, where, f"{name}[{row - 1}]")


def iter_vl_rewardbench(
    uri: str, images: str = "", store_cfg: StoreConfig | None = None
) -> Iterator[BenchItem | Excluded]:
    loc, name = split_location(uri, store_cfg)
    if not name:  # a folder: its parquet files (HF layout: data/*.parquet), else data.jsonl
        for sub in ("", "data"):
            here = loc.child(sub) if sub else loc
            if here.is_dir() and (parquets := here.list(".parquet")):
                yield from _iter_vl_parquet(here, parquets)
                return
            if here.is_dir() and "data.jsonl" in here.list(".jsonl"):
                loc, name = here, "data.jsonl"
                break
        else:
            raise FileNotFoundError(f"{uri}: no *.parquet or data.jsonl in it (or in its data/ folder)")
    if name.endswith(".parquet"):
        yield from _iter_vl_parquet(loc, [name])
    else:
        yield from _iter_vl_jsonl(loc, name, split_location(images, store_cfg)[0] if images else loc)


# --- Multimodal RewardBench -----------------------------------------------------------------


def mm_category(item_id: str, category: str) -> str:
    """scripts/2_get_accuracy.py: safety and reasoning are reported split by the ID's prefix."""
    if category == "safety":
        return "safety/bias" if item_id.lower().startswith("pairs") else "safety/toxicity"
    if category == "reasoning":
        return "reasoning/math" if item_id.lower().startswith("math") else "reasoning/coding"
    return category


def iter_mm_rewardbench(
    uri: str, images: str = "", store_cfg: StoreConfig | None = None
) -> Iterator[BenchItem | Excluded]:
    loc, name = split_location(uri, store_cfg)
    if not name:
        for sub in ("", "data"):
            here = loc.child(sub) if sub else loc
            if "all_data.json" in here.list(".json"):
                loc, name = here, "all_data.json"
                break
        else:
            raise FileNotFoundError(f"{uri}: no all_data.json in it (or in its data/ folder)")
    try:
        records = json.loads(loc.read(name))
    except ValueError as exc:
        raise ValueError(f"{loc.join(name)} is not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise ValueError(f"{loc.join(name)} must hold a JSON list of records")
    image_loc = split_location(images, store_cfg)[0] if images else loc
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or not rec.get("ID"):
            yield Excluded(f"{name}[{n}]", "record is not an object with an ID")
            continue
        rid = str(rec["ID"])
        fields = [rec.get(f) for f in ("Text", "Output1", "Output2", "Category", "Image")]
        if not all(isinstance(f, str) for f in fields):
            yield Excluded(rid, "Text, Output1, Output2, Category and Image must all be strings")
            continue
        if rec.get("Better") not in ("Output1", "Output2"):
            yield Excluded(rid, f"Better is {rec.get('Better')!r}, not 'Output1' or 'Output2'")
            continue
        data, where = _read_image(image_loc, rec["Image"])
        problem = check_image(data, where)
        if problem is not None:
            yield Excluded(rid, problem)
            continue
        yield BenchItem(
            rid,
            mm_category(rid, rec["Category"]),
            rec["Category"],
            rec["Text"],
            (rec["Output1"], rec["Output2"]),
            0 if rec["Better"] == "Output1" else 1,
            data,
        )


# --- one entry point ------------------------------------------------------------------------


def iter_benchmark(
    benchmark: str,
    uri: str,
    images: str = "",
    store_cfg: StoreConfig | None = None,
    limit: int = 0,
) -> Iterator[BenchItem | Excluded]:
    """Every record of the file, in order, as a BenchItem or an Excluded; duplicate ids are renamed
    "<id>#2", ... unless the record repeats an earlier one exactly (then it is Excluded). Excluded
    ids are unique too (a second bad record under one id is "<id>#2"), so each is reported."""
    if benchmark == VL_REWARDBENCH:
        records = iter_vl_rewardbench(uri, images, store_cfg)
    elif benchmark == MM_REWARDBENCH:
        records = iter_mm_rewardbench(uri, images, store_cfg)
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}")
    seen: dict[str, tuple] = {}
    excluded: dict[str, int] = {}
    for n, rec in enumerate(records):
        if limit and n >= limit:
            return
        if isinstance(rec, BenchItem):
            content = (rec.query, rec.responses, rec.better)
            if rec.item_id in seen:
                if content in seen[rec.item_id]:
                    rec = Excluded(rec.item_id, "duplicate of an earlier record")
                else:
                    seen[rec.item_id] += (content,)
                    rec.item_id = f"{rec.item_id}#{len(seen[rec.item_id])}"
            else:
                seen[rec.item_id] = (content,)
        if isinstance(rec, Excluded):
            excluded[rec.record_id] = excluded.get(rec.record_id, 0) + 1
            if excluded[rec.record_id] > 1:
                rec.record_id = f"{rec.record_id}#{excluded[rec.record_id]}"
        yield rec


def load_benchmark(
    benchmark: str,
    uri: str,
    images: str = "",
    store_cfg: StoreConfig | None = None,
    limit: int = 0,
) -> tuple[list[BenchItem], list[Excluded]]:
    items, excluded = [], []
    for rec in iter_benchmark(benchmark, uri, images, store_cfg, limit):
        (items if isinstance(rec, BenchItem) else excluded).append(rec)
    return items, excluded
