"""Loaders on files generated in the published schemas: local and S3, bad records excluded with reasons."""

import json

import pytest

from selfjudge.services.evaluator.benchmarks import iter_benchmark, load_benchmark, mm_category, vl_source_from_id


def by_id(items):
    return {i.item_id: i for i in items}


def test_vl_parquet_categories_from_id_prefixes(tmp_path, gen):
    records = gen.vl_records(preferred_second={"RLAIF-V-14"})
    path = gen.write_vl_parquet(
        tmp_path / "data" / "test-00000-of-00001.parquet",
        records,
        image_override={"mathverse_2028": gen.image_bytes(1)[:60]},
    )  # truncated JPEG
    items, excluded = load_benchmark("vl-rewardbench", str(path))
    got = by_id(items)
    assert set(got) == set(gen.VL_IDS) - {"mathverse_2028"}
    for rid, item in got.items():
        assert (item.source, item.category) == gen.VL_IDS[rid]
    assert got["RLAIF-V-14"].better == 1 and "GOOD" in got["RLAIF-V-14"].responses[1]
    assert got["RLHF-V-Dataset-52"].better == 0
    assert got["hallucination_pair-3921"].query.startswith("<image>\n")
    assert [(e.record_id, e.reason.split(" ")[0]) for e in excluded] == [("mathverse_2028", "corrupt")]
    # the HF folder layout: <folder>/data/*.parquet
    assert len(load_benchmark("vl-rewardbench", str(tmp_path))[0]) == len(items)


def test_vl_jsonl_with_image_folder_missing_corrupt_and_bad_records(tmp_path, gen):
    records = gen.vl_records()
    records[0]["human_ranking"] = [0, 0]  # no single preferred response
    path = gen.write_vl_jsonl(tmp_path / "data", records, skip_images={"RLAIF-V-14"}, corrupt={"mathverse_2028"})
    with open(path, "a") as f:
        f.write("{not json\n")
    items, excluded = load_benchmark("vl-rewardbench", str(path))
    got = by_id(items)
    assert set(got) == set(gen.VL_IDS) - {"LRVInstruction-000000007746", "RLAIF-V-14", "mathverse_2028"}
    for rid, item in got.items():  # the source is the image folder: images/<source>/...
        assert (item.source, item.category) == gen.VL_IDS[rid]
    reasons = {e.record_id: e.reason for e in excluded}
    assert reasons["LRVInstruction-000000007746"].startswith("human_ranking [0, 0]")
    assert (
        reasons["RLAIF-V-14"].startswith("missing image") and "images/rlaif-v/RLAIF-V-14.jpg" in reasons["RLAIF-V-14"]
    )
    assert reasons["mathverse_2028"].startswith("corrupt image")
    assert reasons["data.jsonl:8"].startswith("malformed JSON line")
    # the folder holding data.jsonl works too, and --images can point elsewhere
    assert len(load_benchmark("vl-rewardbench", str(tmp_path))[0]) == len(items)
    assert len(load_benchmark("vl-rewardbench", str(path), images=str(tmp_path / "nowhere"))[0]) == 0


def test_vl_source_mapping_follows_the_official_id_rules():
    assert vl_source_from_id("RLAIF-V-1158") == "rlaif-v"
    assert vl_source_from_id("RLHF-V-Dataset-9") == "rlhf-v"
    assert vl_source_from_id("mathverse_2028") == "reasoning_tasks"
    assert vl_source_from_id("mmmu_pro_test_Computer_Science_334") == "reasoning_tasks"
    assert vl_source_from_id("wildvision-battle-3592") == "wildvision-battle"
    assert vl_source_from_id("hallucination_pair-401") == "povid"
    assert vl_source_from_id("LRVInstruction-000000007746") == "vlfeedback"
    assert vl_source_from_id("SVIT-1234") == "vlfeedback"


def test_mm_all_data_json_categories_better_and_bad_records(tmp_path, gen):
    records = gen.mm_records(output2_better={"knowledge", "mmmu-s_101"})
    records.append({**records[0], "ID": "nocaps_99", "Better": "Output3"})
    path = gen.write_mm(tmp_path / "data", records, skip_images={"hateful_memes_42"}, corrupt={"RealworldQA_4"})
    items, excluded = load_benchmark("mm-rewardbench", str(path))
    got = by_id(items)
    expected = {rid: cat for rid, _, cat in gen.MM_RECORDS}
    assert set(got) == set(expected) - {"hateful_memes_42", "RealworldQA_4"}
    for rid, item in got.items():
        assert item.category == expected[rid]
    assert got["mmmu-s_101"].better == 1 and got["nocaps_13062"].better == 0
    assert got["mmmu-s_101"].responses[1].startswith("GOOD")  # Output1, Output2 in the file's order
    reasons = {e.record_id: e.reason for e in excluded}
    assert reasons["hateful_memes_42"].startswith("missing image")
    assert reasons["RealworldQA_4"].startswith("not a recognised image")
    assert reasons["nocaps_99"].startswith("Better is 'Output3'")
    assert len(load_benchmark("mm-rewardbench", str(tmp_path))[0]) == len(items)  # data/all_data.json


