"""Open vs closed solution space, from answer-format cues in the instruction.

Closed-ended prompts (a number, an option letter, a word) are labelled by majority vote;
open-ended ones (descriptions, explanations) get an error-injected rejected answer.
"""
from __future__ import annotations

import re

CLOSED_CUES = [
    (re.compile(r"\banswer with (a|one|the|an) (single )?(number|word|letter|option|digit|phrase)", re.I),
     "answer-format instruction"),
    (re.compile(r"\b(single|one) (word|number|letter)\b", re.I), "asks for one word/number"),
    (re.compile(r"(^|\n)\s*\(?[A-D][.)]\s+\S", re.M), "lettered options"),
    (re.compile(r"^\s*(how many|what (colou?r|number|shape)|is there|are there|does|do|is|are|which)\b", re.I),
     "short-answer question"),
]
OPEN_CUES = [
    (re.compile(r"\b(describe|explain|why|caption|list|write|summari[sz]e|tell me about|in detail)\b", re.I),
     "asks for a description/explanation"),
]


def classify(instruction: str, options: list[str] | None = None) -> tuple[str, str]:
    """("open" | "closed", reason)."""
    if options:
        return "closed", "options given"
    for pattern, reason in OPEN_CUES:
        if pattern.search(instruction):
            return "open", reason
    for pattern, reason in CLOSED_CUES:
        if pattern.search(instruction):
            return "closed", reason
    return "open", "no closed-answer cue"
