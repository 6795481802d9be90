"""User images as prompt sources: a JSONL manifest or a plain folder.

Neither source ever raises on bad input. A bad record (malformed line, missing, empty,
corrupt or truncated image, decompression bomb, empty instruction, text with a NUL or an
unpaired surrogate, duplicate id) is appended to `source.rejected` as (record_id, reason) and
skipped. Record ids in `rejected` are unique (a second bad record with an id already reported
is reported as "<id> (<file>:<line>)"). `rejected` is reset at the start of each `items()` call.
A UTF-8 byte-order mark at the start of the manifest is ignored.

`items(n, split, offset)` counts *records* (JSONL lines / files), not yielded items, so
shards [offset, offset + n) can be read without loading the images before them; a shard
yields at most n items. `split` is accepted for interface parity with ScenesSource and
ignored. `kind` is "open", "closed" or "auto" ("auto": the synthesizer decides).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfjudge.shared.sources.scenes.source import SourceItem
from selfjudge.shared.sources.stream import Files, LineIndex, default_cache_dir

KINDS = ("open", "closed", "auto")


def load_image(path: Path) -> Image.Image | str:
    """The image as RGB, or the reason it cannot be used. Uses PIL's MAX_IMAGE_PIXELS:
    both the DecompressionBombWarning (over the limit) and the Error (over twice) reject."""
    if not path.is_file():
        return f"missing image file {str(path)!r}"
    if path.stat().st_size == 0:
        return f"empty (zero-byte) image file {str(path)!r}"
    return _decode(path, str(path))


def load_image_bytes(data: bytes | None, label: str) -> Image.Image | str:
    """`load_image` for encoded bytes (a parquet Image cell); `label` names it in the reason."""
    if not data:
        return f"empty image bytes {label!r}"
    return _decode(io.BytesIO(data), label)


def load_uri(files: Files, uri: str) -> Image.Image | str:
    """`load_image` for a path or s3:// URI read through `files`."""
    if not Files.is_s3(uri):
        return load_image(Path(uri))
    stat = files.stat(uri)
    if stat is None:
        return f"missing image file {uri!r}"
    if stat[0] == 0:
        return f"empty (zero-byte) image file {uri!r}"
    return load_image_bytes(files.read(uri), uri)


def _decode(source, label: str) -> Image.Image | str:  # noqa: ANN001 - a path or a file object
    path = label
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()
                im = ImageOps.exif_transpose(im) or im
                if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 8 bits, don't clip
                    a = np.asarray(im, dtype=np.float64)
                    a = a / 257 if im.mode.startswith("I;16") or a.max() > 255 else a
                    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")  # composite on white instead of dropping alpha to black
                    out = Image.new("RGB", rgba.size, (255, 255, 255))
                    out.paste(rgba, mask=rgba.getchannel("A"))
                    return out
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"decompression bomb {str(path)!r}: {e}"
    except Image.UnidentifiedImageError:
        return f"not a recognised image {str(path)!r}"
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        return f"corrupt image {str(path)!r}: {type(e).__name__}: {e}"


