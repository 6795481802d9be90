"""Drawing an iteration's prompts from a source of any size, reading only what is drawn.

Every record source (JSONL manifest, image folder, parquet / arrow tables) numbers its records
0..count()-1 and reads any list of them with `read(indices)`, without touching the others. An
iteration draws its records by a seeded pseudo-random permutation of those numbers
(`draw_indices`): iteration k takes the positions [(k-1)n, kn) of the permutation, so
iterations walk through the whole pool without repeats before any record comes again (a new
permutation per pass), and the same (seed, iteration, n, pool size) draws the same records
after a restart. The permutation is a Feistel network over the smallest power of four that
holds the pool, cycle-walked into [0, count): no array of the pool's size is ever built.

Files are read through `Files`: a local path, or `s3://bucket/key` on the S3 server of the
store config (pyarrow's S3 filesystem, byte ranges). A JSONL manifest's or a folder listing's
line offsets are computed once, streamed in fixed-size chunks, and kept as a memory-mapped
int64 file under the cache folder (keyed by the file's location, size and modification
time), so a draw reads n offsets and n byte ranges.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from selfjudge.shared.config import StoreConfig
from selfjudge.shared.sources.scenes.source import SourceItem

CHUNK = 8 << 20  # bytes read at a time while indexing
ROUNDS = 6


class RecordSource(Protocol):
    rejected: list[tuple[str, str]]

    def count(self) -> int: ...
    def read(self, indices: Sequence[int]) -> Iterator[SourceItem]: ...


# --- the permutation ----------------------------------------------------------------------


def _round(key: bytes, r: int, half: int, bits: int) -> int:
    digest = hashlib.blake2b(half.to_bytes(8, "little"), digest_size=8, key=key, person=bytes([r]) * 16).digest()
    return int.from_bytes(digest, "little") & ((1 << bits) - 1)


def permute(i: int, count: int, key: str) -> int:
    """The image of i in [0, count) under the permutation named by `key` (a bijection on [0, count))."""
    if count <= 1:
        return 0
    bits = max(1, ((count - 1).bit_length() + 1) // 2)  # a 2*bits-bit domain holds count
    mask, k = (1 << bits) - 1, hashlib.sha256(key.encode()).digest()[:32]
    x = i
    while True:
        left, right = x >> bits, x & mask
        for r in range(ROUNDS):
            left, right = right, left ^ _round(k, r, right, bits)
        x = (left << bits) | right
        if x < count:  # cycle-walking: at most a few steps, the domain is < 4 * count
            return x


def draw_indices(count: int, n: int, seed: int, iteration: int) -> list[int]:
    """Record numbers for iteration `iteration` (1-based): min(n, count) distinct records, from
    position (k-1)n on in the seeded sequence of permutations (one per pass through the pool).
    A draw that crosses into the next pass skips records it already holds."""
    if count <= 0 or n <= 0:
        return []
    out: dict[int, None] = {}
    p = (iteration - 1) * n
    while len(out) < min(n, count):
        epoch, i = divmod(p, count)
        out.setdefault(permute(i, count, f"selfjudge-draw:{seed}:{epoch}"))
        p += 1
    return list(out)


def draw(source: RecordSource, n: int, seed: int, iteration: int) -> Iterator[SourceItem]:
    """The items of iteration `iteration`: only the drawn records are read (bad ones go to source.rejected)."""
    return source.read(draw_indices(source.count(), n, seed, iteration))


# --- files, local or on S3 ----------------------------------------------------------------


class Files:
    """Reads a local path or an s3://bucket/key URI; `store_cfg` (StoreConfig) gives the S3 server."""

    def __init__(self, store_cfg: StoreConfig | None = None) -> None:
        self.store_cfg = store_cfg
        self._s3 = None

    @staticmethod
    def is_s3(uri: str) -> bool:
        return str(uri).startswith("s3://")

    @property
    def s3(self):  # noqa: ANN201 - pyarrow.fs.S3FileSystem
        if self._s3 is None:
            from pyarrow import fs

            cfg = self.store_cfg
            if cfg is None:
                raise ValueError("an s3:// source needs the store's endpoint and keys (store.*)")
            self._s3 = fs.S3FileSystem(
                access_key=cfg.access_key or None,
                secret_key=cfg.secret_key or None,
                endpoint_override=cfg.endpoint,
                scheme="https" if cfg.secure else "http",
                region=cfg.region,
            )
        return self._s3

    def _key(self, uri: str) -> str:
        return str(uri)[len("s3://") :].strip("/")

    def stat(self, uri: str) -> tuple[int, int] | None:
        """(size, mtime in ns) of a file, or None if there is no file there."""
        if not self.is_s3(uri):
            try:
                st = os.stat(uri)
            except OSError:
                return None
            return (st.st_size, st.st_mtime_ns) if Path(uri).is_file() else None
        from pyarrow import fs

        info = self.s3.get_file_info(self._key(uri))
        if info.type != fs.FileType.File:
            return None
        return info.size, info.mtime_ns or 0

    def is_dir(self, uri: str) -> bool:
        if not self.is_s3(uri):
            return Path(uri).is_dir()
        from pyarrow import fs

        return self.s3.get_file_info(self._key(uri)).type == fs.FileType.Directory

    def read(self, uri: str) -> bytes:
        if not self.is_s3(uri):
            return Path(uri).read_bytes()
        with self.s3.open_input_stream(self._key(uri)) as f:
            return f.read()

    def open(self, uri: str):  # noqa: ANN201 - a binary file object with seek/read
        if not self.is_s3(uri):
            return open(uri, "rb")
        return self.s3.open_input_file(self._key(uri))

    def walk(self, uri: str) -> Iterator[str]:
        """Every file under a folder, as a path relative to it (any order; hidden parts included)."""
        if not self.is_s3(uri):
            root = Path(uri)
            for dirpath, _, names in os.walk(root):
                for name in names:
                    yield (Path(dirpath) / name).relative_to(root).as_posix()
            return
        from pyarrow import fs

        base = self._key(uri)
        for info in self.s3.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type == fs.FileType.File:
                yield info.path[len(base) :].lstrip("/")

    @staticmethod
    def join(uri: str, rel: str) -> str:
        if Files.is_s3(uri):
            return uri.rstrip("/") + "/" + rel
        return str(Path(uri) / rel)

    @staticmethod
    def parent(uri: str) -> str:
        if Files.is_s3(uri):
            return uri.rstrip("/").rsplit("/", 1)[0]
        return str(Path(uri).parent)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SELFJUDGE_SOURCE_CACHE") or Path(tempfile.gettempdir()) / "selfjudge-source-index")


