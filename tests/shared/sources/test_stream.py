"""Streaming, shuffled prompt sources: a seeded permutation of record numbers, only drawn records read.

The "only what is drawn is read" tests build sources whose undrawn records are all broken
(malformed lines, missing or corrupt images): a draw that touched any of them would set it aside.
"""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from selfjudge.shared.config import Settings, StoreConfig
from selfjudge.shared.sources.files import FolderSource, JsonlSource
from selfjudge.shared.sources.stream import Files, draw, draw_indices, permute
from selfjudge.shared.sources.tables import TableSource


def png(colour, size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64, 100, 1000, 4097])
def test_the_permutation_is_a_bijection(count):
    images = [permute(i, count, "k") for i in range(count)]
    assert sorted(images) == list(range(count))
    if count > 10:
        assert images != list(range(count)) and images != [permute(i, count, "other") for i in range(count)]


def test_draws_walk_the_pool_without_repeats_and_repeat_after_a_restart():
    count, n = 50, 12
    draws = [draw_indices(count, n, seed=3, iteration=k) for k in range(1, 6)]
    first_pass = [i for d in draws for i in d][:count]
    assert sorted(first_pass) == list(range(count))  # 50 records before any comes again
    assert all(len(d) == n and len(set(d)) == n for d in draws[:4])
    assert draw_indices(count, n, seed=3, iteration=2) == draws[1]  # a restart draws the same
    assert draw_indices(count, n, seed=4, iteration=2) != draws[1]
    assert sorted(draw_indices(5, 12, seed=0, iteration=1)) == list(range(5))  # n > pool: each once
    assert draw_indices(0, 5, 0, 1) == []