class JsonlSource:
    """Lines: {"id"?, "image": path (relative to the JSONL's folder), "instruction": str,
    "kind"?: "open"|"closed"|"auto", "gold"?: str, "options"?: [str]}. Record i is line i + 1;
    `read(indices)` reads just those lines (by the offsets in stream.LineIndex) and their images.
    `path` is a local file or s3://bucket/key (then `files` says which S3 server)."""

    def __init__(self, path: str | Path, files: Files | None = None, cache_dir: str | Path | None = None) -> None:
        self.uri = str(path)
        self.path = Path(self.uri) if not Files.is_s3(self.uri) else Path(self.uri.rsplit("/", 1)[-1])
        self.files = files or Files()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.rejected: list[tuple[str, str]] = []
        self._index: LineIndex | None = None

    def index(self) -> LineIndex | None:
        if self._index is None and self.files.stat(self.uri) is not None:
            self._index = LineIndex(self.files, self.uri, self.cache_dir)
        return self._index

    def count(self) -> int:
        index = self.index()
        return len(index) if index is not None else 0

    def __len__(self) -> int:
        return self.count()

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:  # noqa: ARG002 - one split
        """Lines [offset, offset + n) in file order (`split` is accepted for parity with ScenesSource)."""
        count = self.count()
        return self.read(range(offset, count if n is None else min(count, offset + n)))

    def read(self, indices: Sequence[int]) -> Iterator[SourceItem]:
        self.rejected = []
        index = self.index()
        if index is None:
            self.rejected.append((self.uri, "manifest file not found"))
            return
        seen: set[str] = set()
        reported: set[str] = set()

        def reject(record_id: str, reason: str, lineno: int) -> None:
            record_id = _printable(record_id)
            if record_id in reported:  # two bad records with one id: both must be reported
                record_id = f"{record_id} ({self.path.name}:{lineno + 1})"
            reported.add(record_id)
            self.rejected.append((record_id, reason))

        for lineno, raw in index.lines(indices):
            record_id = f"{self.path.name}:{lineno + 1}"
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8-sig" if lineno == 0 else "utf-8"))
            except UnicodeDecodeError:
                reject(record_id, "line is not valid UTF-8", lineno)
                continue
            except json.JSONDecodeError as e:
                reject(record_id, f"malformed JSON: {e}", lineno)
                continue
            if not isinstance(rec, dict):
                reject(record_id, "line is not a JSON object", lineno)
                continue
            if rec.get("id") is not None:
                record_id = str(rec["id"])
            reason = self._check(rec, record_id, seen)
            if reason:
                reject(record_id, reason, lineno)
                continue
            image_path, image = self._image(rec["image"])
            if isinstance(image, str):
                reject(record_id, image, lineno)
                continue
            seen.add(record_id)
            yield SourceItem(
                prompt_id=f"jsonl:{record_id}",
                image=image,
                instruction=rec["instruction"].strip(),
                kind=rec.get("kind") or "auto",
                question_type="user",
                gold=rec.get("gold"),
                options=rec.get("options"),
                source="jsonl",
                meta={"path": str(image_path), "line": lineno + 1},
            )

    def _image(self, name: str) -> tuple[str, Image.Image | str]:
        """(where, the image or why not): relative names are read beside the manifest."""
        if Files.is_s3(self.uri):
            where = name if Files.is_s3(name) else Files.join(Files.parent(self.uri), name)
            return where, load_uri(self.files, where)
        where_path = Path(name) if Path(name).is_absolute() else self.path.parent / name
        return str(where_path), load_image(where_path)

    @staticmethod
    def _check(rec: dict, record_id: str, seen: set[str]) -> str | None:
        if record_id in seen:
            return "duplicate id"
        if not isinstance(rec.get("image"), str) or not rec["image"].strip():
            return "missing or non-string 'image'"
        if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
            return "missing or empty 'instruction'"
        if rec.get("kind") is not None and rec["kind"] not in KINDS:
            return f"bad 'kind' {rec['kind']!r}, expected one of {KINDS}"
        if rec.get("gold") is not None and not isinstance(rec["gold"], str):
            return "'gold' must be a string"
        options = rec.get("options")
        if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            return "'options' must be a list of strings"
        for name in ("id", "image", "instruction", "gold", "options"):  # the database cannot store these
            values = rec.get(name) if isinstance(rec.get(name), list) else [rec.get(name)]
            for value in values:
                problem = _bad_text(value) if isinstance(value, str) else None
                if problem:
                    return f"'{name}' holds {problem}"
        return None


def _bad_text(text: str) -> str | None:
    """Why text cannot be stored (Postgres refuses NUL; no UTF-8 database takes an unpaired
    surrogate such as a JSON "\\ud800"), or None."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate (not valid Unicode)"
    return None


def _printable(text: str) -> str:
    """A record id that can be stored and shown: NUL and unpaired surrogates escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


INSTRUCTIONS_FILE = "instructions.txt"