def cache_name(uri: str, stat: tuple[int, int], what: str) -> str:
    return hashlib.sha256(f"{what}|{uri}|{stat[0]}|{stat[1]}".encode()).hexdigest()[:32]


# --- line offsets -------------------------------------------------------------------------


class LineIndex:
    """Start offsets of a file's lines (and its size at the end), memory-mapped from the cache."""

    def __init__(self, files: Files, uri: str, cache_dir: Path) -> None:
        self.files, self.uri = files, uri
        stat = files.stat(uri)
        if stat is None:
            raise FileNotFoundError(uri)
        path = Path(cache_dir) / f"{cache_name(uri, stat, 'lines')}.offsets"
        if not path.is_file():
            self._build(path)
        self.offsets = np.memmap(path, dtype=np.int64, mode="r")

    def _build(self, path: Path) -> None:
        """One streamed pass: the offset after every newline, written chunk by chunk."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        size = 0
        last = b"\n"
        with self.files.open(self.uri) as src, open(tmp, "wb") as out:
            out.write(np.zeros(1, np.int64).tobytes())
            while chunk := src.read(CHUNK):
                ends = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + (size + 1)
                out.write(ends.astype(np.int64).tobytes())
                size += len(chunk)
                last = chunk[-1:]
            if last != b"\n":  # a last line without a newline still ends at the end
                out.write(np.array([size], np.int64).tobytes())
        tmp.replace(path)

    def __len__(self) -> int:
        return max(0, len(self.offsets) - 1)

    def lines(self, numbers: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(line number, bytes without the line break) for the given 0-based line numbers, in that order."""
        with self.files.open(self.uri) as f:
            for i in numbers:
                start, end = int(self.offsets[i]), int(self.offsets[i + 1])
                f.seek(start)
                yield i, f.read(end - start).rstrip(b"\r\n")
