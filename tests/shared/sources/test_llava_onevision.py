"""LLaVA-OneVision-Data parquet layout: a parquet written here in the hub's schema."""

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from selfjudge.shared.sources.llava_onevision import LlavaOneVisionSource, first_turns, prompt_key

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("data_source", pa.string()),
    ]
)


def png(colour, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def row(i, colour, question, answer="A red square.", source="ai2d(gpt4v)", image=True, rid=None):
    return {
        "id": rid or f"{source}-{i}",
        "data_source": source,
        "image": {"bytes": png(colour), "path": f"{i}.png"} if image else None,
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
            {"from": "human", "value": "And then?"},
            {"from": "gpt", "value": "Nothing."},
        ],
    }


@pytest.fixture
def pool(tmp_path):
    rows = [
        row(0, "red", "Describe the image."),
        row(1, "blue", "Which colour is it?\nA. red\nB. blue\nAnswer with the option's letter.", "B"),
        row(2, "green", "Describe the image.", image=False),  # text-only row
        row(3, "red", "describe the image"),  # duplicate prompt
        row(4, "red", "How many objects?", "1"),  # same image, new question
        dict(row(5, "red", "x"), image={"bytes": b"not a png", "path": "5.png"}),  # corrupt image
        dict(row(6, "red", "x"), conversations=[{"from": "gpt", "value": "hi"}]),  # no human turn
        row(7, "white", "What is it?", rid="ai2d(gpt4v)-0"),  # duplicate id
    ]
    (tmp_path / "ai2d").mkdir()
    pq.write_table(
        pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path / "ai2d" / "train-00000-of-00001.parquet", row_group_size=3
    )
    (tmp_path / "chartqa").mkdir()
    pq.write_table(
        pa.Table.from_pylist(
            [row(i, (i, 0, 0), f"What is value {i}?", str(i), source="chartqa") for i in range(4)], schema=SCHEMA
        ),
        tmp_path / "chartqa" / "train-00000-of-00001.parquet",
    )
    return tmp_path


def test_reads_the_hub_layout(pool):
    src = LlavaOneVisionSource(pool)
    assert len(src) == 12 and [p.parent.name for p in src.files()] == ["ai2d", "chartqa"]
    items = list(src.items(8))
    assert [i.prompt_id for i in items] == [
        "llava:ai2d(gpt4v)/ai2d(gpt4v)-0",
        "llava:ai2d(gpt4v)/ai2d(gpt4v)-1",
        "llava:ai2d(gpt4v)/ai2d(gpt4v)-4",
    ]
    first = items[0]
    assert first.instruction == "Describe the image." and first.gold == "A red square."
    assert first.kind == "auto" and first.source == "llava_onevision" and first.question_type == "ai2d(gpt4v)"
    assert first.image.size == (24, 16) and first.image.getpixel((0, 0)) == (255, 0, 0)
    assert first.meta["data_source"] == "ai2d(gpt4v)" and first.meta["image_path"] == "0.png"
    reasons = dict(src.rejected)
    assert reasons["ai2d(gpt4v)/ai2d(gpt4v)-2"] == "no image (text-only row)"
    assert reasons["ai2d(gpt4v)/ai2d(gpt4v)-3"] == "duplicate: same image and instruction as ai2d(gpt4v)/ai2d(gpt4v)-0"
    assert reasons["ai2d(gpt4v)/ai2d(gpt4v)-5"].startswith("not a recognised image")
    assert reasons["ai2d(gpt4v)/ai2d(gpt4v)-6"] == "no human turn"
    assert reasons["ai2d(gpt4v)/ai2d(gpt4v)-0"] == "duplicate: duplicate id"
    assert len(src.rejected) == 5


def test_offsets_subsets_and_wrap_around(pool):
    src = LlavaOneVisionSource(pool, subsets=["chartqa"])
    assert len(src) == 4
    assert [i.gold for i in src.items(2, offset=1)] == ["1", "2"]
    assert [i.gold for i in src.items(3, offset=3)] == ["3", "0", "1"]  # walks on, wrapping
    assert [i.gold for i in src.items(10)] == ["0", "1", "2", "3"]  # never a row twice
    single = LlavaOneVisionSource(pool / "chartqa" / "train-00000-of-00001.parquet")
    assert len(single) == 4
    glob_src = LlavaOneVisionSource(str(pool / "*" / "*.parquet"))
    assert len(glob_src) == 12


def test_missing_path_is_a_rejection(tmp_path):
    src = LlavaOneVisionSource(tmp_path / "nothing")
    assert list(src.items(3)) == [] and src.rejected == [(str(tmp_path / "nothing"), "no parquet or arrow file found")]


def test_turns_and_keys():
    assert first_turns([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": " 3 "}]) == (
        "What?",
        "3",
    )
    assert first_turns([{"from": "gpt", "value": "x"}]) == (None, None)
    assert first_turns(None) == (None, None)
    assert prompt_key(b"img", "<image>\nDescribe the image.") == prompt_key(b"img", "describe  the image")
    assert prompt_key(b"img", "Describe the image.") != prompt_key(b"img2", "Describe the image.")


def test_make_source_wires_the_kind(pool):
    from types import SimpleNamespace

    from selfjudge.shared.config import Settings
    from selfjudge.shared.loop import _draw_prompts, make_source

    settings = Settings.model_validate(
        {
            "source": {
                "kind": "llava_onevision",
                "path": str(pool),
                "llava_subsets": ["chartqa"],
                "cache_dir": str(pool / ".c"),
            }
        }
    )
    ctx = SimpleNamespace(settings=settings)
    assert isinstance(make_source(ctx), LlavaOneVisionSource)
    first, rejected = _draw_prompts(ctx, 3, 1)
    second, _ = _draw_prompts(ctx, 3, 2)  # iteration 2 takes the one left, then a new pass
    assert rejected == [] and len(first) == len(second) == 3
    assert {i.gold for i in first} | {second[0].gold} == {"0", "1", "2", "3"}  # shuffled, no repeat in a pass
    assert [i.gold for i in _draw_prompts(ctx, 3, 2)[0]] == [i.gold for i in second]  # the same after a restart
