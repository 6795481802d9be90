"""Wrong answers: factual errors injected into a text (`perturb`), and wrong values for closed prompts.

`perturb` swaps words of five types (colour, shape, count, position, size) for wrong ones of the
same type; it is how open held-out pairs, the base model's negatives and the synthesizer's
rule-based injection get their rejected answers.
"""

from __future__ import annotations

import random
import re

from selfjudge.shared.sources.scenes.prompts import LETTERS, Prompt
from selfjudge.shared.sources.scenes.world import COLOURS, NUMBER_WORDS, SHAPES

# the words `perturb` recognises, by type (the tokenizer corpus covers them all)
COLOUR_WORDS = list(COLOURS) + ["black", "white", "gray", "grey", "pink", "brown"]
SHAPE_WORDS = list(SHAPES) + ["rectangle", "oval", "hexagon"]
OPPOSITES = {
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
SIZE_SWAP = {"small": "large", "large": "small", "big": "small", "little": "big", "tiny": "large", "huge": "small"}
_WORD = r"(?<![\w-])({})(?![\w-])"
_PATTERNS = {
    "colour": re.compile(_WORD.format("|".join(COLOUR_WORDS)), re.I),
    "shape": re.compile(_WORD.format("|".join(f"{s}s?" for s in SHAPE_WORDS)), re.I),
    "count": re.compile(r"(?<![\w.,-])(\d+|" + "|".join(NUMBER_WORDS) + r")(?![\w-]|[.,]\d)", re.I),
    "position": re.compile(_WORD.format("|".join(OPPOSITES)), re.I),
    "size": re.compile(_WORD.format("|".join(SIZE_SWAP)), re.I),
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
        plural = w.endswith("s") and w[:-1] in SHAPE_WORDS
        new = rng.choice([s for s in SHAPES if s != (w[:-1] if plural else w)])
        return new + "s" if plural else new
    if kind == "position":
        return OPPOSITES[w]
    if kind == "size":
        return SIZE_SWAP[w]
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


def _wrong_answer(p: Prompt, rng: random.Random) -> str:
    if p.question_type == "count":
        g = int(p.gold)
        return str(rng.choice([v for v in range(max(0, g - 2), g + 3) if v != g]))
    if p.question_type == "colour":
        return rng.choice([c for c in COLOURS if c != p.gold])
    if p.question_type == "choice":
        return rng.choice([letter for letter in LETTERS[: len(p.options or [])] if letter != p.gold])
    return {"left": "right", "right": "left", "above": "below", "below": "above"}[p.gold]


def wrong_answer(p: Prompt, rng: random.Random) -> str:
    """An answer to `p` that is wrong: another value for a closed prompt, the gold text with
    injected errors for an open one (the gold text itself when it has nothing to perturb)."""
    return perturb(p.gold, rng)[0] if p.kind == "open" else _wrong_answer(p, rng)
