"""Prompts from tables: parquet or arrow files, local or on S3, read a row group at a time.

`TableSource(path)` takes one .parquet/.arrow file, a folder searched recursively for them
(sorted; hidden parts skipped: a Hugging Face `save_to_disk` folder - of a DatasetDict, its
`train` split -, a hub-style folder of parquet shards) or, locally, a glob. Rows are numbered across the files in order; `read(indices)`
reads only the row groups (parquet) or record batches (arrow, memory-mapped: zero-copy) that
hold a drawn row, and decodes only the drawn rows' images. An arrow file on S3 is copied once
to the cache folder (arrow's stream format has no index to read it by range); parquet on S3 is
read by byte range.

Columns (Hugging Face conventions, found by name):
    image       {bytes, path} struct (an `Image` feature), binary, or a list of them (first used)
    text        `conversations` (LLaVA: first human turn, first answer after it) or the first of
                instruction / question / prompt / query / text; answer / gold / response / output: gold
    id          id / question_id / sample_id (else "<file>:<row>"); optional kind, options, data_source
A bad row (no image, no text, undecodable image, duplicate id, or the same image and
instruction as an earlier row of the same read) goes to `rejected` as (record_id, reason).
`subsets` keeps only rows whose data_source is listed (that one column is scanned once and the
kept row numbers cached, memory-mapped).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from selfjudge.shared.sources.files import KINDS, _bad_text, _printable, load_image_bytes, load_uri
from selfjudge.shared.sources.scenes.source import SourceItem
from selfjudge.shared.sources.stream import Files, cache_name, default_cache_dir

TEXT_COLUMNS = ("instruction", "question", "prompt", "query", "text")
GOLD_COLUMNS = ("answer", "gold", "response", "output")
ID_COLUMNS = ("id", "question_id", "sample_id")
EXTRA_COLUMNS = ("kind", "options", "data_source", "category")
SUFFIXES = (".parquet", ".arrow")


def normalize_instruction(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("<image>", " ")).strip().strip(" .?!").lower()


def prompt_key(image_bytes: bytes, instruction: str) -> str:
    """The duplicate key: sha256 of the image bytes + the normalised instruction."""
    h = hashlib.sha256(image_bytes)
    h.update(b"\0" + normalize_instruction(instruction).encode())
    return h.hexdigest()


def first_turns(conversations) -> tuple[str | None, str | None]:  # noqa: ANN001 - list of dicts
    """(first human value, first gpt value after it), "<image>" placeholders removed."""
    human = answer = None
    for turn in conversations or []:
        who, value = (turn or {}).get("from"), (turn or {}).get("value")
        if not isinstance(value, str):
            continue
        if who in ("human", "user") and human is None:
            human = re.sub(r"\s*<image>\s*", "\n", value).strip()
        elif who in ("gpt", "assistant") and human is not None:
            answer = value.strip()
            break
    return human or None, answer


class _File:
    """One table file: its row groups (parquet) or record batches (arrow)."""

    def __init__(self, source: TableSource, uri: str) -> None:
        self.uri, self.source = uri, source
        self.is_parquet = uri.endswith(".parquet")
        if self.is_parquet:
            self._pf = pq.ParquetFile(source.fs.open(uri))
            self.schema = self._pf.schema_arrow
            self.group_rows = [self._pf.metadata.row_group(g).num_rows for g in range(self._pf.num_row_groups)]
        else:
            self._batches = _open_arrow(source.fs, uri, source.cache_dir)
            self.schema = self._batches[0].schema if self._batches else pa.schema([])
            self.group_rows = [b.num_rows for b in self._batches]

    def read_group(self, g: int, columns: list[str]) -> pa.Table | pa.RecordBatch:
        if self.is_parquet:
            return self._pf.read_row_group(g, columns=columns)
        return self._batches[g].select(columns)


def _open_arrow(files: Files, uri: str, cache_dir: Path) -> list[pa.RecordBatch]:
    """The file's record batches, memory-mapped (an S3 object is copied to the cache first, streamed)."""
    path = uri
    if Files.is_s3(uri):
        local = Path(cache_dir) / f"{cache_name(uri, files.stat(uri), 'arrow')}.arrow"
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")
            with files.open(uri) as src, open(tmp, "wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            tmp.replace(local)
        path = str(local)
    mm = pa.memory_map(path)
    magic = mm.read(6)
    mm.seek(0)
    reader = pa.ipc.open_file(mm) if magic == b"ARROW1" else pa.ipc.open_stream(mm)
    if magic == b"ARROW1":
        return [reader.get_batch(i) for i in range(reader.num_record_batches)]
    return list(reader)


class TableSource:
    name = "hf_datasets"  # SourceItem.source
    prefix = "hf"  # SourceItem.prompt_id prefix

    def __init__(
        self,
        path: str | Path,
        subsets: list[str] | None = None,
        files: Files | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.path = str(path)
        self.subsets = sorted(set(subsets or []))
        self.fs = files or Files()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.rejected: list[tuple[str, str]] = []
        self._opened: list[_File] | None = None
        self._starts: np.ndarray | None = None  # first global row of each (file, group)
        self._groups: list[tuple[int, int]] = []  # (file, group) in order
        self._kept: np.ndarray | None = None  # subsets: the kept global rows

    # --- layout ---------------------------------------------------------------------------

    def files_list(self) -> list[str]:
        p = self.path
        if self.fs.stat(Files.join(p, "dataset_dict.json")) is not None:  # a DatasetDict: its train split
            p = Files.join(p, "train")
        if Files.is_s3(p):
            if self.fs.stat(p) is not None:
                return [p]
            return [
                Files.join(p, rel)
                for rel in sorted(self.fs.walk(p))
                if rel.endswith(SUFFIXES) and not any(x.startswith(".") for x in rel.split("/"))
            ]
        if Path(p).is_file():
            return [p]
        if Path(p).is_dir():
            return [
                str(f)
                for f in sorted(Path(p).rglob("*"))
                if f.suffix in SUFFIXES and f.is_file() and not any(x.startswith(".") for x in f.relative_to(p).parts)
            ]
        return sorted(f for f in glob.glob(p, recursive=True) if f.endswith(SUFFIXES))

    def files(self) -> list[Path]:
        return [Path(f) for f in self.files_list()]

    def _open(self) -> list[_File]:
        if self._opened is None:
            self._opened = [_File(self, uri) for uri in self.files_list()]
            starts = []
            total = 0
            for fi, f in enumerate(self._opened):
                for g, n in enumerate(f.group_rows):
                    self._groups.append((fi, g))
                    starts.append(total)
                    total += n
            self._starts = np.array(starts + [total], dtype=np.int64)
        return self._opened

    def _kept_rows(self) -> np.ndarray | None:
        """Subsets: the global row numbers whose data_source is listed (scanned once, cached)."""
        if not self.subsets:
            return None
        if self._kept is None:
            opened = self._open()
            sig = "|".join(f"{f.uri}:{self.fs.stat(f.uri)}" for f in opened) + "|" + ",".join(self.subsets)
            path = self.cache_dir / f"{hashlib.sha256(sig.encode()).hexdigest()[:32]}.rows"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                wanted = pa.array(self.subsets)
                with open(tmp, "wb") as out:
                    for (fi, g), start in zip(self._groups, self._starts):
                        f = opened[fi]
                        if "data_source" not in f.schema.names:
                            continue
                        col = f.read_group(g, ["data_source"]).column(0)
                        hit = np.asarray(pc.is_in(col, value_set=wanted).fill_null(False))
                        out.write((np.flatnonzero(hit) + start).astype(np.int64).tobytes())
                tmp.replace(path)
            self._kept = np.memmap(path, dtype=np.int64, mode="r") if path.stat().st_size else np.zeros(0, np.int64)
        return self._kept

    def count(self) -> int:
        kept = self._kept_rows()
        if kept is not None:
            return len(kept)
        self._open()
        return int(self._starts[-1])

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:  # noqa: ARG002 - one split
        """Rows [offset, offset + n) in file order, wrapping past the end; no row twice in one read."""
        count = self.count()
        if not self.files_list():
            self.rejected = [(self.path, "no parquet or arrow file found")]
            return iter(())
        n = count if n is None else min(n, count)
        return self.read([(offset + i) % count for i in range(n)] if count else [])

    # --- reading --------------------------------------------------------------------------

    def read(self, indices: Sequence[int]) -> Iterator[SourceItem]:
        """The drawn rows in the order asked. Each row group is read once (only its needed
        columns, only the drawn rows kept, still encoded); images are decoded row by row."""
        self.rejected = []
        opened = self._open()
        if not opened:
            self.rejected.append((self.path, "no parquet or arrow file found"))
            return
        kept = self._kept_rows()
        order = list(dict.fromkeys(int(kept[i]) if kept is not None else int(i) for i in indices))
        by_group: dict[int, list[int]] = {}
        for r in sorted(order):
            by_group.setdefault(int(np.searchsorted(self._starts, r, side="right")) - 1, []).append(r)
        raw: dict[int, tuple[dict, str, int, int]] = {}
        for gi, global_rows in sorted(by_group.items()):
            fi, g = self._groups[gi]
            f = opened[fi]
            local = [r - int(self._starts[gi]) for r in global_rows]
            present = [c for c in f.schema.names if c in self.columns(f.schema.names)]
            table = f.read_group(g, present).take(pa.array(local, pa.int64()))
            for r, loc, row in zip(global_rows, local, table.to_pylist()):
                raw[r] = (row, f.uri, g, loc)
            del table
        seen_ids: set[str] = set()
        seen_keys: dict[str, str] = {}
        for r in order:
            item = self._item(*raw.pop(r), seen_ids, seen_keys)
            if item is not None:
                yield item

    @staticmethod
    def columns(names: list[str]) -> set[str]:  # noqa: ARG004 - the same signature as the other layouts'
        return {"image", "images", "conversations", *TEXT_COLUMNS, *GOLD_COLUMNS, *ID_COLUMNS, *EXTRA_COLUMNS}

    def _item(
        self, row: dict, uri: str, group: int, r: int, seen_ids: set[str], seen_keys: dict[str, str]
    ) -> SourceItem | None:
        data_source = row.get("data_source") or ""
        raw_id = next((row[c] for c in ID_COLUMNS if row.get(c) is not None), None)
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        record_id = _printable(
            f"{data_source}/{raw_id}"
            if data_source and raw_id is not None
            else str(raw_id)
            if raw_id is not None
            else f"{name}:{group}:{r}"
        )
        if record_id in seen_ids:
            self.rejected.append((record_id, "duplicate: duplicate id"))
            return None
        image = row.get("image", row.get("images"))
        if isinstance(image, list):
            image = image[0] if image else None
        data = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
        image_path = image.get("path") if isinstance(image, dict) else None
        if "conversations" in row:
            instruction, answer = first_turns(row.get("conversations"))
        else:
            instruction = next(
                (row[c].strip() for c in TEXT_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None
            )
            answer = next((str(row[c]) for c in GOLD_COLUMNS if row.get(c) is not None), None)
        if not data and not image_path:
            self.rejected.append((record_id, "no image (text-only row)"))
            return None
        if not instruction:
            self.rejected.append((record_id, "no human turn" if "conversations" in row else "no instruction text"))
            return None
        problem = _bad_text(instruction) or (_bad_text(answer) if answer else None)
        if problem:
            self.rejected.append((record_id, f"text holds {problem}"))
            return None
        if not data:  # an image stored by path, relative to the table file
            decoded = load_uri(
                self.fs,
                image_path
                if os.path.isabs(image_path) or Files.is_s3(image_path)
                else Files.join(Files.parent(uri), image_path),
            )
            key = prompt_key(image_path.encode(), instruction)
        else:
            key = prompt_key(data, instruction)
            decoded = None
        if key in seen_keys:
            self.rejected.append((record_id, f"duplicate: same image and instruction as {seen_keys[key]}"))
            return None
        if decoded is None:
            decoded = load_image_bytes(data, record_id)
        if isinstance(decoded, str):
            self.rejected.append((record_id, decoded))
            return None
        seen_ids.add(record_id)
        seen_keys[key] = record_id
        kind = row.get("kind") if row.get("kind") in KINDS else "auto"
        options = row.get("options")
        options = (
            options if isinstance(options, list) and options and all(isinstance(o, str) for o in options) else None
        )
        return SourceItem(
            prompt_id=f"{self.prefix}:{record_id}"[:300],
            image=decoded,
            instruction=instruction,
            kind=kind,
            question_type=self._question_type(row),
            gold=answer,
            options=options,
            source=self.name,
            meta={
                "file": uri,
                "row_group": group,
                "row": r,
                "data_source": data_source,
                "image_path": image_path,
                "prompt_key": key,
            },
        )

    def _question_type(self, row: dict) -> str:
        return str(row.get("data_source") or row.get("category") or "user")[:40]
