"""Open vs closed solution space: answer-format cues in the instruction, and the length and
agreement of sampled answers.

Closed-ended prompts (a number, an option letter, a word) are labelled by majority vote;
open-ended ones (descriptions, explanations) get an error-injected rejected answer.

`classify_cues` reads the instruction and says how sure it is: a *strong* cue (options, an
explicit answer format, "describe ...") decides; a *weak* one (a question that usually has a
short answer, or no cue at all) is only a guess. `classify_samples` decides from sampled
answers: short (median word count <= max_words) AND agreeing (the top normalised answer holds
>= min_agreement of the samples) -> closed, else open. `decide` combines them per
`synth.classify` ("cues" | "samples" | "both": a strong cue decides, otherwise the samples).
Every decision comes with a human-readable reason, stored in Prompt.kind_reason.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass

from .voting import normalize_answer

# (pattern, reason, strong)
CLOSED_CUES = [
    (
        re.compile(r"\banswer with (a|one|the|an) (single )?(number|word|letter|option|digit|phrase)", re.I),
        "answer-format instruction",
        True,
    ),
    (
        re.compile(r"\b(answer|respond|reply) (in|with) (a )?(single|one|few|short) (word|number|letter|phrase)", re.I),
        "answer-format instruction",
        True,
    ),
    (re.compile(r"\b(single|one) (word|number|letter)\b", re.I), "asks for one word/number", True),
    (
        re.compile(r"\b(option'?s? letter|letter of the (correct )?(option|choice|answer))\b", re.I),
        "asks for an option letter",
        True,
    ),
    (re.compile(r"\b(yes or no|true or false)\b", re.I), "yes/no question", True),
    (re.compile(r"(^|\n)\s*\(?[A-H][.)]\s+\S", re.M), "lettered options", True),
    (
        re.compile(
            r"^\s*(how many|what (colou?r|number|shape)|is there|are there|does|do|is|are|which|"
            r"can|was|were|will|has|have)\b",
            re.I,
        ),
        "short-answer question",
        False,
    ),
]
OPEN_CUES = [
    (
        re.compile(
            r"\b(describe|explain|why|caption|list|write|summari[sz]e|tell me about|in detail|elaborate|"
            r"step[- ]by[- ]step|what is happening|what's happening)\b",
            re.I,
        ),
        "asks for a description/explanation",
        True,
    ),
]

_OPTION_LINE = re.compile(r"^\s*\(?([A-H])[.):]\s+(.+?)\s*$", re.M)
_INLINE_OPTION = re.compile(r"(?:^|\s)\(([A-H])\)\s*([^()\n]+?)(?=\s*\([A-H]\)|\s*$|\n)")


def extract_options(instruction: str) -> list[str] | None:
    """The option texts of a multiple-choice instruction ("A. cat\\nB. dog" or "(A) cat (B) dog"),
    in letter order, when the letters run A, B, C, ... without a gap; else None."""
    for pattern in (_OPTION_LINE, _INLINE_OPTION):
        found = pattern.findall(instruction)
        letters = [letter for letter, _ in found]
        if len(found) >= 2 and letters == [chr(ord("A") + i) for i in range(len(found))]:
            return [text.strip() for _, text in found]
    return None


@dataclass(frozen=True)
class Decision:
    kind: str  # "open" | "closed"
    reason: str
    strong: bool  # a cue sure enough to skip sampling


def classify_cues(instruction: str, options: list[str] | None = None) -> Decision:
    if options:
        return Decision("closed", "cue: options given", True)
    for pattern, reason, strong in OPEN_CUES:
        if pattern.search(instruction):
            return Decision("open", f"cue: {reason}", strong)
    for pattern, reason, strong in CLOSED_CUES:
        if pattern.search(instruction):
            return Decision("closed", f"cue: {reason}", strong)
    return Decision("open", "cue: none (no closed-answer cue)", False)


def classify(instruction: str, options: list[str] | None = None) -> tuple[str, str]:
    """("open" | "closed", reason) from the instruction alone."""
    d = classify_cues(instruction, options)
    return d.kind, d.reason


def classify_samples(
    samples: list[str], options: list[str] | None = None, max_words: int = 5, min_agreement: float = 0.3
) -> tuple[str, str]:
    """("closed" | "open", reason) from sampled answers: short and agreeing -> closed."""
    if not samples:
        return "open", "samples: none"
    words = statistics.median(len(s.split()) for s in samples)
    normalised = [normalize_answer(s, options) for s in samples]
    top = Counter(n for n in normalised if n).most_common(1)
    share = top[0][1] / len(samples) if top else 0.0
    short, agree = words <= max_words, share >= min_agreement
    kind = "closed" if short and agree else "open"
    detail = (
        f"median {words:g} words ({'<=' if short else '>'} {max_words}), "
        f"top answer {top[0][1] if top else 0}/{len(samples)} ({'>=' if agree else '<'} {min_agreement:g})"
    )
    return kind, f"samples: {detail}"


def decide(
    mode: str,
    cue: Decision,
    samples: list[str] | None,
    options: list[str] | None = None,
    max_words: int = 5,
    min_agreement: float = 0.3,
) -> tuple[str, str]:
    """The final (kind, reason) for an "auto" prompt; `samples` is None when none were drawn."""
    if mode == "cues" or (mode == "both" and cue.strong) or samples is None:
        return cue.kind, cue.reason
    kind, reason = classify_samples(samples, options, max_words, min_agreement)
    return kind, f"{reason}; {cue.reason}{' (strong)' if cue.strong else ' (weak)'}"


def needs_samples(mode: str, cue: Decision) -> bool:
    return mode == "samples" or (mode == "both" and not cue.strong)
