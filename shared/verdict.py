"""Parse a pairwise judge's output into "A", "B" or no verdict.

"A" is the first response shown (Answer 1, Output (a), Response A, Assistant A), "B" the second.

Markers, strongest tier first (case-insensitive, after removing markdown * ` # __ and > quotes):
  1. explicit tokens: [[A]] [[B]] [[1]] [[2]], Arena-Hard [[A>B]] / [[B>>A]] (first letter wins),
     \\boxed{A}, <answer>B</answer> (also <verdict>, <choice>, <judgment>, <winner>, <final_answer>),
     Prometheus "[RESULT] B", JSON fields {"verdict": "A"}, {"better_response": "Response 2"}, {"choice": 1}
  2. labelled verdicts: "Overall Judgment: Answer 2 is better", "Verdict: B", "my verdict is A",
     "Winner: Response B", "The better response is A"; with a colon or dash: "Final answer: (a)",
     "Decision - Output 1", "Conclusion: B"; and only at a line start: "Answer: B", "Choice: 2"
     ("the correct choice is B" or "Response A's answer: B" inside a reasoning about a
     multiple-choice question is not a verdict)
     "Better response: B", "Preferred: Answer 1"; ordinals: "The better response is the second one",
     "Verdict: the first response"
  3. phrases: "Response A is (clearly) better", "Answer 2 is more accurate", "I prefer Response B",
     "I choose Output (a)", "B is better", "Response B is worse" (-> A), ordinals ("The first response
     is better", "I prefer the second one"), and a line that is only a choice ("Output (a)", "B", "Answer 2")
  4. scores, only when no tier above decides: "Score for Response A: 8" / "Response B rating: 6/10" /
     "Answer 1: 7/10" (a number after a score/rating word, or out of /10): the higher one wins

Rule: the strongest tier that has any marker decides. Its LAST marker is the verdict (a judge
that changes its mind, or echoes the format on an earlier line, is read by its last word),
unless the last segment (line or sentence) holding a marker of that tier names both A and B
("[[A]] or [[B]]", "Response B is better at style but Response A is better overall"). Such a
tier is conflicting and the next weaker tier is tried ('Output "[[A]]" if A is better, "[[B]]"
if B is better.' then "Verdict: B" -> B); if no tier decides, the result is "conflicting"
when some tier was, else "no_verdict".
Ties ("[[C]]", "[[A=B]]", "tie") are not verdicts: "no_verdict".
Text over MAX_CHARS is "too_long" and not parsed at all: a runaway generation is not a
judgment we trust, even if it happens to end in a marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_CHARS = 100_000

Choice = Literal["A", "B"]

_NOUN = r"(?:answer|response|output|assistant|option|candidate|model|summary|caption)"
# a choice token: A/B/1/2, bare or in ( ) [ ] or quotes; group "c". "Assistant A's" is allowed.
_TOKEN = r"[\(\[\"']?\s*(?P<c>[ab12])\s*[\)\]\"']?(?!\w|'[a-rt-z])"
# labels that are verdicts whatever follows them
_LABEL = r"(?:overall\s+|final\s+|my\s+)?(?:judge?ment|verdict|winner)"
# labels that are verdicts only when followed by a colon or dash ("the correct choice is B" is not one);
# the generic ones only at a line start ("Response A's answer: B" is about the question, not the pair)
_COLON_LABEL = (
    r"\b(?:final\s+answer|(?:final\s+)?(?:decision|conclusion|preference)|final\s+choice|"
    r"(?:better|preferred|winning)(?:\s+(?:response|answer|output|one))?)"
)
_ORD = r"(?P<o>first|second|former|latter|1st|2nd)"
_WORSE = r"(?P<worse>worse|inferior|weaker|less\s+(?:accurate|correct|helpful|detailed|faithful|precise))"
_TAGS = r"(?:answer|verdict|choice|judge?ment|winner|preference|final_answer|final_verdict)"
_JSON_KEYS = (
    r"(?:verdict|winner|choice|preference|decision|judge?ment|final[_ ]verdict|"
    r"better[_ ]?(?:response|answer|output)?|preferred(?:[_ ](?:response|answer|output))?)"
)
_LINE_LABEL = r"^[ \t]*(?:answer|choice|result|output)"
_BETTER = r"(?:better|best|superior|preferred|preferable|stronger|more\s+(?:accurate|correct|helpful|detailed|faithful|precise))"
_THE_BETTER = r"(?:the\s+)?(?:better|best|preferred|superior|winning|stronger)\s+" + _NOUN + r"\s+(?:is|would\s+be)"
_TIERS: list[list[re.Pattern[str]]] = [
    [
        re.compile(r"\[\[\s*(?P<c>[ab12])\s*(?:>{1,2}\s*[ab12]\s*)?\]\]", re.I),
        re.compile(r"\\boxed\{\s*(?:\\text\{\s*)?(?:" + _NOUN + r"\s*)?\(?(?P<c>[ab12])\)?\s*\}?\s*\}", re.I),
        re.compile(r"<(?P<tag>" + _TAGS + r")>\s*(?:" + _NOUN + r"\s*)?\(?(?P<c>[ab12])\)?\s*</(?P=tag)>", re.I),
        re.compile(r"\[RESULT\]\s*(?:" + _NOUN + r"\s*)?" + _TOKEN, re.I),
        re.compile(r"[\"']" + _JSON_KEYS + r"[\"']\s*:\s*[\"']?\s*(?:" + _NOUN + r"\s*)?" + _TOKEN, re.I),
    ],
    [
        re.compile(r"\b" + _LABEL + r"\s*(?:is|was|:|-|=)?\s*(?:the\s+)?(?:" + _NOUN + r"\s*)?" + _TOKEN, re.I),
        re.compile(
            r"(?:" + _COLON_LABEL + "|" + _LINE_LABEL + r")\s*[:=-]\s*(?:" + _NOUN + r"\s*)?" + _TOKEN, re.I | re.M
        ),
        re.compile(r"\b" + _THE_BETTER + r"\s*(?:" + _NOUN + r"\s*)?" + _TOKEN, re.I),
        re.compile(r"\b(?:" + _THE_BETTER + "|" + _LABEL + r"\s*(?:is|was|:|-|=)?)\s*(?:the\s+)?" + _ORD + r"\b", re.I),
    ],
    [
        re.compile(
            r"\b" + _NOUN + r"\s*" + _TOKEN + r"(?:'s\s+\w+)?\s+(?:is|was|seems|appears|remains)\s+"
            r"(?P<filler>(?:\w+\s+){0,2}?)" + _BETTER,
            re.I,
        ),
        re.compile(r"(?<![\w'])(?P<c>[AB])\s+is\s+(?P<filler>(?:\w+\s+){0,2}?)" + _BETTER),  # upper-case only
        re.compile(
            r"\bI\s+(?:would\s+)?(?:prefer|choose|pick|select|go\s+with)\s+(?:the\s+)?(?:" + _NOUN + r"\s*)?" + _TOKEN,
            re.I,
        ),
        re.compile(r"^[ \t]*(?:" + _NOUN + r"\s*)?" + _TOKEN + r"[ \t]*[.!]?[ \t]*$", re.I | re.M),
        re.compile(
            r"\b" + _NOUN + r"\s*" + _TOKEN + r"(?:'s\s+\w+)?\s+(?:is|was|seems|appears|remains)\s+"
            r"(?P<filler>(?:\w+\s+){0,2}?)" + _WORSE,
            re.I,
        ),
        re.compile(
            r"\bthe\s+" + _ORD + r"(?:\s+(?:" + _NOUN + r"|one))?\s+(?:is|was|seems|appears|remains)\s+"
            r"(?P<filler>(?:\w+\s+){0,2}?)" + _BETTER,
            re.I,
        ),
        re.compile(r"\bI\s+(?:would\s+)?(?:prefer|choose|pick|select|go\s+with)\s+the\s+" + _ORD + r"\b", re.I),
    ],
]
_NEGATION = re.compile(r"\b(?:not|no|never|hardly|less)\b|n't", re.I)
_SEGMENT_END = re.compile(r"\n|(?<=[.!?])\s+")


@dataclass(frozen=True)
class Verdict:
    choice: Choice | None
    reason: str  # "ok" | "no_verdict" | "conflicting" | "too_long" | "empty"


def _clean(text: str) -> str:
    text = re.sub(r"\*+|`+|_{2,}|^[ \t]*#+|^[ \t]*>+", "", text, flags=re.M)
    return text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")


def _markers(text: str, patterns: list[re.Pattern[str]]) -> list[tuple[int, Choice]]:
    found: list[tuple[int, Choice]] = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            if _NEGATION.search(m.groupdict().get("filler") or ""):
                continue  # "Response A is not better"
            groups = m.groupdict()
            if groups.get("o"):
                choice: Choice = "A" if groups["o"].lower() in ("first", "former", "1st") else "B"
                found.append((m.start("o"), choice))
                continue
            c = m.group("c")
            after = text[m.end("c") : m.end("c") + 3]
            # a bare lower-case "a" after a label is usually an article ("Verdict: a tie")
            if c == "a" and m.group(0).rstrip(")]\"' ").endswith(" a") and re.match(r"\s+\w", after):
                continue
            choice = "A" if c.lower() in "a1" else "B"
            if groups.get("worse"):  # "Response B is worse" names the other one
                choice = "B" if choice == "A" else "A"
            found.append((m.start("c"), choice))
    return sorted(found)


def parse_verdict(text: str | None) -> Verdict:
    if text is None or not text.strip():
        return Verdict(None, "empty")
    if len(text) > MAX_CHARS:
        return Verdict(None, "too_long")
    text = _clean(text)
    conflicting = False
    for patterns in _TIERS:
        found = _markers(text, patterns)
        if not found:
            continue
        last_pos, last = found[-1]
        seg_start = max((m.end() for m in _SEGMENT_END.finditer(text, 0, last_pos)), default=0)
        if {c for pos, c in found if pos >= seg_start} == {"A", "B"}:
            conflicting = True  # e.g. the format instructions echoed; a weaker tier may still decide
            continue
        return Verdict(last, "ok")
    scored = _score_verdict(text)
    if scored is not None:
        return Verdict(scored, "ok")
    return Verdict(None, "conflicting" if conflicting else "no_verdict")


_SCORE = re.compile(
    r"(?:\b(?:score|rating)s?\s+(?:for|of)\s+(?:the\s+)?" + _NOUN + r"\s*" + _TOKEN + r"\s*(?:is|:|=|-)?\s*"
    r"(?P<v1>\d+(?:\.\d+)?)"
    r"|\b" + _NOUN + r"\s*" + _TOKEN.replace("(?P<c>", "(?P<c2>") + r"(?:'s)?\s*(?:(?:score|rating)\s*(?:is|:|=|-)?\s*"
    r"(?P<v2>\d+(?:\.\d+)?)|[:=-]\s*(?P<v3>\d+(?:\.\d+)?)\s*/\s*10\b))",
    re.I,
)


def _score_verdict(text: str) -> Choice | None:
    """The higher of two scores (the last score given for each response); None without both or on a tie."""
    scores: dict[str, float] = {}
    for m in _SCORE.finditer(text):
        c = (m.group("c") or m.group("c2")).lower()
        scores["A" if c in "a1" else "B"] = float(m.group("v1") or m.group("v2") or m.group("v3"))
    if len(scores) < 2 or scores["A"] == scores["B"]:
        return None
    return "A" if scores["A"] > scores["B"] else "B"


def format_verdict(choice: str) -> str:
    """ "A" -> "[[A]]" (the form the judge is trained to emit)."""
    if choice not in ("A", "B"):
        raise ValueError(f"choice must be 'A' or 'B', got {choice!r}")
    return f"[[{choice}]]"
