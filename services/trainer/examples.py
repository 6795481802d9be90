"""The kept traces of one iteration as a training source read one example at a time.

The filter shards' records (ExampleRecord, read as TrainTrace: the fields training needs) are
copied (streamed, shard by shard) into one local JSONL file and indexed by byte offset; `[i]` reads line i and fetches its image from the store by key. So the
trainer holds 8 bytes per trace, not the traces or their images, and DataLoader workers (forked
processes, each opening its own store client) fetch and decode images only for the micro-batches
they encode. `identity(i)` names a trace by its text and image key (content-addressed), without
fetching the image, for the resume fingerprint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from selfjudge.shared.judge import JUDGE_SYSTEM
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.records import RecordError, TrainTrace, read_records, record_line
from selfjudge.shared.store import Store, get_image


class StoreExamples:
    def __init__(self, path: Path, store: Store, reopen: Callable[[], Store]) -> None:
        self.path, self._store, self._reopen, self._pid = Path(path), store, reopen, os.getpid()
        self.offsets: list[int] = []
        with open(self.path, "rb") as f:
            pos = 0
            for line in f:
                self.offsets.append(pos)
                pos += len(line)

    @classmethod
    def spill(
        cls,
        store: Store,
        keys: Iterable[str],
        path: Path,
        reopen: Callable[[], Store],
        invalid: Callable[[RecordError], None] | None = None,
    ) -> StoreExamples:
        """Copy the records of the shard files `keys` (in order) into `path`, one shard in memory at a time.
        A line that is no valid trace raises RecordError, or with `invalid` is passed to it and left out."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for key in keys:
                for r in read_records(store, key, TrainTrace, invalid=invalid):
                    f.write(record_line(r) + "\n")
        return cls(path, store, reopen)

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, i: int) -> TrainTrace:
        if not 0 <= i < len(self.offsets):
            raise IndexError(i)
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return TrainTrace.model_validate_json(f.readline())

    def store(self) -> Store:
        """The store client of this process (a forked DataLoader worker opens its own)."""
        if os.getpid() != self._pid:
            self._store, self._pid = self._reopen(), os.getpid()
        return self._store

    def __getitem__(self, i: int) -> SFTExample:
        r = self.record(i)
        image = get_image(self.store(), r.image_key)  # ValueError naming the key: the example is dropped
        return SFTExample(text=r.prompt_text, images=[image], answer=r.answer, system=JUDGE_SYSTEM)

    def identity(self, i: int) -> str:
        r = self.record(i)
        return json.dumps([r.prompt_text, r.answer, JUDGE_SYSTEM, [r.image_key]])

    def record_id(self, i: int) -> str:
        r = self.record(i)
        return f"example:{r.example_id}" if r.example_id is not None else f"trace:{i}"
