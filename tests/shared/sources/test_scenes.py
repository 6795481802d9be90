import random
import re

import pytest

from selfjudge.shared.sources.scenes.errors import perturb
from selfjudge.shared.sources.scenes.prompts import QUESTION_TYPES, make_prompts
from selfjudge.shared.sources.scenes.source import (
    ScenesSource,
    heldout_pairs,
    pretraining_corpus,
    scene_for,
    tokenizer_corpus,
)
from selfjudge.shared.sources.scenes.world import (
    BACKGROUNDS,
    COLOURS,
    NUMBER_WORDS,
    SHAPES,
    Obj,
    Scene,
    caption,
    position,
    random_scene,
    render,
)

ERROR_TYPES = {"colour", "shape", "count", "position", "size"}


def scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def key(meta: dict) -> tuple:
    return tuple(sorted((o["shape"], o["colour"], o["size"], o["x"], o["y"]) for o in meta["objects"]))


def test_items_are_deterministic():
    a, b = list(ScenesSource(7).items(24)), list(ScenesSource(7).items(24))
    assert [(i.prompt_id, i.instruction, i.gold, i.options) for i in a] == [
        (i.prompt_id, i.instruction, i.gold, i.options) for i in b
    ]
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(a, b))
    # offset: the same item whatever the chunking
    c = list(ScenesSource(7).items(4, offset=20))
    assert [i.prompt_id for i in c] == [i.prompt_id for i in a[20:]]
    assert [i.meta["caption"] for i in c] == [i.meta["caption"] for i in a[20:]]
    assert [i.meta["caption"] for i in ScenesSource(8).items(24)] != [i.meta["caption"] for i in a]


def test_items_fields_and_balance():
    items = list(ScenesSource(1, image_size=64).items(60))
    assert len({i.prompt_id for i in items}) == 60
    assert items[42].prompt_id == f"scenes:train:42:{items[42].question_type}"
    assert all(i.image.size == (64, 64) and i.image.mode == "RGB" for i in items)
    kinds = [i.kind for i in items]
    assert kinds.count("open") >= 15 and kinds.count("closed") >= 30
    assert {i.question_type for i in items} == set(QUESTION_TYPES)
    for i in items:
        assert i.source == "scenes" and i.gold
        assert (i.kind == "open") == (i.question_type in ("describe", "list"))


def test_splits_never_share_a_scene():
    src = ScenesSource(3)
    train = {key(i.meta) for i in src.items(300, "train")}
    heldout = {key(i.meta) for i in src.items(300, "heldout")}
    other_seed_heldout = {key(i.meta) for i in ScenesSource(4).items(300, "heldout")}
    pretrain = {
        tuple(sorted((o.shape, o.colour, o.size, o.x, o.y) for o in scene_for(3, "pretrain", k)[0].objects))
        for k in range(300)
    }
    assert not train & heldout and not train & other_seed_heldout and not train & pretrain and not heldout & pretrain
    with pytest.raises(ValueError):
        next(src.items(1, "test"))


def test_random_scene_objects_do_not_overlap():
    for scene in scenes(300):
        assert 1 <= len(scene.objects) <= 5
        for i, a in enumerate(scene.objects):
            assert a.shape in SHAPES and a.colour in COLOURS and a.size in ("small", "large")
            for b in scene.objects[i + 1 :]:
                ra, rb = (14 if o.size == "large" else 8 for o in (a, b))
                assert abs(a.x - b.x) >= ra + rb or abs(a.y - b.y) >= ra + rb


@pytest.mark.parametrize("size", [64, 112, 224])
def test_render_colours_at_object_centres(size):
    for scene in scenes(50):
        img = render(scene, size)
        assert img.mode == "RGB" and img.size == (size, size)
        assert img.getpixel((0, 0)) == BACKGROUNDS[scene.background]
        for o in scene.objects:
            centre = (int(o.x * size / scene.width), int(o.y * size / scene.height))
            assert img.getpixel(centre) == COLOURS[o.colour], (o, size)


def test_colours_are_distinct():
    colours = list(COLOURS.values())
    for i, a in enumerate(colours):
        for b in colours[i + 1 :] + list(BACKGROUNDS.values()):
            assert sum(abs(x - y) for x, y in zip(a, b)) > 60


def test_caption_is_truthful():
    for scene in scenes(200):
        text = caption(scene)
        n = len(scene.objects)
        assert text.startswith("There is one object:" if n == 1 else f"There are {NUMBER_WORDS[n]} objects:")
        assert len(re.findall(r"\ban? (?:small|large) ", text)) == n
        for o in scene.objects:
            assert f"{o.size} {o.colour} {o.shape}" in text
        assert caption(scene) == text