def test_mm_category_split_as_get_accuracy():
    assert mm_category("pairs_occupation_3", "safety") == "safety/bias"
    assert mm_category("PAIRS_x", "safety") == "safety/bias"
    assert mm_category("hateful_memes_1", "safety") == "safety/toxicity"
    assert mm_category("mathvista_1", "reasoning") == "reasoning/math"
    assert mm_category("EMMA-Coding_1", "reasoning") == "reasoning/coding"
    assert mm_category("nocaps_1", "open_generation/correctness_task") == "open_generation/correctness_task"


def test_duplicates_and_limit(tmp_path, gen):
    records = gen.vl_records()
    again = dict(records[1])
    other = {**records[2], "query": "a different question"}
    path = gen.write_vl_parquet(tmp_path / "d.parquet", records + [again, other])
    items, excluded = load_benchmark("vl-rewardbench", str(path))
    assert [(e.record_id, e.reason) for e in excluded] == [(records[1]["id"], "duplicate of an earlier record")]
    assert f"{records[2]['id']}#2" in by_id(items)
    assert len(list(iter_benchmark("vl-rewardbench", str(path), limit=3))) == 3


def test_missing_file_raises_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no all_data.json"):
        load_benchmark("mm-rewardbench", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_benchmark("vl-rewardbench", str(tmp_path / "x.parquet"))


def test_s3_locations(tmp_path, gen, s3_server):
    """The jsonl + images, the parquet and all_data.json read from s3://bucket/key."""
    from selfjudge.shared.config import StoreConfig
    from selfjudge.shared.store import S3Store

    cfg = StoreConfig(**{k: v for k, v in s3_server.items() if k not in ("proc", "log")} | {"bucket": "benchmarks"})
    store = S3Store(cfg)
    vl_dir, mm_dir = tmp_path / "vl", tmp_path / "mm"
    gen.write_vl_jsonl(vl_dir, gen.vl_records(), skip_images={"RLAIF-V-14"})
    gen.write_vl_parquet(vl_dir / "hf" / "test.parquet", gen.vl_records())
    gen.write_mm(mm_dir, gen.mm_records(), corrupt={"vqa_x"})
    for folder, prefix in ((vl_dir, "vlrb"), (mm_dir, "mmrb/data")):
        for f in folder.rglob("*"):
            if f.is_file():
                store.put_bytes(f"{prefix}/{f.relative_to(folder).as_posix()}", f.read_bytes())
    items, excluded = load_benchmark("vl-rewardbench", "s3://benchmarks/vlrb/data.jsonl", store_cfg=cfg)
    assert len(items) == len(gen.VL_IDS) - 1
    assert excluded[0].record_id == "RLAIF-V-14" and "s3://benchmarks/vlrb/images/rlaif-v" in excluded[0].reason
    assert {i.category for i in items} == {"general", "hallucination", "reasoning"}
    assert len(load_benchmark("vl-rewardbench", "s3://benchmarks/vlrb/hf/test.parquet", store_cfg=cfg)[0]) == 7
    assert len(load_benchmark("vl-rewardbench", "s3://benchmarks/vlrb/hf", store_cfg=cfg)[0]) == 7
    items, excluded = load_benchmark("mm-rewardbench", "s3://benchmarks/mmrb", store_cfg=cfg)
    assert len(items) == len(gen.MM_RECORDS) and not excluded
    assert json.loads(store.get_bytes("mmrb/data/all_data.json"))[0]["ID"] == "nocaps_13062"


def test_exclusion_kinds_for_metrics():
    from selfjudge.services.evaluator.benchmarks import Excluded

    assert Excluded("a", "missing image '/x/y.jpg'").kind == "missing_image"
    assert Excluded("a", "corrupt image '/x': OSError: truncated").kind == "bad_image"
    assert Excluded("a", "not a recognised image in t.parquet (id 'a')").kind == "bad_image"
    assert Excluded("a", "empty (zero-byte) image '/x'").kind == "bad_image"
    assert Excluded("a", "duplicate of an earlier record").kind == "duplicate"
    assert Excluded("a", "human_ranking [0, 0] does not mark one preferred response with 0").kind == "bad_record"
    assert Excluded("a", "Better is 'Output3', not 'Output1' or 'Output2'").kind == "bad_record"
