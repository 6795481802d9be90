"""Error injection for open-ended prompts: the rejected response is the original with errors.

Two methods:
- model ("detail alteration", the paper's): the same VLM is shown the image, the question and its
  own response and asked to rewrite it with a few wrong details (objects, attributes, counts,
  spatial relations, numbers). Two prompt variants: `detail` and `style_mimic` (change only a
  few words, keep the length, wording and style, so that length/style give nothing away).
- rule: `shared.sources.scenes.errors.perturb`, word swaps of colours, shapes, counts, positions and
  sizes: no model call, always the same style, good for volume or a model too weak to follow
  the alteration prompt.

`check_alteration` accepts a candidate only if it really changed something (word level, after
normalisation), kept its length within [1/r, r] of the original (r = synth.max_length_ratio for
style-mimic, synth.detail_max_length_ratio otherwise) and kept enough of the original's words
(synth.min_word_overlap / detail_min_word_overlap). It also says which kinds of error the edit
injected (`error_types`), read off the changed words: colour, shape, count, number, position,
size, object (any other changed content word).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field

ERROR_KINDS = ("objects", "attributes such as colours and sizes", "counts", "spatial relations", "numbers")

DETAIL_PROMPT = (
    "Here is a question about the image and a response to it.\n"
    "Question: {instruction}\n"
    "Response: {response}\n\n"
    "Rewrite the response so that it contains {n} factual error(s) about the image. Change details such "
    "as {kinds}. Keep the rest of the response as it is. Output only the rewritten response."
)
STYLE_MIMIC_PROMPT = (
    "Here is a question about the image and a response to it.\n"
    "Question: {instruction}\n"
    "Response: {response}\n\n"
    "Make a copy of the response that contains {n} subtle factual error(s) about the image, for example a "
    "wrong {kinds}. Change only the few words needed: keep the same length, the same sentences, the same "
    "wording and the same style, so that the two versions can only be told apart by looking at the image. "
    "Output only the modified response."
)
VARIANTS = {"detail": DETAIL_PROMPT, "style_mimic": STYLE_MIMIC_PROMPT}

_COLOURS = {
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "black",
    "white",
    "gray",
    "grey",
    "pink",
    "brown",
    "violet",
    "cyan",
    "magenta",
    "gold",
    "silver",
    "beige",
    "teal",
    "navy",
    "maroon",
    "tan",
    "dark",
    "light",
}
_SHAPES = {
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "rectangle",
    "oval",
    "hexagon",
    "pentagon",
    "cube",
    "sphere",
    "cylinder",
    "cone",
    "heart",
    "cross",
    "round",
    "circular",
    "rectangular",
    "triangular",
}
_POSITION = {
    "left",
    "right",
    "top",
    "bottom",
    "above",
    "below",
    "under",
    "over",
    "behind",
    "front",
    "beside",
    "between",
    "next",
    "near",
    "far",
    "center",
    "centre",
    "middle",
    "upper",
    "lower",
    "leftmost",
    "rightmost",
    "inside",
    "outside",
    "on",
    "in",
    "beneath",
    "underneath",
    "atop",
    "corner",
    "background",
    "foreground",
}
_SIZE = {
    "small",
    "large",
    "big",
    "little",
    "tiny",
    "huge",
    "tall",
    "short",
    "long",
    "wide",
    "narrow",
    "giant",
    "medium",
    "smaller",
    "larger",
    "bigger",
}
_NUMBER_WORDS = {
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "dozen",
    "single",
    "several",
    "many",
    "few",
    "both",
    "no",
    "none",
    "pair",
    "couple",
}
_STOP = {
    "a",
    "an",
    "the",
    "is",
    "are",
    "was",
    "were",
    "and",
    "or",
    "of",
    "to",
    "with",
    "it",
    "its",
    "this",
    "that",
    "there",
    "these",
    "those",
    "has",
    "have",
    "at",
    "by",
    "as",
    "be",
    "image",
    "picture",
    "shows",
    "show",
}
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[A-Za-z]+(?:'[a-z]+)?")
_CHATTY = re.compile(r"\b(?:sure|okay|certainly|here|rewritten|modified|altered|version|errors?)\b", re.I)
_LABELLED = re.compile(r"^\s*(?:the\s+)?(?:rewritten|modified|altered|new)\s+(?:response|version|text)\s*:\s*", re.I)


def alteration_prompt(variant: str, instruction: str, response: str, n_errors: int = 1) -> str:
    return VARIANTS[variant].format(
        instruction=instruction, response=response, n=n_errors, kinds=", ".join(ERROR_KINDS)
    )


def clean_candidate(text: str) -> str:
    """Strip a chatty preamble ("Sure, here is the rewritten response:") and wrapping quotes."""
    text = (text or "").strip()
    first, _, rest = text.partition("\n")
    if rest and first.rstrip().endswith(":") and len(first) < 100 and _CHATTY.search(first):
        text = rest.strip()  # "Sure, here is the rewritten response:\n..."
    text = _LABELLED.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def words(text: str) -> list[str]:
    return [w.lower() for w in _TOKEN.findall(text)]


def _kind_of(word: str) -> str | None:
    w = word.lower()
    base = w[:-1] if w.endswith("s") and len(w) > 3 else w
    if re.fullmatch(r"\d+", w) or w in _NUMBER_WORDS:
        return "count"
    if re.fullmatch(r"\d+(?:[.,]\d+)+", w):
        return "number"
    if w in _COLOURS:
        return "colour"
    if w in _SHAPES or base in _SHAPES:
        return "shape"
    if w in _POSITION:
        return "position"
    if w in _SIZE:
        return "size"
    if w in _STOP:
        return None
    return "object"


def error_types(original: str, altered: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(sorted error kinds, [(old words, new words)]) of the word-level edits from original to altered."""
    a, b = words(original), words(altered)
    kinds: set[str] = set()
    changes: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        old, new = a[i1:i2], b[j1:j2]
        changes.append((" ".join(old), " ".join(new)))
        found = {k for w in old + new if (k := _kind_of(w))}
        # a specific kind explains the edit; "object" only when nothing more specific changed
        kinds |= (found - {"object"}) or found
    return sorted(kinds), changes