def test_caption_positions():
    scene = Scene(
        (
            Obj("circle", "red", "large", 20, 50),
            Obj("square", "blue", "small", 80, 15),
            Obj("star", "green", "small", 50, 50),
            Obj("triangle", "yellow", "small", 50, 85),
        )
    )
    assert caption(scene) == (
        "There are four objects: a large red circle on the left, a small green star in the center, "
        "a small yellow triangle at the bottom, and a small blue square at the top right."
    )
    assert [position(o, scene) for o in scene.objects] == ["left", "top right", "center", "bottom"]


def parse_options(instruction: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-D])\. (.+)$", instruction, re.M))


def check_gold(scene: Scene, p) -> None:
    objs = scene.objects
    if p.question_type == "count":
        what = re.match(r"How many (.+) are there\? Answer with a number\.$", p.instruction).group(1)
        if what == "objects":
            expected = len(objs)
        elif what.endswith(" objects"):
            expected = sum(o.colour == what.split()[0] for o in objs)
        else:
            expected = sum(o.shape == what[:-1] for o in objs)
        assert p.gold == str(expected)
    elif p.question_type == "colour":
        name = re.match(r"What colour is the (.+)\? Answer with one word\.$", p.instruction).group(1).split()
        match = [o for o in objs if o.shape == name[-1] and (len(name) == 1 or o.size == name[0])]
        assert len(match) == 1 and p.gold == match[0].colour
    elif p.question_type == "choice":
        options = parse_options(p.instruction)
        assert list(options.values()) == p.options and p.instruction.endswith("Answer with the option letter.")
        if p.instruction.startswith("What shape"):
            colour = re.match(r"What shape is the (\w+) object\?", p.instruction).group(1)
            match = [o for o in objs if o.colour == colour]
            assert len(match) == 1 and options[p.gold] == match[0].shape
        else:
            assert options[p.gold] == str(len(objs))
        assert len(set(p.options)) == 4
    elif p.question_type == "position":
        m = re.match(
            r"Is the (\w+) (\w+) (left or right of|above or below) the (\w+) (\w+)\? Answer with one word\.$",
            p.instruction,
        )
        a = [o for o in objs if (o.colour, o.shape) == m.group(1, 2)]
        b = [o for o in objs if (o.colour, o.shape) == m.group(4, 5)]
        assert len(a) == 1 and len(b) == 1
        if m.group(3).startswith("left"):
            assert p.gold == ("left" if a[0].x < b[0].x else "right")
        else:
            assert p.gold == ("above" if a[0].y < b[0].y else "below")
    elif p.question_type == "describe":
        assert p.instruction == "Describe the image." and p.gold == caption(scene)
    else:
        assert p.instruction == "List the objects in the image."
        lines = p.gold.splitlines()
        assert len(lines) == len(objs) and all(line.startswith(f"{i}. A ") for i, line in enumerate(lines, 1))


def test_prompts_gold_answers_are_correct():
    rng = random.Random(5)
    for scene in scenes(300, seed=9):
        prompts = make_prompts(scene, rng)
        types = [p.question_type for p in prompts]
        assert {"count", "choice", "describe", "list"} <= set(types) and len(types) == len(set(types))
        for p in prompts:
            assert p.kind == ("open" if p.question_type in ("describe", "list") else "closed")
            assert (p.options is not None) == (p.question_type == "choice")
            check_gold(scene, p)


def test_perturb_injects_reported_errors():
    rng = random.Random(0)
    counts: dict[str, int] = {}
    for scene in scenes(200):
        text = caption(scene)
        new, errors = perturb(text, rng)
        assert new != text and errors and set(errors) <= ERROR_TYPES and len(errors) == len(set(errors)) <= 2
        assert abs(len(new) - len(text)) <= 20
        assert new[0].isupper() and new.endswith(".")
        for e in errors:
            counts[e] = counts.get(e, 0) + 1
    assert set(counts) == ERROR_TYPES