def _manifest(folder: Path, count: int, drawn: set[int]) -> Path:
    """Drawn lines are good; every other line is broken (three kinds, in turn)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        if i in drawn:
            (folder / "img" / f"{i}.png").write_bytes(png((i % 256, 40, 90)))
            lines.append(json.dumps({"id": f"r{i}", "image": f"img/{i}.png", "instruction": f"What is {i}?"}))
        else:
            lines.append(
                [
                    "{not json",
                    json.dumps({"id": f"r{i}", "image": "img/missing.png", "instruction": "x"}),
                    json.dumps({"id": f"r{i}", "image": "img/corrupt.bin", "instruction": "x"}),
                ][i % 3]
            )
    (folder / "img" / "corrupt.bin").write_bytes(b"\x89PNG broken")
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_draw_reads_only_the_drawn_lines_and_keeps_its_offsets(tmp_path):
    count, n, seed = 300, 10, 7
    drawn = set(draw_indices(count, n, seed, 2))
    path = _manifest(tmp_path / "data", count, drawn)
    cache = tmp_path / "cache"
    src = JsonlSource(path, cache_dir=cache)
    items = list(draw(src, n, seed, 2))
    assert src.rejected == []
    assert sorted(int(i.prompt_id.removeprefix("jsonl:r")) for i in items) == sorted(drawn)
    assert [i.prompt_id for i in items] == [f"jsonl:r{j}" for j in draw_indices(count, n, seed, 2)]  # draw order
    offsets = list(cache.glob("*.offsets"))
    assert len(offsets) == 1
    stamp = offsets[0].stat().st_mtime_ns
    again = JsonlSource(path, cache_dir=cache)  # a restart: same prompts, the offsets reused
    assert [i.prompt_id for i in draw(again, n, seed, 2)] == [i.prompt_id for i in items]
    assert offsets[0].stat().st_mtime_ns == stamp and len(list(cache.glob("*.offsets"))) == 1
    other = list(draw(again, n, seed, 1))  # iteration 1 draws other (broken) lines: set aside
    assert len(other) + len(again.rejected) == n and {r for r, _ in again.rejected}.isdisjoint(
        {i.prompt_id.removeprefix("jsonl:") for i in items}
    )


def test_a_manifest_without_a_final_newline_and_with_crlf(tmp_path):
    (tmp_path / "a.png").write_bytes(png("red"))
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"image": "a.png", "instruction": "one"}\r\n\n{"image": "a.png", "instruction": "two"}')
    src = JsonlSource(path, cache_dir=tmp_path / "c")
    assert src.count() == 3
    assert [i.instruction for i in src.items()] == ["one", "two"] and src.rejected == []
    assert [i.prompt_id for i in src.read([2])] == ["jsonl:m.jsonl:3"]


def test_folder_with_an_instructions_file(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        (folder / ("sub" if i % 2 else ".") / f"{i}.png").write_bytes(png((40 * i, 0, 0)))
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "instructions.txt").write_text("What is in the picture?\n\nWhat colour dominates?\n")
    src = FolderSource(folder, cache_dir=tmp_path / "c")
    assert len(src) == 7 and src.count() == 14  # instructions.txt is not an image
    items = list(src.items())
    assert {i.instruction for i in items} == {"What is in the picture?", "What colour dominates?"}
    assert len(items) == 12 and [r for r, _ in src.rejected] == ["broken.png"]
    first = [i.prompt_id for i in draw(src, 5, 1, 1)]
    assert first == [i.prompt_id for i in draw(FolderSource(folder, cache_dir=tmp_path / "c"), 5, 1, 1)]
    assert len(set(first)) == len(first)


def _hf_rows(n: int, bad: set[int]) -> list[dict]:
    rows = []
    for i in range(n):
        image = (
            {"bytes": png((i, 2 * i % 256, 30)), "path": None} if i not in bad else {"bytes": b"corrupt", "path": None}
        )
        rows.append({"id": f"q{i}", "image": image, "question": f"How many things in {i}?", "answer": str(i)})
    return rows


def test_hf_datasets_folder_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    n, seed = 40, 5
    drawn = set(draw_indices(n, 6, seed, 1))
    rows = _hf_rows(n, bad={i for i in range(n) if i not in drawn})  # only drawn rows decode
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(tmp_path / "saved", max_shard_size="2KB")
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1
    (tmp_path / "pq").mkdir()
    ds.to_parquet(tmp_path / "pq" / "train-00000-of-00001.parquet", batch_size=8)
    for folder in ("saved", "pq"):
        src = TableSource(tmp_path / folder, cache_dir=tmp_path / "c")
        assert src.count() == n
        items = list(draw(src, 6, seed, 1))
        assert src.rejected == [], folder
        assert sorted(int(i.prompt_id.removeprefix("hf:q")) for i in items) == sorted(drawn)
        assert all(i.gold == i.prompt_id.removeprefix("hf:q") and i.source == "hf_datasets" for i in items)
        assert items[0].instruction.startswith("How many things")
    undrawn = TableSource(tmp_path / "saved", cache_dir=tmp_path / "c")
    first_undrawn = min(set(range(n)) - drawn)
    assert list(undrawn.read([first_undrawn])) == []  # its corrupt image: set aside, named
    assert undrawn.rejected == [(f"q{first_undrawn}", f"not a recognised image 'q{first_undrawn}'")]
    datasets.DatasetDict({"train": ds.select(range(10)), "test": ds.select(range(10, 15))}).save_to_disk(
        tmp_path / "dict"
    )
    assert TableSource(tmp_path / "dict", cache_dir=tmp_path / "c").count() == 10  # the train split


def test_make_source_and_draw_prompts_repeat_after_a_restart(tmp_path):
    from selfjudge.shared.loop import _draw_prompts, make_source

    drawn = set(range(30))
    path = _manifest(tmp_path / "data", 30, drawn)
    settings = Settings.model_validate(
        {"run": {"work_dir": str(tmp_path / "work"), "seed": 11}, "source": {"kind": "jsonl", "path": str(path)}}
    )
    ctx = SimpleNamespace(settings=settings)
    assert isinstance(make_source(ctx), JsonlSource)
    one, rejected = _draw_prompts(ctx, 8, 1)
    two, _ = _draw_prompts(ctx, 8, 2)
    assert rejected == [] and len(one) == len(two) == 8
    assert {i.prompt_id for i in one}.isdisjoint({i.prompt_id for i in two})
    assert [i.prompt_id for i in _draw_prompts(ctx, 8, 1)[0]] == [i.prompt_id for i in one]
    assert list((tmp_path / "work" / "cache" / "sources").glob("*.offsets"))


def _upload(client, bucket: str, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.fput_object(bucket, f"{prefix}/{path.relative_to(root).as_posix()}", str(path))


def test_sources_on_s3_draw_what_the_local_copies_draw(tmp_path, s3_server):
    datasets = pytest.importorskip("datasets")
    from minio import Minio

    cfg = StoreConfig(**{k: v for k, v in s3_server.items() if k in StoreConfig.model_fields})
    client = Minio(cfg.endpoint, access_key=cfg.access_key, secret_key=cfg.secret_key, secure=False)
    bucket = "sources-test"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    local = tmp_path / "local"
    _manifest(local / "jsonl", 40, set(range(0, 40, 2)))
    rows = _hf_rows(30, bad={3})
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    ds.save_to_disk(local / "saved", max_shard_size="2KB")
    (local / "pq").mkdir()
    ds.to_parquet(local / "pq" / "data.parquet", batch_size=8)
    (local / "folder").mkdir()
    for i in range(5):
        (local / "folder" / f"{i}.png").write_bytes(png((i * 50, 9, 9)))
    _upload(client, bucket, local, "data")
    fs = Files(cfg)
    pairs = [
        (
            JsonlSource(local / "jsonl" / "prompts.jsonl", cache_dir=tmp_path / "c1"),
            JsonlSource(f"s3://{bucket}/data/jsonl/prompts.jsonl", files=fs, cache_dir=tmp_path / "c2"),
        ),
        (
            TableSource(local / "saved", cache_dir=tmp_path / "c1"),
            TableSource(f"s3://{bucket}/data/saved", files=fs, cache_dir=tmp_path / "c2"),
        ),
        (
            TableSource(local / "pq", cache_dir=tmp_path / "c1"),
            TableSource(f"s3://{bucket}/data/pq", files=fs, cache_dir=tmp_path / "c2"),
        ),
        (
            FolderSource(local / "folder", cache_dir=tmp_path / "c1"),
            FolderSource(f"s3://{bucket}/data/folder", files=fs, cache_dir=tmp_path / "c2"),
        ),
    ]
    for here, there in pairs:
        assert here.count() == there.count() > 0
        for k in (1, 2):
            a, b = list(draw(here, 7, 2, k)), list(draw(there, 7, 2, k))
            assert [i.prompt_id for i in a] == [i.prompt_id for i in b], type(here).__name__
            assert [i.image.tobytes() for i in a] == [i.image.tobytes() for i in b]
            assert [r for r, _ in here.rejected] == [r for r, _ in there.rejected]
    hf_all = pairs[1][1]
    list(hf_all.read(range(30)))
    assert [r for r, _ in hf_all.rejected] == ["q3"]  # the corrupt image, named
