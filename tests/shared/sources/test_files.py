import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from selfjudge.shared.sources.files import FolderSource, JsonlSource, load_image


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG claiming huge dimensions, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def make_images(d: Path) -> None:
    Image.new("RGB", (32, 24), (200, 10, 10)).save(d / "good.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(d / "deep16.png")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(d / "alpha.png")
    Image.new("P", (8, 8), 3).save(d / "palette.gif")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8))
    noise.save(d / "full.png")
    data = (d / "full.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "corrupt.png").write_bytes(b"this is not an image at all" * 10)
    (d / "zero.png").write_bytes(b"")
    png_header_only(d / "bomb.png", 40_000, 40_000)  # over twice PIL's limit: DecompressionBombError
    png_header_only(d / "bomb_warn.png", 10_000, 10_000)  # over the limit: DecompressionBombWarning


def test_load_image_conversions(tmp_path):
    make_images(tmp_path)
    cmyk = load_image(tmp_path / "cmyk.jpg")
    assert cmyk.mode == "RGB" and cmyk.getpixel((8, 8))[0] > 200 and cmyk.getpixel((8, 8))[1] < 60
    deep = load_image(tmp_path / "deep16.png")
    assert deep.mode == "RGB" and 120 <= deep.getpixel((3, 3))[0] <= 135  # scaled, not clipped to 255
    alpha = load_image(tmp_path / "alpha.png")
    assert alpha.getpixel((0, 0)) == (0, 0, 255) and alpha.getpixel((5, 5)) == (255, 255, 255)
    assert load_image(tmp_path / "palette.gif").mode == "RGB"
    for name, word in [
        ("truncated.png", "corrupt"),
        ("corrupt.png", "not a recognised image"),
        ("zero.png", "zero-byte"),
        ("bomb.png", "decompression bomb"),
        ("bomb_warn.png", "decompression bomb"),
        ("nope.png", "missing"),
    ]:
        reason = load_image(tmp_path / name)
        assert isinstance(reason, str) and word in reason and name in reason, (name, reason)


def write_jsonl(path: Path, lines: list) -> None:
    with path.open("wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else json.dumps(line).encode())
            f.write(b"\n")


def test_jsonl_source_accepts_good_and_rejects_bad(tmp_path):
    make_images(tmp_path)
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "prompts.jsonl"
    write_jsonl(
        manifest,
        [
            {"id": "ok", "image": "../good.png", "instruction": "What colour is it?", "kind": "closed", "gold": "red"},
            {"id": "cmyk", "image": str(tmp_path / "cmyk.jpg"), "instruction": "Describe the image."},
            {"id": "deep", "image": "../deep16.png", "instruction": "Describe.", "options": ["x", "y"]},
            {"id": "trunc", "image": "../truncated.png", "instruction": "Describe."},
            {"id": "corrupt", "image": "../corrupt.png", "instruction": "Describe."},
            {"id": "zero", "image": "../zero.png", "instruction": "Describe."},
            {"id": "missing", "image": "../missing.png", "instruction": "Describe."},
            {"id": "bomb", "image": "../bomb.png", "instruction": "Describe."},
            {"id": "warnbomb", "image": "../bomb_warn.png", "instruction": "Describe."},
            {"id": "empty", "image": "../good.png", "instruction": "   "},
            {"id": "noinstr", "image": "../good.png"},
            {"id": "badkind", "image": "../good.png", "instruction": "Describe.", "kind": "medium"},
            {"id": "ok", "image": "../good.png", "instruction": "Again."},
            b'{"id": "latin", "image": "../good.png", "instruction": "caf\xe9"}',
            b'{"id": "broken", "image": ',
            b"[1, 2, 3]",
            b"",
            {"image": "../good.png", "instruction": "No id here."},
        ],
    )
    src = JsonlSource(manifest)
    items = list(src.items())
    assert [i.prompt_id for i in items] == ["jsonl:ok", "jsonl:cmyk", "jsonl:deep", "jsonl:prompts.jsonl:18"]
    assert all(i.image.mode == "RGB" for i in items)
    assert items[0].kind == "closed" and items[0].gold == "red" and items[0].question_type == "user"
    assert items[1].kind == "auto" and items[1].gold is None and items[2].options == ["x", "y"]
    assert items[0].source == "jsonl"
    reasons = dict(src.rejected)
    assert list(reasons) == [
        "trunc",
        "corrupt",
        "zero",
        "missing",
        "bomb",
        "warnbomb",
        "empty",
        "noinstr",
        "badkind",
        "ok",
        "prompts.jsonl:14",
        "prompts.jsonl:15",
        "prompts.jsonl:16",
    ]
    expected = {
        "trunc": "corrupt image",
        "corrupt": "not a recognised image",
        "zero": "zero-byte",
        "missing": "missing image",
        "bomb": "decompression bomb",
        "warnbomb": "decompression bomb",
        "empty": "instruction",
        "noinstr": "instruction",
        "badkind": "kind",
        "ok": "duplicate id",
        "prompts.jsonl:14": "UTF-8",
        "prompts.jsonl:15": "malformed JSON",
        "prompts.jsonl:16": "not a JSON object",
    }
    for record_id, word in expected.items():
        assert word in reasons[record_id], (record_id, reasons[record_id])
    # a second pass starts a fresh rejected list
    assert len(list(src.items())) == 4 and len(src.rejected) == len(expected)
    # shards count lines: lines 2..3 (0-based offset 1)
    shard = list(src.items(n=2, offset=1))
    assert [i.prompt_id for i in shard] == ["jsonl:cmyk", "jsonl:deep"] and src.rejected == []
    assert len(src) == 18


def test_jsonl_missing_manifest(tmp_path):
    src = JsonlSource(tmp_path / "nope.jsonl")
    assert list(src.items()) == [] and "not found" in src.rejected[0][1] and len(src) == 0


def test_folder_source(tmp_path):
    (tmp_path / "imgs" / "nested").mkdir(parents=True)
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "nested" / "b.png").write_bytes((tmp_path / "imgs" / "good.png").read_bytes())
    (tmp_path / "imgs" / "notes.txt").write_text("hello")
    (tmp_path / "imgs" / ".DS_Store").write_bytes(b"\0\1")
    src = FolderSource(tmp_path / "imgs", instructions=["Describe the image.", "What is shown?", " "])
    items = list(src)
    names = sorted({i.meta["path"].split("imgs/")[1] for i in items})
    assert names == ["alpha.png", "cmyk.jpg", "deep16.png", "full.png", "good.png", "nested/b.png", "palette.gif"]
    assert len(items) == 2 * len(names)
    assert {i.instruction for i in items} == {"Describe the image.", "What is shown?"}
    assert "folder:nested/b.png:1" in {i.prompt_id for i in items}
    assert all(i.image.mode == "RGB" and i.kind == "auto" and i.gold is None for i in items)
    assert sorted(r for r, _ in src.rejected) == [
        "bomb.png",
        "bomb_warn.png",
        "corrupt.png",
        "notes.txt",
        "truncated.png",
        "zero.png",
    ]
    assert list(FolderSource(tmp_path / "imgs").items(n=1))[0].instruction == "Describe the image."
    missing = FolderSource(tmp_path / "none")
    assert list(missing) == [] and missing.rejected


def test_folder_file_name_that_is_not_utf8_is_kept_under_an_escaped_id(tmp_path):
    import os

    from PIL import Image

    from selfjudge.shared.sources.files import FolderSource

    Image.new("RGB", (16, 16), "red").save(tmp_path / "ok.png")
    os.rename(tmp_path / "ok.png", os.path.join(os.fsencode(tmp_path), b"caf\xe9.png"))  # Latin-1 bytes
    items = list(FolderSource(tmp_path).items())
    assert len(items) == 1
    item = items[0]
    item.prompt_id.encode("utf-8")  # storable: no lone surrogate left
    item.meta["path"].encode("utf-8")
    assert item.prompt_id == "folder:caf\\udce9.png:0" and item.image.size == (16, 16)