def test_perturb_specifics():
    rng = random.Random(1)
    assert perturb("Nothing to change here.", rng) == ("Nothing to change here.", [])
    assert perturb("", rng) == ("", [])
    assert perturb("Left", rng) == ("Right", ["position"])
    assert perturb("The CIRCLE is big.", random.Random(3), max_edits=1)[0] in {
        "The SQUARE is big.",
        "The TRIANGLE is big.",
        "The STAR is big.",
        "The DIAMOND is big.",
        "The CIRCLE is small.",
    }
    new, errors = perturb("An orange cat.", rng)
    assert errors == ["colour"] and re.fullmatch(r"An? (red|green|blue|yellow|purple) cat\.", new)
    assert new.startswith("An ") == new.startswith("An orange")
    # "one object" and list markers are not count errors; numbers >= 2 are
    assert perturb("1. There is one object.", rng) == ("1. There is one object.", [])
    new, errors = perturb("I see 3 stars.", rng, max_edits=1)
    assert errors in (["count"], ["shape"]) and new != "I see 3 stars."
    a = perturb(caption(scenes(1)[0]), random.Random(42))
    assert a == perturb(caption(scenes(1)[0]), random.Random(42))


def test_heldout_pairs():
    pairs = heldout_pairs(0, 60, image_size=64)
    assert len(pairs) == 60 and len({p.pair_id for p in pairs}) == 60
    assert all(p.preferred != p.rejected and p.preferred and p.rejected for p in pairs)
    types = [p.question_type for p in pairs]
    assert all(types.count(t) == 10 for t in QUESTION_TYPES)
    for p in pairs:
        assert p.image.size == (64, 64)
        if p.question_type in ("describe", "list"):
            assert set(p.error_type.split("+")) <= ERROR_TYPES
        else:
            assert p.error_type == p.question_type
    again = heldout_pairs(0, 60, image_size=64)
    assert [(p.pair_id, p.rejected) for p in again] == [(p.pair_id, p.rejected) for p in pairs]
    # heldout pairs come from the heldout split: never a training scene
    train = {key(i.meta) for i in ScenesSource(0).items(600)}
    for p in pairs:
        scene = scene_for(0, "heldout", int(p.pair_id.split(":")[2]))[0]
        assert tuple(sorted((o.shape, o.colour, o.size, o.x, o.y) for o in scene.objects)) not in train


def test_pretraining_and_tokenizer_corpus():
    corpus = pretraining_corpus(0, 40)
    assert len(corpus) == 40
    assert all(img.mode == "RGB" and instr and answer for img, instr, answer in corpus)
    assert {"Describe the image.", "List the objects in the image."} <= {instr for _, instr, _ in corpus}
    text = "\n".join(tokenizer_corpus())
    assert tokenizer_corpus() == tokenizer_corpus()
    for needle in [
        "[[A]]",
        "[[B]]",
        "Answer 1 is better",
        "Answer 2 is better",
        "Overall Judgment",
        "Response A",
        "colour",
        "left",
        "right",
        "above",
        "below",
        *COLOURS,
        *SHAPES,
        *NUMBER_WORDS,
        *"0123456789",
    ]:
        assert needle in text, needle


def test_max_objects_bounds_every_scene_and_leaves_the_default_world_unchanged():
    from selfjudge.shared.sources.scenes.source import ScenesSource, heldout_pairs, scene_for

    for i in range(30):
        assert len(scene_for(0, "train", i, max_objects=1)[0].objects) == 1
        assert scene_for(0, "train", i)[0] == scene_for(0, "train", i, max_objects=5)[0]
    items = list(ScenesSource(0, max_objects=2).items(12))
    assert all(1 <= len(it.meta["objects"]) <= 2 for it in items)
    pairs = heldout_pairs(0, 12, max_objects=2)
    assert len(pairs) == 12 and {p.question_type for p in pairs} == {
        "count",
        "colour",
        "choice",
        "position",
        "describe",
        "list",
    }
    with pytest.raises(ValueError, match="max_objects >= 2"):
        heldout_pairs(0, 6, max_objects=1)


