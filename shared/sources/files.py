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

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfjudge.shared.sources.scenes import SourceItem

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
    except Exception as e:  # truncated/corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        return f"corrupt image {str(path)!r}: {type(e).__name__}: {e}"


class JsonlSource:
    """Lines: {"id"?, "image": path (relative to the JSONL's folder), "instruction": str,
    "kind"?: "open"|"closed"|"auto", "gold"?: str, "options"?: [str]}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rejected: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.path.read_bytes().splitlines()) if self.path.is_file() else 0

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:
        self.rejected = []
        if not self.path.is_file():
            self.rejected.append((str(self.path), "manifest file not found"))
            return
        seen: set[str] = set()
        reported: set[str] = set()

        def reject(record_id: str, reason: str, lineno: int) -> None:
            record_id = _printable(record_id)
            if record_id in reported:     # two bad records with one id: both must be reported
                record_id = f"{record_id} ({self.path.name}:{lineno + 1})"
            reported.add(record_id)
            self.rejected.append((record_id, reason))

        lines = self.path.read_bytes().splitlines()
        stop = len(lines) if n is None else min(len(lines), offset + n)
        for lineno in range(offset, stop):
            raw = lines[lineno]
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
            image_path = Path(rec["image"]) if Path(rec["image"]).is_absolute() else self.path.parent / rec["image"]
            image = load_image(image_path)
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
        for name in ("id", "image", "instruction", "gold", "options"):   # the database cannot store these
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


class FolderSource:
    """Every non-hidden file under `folder` (recursively, sorted) with each instruction.
    Files that are not images are rejected like corrupt ones."""

    def __init__(self, folder: str | Path, instructions: list[str] | None = None, kind: str = "auto") -> None:
        self.folder = Path(folder)
        self.instructions = ["Describe the image."] if instructions is None else instructions
        self.kind = kind
        self.rejected: list[tuple[str, str]] = []

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)
        )

    def __len__(self) -> int:
        return len(self._files())

    def __iter__(self) -> Iterator[SourceItem]:
        return self.items()

    def items(self, n: int | None = None, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:
        self.rejected = []
        if not self.folder.is_dir():
            self.rejected.append((str(self.folder), "folder not found"))
            return
        instructions = [i.strip() for i in self.instructions if isinstance(i, str) and i.strip()]
        if not instructions:
            self.rejected.append((str(self.folder), "no non-empty instruction"))
            return
        files = self._files()
        for path in files[offset:None if n is None else offset + n]:
            rel = _printable(path.relative_to(self.folder).as_posix())   # a non-UTF-8 file name, escaped
            image = load_image(path)
            if isinstance(image, str):
                self.rejected.append((rel, image))
                continue
            for j, instruction in enumerate(instructions):
                yield SourceItem(
                    prompt_id=f"folder:{rel}:{j}",
                    image=image,
                    instruction=instruction,
                    kind=self.kind,
                    question_type="user",
                    gold=None,
                    options=None,
                    source="folder",
                    meta={"path": _printable(str(path))},
                )