def read_instructions(files: Files, uri: str) -> list[str]:
    """One instruction per non-empty line of a text file (local or s3://)."""
    return [line.strip() for line in files.read(uri).decode("utf-8-sig").splitlines() if line.strip()]


class FolderSource:
    """Every non-hidden file under `folder` (recursively, sorted by path) paired with each
    instruction: record i is file i // m with instruction i % m (m instructions). The
    instructions are the given list, else the folder's own `instructions.txt` (one per line;
    not an image), else "Describe the image.". Files that are not images are rejected like
    corrupt ones. The sorted listing is written once per source object to the cache folder and
    read by offset, so a draw decodes only the images it draws. `folder` may be s3://bucket/prefix."""

    def __init__(
        self,
        folder: str | Path,
        instructions: list[str] | None = None,
        kind: str = "auto",
        files: Files | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.uri = str(folder)
        self.folder = Path(self.uri)
        self.files = files or Files()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        own = Files.join(self.uri, INSTRUCTIONS_FILE)
        if instructions is None and self.files.stat(own) is not None:
            instructions = read_instructions(self.files, own)
            self.own_instructions = True
        else:
            self.own_instructions = False
        self.instructions = ["Describe the image."] if instructions is None else instructions
        self.kind = kind
        self.rejected: list[tuple[str, str]] = []
        self._listing: LineIndex | None = None

    def _names(self) -> list[str]:
        return sorted(
            rel
            for rel in self.files.walk(self.uri)
            if not any(part.startswith(".") for part in rel.split("/"))
            and not (self.own_instructions and rel == INSTRUCTIONS_FILE)
        )

    def listing(self) -> LineIndex | None:
        """The sorted file names, one per line, indexed by line (built on first use)."""
        if self._listing is None and self.files.is_dir(self.uri):
            names = self._names()
            data = b"".join(os.fsencode(n) + b"\n" for n in names)
            del names
            path = self.cache_dir / f"{hashlib.sha256(self.uri.encode() + data).hexdigest()[:32]}.listing"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
            self._listing = LineIndex(Files(), str(path), self.cache_dir)
        return self._listing

    def _instructions(self) -> list[str]:
        return [i.strip() for i in self.instructions if isinstance(i, str) and i.strip()]

    def count(self) -> int:
        listing = self.listing()
        return len(listing) * len(self._instructions()) if listing is not None else 0

    def __len__(self) -> int:
        listing = self.listing()
        return len(listing) if listing is not None else 0

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:  # noqa: ARG002 - one split
        """Files [offset, offset + n) in sorted order, each with every instruction."""
        m = max(1, len(self._instructions()))
        files = len(self)
        stop = files if n is None else min(files, offset + n)
        return self.read(range(offset * m, stop * m))

    def read(self, indices: Sequence[int]) -> Iterator[SourceItem]:
        self.rejected = []
        if not self.files.is_dir(self.uri):
            self.rejected.append((self.uri, "folder not found"))
            return
        instructions = self._instructions()
        if not instructions:
            self.rejected.append((self.uri, "no non-empty instruction"))
            return
        m = len(instructions)
        wanted = [divmod(i, m) for i in indices]
        names = dict(self.listing().lines(sorted({f for f, _ in wanted})))
        images: dict[int, Image.Image | str] = {}
        bad: set[int] = set()
        for f, j in wanted:
            rel_raw = os.fsdecode(names[f])
            rel = _printable(rel_raw)  # a non-UTF-8 file name, escaped
            if f in bad:
                continue
            if f not in images:  # one decode per file for a run of its instructions
                images = {f: load_uri(self.files, Files.join(self.uri, rel_raw))}
            if isinstance(images[f], str):
                self.rejected.append((rel, images[f]))
                bad.add(f)
                continue
            yield SourceItem(
                prompt_id=f"folder:{rel}:{j}",
                image=images[f],
                instruction=instructions[j],
                kind=self.kind,
                question_type="user",
                gold=None,
                options=None,
                source="folder",
                meta={"path": _printable(Files.join(self.uri, rel_raw))},
            )
