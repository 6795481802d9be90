"""Duplicate prompts (same image bytes + normalised instruction) are found from the database,
so every shard agrees which copy is the first."""

from types import SimpleNamespace

import pytest

from selfjudge.services.synthesizer.stage import find_duplicates
from selfjudge.shared.db import Base, Image, Prompt, Run, make_sessionmaker


@pytest.fixture
def ctx(tmp_path):
    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 'd.db'}")
    Base.metadata.create_all(sessions.kw["bind"])
    with sessions.begin() as s:
        s.add(Run(id=1, name="t", config={}, iterations=2))
        s.flush()
        s.add_all([Image(id=c * 64, key=f"images/{c}.png", width=1, height=1) for c in "ab"])
        s.flush()
        rows = [
            (1, 1, "a", "Describe the image."),
            (2, 1, "a", "describe  the image"),  # dup of 1
            (3, 1, "b", "Describe the image."),  # other image
            (4, 1, "a", "How many?"),  # other question
            (5, 2, "a", "<image>\nDescribe the image"),  # dup of 1, iteration 2
            (6, 2, "b", "How many?"),
        ]
        for pid, it, img, text in rows:
            s.add(
                Prompt(
                    id=pid,
                    run_id=1,
                    iteration=it,
                    shard_index=0,
                    source_id=f"src{pid}",
                    source="jsonl",
                    image_id=img * 64,
                    instruction=text,
                    kind="auto",
                    question_type="user",
                )
            )
    return SimpleNamespace(sessions=sessions)


def test_scopes(ctx):
    it1 = SimpleNamespace(run_id=1, iteration=1)
    it2 = SimpleNamespace(run_id=1, iteration=2)
    shard = [1, 2, 3, 4]
    assert find_duplicates(ctx, it1, shard, "iteration") == {2: "src1"}
    assert find_duplicates(ctx, it1, shard[1:], "iteration") == {2: "src1"}  # the first copy is in another shard
    assert find_duplicates(ctx, it1, shard, "off") == {}
    assert find_duplicates(ctx, it2, [5, 6], "iteration") == {}
    assert find_duplicates(ctx, it2, [5, 6], "run") == {5: "src1"}