def word_overlap(original: str, altered: str) -> float:
    """Share of the original's words (as a multiset) still in the altered text."""
    a, b = Counter(words(original)), Counter(words(altered))
    return sum((a & b).values()) / max(1, sum(a.values()))


@dataclass
class Check:
    ok: bool
    reason: str  # "ok" | "empty" | "no_change" | "length" | "rewritten"
    text: str = ""
    errors: list[str] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)
    length_ratio: float = 0.0
    overlap: float = 0.0

    def summary(self) -> dict:
        return {
            "reason": self.reason,
            "length_ratio": round(self.length_ratio, 3),
            "overlap": round(self.overlap, 3),
            "errors": self.errors,
            "changes": [list(c) for c in self.changes[:8]],
        }


def check_alteration(original: str, candidate: str, max_length_ratio: float, min_overlap: float = 0.0) -> Check:
    """Is `candidate` a usable rejected response for `original`? See the module docstring."""
    text = clean_candidate(candidate)
    if not text:
        return Check(False, "empty")
    ratio = len(text) / max(1, len(original))
    overlap = word_overlap(original, text)
    kinds, changes = error_types(original, text)
    check = Check(False, "", text, kinds, changes, ratio, overlap)
    if not changes:
        check.reason = "no_change"  # only case, spacing or punctuation changed
    elif not 1 / max_length_ratio <= ratio <= max_length_ratio:
        check.reason = "length"
    elif overlap < min_overlap:
        check.reason = "rewritten"  # not an edit of the original any more
    else:
        check.ok, check.reason = True, "ok"
    return check