def test_object_scale_draws_larger_objects_that_still_do_not_overlap():
    from selfjudge.shared.sources.scenes.world import object_radius

    def painted(scene: Scene) -> int:  # pixels that are not background
        img = render(scene, 112)
        bg = BACKGROUNDS[scene.background]
        return sum(px != bg for px in img.get_flattened_data())

    for i in range(30):
        plain, _ = scene_for(0, "train", i, max_objects=1)
        big, _ = scene_for(0, "train", i, max_objects=1, scale=2.0)
        assert big.scale == 2.0 and scene_for(0, "train", i, max_objects=1, scale=2.0)[0] == big  # deterministic
        # a twice-as-wide object covers about four times the pixels (same shape and size class)
        twin = Scene(plain.objects, background=plain.background, scale=2.0)
        assert 3.0 < painted(twin) / painted(plain) < 5.0
        for o in big.objects:
            r = object_radius(o.size, 2.0)
            assert r + 2 <= o.x <= 100 - r - 2 and r + 2 <= o.y <= 100 - r - 2  # inside the image
            centre = (int(o.x * 112 / 100), int(o.y * 112 / 100))
            assert render(big, 112).getpixel(centre) == COLOURS[o.colour]
    for i in range(60):
        scene, _ = scene_for(0, "train", i, max_objects=3, scale=1.8)
        for j, a in enumerate(scene.objects):
            for b in scene.objects[j + 1 :]:
                ra, rb = (object_radius(o.size, 1.8) for o in (a, b))
                assert abs(a.x - b.x) >= ra + rb or abs(a.y - b.y) >= ra + rb
    items = list(ScenesSource(0, object_scale=2.0, max_objects=2).items(6))
    assert all(it.image.size == (112, 112) for it in items)
    assert heldout_pairs(0, 6, max_objects=2, object_scale=2.0)[0].instruction
    assert pretraining_corpus(0, 4, max_objects=2, object_scale=2.0)[0][0].size == (112, 112)


def test_grid_layout_puts_one_object_per_cell_centred():
    from selfjudge.shared.sources.scenes.errors import wrong_answer
    from selfjudge.shared.sources.scenes.source import pretraining_prompts
    from selfjudge.shared.sources.scenes.world import GRID, LAYOUTS

    assert "grid" in LAYOUTS
    centres = {round((k + 0.5) * 100 / GRID) for k in range(GRID)}
    counts = set()
    for i in range(80):
        scene, _ = scene_for(0, "train", i, max_objects=4, scale=1.6, layout="grid")
        assert scene == scene_for(0, "train", i, max_objects=4, scale=1.6, layout="grid")[0]  # deterministic
        cells = [(o.x, o.y) for o in scene.objects]
        assert len(set(cells)) == len(cells) and {x for x, _ in cells} <= centres and {y for _, y in cells} <= centres
        counts.add(len(cells))
        img = render(scene, 56)
        for o in scene.objects:  # each object is painted at its cell's centre
            assert img.getpixel((int(o.x * 56 / 100), int(o.y * 56 / 100))) == COLOURS[o.colour]
        assert caption(scene).startswith("There ")
    assert counts == {1, 2, 3, 4}  # 1..min(max_objects, cells)
    assert max(len(scene_for(0, "train", i, max_objects=2, layout="grid")[0].objects) for i in range(40)) == 2
    # the grid world keeps its splits apart and supports every question type
    train = {key(i.meta) for i in ScenesSource(0, layout="grid", max_objects=4).items(200, "train")}
    held = heldout_pairs(0, 60, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    assert {p.question_type for p in held} == set(QUESTION_TYPES) and held[0].image.size == (56, 56)
    assert not train & {
        key({"objects": [vars(o) for o in scene_for(0, "heldout", k, 4, 1.6, "grid")[0].objects]}) for k in range(200)
    }
    prompts = pretraining_prompts(0, 30, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    assert [(img.size, p.instruction, p.gold) for img, p in prompts] == [
        (img.size, q, a)
        for img, q, a in pretraining_corpus(0, 30, image_size=56, max_objects=4, object_scale=1.6, layout="grid")
    ]
    rng = random.Random(0)
    for _, p in prompts:
        assert wrong_answer(p, rng) != p.gold
    with pytest.raises(ValueError, match="unknown layout"):
        random_scene(random.Random(0), layout="spiral")


def test_grid_description_names_every_cell_and_what_is_in_it():
    from selfjudge.shared.sources.scenes.source import GRID_PLACES, GRID_QUESTION, grid_description, grid_descriptions

    described = grid_descriptions(0, 40, image_size=56, max_objects=4, object_scale=1.6)
    assert len(described) == 40 and {q for _, q, _ in described} == {GRID_QUESTION}
    for index, (image, _, text) in enumerate(described):
        scene, _ = scene_for(0, "pretrain", index, 4, 1.6, "grid")
        assert text == grid_description(scene) and image.size == (56, 56)
        clauses = text.split(". ")
        assert [c.split(":")[0] for c in clauses] == list(GRID_PLACES)
        assert sum(c.endswith("nothing") or c.endswith("nothing.") for c in clauses) == 4 - len(scene.objects)
        for o in scene.objects:  # each object in the clause of its own cell, with all three attributes
            place = GRID_PLACES[(o.x > 50) + 2 * (o.y > 50)]
            assert f"{place}: a {o.size} {o.colour} {o.shape}" in text
            assert image.getpixel((int(o.x * 56 / 100), int(o.y * 56 / 100))) == COLOURS[o.colour]
