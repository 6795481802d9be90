"""A procedural, offline image world: coloured shapes on a plain background.

Everything is derived from the scene, so every prompt has a ground-truth answer and every
caption is true by construction. Deterministic for a seed: scenes for (seed, split, index)
come from `random.Random(f"scenes:{seed}:{split}:{index}")` (string seeds are hashed with
SHA-512 by `random`, so they do not depend on PYTHONHASHSEED).

Splits never share a scene: scene space is partitioned by a SHA-256 hash of the object
layout, and a split only accepts scenes whose hash falls in its own bucket (rejection
sampling, ~3 draws per scene). This holds for any pair of seeds, not just the same seed.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "gray": (222, 222, 222),
    "beige": (245, 238, 220),
}
SIZES = ("small", "large")
RADIUS = {"small": 8, "large": 14}  # half-extent in scene units (scene is 100 x 100 by default)
GAP = 4  # minimum empty space between two objects' bounding boxes, in scene units
LAYOUTS = ("free", "grid")
GRID = 2  # layout "grid": cells per side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SPLITS = ("train", "heldout", "pretrain")
QUESTION_TYPES = ("count", "colour", "choice", "position", "describe", "list")
LETTERS = "ABCD"


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: int  # centre, scene units
    y: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    width: int = 100
    height: int = 100
    background: str = "white"
    scale: float = 1.0  # object size multiplier (RADIUS x scale); larger objects are easier to see


@dataclass
class Prompt:
    instruction: str
    kind: str  # "open" | "closed"
    question_type: str  # one of QUESTION_TYPES
    gold: str  # ground truth: a number, a colour word, an option letter, left/right/above/below, or a text
    options: list[str] | None = None


@dataclass
class SourceItem:
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
    pair_id: str
    image: Image.Image
    instruction: str
    preferred: str
    rejected: str
    question_type: str
    error_type: str  # closed: the question type; open: the perturbation types joined by "+"


# ---------------------------------------------------------------- scenes and rendering


def object_radius(size: str, scale: float = 1.0) -> int:
    """Half-extent of an object of `size` in scene units, at object scale `scale`."""
    return round(RADIUS[size] * scale)


def random_scene(
    rng: random.Random,
    max_objects: int = 5,
    width: int = 100,
    height: int = 100,
    scale: float = 1.0,
    layout: str = "free",
) -> Scene:
    """1..max_objects objects. Layout "free": anywhere, bounding boxes at least GAP apart (fewer
    when large ones do not fit). Layout "grid": at most one object per cell of a GRID x GRID grid,
    centred in its cell (cells line up with the vision tower's merged patches, so each object
    fills image tokens of its own)."""
    if layout == "grid":
        cells = rng.sample(range(GRID * GRID), rng.randint(1, min(max_objects, GRID * GRID)))
        objects = [
            Obj(
                rng.choice(SHAPES),
                rng.choice(list(COLOURS)),
                rng.choice(SIZES),
                round((c % GRID + 0.5) * width / GRID),
                round((c // GRID + 0.5) * height / GRID),
            )
            for c in sorted(cells)
        ]
        return Scene(tuple(objects), width, height, rng.choice(list(BACKGROUNDS)), scale)
    if layout != "free":
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    objects: list[Obj] = []
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(100):
            size = rng.choice(SIZES)
            r = object_radius(size, scale)
            x, y = rng.randint(r + 2, width - r - 2), rng.randint(r + 2, height - r - 2)
            if all(
                abs(x - o.x) >= r + object_radius(o.size, scale) + GAP
                or abs(y - o.y) >= r + object_radius(o.size, scale) + GAP
                for o in objects
            ):
                objects.append(Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), size, x, y))
                break
    return Scene(tuple(objects), width, height, rng.choice(list(BACKGROUNDS)), scale)


def render(scene: Scene, size: int = 112) -> Image.Image:
    """RGB image, `size` x `size`, flat colours without anti-aliasing (centres are exact)."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    sx, sy = size / scene.width, size / scene.height
    for o in scene.objects:
        cx, cy, r = o.x * sx, o.y * sy, object_radius(o.size, scene.scale) * min(sx, sy)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            h = r * 0.85
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
        elif o.shape == "star":
            pts = []
            for i in range(10):
                rad = r if i % 2 == 0 else r * 0.45
                ang = math.radians(-90 + 36 * i)
                pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
            draw.polygon(pts, fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return img


def position(obj: Obj, scene: Scene) -> str:
    """Thirds of the image: "top left", "top", "left", "center", "bottom right", ..."""
    col = "left" if obj.x < scene.width / 3 else "right" if obj.x > 2 * scene.width / 3 else ""
    row = "top" if obj.y < scene.height / 3 else "bottom" if obj.y > 2 * scene.height / 3 else ""
    return f"{row} {col}".strip() or "center"


def _where(obj: Obj, scene: Scene) -> str:
    p = position(obj, scene)
    return "in the center" if p == "center" else f"on the {p}" if p in ("left", "right") else f"at the {p}"


def _ordered(scene: Scene) -> list[Obj]:
    return sorted(scene.objects, key=lambda o: (o.x, o.y))


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def caption(scene: Scene) -> str:
    """'There are two objects: a large red circle on the left and a small blue star at the top right.'"""
    parts = [f"a {o.size} {o.colour} {o.shape} {_where(o, scene)}" for o in _ordered(scene)]
    n = len(parts)
    if n == 0:
        return "The image is empty."
    if n == 1:
        return f"There is one object: {parts[0]}."
    body = f"{parts[0]} and {parts[1]}" if n == 2 else ", ".join(parts[:-1]) + f", and {parts[-1]}"
    return f"There are {_number(n)} objects: {body}."


def object_list(scene: Scene) -> str:
    """Gold answer for 'List the objects in the image.': one numbered line per object."""
    return "\n".join(
        f"{i}. A {o.size} {o.colour} {o.shape} {_where(o, scene)}." for i, o in enumerate(_ordered(scene), 1)
    )


# ---------------------------------------------------------------- prompts


def _unique(scene: Scene, obj: Obj, *attrs: str) -> bool:
    return sum(all(getattr(o, a) == getattr(obj, a) for a in attrs) for o in scene.objects) == 1


def make_prompts(scene: Scene, rng: random.Random) -> list[Prompt]:
    """At most one prompt per question type, in QUESTION_TYPES order; types the scene cannot support are left out."""
    objs = _ordered(scene)
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


# ---------------------------------------------------------------- error injection

_COLOUR_WORDS = list(COLOURS) + ["black", "white", "gray", "grey", "pink", "brown"]
_SHAPE_WORDS = list(SHAPES) + ["rectangle", "oval", "hexagon"]
_OPPOSITES = {
    "left": "right",
    "right": "left",
    "top": "bottom",
    "bottom": "top",
    "above": "below",
    "below": "above",
    "upper": "lower",
    "lower": "upper",
    "leftmost": "rightmost",
    "rightmost": "leftmost",
}
_SIZE_SWAP = {"small": "large", "large": "small", "big": "small", "little": "big", "tiny": "large", "huge": "small"}
_WORD = r"(?<![\w-])({})(?![\w-])"
_PATTERNS = {
    "colour": re.compile(_WORD.format("|".join(_COLOUR_WORDS)), re.I),
    "shape": re.compile(_WORD.format("|".join(f"{s}s?" for s in _SHAPE_WORDS)), re.I),
    "count": re.compile(r"(?<![\w.,-])(\d+|" + "|".join(NUMBER_WORDS) + r")(?![\w-]|[.,]\d)", re.I),
    "position": re.compile(_WORD.format("|".join(_OPPOSITES)), re.I),
    "size": re.compile(_WORD.format("|".join(_SIZE_SWAP)), re.I),
}


def _match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    return new[0].upper() + new[1:] if old[0].isupper() else new


def _is_list_marker(text: str, start: int, end: int) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    return not text[line_start:start].strip() and text[end : end + 1] in (".", ")")


def _editable(kind: str, word: str, text: str, start: int) -> bool:
    """Counts are edited only when >= 2 or zero (so the noun's plural stays grammatical) and
    never as a list marker ("2. A red circle")."""
    if kind != "count":
        return True
    value = int(word) if word.isdigit() else NUMBER_WORDS.index(word.lower())
    return value != 1 and not _is_list_marker(text, start, start + len(word))


def _replacement(kind: str, word: str, rng: random.Random) -> str:
    w = word.lower()
    if kind == "colour":
        return rng.choice([c for c in COLOURS if c != w])
    if kind == "shape":
        plural = w.endswith("s") and w[:-1] in _SHAPE_WORDS
        new = rng.choice([s for s in SHAPES if s != (w[:-1] if plural else w)])
        return new + "s" if plural else new
    if kind == "position":
        return _OPPOSITES[w]
    if kind == "size":
        return _SIZE_SWAP[w]
    value = int(w) if w.isdigit() else NUMBER_WORDS.index(w)
    new_value = rng.choice([v for v in range(max(2, value - 2), value + 3) if v != value])
    return str(new_value) if w.isdigit() or new_value >= len(NUMBER_WORDS) else NUMBER_WORDS[new_value]


def perturb(text: str, rng: random.Random, max_edits: int = 2) -> tuple[str, list[str]]:
    """Inject 1..max_edits factual errors, each of a different type among
    colour, shape, count, position, size. Returns (new_text, error_types) or (text, []).

    Words keep their case; "a"/"an" before a replaced word is fixed to agree.
    """
    candidates: dict[str, list[tuple[int, int, str]]] = {}
    for kind, pattern in _PATTERNS.items():
        for m in pattern.finditer(text):
            if _editable(kind, m.group(0), text, m.start()):
                candidates.setdefault(kind, []).append((m.start(), m.end(), m.group(0)))
    if not candidates:
        return text, []
    kinds = rng.sample(sorted(candidates), min(rng.randint(1, max_edits), len(candidates)))
    edits = []
    for kind in kinds:
        start, end, word = rng.choice(candidates[kind])
        edits.append((start, end, _match_case(_replacement(kind, word, rng), word)))
    for start, end, new in sorted(edits, reverse=True):  # right to left keeps offsets valid
        text = text[:start] + new + text[end:]
        art = re.search(r"(?<![\w-])(an?)(\s+)$", text[:start], re.I)
        if art:  # "an orange" -> "a red", "a red" -> "an orange"
            fixed = "an" if new[0].lower() in "aeiou" else "a"
            text = text[: art.start(1)] + _match_case(fixed, art.group(1)) + art.group(2) + text[start:]
    return text, kinds


# ---------------------------------------------------------------- sources


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


def _wrong_answer(p: Prompt, rng: random.Random) -> str:
    if p.question_type == "count":
        g = int(p.gold)
        return str(rng.choice([v for v in range(max(0, g - 2), g + 3) if v != g]))
    if p.question_type == "colour":
        return rng.choice([c for c in COLOURS if c != p.gold])
    if p.question_type == "choice":
        return rng.choice([letter for letter in LETTERS[: len(p.options or [])] if letter != p.gold])
    return {"left": "right", "right": "left", "above": "below", "below": "above"}[p.gold]


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
            rejected, error_type = _wrong_answer(p, rng), qtype
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


def wrong_answer(p: Prompt, rng: random.Random) -> str:
    """An answer to `p` that is wrong: another value for a closed prompt, the gold text with
    injected errors for an open one (the gold text itself when it has nothing to perturb)."""
    return perturb(p.gold, rng)[0] if p.kind == "open" else _wrong_answer(p, rng)


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
            _COLOUR_WORDS
            + _SHAPE_WORDS
            + [s + "s" for s in _SHAPE_WORDS]
            + list(_OPPOSITES)
            + list(_SIZE_SWAP)
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
