"""Prompts about a scene, each with its ground-truth answer.

A question type (QUESTION_TYPES) is either closed (a number, a colour word, an option letter, a
direction) or open (a description or a list of the objects, whose gold text is a caption).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from selfjudge.shared.sources.scenes.world import COLOURS, SHAPES, Obj, Scene, caption, left_to_right, object_list

QUESTION_TYPES = ("count", "colour", "choice", "position", "describe", "list")
LETTERS = "ABCD"


@dataclass
class Prompt:
    instruction: str
    kind: str  # "open" | "closed"
    question_type: str  # one of QUESTION_TYPES
    gold: str  # ground truth: a number, a colour word, an option letter, left/right/above/below, or a text
    options: list[str] | None = None


def _unique(scene: Scene, obj: Obj, *attrs: str) -> bool:
    return sum(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in scene.objects) == 1


def make_prompts(scene: Scene, rng: random.Random) -> list[Prompt]:
    """At most one prompt per question type, in QUESTION_TYPES order; types the scene cannot support are left out."""
    objs = left_to_right(scene)
    prompts: list[Prompt] = []

    # count: objects, a shape (may be zero), or a colour
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    what, n = rng.choice(
        [
            ("objects", len(objs)),
            (f"{shape}s", sum(o.shape == shape for o in objs)),
            (f"{colour} objects", sum(o.colour == colour for o in objs)),
        ]
    )
    prompts.append(Prompt(f"How many {what} are there? Answer with a number.", "closed", "count", str(n)))

    # colour: an object named by its shape, or by size + shape
    named = [(o.shape, o) for o in objs if _unique(scene, o, "shape")]
    named = named or [(f"{o.size} {o.shape}", o) for o in objs if _unique(scene, o, "size", "shape")]
    if named:
        name, o = rng.choice(named)
        prompts.append(Prompt(f"What colour is the {name}? Answer with one word.", "closed", "colour", o.colour))

    # multiple choice: shape of the object of a unique colour, else the object count
    by_colour = [o for o in objs if _unique(scene, o, "colour")]
    if by_colour:
        o = rng.choice(by_colour)
        question, answer = f"What shape is the {o.colour} object?", o.shape
        options = [o.shape] + rng.sample([s for s in SHAPES if s != o.shape], 3)
    else:
        question, answer = "How many objects are there?", str(len(objs))
        options = [answer] + rng.sample([str(k) for k in range(1, 9) if k != len(objs)], 3)
    rng.shuffle(options)
    lines = "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))
    prompts.append(
        Prompt(
            f"{question}\n{lines}\nAnswer with the option letter.",
            "closed",
            "choice",
            LETTERS[options.index(answer)],
            options,
        )
    )

    # position: two objects each unique by colour + shape, clearly apart on one axis
    ids = [o for o in objs if _unique(scene, o, "colour", "shape")]
    pairs = [
        (a, b, axis)
        for a in ids
        for b in ids
        if a != b
        for axis in ("x", "y")
        if abs(getattr(a, axis) - getattr(b, axis)) >= 15
    ]
    if pairs:
        a, b, axis = rng.choice(pairs)
        relation, gold = (
            ("left or right of", "left" if a.x < b.x else "right")
            if axis == "x"
            else ("above or below", "above" if a.y < b.y else "below")
        )
        prompts.append(
            Prompt(
                f"Is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape}? Answer with one word.",
                "closed",
                "position",
                gold,
            )
        )

    prompts.append(Prompt("Describe the image.", "open", "describe", caption(scene)))
    prompts.append(Prompt("List the objects in the image.", "open", "list", object_list(scene)))
    return prompts
