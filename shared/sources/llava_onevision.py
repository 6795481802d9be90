"""LLaVA-OneVision-Data as a prompt source (the paper's prompt pool).

Layout (HF lmms-lab/LLaVA-OneVision-Data: one folder per subset, parquet shards in it):
    id: str, image: {bytes: binary, path: str} (null for text-only rows),
    conversations: list<{from: "human"|"gpt", value: str}>, data_source: str
`source.path` is one parquet file, a folder (searched recursively, sorted) or a glob.

Each row gives one prompt: the first human turn (its "<image>" placeholder removed) is the
instruction, the first gpt turn after it is the reference answer (`gold`, used only by the
`synth.closed_labels: gold` ablation and for analysis), kind "auto" (the synthesizer decides),
question_type = data_source (the subset), source "llava_onevision".

Like the file sources it never raises on bad rows: a row without an image, a human turn or a
decodable image, a duplicate id, or a duplicate prompt (same image bytes + normalised
instruction as an earlier row of the same read) goes to `rejected` as (record_id, reason) with
reason "duplicate: ..." for the last two. `items(n, split, offset)` counts rows (after the
`subsets` filter) and reads only the row groups it needs, so shards of a 100k-row pool stay
cheap; offsets past the end wrap around (a run walks on through the pool), a read never
yields the same row twice.
"""
from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from selfjudge.shared.sources.files import load_image_bytes
from selfjudge.shared.sources.scenes import SourceItem

COLUMNS = ["id", "image", "conversations", "data_source"]


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


class LlavaOneVisionSource:
    def __init__(self, path: str | Path, subsets: list[str] | None = None) -> None:
        self.path = str(path)
        self.subsets = set(subsets or [])
        self.rejected: list[tuple[str, str]] = []
        self._index: list[tuple[int, int, int]] | None = None   # (file, row group, row in group)

    def files(self) -> list[Path]:
        p = Path(self.path)
        if p.is_file():
            return [p]
        if p.is_dir():
            return sorted(f for f in p.rglob("*.parquet") if not any(x.startswith(".") for x in f.parts))
        return sorted(Path(f) for f in glob.glob(self.path, recursive=True) if f.endswith(".parquet"))

    def index(self) -> list[tuple[int, int, int]]:
        """Every usable row's (file, row group, row); with subsets, only their rows (reads data_source only)."""
        if self._index is None:
            self._index = []
            for fi, path in enumerate(self.files()):
                pf = pq.ParquetFile(path)
                for g in range(pf.num_row_groups):
                    if self.subsets:
                        sources = pf.read_row_group(g, columns=["data_source"]).column(0).to_pylist()
                        self._index.extend((fi, g, r) for r, ds in enumerate(sources) if ds in self.subsets)
                    else:
                        self._index.extend((fi, g, r) for r in range(pf.metadata.row_group(g).num_rows))
        return self._index

    def __len__(self) -> int:
        return len(self.index())

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:
        self.rejected = []
        files, index = self.files(), self.index()
        if not files:
            self.rejected.append((self.path, "no parquet file found"))
            return
        if not index:
            return
        n = len(index) if n is None else min(n, len(index))
        wanted = [index[(offset + i) % len(index)] for i in range(n)]
        seen_ids: set[str] = set()
        seen_keys: dict[str, str] = {}
        groups: dict[tuple[int, int], list] = {}
        for fi, g, r in wanted:
            key = (fi, g)
            if key not in groups:
                pf = pq.ParquetFile(files[fi])
                present = [c for c in COLUMNS if c in pf.schema_arrow.names]
                groups = {key: pf.read_row_group(g, columns=present).to_pylist()}   # one group in memory
            yield from self._item(groups[key][r], files[fi], g, r, seen_ids, seen_keys)

    def _item(self, row: dict, path: Path, group: int, r: int, seen_ids: set[str],
              seen_keys: dict[str, str]) -> Iterator[SourceItem]:
        data_source = row.get("data_source") or ""
        raw_id = row.get("id")
        record_id = f"{data_source}/{raw_id}" if data_source and raw_id is not None else \
            str(raw_id) if raw_id is not None else f"{path.name}:{group}:{r}"
        if record_id in seen_ids:
            self.rejected.append((record_id, "duplicate: duplicate id"))
            return
        image = row.get("image")
        if isinstance(image, list):
            image = image[0] if image else None
        data = image.get("bytes") if isinstance(image, dict) else image if isinstance(image, bytes) else None
        if not data:
            self.rejected.append((record_id, "no image (text-only row)"))
            return
        instruction, answer = first_turns(row.get("conversations"))
        if not instruction:
            self.rejected.append((record_id, "no human turn"))
            return
        key = prompt_key(data, instruction)
        if key in seen_keys:
            self.rejected.append((record_id, f"duplicate: same image and instruction as {seen_keys[key]}"))
            return
        decoded = load_image_bytes(data, record_id)
        if isinstance(decoded, str):
            self.rejected.append((record_id, decoded))
            return
        seen_ids.add(record_id)
        seen_keys[key] = record_id
        yield SourceItem(
            prompt_id=f"llava:{record_id}"[:300],
            image=decoded,
            instruction=instruction,
            kind="auto",
            question_type=(data_source or "llava")[:40],
            gold=answer,
            options=None,
            source="llava_onevision",
            meta={"file": str(path), "row_group": group, "row": r, "data_source": data_source,
                  "image_path": image.get("path") if isinstance(image, dict) else None, "prompt_key": key},
        )
