"""The bad-input corpus (issue #6): every kind of bad record selfjudge must set aside, with the
outcome each one must have. Nothing is committed as a blob: `build(root)` writes the files.

Families, and the real code path each goes through:
  source      a JSONL manifest line (and its image): shared/sources/files.py JsonlSource, i.e. what
              `source.kind: jsonl` feeds the loop (set aside at stage "source")
  vl-jsonl    a VL-RewardBench data.jsonl record        } services/evaluator/benchmarks.py iter_benchmark
  vl-parquet  a VL-RewardBench parquet row              } (set aside at stage "evaluator")
  mm          a Multimodal RewardBench all_data.json record }
  verdict     a judge output: shared/verdict.py parse_verdict (judged wrong with its parse reason)

Outcomes:
  "set_aside"  the record is not used; its reason contains `reason` (case-insensitive) and it is
               reported under `record_id` (for a line with no usable id: "<file>:<line>")
  "converted"  the record is used after conversion (e.g. CMYK -> RGB; an animated GIF is used
               as its FIRST frame, converted to RGB)
  "accepted"   (benchmarks) used as is
  verdict cases: `reason` is the parser's reason ("ok", "no_verdict", "conflicting", "too_long",
               "empty") and `choice` its verdict.

Each source case is one line of ONE manifest (`prompts.jsonl`, images under `images/`), mixed with
`GOOD` records, so the same file also drives the end-to-end embedded run.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST = "prompts.jsonl"


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # source | vl-jsonl | vl-parquet | mm | verdict
    expect: str  # set_aside | converted | accepted | (verdict) the parse reason
    reason: str = ""  # a substring of the set-aside reason / the verdict's parse reason
    line: bytes | dict | None = None  # source: the manifest line ({"id": name, ...} unless raw bytes)
    image: str | None = None  # source: the image writer (IMAGES key) for images/<file>
    record_id: str | None = None  # the id it is reported under (default: the case name)
    pixel: tuple | None = None  # converted: the expected RGB at (0, 0) (+-12 per channel)
    size: tuple | None = None  # converted: the expected (width, height)
    choice: str | None = None  # verdict
    extra: dict = field(default_factory=dict)


# --- image writers --------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, colour_type: int, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(seed: int = 0, size: int = 96) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (16, 16), (10, 200, 10)), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_with_size(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("P", (8, 8), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    return bytes(data)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((220, 20, 20), (20, 220, 20), (20, 20, 220))]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _exif_rotated() -> bytes:
    img = Image.new("RGB", (40, 20), (30, 30, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    return _save(img, "JPEG", exif=exif.tobytes())


def _transparent_palette() -> bytes:
    img = Image.new("P", (12, 12), 0)
    img.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    return _save(img, "GIF", transparency=0)


def _rgba() -> bytes:
    img = Image.new("RGBA", (12, 12), (0, 0, 255, 0))  # fully transparent blue: white when composited
    img.putpixel((5, 5), (0, 0, 255, 255))
    return _save(img, "PNG")


def _corrupt_png_body() -> bytes:
    good = _save(_noise(1), "PNG")
    start = good.index(b"IDAT") + 4 + 40  # garble the compressed data (CRC left as is)
    return good[:start] + bytes(b ^ 0x5A for b in good[start : start + 400]) + good[start + 400 :]


IMAGES = {
    # bad
    "corrupt_bytes.png": lambda: b"this is not an image at all\x00\xff" * 20,
    "corrupt_body.png": _corrupt_png_body,
    "html_error.jpg": lambda: b"<html><body>404 Not Found</body></html>\n",
    "truncated.png": lambda: (d := _save(_noise(2), "PNG"))[: len(d) // 2],
    "truncated.jpg": lambda: (d := _save(_noise(3), "JPEG", quality=95))[: len(d) // 2],
    "zero.png": lambda: b"",
    "bomb_error.png": lambda: _png(40_000, 40_000, 8, 2, b"\0" * 64),  # over 2x PIL's limit
    "bomb_warn.png": lambda: _png(10_000, 10_000, 8, 2, b"\0" * 64),  # over the limit (a warning)
    "bomb.jpg": lambda: _jpeg_with_size(60_000, 60_000),
    "bomb.gif": lambda: _gif_with_size(65_535, 65_535),
    # usable after conversion
    "cmyk.jpg": lambda: _save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "grey16.png": lambda: _save(Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)), "PNG"),
    "rgb16.png": lambda: _png(
        4, 4, 16, 2, b"".join(b"\0" + struct.pack(">HHH", 65535, 32768, 0) * 4 for _ in range(4))
    ),
    "animated.gif": _animated_gif,
    "rgba.png": _rgba,
    "palette_transparent.gif": _transparent_palette,
    "exif_rotated.jpg": _exif_rotated,
    "bilevel.png": lambda: _save(Image.new("1", (10, 10), 1), "PNG"),
    # good
    "good_red.png": lambda: _save(Image.new("RGB", (32, 24), (200, 10, 10)), "PNG"),
    "good_green.jpg": lambda: _save(Image.new("RGB", (32, 32), (10, 180, 10)), "JPEG"),
    "good_noise.png": lambda: _save(_noise(4, 32), "PNG"),
    "good_blue.png": lambda: _save(Image.new("RGB", (24, 32), (20, 20, 210)), "PNG"),
}


# --- the cases ------------------------------------------------------------------------------


def _rec(image: str | None, instruction: object = "Describe the image.", **kw) -> dict:
    rec = {"image": f"images/{image}"} if image else {}
    if instruction is not None:
        rec["instruction"] = instruction
    rec.update(kw)
    return rec


def _img_case(name: str, file: str, reason: str) -> Case:
    return Case(name, "source", "set_aside", reason, _rec(file), file)


def _conv_case(name: str, file: str, pixel: tuple | None = None, size: tuple | None = None) -> Case:
    return Case(
        name, "source", "converted", "", _rec(file, f"Describe the picture ({name})."), file, pixel=pixel, size=size
    )


SOURCE_CASES = [
    # images that cannot be used
    _img_case("img-corrupt-bytes", "corrupt_bytes.png", "not a recognised image"),
    _img_case("img-corrupt-png-body", "corrupt_body.png", "corrupt image"),
    _img_case("img-html-as-jpeg", "html_error.jpg", "not a recognised image"),
    _img_case("img-truncated-png", "truncated.png", "corrupt image"),
    _img_case("img-truncated-jpeg", "truncated.jpg", "corrupt image"),
    _img_case("img-zero-byte", "zero.png", "zero-byte"),
    _img_case("img-bomb-png", "bomb_error.png", "decompression bomb"),
    _img_case("img-bomb-png-warning", "bomb_warn.png", "decompression bomb"),
    _img_case("img-bomb-jpeg", "bomb.jpg", "decompression bomb"),
    _img_case("img-bomb-gif", "bomb.gif", "decompression bomb"),
    Case("img-missing-file", "source", "set_aside", "missing image file", _rec("no_such_file.png")),
    Case("img-path-is-a-folder", "source", "set_aside", "missing image file", _rec("a_folder.png")),
    Case("img-path-with-nul", "source", "set_aside", "'image' holds a NUL", _rec("nul\x00byte.png")),
    # images used after conversion (animated GIF: its first frame)
    _conv_case("img-cmyk-jpeg", "cmyk.jpg", pixel=(255, 0, 0)),
    _conv_case("img-16bit-grey-png", "grey16.png", pixel=(128, 128, 128)),
    _conv_case("img-16bit-rgb-png", "rgb16.png", pixel=(255, 128, 0)),
    _conv_case("img-animated-gif", "animated.gif", pixel=(220, 20, 20), size=(24, 24)),
    _conv_case("img-rgba-png", "rgba.png", pixel=(255, 255, 255)),
    _conv_case("img-palette-transparent-gif", "palette_transparent.gif", pixel=(255, 255, 255)),
    _conv_case("img-exif-rotated-jpeg", "exif_rotated.jpg", size=(20, 40)),
    _conv_case("img-1bit-png", "bilevel.png", pixel=(255, 255, 255)),
    # text
    Case(
        "txt-non-utf8",
        "source",
        "set_aside",
        "not valid UTF-8",
        b'{"id": "txt-non-utf8", "image": "images/good_red.png", "instruction": "caf\xe9 au lait?"}',
    ),
    Case("txt-empty-instruction", "source", "set_aside", "empty 'instruction'", _rec("good_red.png", "   \n\t")),
    Case("txt-missing-instruction", "source", "set_aside", "'instruction'", _rec("good_red.png", None)),
    Case("txt-instruction-not-string", "source", "set_aside", "'instruction'", _rec("good_red.png", 42)),
    Case(
        "txt-instruction-lone-surrogate",
        "source",
        "set_aside",
        "surrogate",
        b'{"id": "txt-instruction-lone-surrogate", "image": "images/good_red.png", "instruction": "bad \\ud800"}',
    ),
    Case("txt-instruction-nul", "source", "set_aside", "NUL", _rec("good_red.png", "what\u0000is this?")),
    Case("txt-missing-image-field", "source", "set_aside", "'image'", _rec(None)),
    Case(
        "txt-image-not-string",
        "source",
        "set_aside",
        "'image'",
        {"image": ["images/good_red.png"], "instruction": "Describe."},
    ),
    Case("txt-bad-kind", "source", "set_aside", "bad 'kind'", _rec("good_red.png", kind="medium")),
    Case("txt-gold-not-string", "source", "set_aside", "'gold'", _rec("good_red.png", gold=["red"])),
    Case("txt-options-not-strings", "source", "set_aside", "'options'", _rec("good_red.png", options=[1, 2])),
    Case(
        "txt-malformed-json",
        "source",
        "set_aside",
        "malformed JSON",
        b'{"id": "txt-malformed-json", "image": "images/good_red.png", "instruction": ',
    ),
    Case(
        "txt-trailing-garbage",
        "source",
        "set_aside",
        "malformed JSON",
        b'{"image": "images/good_red.png", "instruction": "x"} trailing',
    ),
    Case("txt-json-array", "source", "set_aside", "not a JSON object", b'["images/good_red.png", "Describe."]'),
    Case("txt-json-string", "source", "set_aside", "not a JSON object", b'"images/good_red.png"'),
    Case("txt-json-null", "source", "set_aside", "not a JSON object", b"null"),
    Case(
        "txt-duplicate-id",
        "source",
        "set_aside",
        "duplicate id",
        {"id": "good-red", **_rec("good_red.png", "Again?")},
        record_id="good-red",
    ),
    # two bad records carrying the same id: both reported, the second under its line
    Case(
        "txt-same-id-bad-1",
        "source",
        "set_aside",
        "missing image file",
        {"id": "shared-bad-id", **_rec("gone_1.png")},
        record_id="shared-bad-id",
    ),
    Case(
        "txt-same-id-bad-2", "source", "set_aside", "missing image file", {"id": "shared-bad-id", **_rec("gone_2.png")}
    ),  # record_id: "shared-bad-id (prompts.jsonl:<line>)"
    # text used after conversion
    Case(
        "txt-crlf-line",
        "source",
        "converted",
        "",
        b'{"id": "txt-crlf-line", "image": "images/good_blue.png", "instruction": "Is it blue?"}\r',
    ),
]

# good records: these and every "converted" case must each become a prompt (nothing lost)
GOOD = [
    {"id": "good-bom-first-line", "image": "images/good_noise.png", "instruction": "What is in this picture?"},
    {
        "id": "good-red",
        "image": "images/good_red.png",
        "instruction": "What colour is the image?",
        "kind": "closed",
        "gold": "red",
    },
    {
        "id": "good-green",
        "image": "images/good_green.jpg",
        "instruction": "Describe the colours you see.",
        "kind": "open",
    },
    {"id": "good-blue", "image": "images/good_blue.png", "instruction": "Describe the image briefly."},
]


_DROP = object()  # a field left out of a record


def _vl(rid: str | None, n: int, **over) -> dict:
    rec = {
        "id": rid,
        "query": f"Question {n}: what is shown?",
        "response": [f"GOOD {n}", f"BAD {n}"],
        "human_ranking": [0, 1],
        "models": ["m1", "m2"],
        "judge": "human",
        "rationale": None,
        "query_source": "vlfeedback",
        "meta": "{}",
        "human_error_analysis": None,
        "ground_truth": None,
        "image_path": f"images/vlfeedback/{rid}.jpg",
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


VL_JSONL_CASES = [
    Case("vl-good", "vl-jsonl", "accepted", extra={"rec": _vl("vl-good", 0)}),
    Case(
        "vl-no-id", "vl-jsonl", "set_aside", "record has no id", extra={"rec": _vl(None, 1, image_path="images/x.jpg")}
    ),
    Case(
        "vl-query-not-string",
        "vl-jsonl",
        "set_aside",
        "query is not a string",
        extra={"rec": _vl("vl-query-not-string", 2, query=None)},
    ),
    Case(
        "vl-one-response",
        "vl-jsonl",
        "set_aside",
        "response is not a list of 2 strings",
        extra={"rec": _vl("vl-one-response", 3, response=["only one"])},
    ),
    Case(
        "vl-ranking-missing",
        "vl-jsonl",
        "set_aside",
        "human_ranking is not a list of integers",
        extra={"rec": _vl("vl-ranking-missing", 4, human_ranking=_DROP)},
    ),
    Case(
        "vl-ranking-no-preferred",
        "vl-jsonl",
        "set_aside",
        "does not mark one preferred",
        extra={"rec": _vl("vl-ranking-no-preferred", 5, human_ranking=[0, 0])},
    ),
    Case(
        "vl-no-image-path",
        "vl-jsonl",
        "set_aside",
        "record has no image_path",
        extra={"rec": _vl("vl-no-image-path", 6, image_path=_DROP)},
    ),
    Case(
        "vl-image-missing",
        "vl-jsonl",
        "set_aside",
        "missing image",
        extra={"rec": _vl("vl-image-missing", 7), "image": None},
    ),
    Case(
        "vl-image-truncated",
        "vl-jsonl",
        "set_aside",
        "corrupt image",
        extra={"rec": _vl("vl-image-truncated", 8), "image": "truncated.jpg"},
    ),
    Case("vl-malformed-line", "vl-jsonl", "set_aside", "malformed JSON line", extra={"raw": b'{"id": "x", "query": '}),
    Case("vl-line-not-object", "vl-jsonl", "set_aside", "malformed JSON line", extra={"raw": b"[1, 2]"}),
    Case(
        "vl-non-utf8-bytes",
        "vl-jsonl",
        "accepted",
        extra={
            "raw": b'{"id": "vl-non-utf8-bytes", "query": "caf\xe9?", "response": ["GOOD", "BAD"], '
            b'"human_ranking": [0, 1], "image_path": "images/vlfeedback/vl-non-utf8-bytes.jpg"}',
            "query": "caf\ufffd?",
        },
    ),  # read with U+FFFD replacement, as the official loader's open(errors=...)
    Case(
        "vl-same-id-bad-1",
        "vl-jsonl",
        "set_aside",
        "human_ranking",
        record_id="vl-same-bad",
        extra={"rec": _vl("vl-same-bad", 9, human_ranking=[1, 1])},
    ),
    Case(
        "vl-same-id-bad-2",
        "vl-jsonl",
        "set_aside",
        "query is not a string",
        record_id="vl-same-bad#2",
        extra={"rec": _vl("vl-same-bad", 10, query=7)},
    ),
]

VL_PARQUET_CASES = [
    Case("vlp-good", "vl-parquet", "accepted", extra={"rec": _vl("vlp-good", 20), "image": "good_green.jpg"}),
    Case(
        "vlp-no-image",
        "vl-parquet",
        "set_aside",
        "missing image",
        extra={"rec": _vl("vlp-no-image", 21), "image": None},
    ),
    Case(
        "vlp-image-truncated",
        "vl-parquet",
        "set_aside",
        "corrupt image",
        extra={"rec": _vl("vlp-image-truncated", 22), "image": "truncated.jpg"},
    ),
    Case(
        "vlp-image-bomb",
        "vl-parquet",
        "set_aside",
        "decompression bomb",
        extra={"rec": _vl("vlp-image-bomb", 23), "image": "bomb.jpg"},
    ),
    Case(
        "vlp-image-zero-bytes",
        "vl-parquet",
        "set_aside",
        "zero-byte",
        extra={"rec": _vl("vlp-image-zero-bytes", 24), "image": "zero.png"},
    ),
    Case(
        "vlp-response-not-list",
        "vl-parquet",
        "set_aside",
        "response is not a list of 2 strings",
        extra={"rec": _vl("vlp-response-not-list", 25, response=None), "image": "good_green.jpg"},
    ),
    Case(
        "vlp-no-id",
        "vl-parquet",
        "set_aside",
        "record has no id",
        extra={"rec": _vl(None, 26), "image": "good_green.jpg"},
    ),
]


def _mm(rid: str | None, n: int, **over) -> dict:
    rec = {
        "ID": rid,
        "Text": f"Question {n}?",
        "Image": f"images/{rid}.png",
        "Output1": f"GOOD {n}",
        "Output2": f"BAD {n}",
        "Better": "Output1",
        "Category": "vqa",
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


MM_CASES = [
    Case("mm-good", "mm", "accepted", extra={"rec": _mm("mm-good", 0)}),
    Case("mm-good-cmyk-image", "mm", "accepted", extra={"rec": _mm("mm-good-cmyk-image", 1), "image": "cmyk.jpg"}),
    Case("mm-not-an-object", "mm", "set_aside", "not an object with an ID", extra={"rec": "just a string"}),
    Case("mm-no-id", "mm", "set_aside", "not an object with an ID", extra={"rec": _mm(None, 3)}),
    Case(
        "mm-output2-missing",
        "mm",
        "set_aside",
        "must all be strings",
        extra={"rec": _mm("mm-output2-missing", 4, Output2=_DROP)},
    ),
    Case(
        "mm-text-not-string",
        "mm",
        "set_aside",
        "must all be strings",
        extra={"rec": _mm("mm-text-not-string", 5, Text=["a", "b"])},
    ),
    Case(
        "mm-better-invalid",
        "mm",
        "set_aside",
        "Better is 'Output3'",
        extra={"rec": _mm("mm-better-invalid", 6, Better="Output3")},
    ),
    Case(
        "mm-image-missing", "mm", "set_aside", "missing image", extra={"rec": _mm("mm-image-missing", 7), "image": None}
    ),
    Case(
        "mm-image-zero-bytes",
        "mm",
        "set_aside",
        "zero-byte",
        extra={"rec": _mm("mm-image-zero-bytes", 8), "image": "zero.png"},
    ),
    Case(
        "mm-image-not-an-image",
        "mm",
        "set_aside",
        "not a recognised image",
        extra={"rec": _mm("mm-image-not-an-image", 9), "image": "html_error.jpg"},
    ),
]


def _verdict(name: str, reason: str, text, choice: str | None = None) -> Case:
    return Case(name, "verdict", reason, reason, choice=choice, extra={"text": text})


VERDICT_CASES = [
    _verdict("out-no-verdict", "no_verdict", lambda: "The image shows a red square on a white background."),
    _verdict("out-empty", "empty", lambda: "   \n"),
    _verdict("out-none", "empty", lambda: None),
    _verdict("out-tie", "no_verdict", lambda: "Both are equally good. [[C]]"),
    _verdict("out-conflicting-same-line", "conflicting", lambda: "Final verdict: [[A]] and [[B]]"),
    _verdict(
        "out-conflicting-both-better",
        "conflicting",
        lambda: (
            "Response A is better. Response B is better at style but Response A is better overall and "
            "Response B is better."
        ),
    ),
    _verdict(
        "out-changed-mind-last-wins", "ok", lambda: "[[A]]\nOn reflection the first misses the dog.\n[[B]]", choice="B"
    ),
    _verdict("out-megabytes-with-marker", "too_long", lambda: "The answer is long. " * 150_000 + "[[A]]"),
    _verdict("out-megabytes-of-markers", "too_long", lambda: "[[A]] [[B]] " * 300_000),
    _verdict("out-binary-garbage", "no_verdict", lambda: bytes(range(256)).decode("latin-1") * 100),
    # just under the length limit, made of near-markers: parsed, fast, no verdict
    _verdict("out-near-limit-near-markers", "no_verdict", lambda: "Response A is really quite " * 3_500),
]

CASES = SOURCE_CASES + VL_JSONL_CASES + VL_PARQUET_CASES + MM_CASES + VERDICT_CASES
assert len({c.name for c in CASES}) == len(CASES)


# --- building the files ---------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    manifest: Path
    vl_jsonl: Path
    vl_parquet: Path
    mm: Path
    record_ids: dict[str, str]  # case name -> the id it is reported under
    good_ids: list[str]  # the manifest's records that must become prompts (GOOD + converted)

    def record_id(self, case: Case) -> str:
        return self.record_ids[case.name]


def build(root: Path) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    images = root / "images"
    images.mkdir(exist_ok=True)
    blobs = {name: make() for name, make in IMAGES.items()}
    for name, data in blobs.items():
        (images / name).write_bytes(data)
    (images / "a_folder.png").mkdir(exist_ok=True)
    record_ids: dict[str, str] = {}

    # the source manifest: a BOM'd good record first, then bad and good records interleaved
    lines: list[bytes] = []
    good = iter(GOOD)
    for i, case in enumerate([None, *SOURCE_CASES]):
        if case is None or i % 10 == 0:
            rec = next(good, None)
            if rec is not None:
                lines.append(json.dumps(rec).encode())
            if case is None:
                continue
        line = (
            case.line
            if isinstance(case.line, bytes)
            else json.dumps({"id": case.name, **case.line} if "id" not in case.line else case.line).encode()
        )
        lines.append(line)
        record_ids[case.name] = case.record_id or (case.name if _has_id(line) else f"{MANIFEST}:{len(lines)}")
    lines.extend(json.dumps(rec).encode() for rec in good)
    record_ids["txt-same-id-bad-2"] = f"shared-bad-id ({MANIFEST}:{_line_of(lines, b'gone_2.png')})"
    manifest = root / MANIFEST
    manifest.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # a UTF-8 BOM, as Windows tools write

    # VL-RewardBench, GitHub layout: data.jsonl + images/<source>/<file>
    vl_dir = root / "vl"
    (vl_dir / "images" / "vlfeedback").mkdir(parents=True, exist_ok=True)
    vl_lines = []
    for case in VL_JSONL_CASES:
        if "raw" in case.extra:
            vl_lines.append(case.extra["raw"])
            rid = f"data.jsonl:{len(vl_lines)}" if case.expect == "set_aside" else case.name
        else:
            rec = case.extra["rec"]
            vl_lines.append(json.dumps(rec).encode())
            rid = case.record_id or rec.get("id") or f"data.jsonl:{len(vl_lines)}"
        record_ids[case.name] = rid
    for case in VL_JSONL_CASES:
        rec = case.extra.get("rec") or {"image_path": f"images/vlfeedback/{case.name}.jpg"}
        image = case.extra.get("image", "good_green.jpg")
        if image and isinstance(rec.get("image_path"), str):
            (vl_dir / rec["image_path"]).parent.mkdir(parents=True, exist_ok=True)
            (vl_dir / rec["image_path"]).write_bytes(blobs[image])
    vl_jsonl = vl_dir / "data.jsonl"
    vl_jsonl.write_bytes(b"\n".join(vl_lines) + b"\n")

    # VL-RewardBench, HF layout: a parquet file with the image bytes inline
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for n, case in enumerate(VL_PARQUET_CASES):
        rec = {k: v for k, v in case.extra["rec"].items() if k != "image_path"}
        image = case.extra.get("image")
        rec["image"] = {"bytes": blobs[image] if image else None, "path": None}
        rows.append(rec)
        record_ids[case.name] = rec.get("id") or f"test.parquet[{n}]"
    vl_parquet = root / "vlp" / "test.parquet"
    vl_parquet.parent.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), vl_parquet)

    # Multimodal RewardBench: all_data.json + images
    mm_dir = root / "mm"
    (mm_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for n, case in enumerate(MM_CASES):
        rec = case.extra["rec"]
        records.append(rec)
        record_ids[case.name] = rec["ID"] if isinstance(rec, dict) and rec.get("ID") else f"all_data.json[{n}]"
        image = case.extra.get("image", "good_red.png")
        if image and isinstance(rec, dict) and isinstance(rec.get("Image"), str):
            (mm_dir / rec["Image"]).write_bytes(blobs[image])
    mm = mm_dir / "all_data.json"
    mm.write_text(json.dumps(records))

    good_ids = [r["id"] for r in GOOD] + [c.name for c in SOURCE_CASES if c.expect == "converted"]
    return Corpus(root, manifest, vl_jsonl, vl_parquet, mm, record_ids, good_ids)


def _has_id(line: bytes) -> bool:
    try:
        rec = json.loads(line.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(rec, dict) and rec.get("id") is not None


def _line_of(lines: list[bytes], needle: bytes) -> int:
    return next(i for i, line in enumerate(lines, 1) if needle in line)
