"""The scenes world: coloured shapes on a plain background, drawn at random, rendered, and described.

A scene is a tuple of objects (shape, colour, size, centre) on a background. Its image and its
captions are derived from it, so every caption is true by construction.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

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


def left_to_right(scene: Scene) -> list[Obj]:
    """The objects left to right (then top to bottom): the order captions and prompts name them in."""
    return sorted(scene.objects, key=lambda o: (o.x, o.y))


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def caption(scene: Scene) -> str:
    """'There are two objects: a large red circle on the left and a small blue star at the top right.'"""
    parts = [f"a {o.size} {o.colour} {o.shape} {_where(o, scene)}" for o in left_to_right(scene)]
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
        f"{i}. A {o.size} {o.colour} {o.shape} {_where(o, scene)}." for i, o in enumerate(left_to_right(scene), 1)
    )
