"""The scenes source: prompts on random scenes for the loop, labelled held-out pairs, and
pretraining corpora for a tiny base model.

Deterministic for a seed: scenes for (seed, split, index) come from
`random.Random(f"scenes:{seed}:{split}:{index}")` (string seeds are hashed with SHA-512 by
`random`, so they do not depend on PYTHONHASHSEED).

Splits never share a scene: scene space is partitioned by a SHA-256 hash of the object
layout, and a split only accepts scenes whose hash falls in its own bucket (rejection
sampling, ~3 draws per scene). This holds for any pair of seeds, not just the same seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from PIL import Image

from selfjudge.shared.sources.scenes.errors import (
    COLOUR_WORDS,
    OPPOSITES,
    SHAPE_WORDS,
    SIZE_SWAP,
    perturb,
    wrong_answer,
)
from selfjudge.shared.sources.scenes.prompts import QUESTION_TYPES, Prompt, make_prompts
from selfjudge.shared.sources.scenes.world import GRID, NUMBER_WORDS, Scene, caption, random_scene, render

SPLITS = ("train", "heldout", "pretrain")


@dataclass
class SourceItem:
    """One prompt with its image, as every source (scenes, files, tables) yields it."""

    prompt_id: str
    image: Image.Image
    instruction: str
    kind: str  # "open" | "closed" | "auto" (files: let the synthesizer decide)
    question_type: str
    gold: str | None
    options: list[str] | None
    source: str
    meta: dict = field(default_factory=dict)


@dataclass
class HeldoutPair:
    """A labelled pair of the heldout split, for evaluation only."""

    pair_id: str
    image: Image.Image
    instruction: str
    preferred: str
    rejected: str
    question_type: str
    error_type: str  # closed: the question type; open: the perturbation types joined by "+"


def _scene_hash(scene: Scene) -> int:
    key = repr(sorted((o.shape, o.colour, o.size, o.x, o.y) for o in scene.objects))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def scene_for(
    seed: int, split: str, index: int, max_objects: int = 5, scale: float = 1.0, layout: str = "free"
) -> tuple[Scene, random.Random]:
    """The scene at (seed, split, index), and the rng (positioned after it) for its prompts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = random.Random(f"scenes:{seed}:{split}:{index}")
    while True:
        scene = random_scene(rng, max_objects, scale=scale, layout=layout)
        if _scene_hash(scene) % len(SPLITS) == SPLITS.index(split):
            return scene, rng


class ScenesSource:
    def __init__(
        self, seed: int, image_size: int = 112, max_objects: int = 5, object_scale: float = 1.0, layout: str = "free"
    ) -> None:
        self.seed = seed
        self.layout = layout
        self.image_size = image_size
        self.max_objects = max_objects
        self.object_scale = object_scale

    def items(self, n: int, split: str = "train", offset: int = 0) -> Iterator[SourceItem]:
        """One prompt per index. The question type cycles through QUESTION_TYPES by index
        (so both kinds are balanced); when the scene cannot support it, a random one is used."""
        for index in range(offset, offset + n):
            scene, rng = scene_for(self.seed, split, index, self.max_objects, self.object_scale, self.layout)
            prompts = make_prompts(scene, rng)
            wanted = QUESTION_TYPES[index % len(QUESTION_TYPES)]
            p = next((p for p in prompts if p.question_type == wanted), None) or rng.choice(prompts)
            yield SourceItem(
                prompt_id=f"scenes:{split}:{index}:{p.question_type}",
                image=render(scene, self.image_size),
                instruction=p.instruction,
                kind=p.kind,
                question_type=p.question_type,
                gold=p.gold,
                options=p.options,
                source="scenes",
                meta={
                    "seed": self.seed,
                    "split": split,
                    "index": index,
                    "caption": caption(scene),
                    "background": scene.background,
                    "objects": [asdict(o) for o in scene.objects],
                },
            )


def heldout_pairs(
    seed: int, n: int, image_size: int = 112, max_objects: int = 5, object_scale: float = 1.0, layout: str = "free"
) -> list[HeldoutPair]:
    """Labelled pairs from the heldout split, question types round-robin (balanced).
    Closed: gold vs a wrong answer. Open: gold text vs perturb(gold text)."""
    if max_objects < 2:
        raise ValueError("held-out pairs need max_objects >= 2 (position questions compare two objects)")
    pairs: list[HeldoutPair] = []
    index = 0
    while len(pairs) < n:
        qtype = QUESTION_TYPES[len(pairs) % len(QUESTION_TYPES)]
        scene, rng = scene_for(seed, "heldout", index, max_objects, object_scale, layout)
        index += 1
        p = next((p for p in make_prompts(scene, rng) if p.question_type == qtype), None)
        if p is None:
            continue
        if p.kind == "open":
            rejected, errors = perturb(p.gold, rng)
            if not errors:
                continue
            error_type = "+".join(errors)
        else:
            rejected, error_type = wrong_answer(p, rng), qtype
        pairs.append(
            HeldoutPair(
                f"scenes:heldout:{index - 1}:{qtype}",
                render(scene, image_size),
                p.instruction,
                p.gold,
                rejected,
                qtype,
                error_type,
            )
        )
    return pairs


