"""Majority voting over sampled short answers (closed-ended prompts).

Answers are compared after `normalize_answer`, so "Three.", "3", "3.0", "**3 objects**",
"$\\boxed{3}$" and "3 cm" are one vote; "Yes, there is." and "yes" are one vote; with options,
"B", "(b)", "B. circle", "B: circle" and "circle" are one vote.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

_NUMBERS = {
    w: i
    for i, w in enumerate(
        [
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
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100}
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PREFIX = re.compile(
    r"^(?:(?:so|thus|therefore|hence|overall),?\s+)?(?:i think\s+|i believe\s+)?"
    r"(?:(?:the\s+)?(?:final\s+|correct\s+|right\s+)?(?:answer|option|choice)\b\s*(?:is\b|:|=|-)?\s*"
    r"|it\s+is\s+|it's\s+|there\s+(?:are|is)\s+)"
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_LATEX = re.compile(r"\\(?:boxed|text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_YES_NO = re.compile(
    r"^(yes|yeah|yep|yup|no|nope)(?:\s*$|[,.!;:]|\s+(?:it|there|they|this|that|these|those|he|she|i|the)\b)"
)
_FRACTION = re.compile(r"^(-?\d+)\s*/\s*(\d+)$")
_NUMBER_WITH_UNIT = re.compile(r"^[$€£]?\s*(-?\d+(?:\.\d+)?)\s*(?:%|°|[a-z][a-z ]*)?$")


def _number(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _words_to_numbers(text: str) -> str:
    """'three' -> '3', 'twenty-one' / 'twenty one' -> '21', anywhere in the text."""

    def compound(m: re.Match[str]) -> str:
        return str(_NUMBERS[m.group(1)] + _NUMBERS[m.group(2)])

    text = re.sub(rf"\b({'|'.join(_TENS)})[\s-]({'|'.join(_UNITS)})\b", compound, text)
    text = re.sub(rf"\b({'|'.join(_NUMBERS)})\b", lambda m: str(_NUMBERS[m.group(1)]), text)
    # "2 100" (two hundred) -> "200", "a 100" -> "100"
    return re.sub(r"\b(?:(\d+)|an?)\s+100\b", lambda m: str(int(m.group(1) or 1) * 100), text)


def normalize_answer(text: str | None, options: list[str] | None = None) -> str:
    """Canonical form of a short answer: lower case, no markdown/punctuation/articles/leading
    "the answer is", number words as digits ("three" -> "3", "3.0" -> "3", "3 objects" -> "3").
    With options, an option letter ("B", "(b)", "B.", "B. circle", "option B") or an option's
    text ("circle", "a circle") becomes the lower-case letter ("b")."""
    if not text:
        return ""
    m = re.fullmatch(r"\s*\${1,2}(.+?)\${1,2}\s*[.]?\s*", text, re.S)
    if m:  # inline maths: "$\frac{1}{2}$", "$$3$$"
        text = m.group(1)
    for _ in range(2):  # \boxed{\text{B}}
        text = _LATEX.sub(r" \1 ", text)
    text = re.sub(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}", r"\1/\2", text)
    t = re.sub(r"[*_`#]+|\$(?=[^\d\s])|(?<=\S)\$", " ", text).lower().strip()
    t = re.sub(r"\s+", " ", t).strip(" .!?,;:\"'")
    for _ in range(3):  # "so the answer is: it is ..." peels in a few passes
        t = _PREFIX.sub("", t).strip(" .!?,;:\"'")
    m = _YES_NO.match(t)
    if m:  # "Yes, there is a cat." -> "yes"
        return "yes" if m.group(1).startswith("y") else "no"
    if options:
        letters = "abcdefghijklmnopqrstuvwxyz"[: len(options)]
        texts = [normalize_answer(o) for o in options]
        plain = normalize_answer(t)
        if plain in texts:  # the option's text (compare before letters: "a circle" is not option A)
            return letters[texts.index(plain)]
        m = re.match(r"^(?:option\s+)?[(\[]?([a-z])(?:[)\].:]|\s*$)", t)
        if (
            m is None
            and len(t) > 2
            and t[1] == " "
            and t[0] in letters
            and normalize_answer(t[2:]) == texts[letters.index(t[0])]
        ):
            return t[0]  # "b square": the letter followed by its own option's text
        if m and m.group(1) in letters:
            return m.group(1)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # 1,000 -> 1000
    t = re.sub(r"[^\w\s.%°$€£/-]|(?<!\d)\.|\.(?!\d)|(?<!\d)/|/(?!\d)", " ", t)  # punctuation, keep decimal points
    t = re.sub(r"\s+", " ", t).strip()
    t = _ARTICLE.sub("", t)
    t = _words_to_numbers(t)
    m = _FRACTION.match(t)
    if m and int(m.group(2)):
        return _number(str(int(m.group(1)) / int(m.group(2))))
    m = _NUMBER_WITH_UNIT.match(t)
    if m:
        return _number(m.group(1))
    return t


@dataclass
class Vote:
    majority: str | None  # a raw sample representing the majority answer (its most common spelling)
    count: int  # samples with the top normalised answer
    total: int  # all samples, empty ones included
    reason: str  # "ok" | "no_majority" | "tie" | "empty" | "no_alternative"
    rejected: str | None  # a random raw sample whose normalised answer differs from the majority
    counts: dict[str, int] = field(default_factory=dict, compare=False)  # normalised answer -> votes


def majority_vote(samples: list[str], threshold: int, rng: random.Random, options: list[str] | None = None) -> Vote:
    """Preferred = the strict top normalised answer if it has >= threshold votes; rejected =
    a random sample (each sample one ticket) with a different, non-empty normalised answer.
    Samples that normalise to "" are no vote. Reasons, checked in this order: "empty" (no
    votes), "no_majority" (top < threshold), "tie" (two answers share the top count),
    "no_alternative" (a majority, but every vote agrees: majority set, rejected None), "ok"."""
    normalised = [normalize_answer(s, options) for s in samples]
    counts = Counter(n for n in normalised if n)
    hist = dict(counts.most_common())
    if not counts:
        return Vote(None, 0, len(samples), "empty", None, hist)
    (top, count), *rest = counts.most_common()
    if count < threshold:
        return Vote(None, count, len(samples), "no_majority", None, hist)
    if rest and rest[0][1] == count:
        return Vote(None, count, len(samples), "tie", None, hist)
    spellings = Counter(s.strip() for s, n in zip(samples, normalised, strict=True) if n == top)
    majority = spellings.most_common(1)[0][0]
    others = [s for s, n in zip(samples, normalised, strict=True) if n and n != top]
    if not others:
        return Vote(majority, count, len(samples), "no_alternative", None, hist)
    return Vote(majority, count, len(samples), "ok", rng.choice(others), hist)


def gold_vote(samples: list[str], gold: str | None, rng: random.Random, options: list[str] | None = None) -> Vote:
    """The gold-label ablation: preferred = the source's gold answer, rejected = a random sample
    whose normalised answer differs from the gold's. No threshold. Reasons: "no_gold" (the source
    has none), "empty" (no usable sample), "no_alternative" (every sample is right), "ok".
    `count` is the number of samples that agree with the gold answer."""
    normalised = [normalize_answer(s, options) for s in samples]
    hist = dict(Counter(n for n in normalised if n).most_common())
    target = normalize_answer(gold, options) if gold else ""
    if not target:
        return Vote(None, 0, len(samples), "no_gold", None, hist)
    if not hist:
        return Vote(None, 0, len(samples), "empty", None, hist)
    count = hist.get(target, 0)
    others = [s for s, n in zip(samples, normalised, strict=True) if n and n != target]
    if not others:
        return Vote(gold.strip(), count, len(samples), "no_alternative", None, hist)
    return Vote(gold.strip(), count, len(samples), "ok", rng.choice(others), hist)