def pretraining_prompts(
    seed: int, n: int, image_size: int = 112, max_objects: int = 5, object_scale: float = 1.0, layout: str = "free"
) -> list[tuple[Image.Image, Prompt]]:
    """(image, prompt) for teaching a tiny base model; every prompt of each "pretrain" scene (the
    image object is shared between a scene's prompts)."""
    out: list[tuple[Image.Image, Prompt]] = []
    index = 0
    while len(out) < n:
        scene, rng = scene_for(seed, "pretrain", index, max_objects, object_scale, layout)
        index += 1
        image = render(scene, image_size)
        out.extend((image, p) for p in make_prompts(scene, rng))
    return out[:n]


GRID_PLACES = ("top left", "top right", "bottom left", "bottom right")  # the cells of a 2 x 2 grid, reading order
GRID_QUESTION = "Describe each quarter of the image."


def grid_description(scene: Scene) -> str:
    """Each cell of a "grid" scene in reading order: 'top left: a large red circle. top right: nothing. ...'.
    Dense supervision for a base model's perception (every cell, every attribute); not a loop prompt."""
    assert GRID == 2, "GRID_PLACES names the cells of a 2 x 2 grid"
    cells = {int(o.x * GRID // scene.width) + GRID * int(o.y * GRID // scene.height): o for o in scene.objects}
    return " ".join(
        f"{place}: " + (f"a {o.size} {o.colour} {o.shape}." if (o := cells.get(c)) else "nothing.")
        for c, place in enumerate(GRID_PLACES)
    )


def grid_descriptions(
    seed: int, n: int, image_size: int = 112, max_objects: int = 5, object_scale: float = 1.0
) -> list[tuple[Image.Image, str, str]]:
    """(image, GRID_QUESTION, grid_description) for `n` "pretrain" scenes of the grid layout."""
    out = []
    for index in range(n):
        scene, _ = scene_for(seed, "pretrain", index, max_objects, object_scale, "grid")
        out.append((render(scene, image_size), GRID_QUESTION, grid_description(scene)))
    return out


def pretraining_corpus(
    seed: int, n: int, image_size: int = 112, max_objects: int = 5, object_scale: float = 1.0, layout: str = "free"
) -> list[tuple[Image.Image, str, str]]:
    """(image, instruction, gold answer) of `pretraining_prompts`."""
    return [
        (image, p.instruction, p.gold)
        for image, p in pretraining_prompts(seed, n, image_size, max_objects, object_scale, layout)
    ]


JUDGE_TEXT = [
    "You are an impartial judge. Please evaluate the quality of the two responses to the question about the image.",
    "Compare Answer 1 and Answer 2. Consider accuracy, correctness, helpfulness and detail. Avoid position bias.",
    "Do not let the length of the responses influence your evaluation. Be as objective as possible.",
    "Think step by step, then give your final verdict strictly in this format: "
    "[[A]] if Response A is better, [[B]] if Response B is better.",
    "Question: Image: Response A: Response B: Output (a) Output (b) Reasoning: Verdict: Final answer: Final verdict:",
    "Overall Judgment: Answer 1 is better",
    "Overall Judgment: Answer 2 is better",
    "Answer 1 is better.",
    "Answer 2 is better.",
    "Response A is better.",
    "Response B is better.",
    "[[A]]",
    "[[B]]",
    "The better response is A.",
    "The better response is B.",
    "Response A says the circle is red, but the image shows a blue circle, so Response A is wrong.",
    "Response B correctly counts the objects, while Response A makes a mistake about the position.",
    "Both responses mention the colour, shape, size and position of each object; one of them is incorrect.",
    "The first answer is correct and the second answer is incorrect. The error is in the count.",
]


def tokenizer_corpus() -> list[str]:
    """Text covering every word the scenes world, its prompts, its perturbations and a judge
    prompt use, plus digits, letters, number words and punctuation. Deterministic."""
    rng = random.Random("scenes:tokenizer")
    texts = list(JUDGE_TEXT)
    texts.append(" ".join(str(i) for i in range(101)))
    texts.append(" ".join(NUMBER_WORDS + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abcdefghijklmnopqrstuvwxyz")))
    texts.append(
        " ".join(
            COLOUR_WORDS
            + SHAPE_WORDS
            + [s + "s" for s in SHAPE_WORDS]
            + list(OPPOSITES)
            + list(SIZE_SWAP)
            + ["colour", "color", "center", "middle", "yes", "no"]
        )
    )
    texts.append(". , ; : ! ? ' \" ( ) [ ] [[ ]] { } * ** # - + = / < > _ % $ & @ \n")
    for _ in range(300):
        scene = random_scene(rng)
        for p in make_prompts(scene, rng):
            texts.append(p.instruction)
            texts.append(p.gold)
            if p.kind == "open":
                texts.append(perturb(p.gold, rng)[0])
    return texts
