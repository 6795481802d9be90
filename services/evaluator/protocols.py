"""The official judging protocols of the two benchmarks, and the held-out set's own.

A protocol says how an item is put to the judge (prompt, which response is shown first,
how many samples, sampling settings) and how an output is read back as a verdict. Scoring
(how verdicts become accuracies) is in `scoring.py`.

Orders are named relative to the PREFERRED response, as everywhere in selfjudge:
  "AB": the preferred response is shown first (Answer 1 / Assistant A / Response A),
  "BA": it is shown second. The right verdict is "A" for "AB" and "B" for "BA".

Sources (quoted faithfully; only the Python quoting differs):
  VL-RewardBench, github.com/vl-rewardbench/VL_RewardBench
    prompt.py (commit e492d65): `prompt(data_obj, random_number)` -> VL_REWARDBENCH_PROMPT
    inference.py (commit e492d65): random.choice([0, 1]) picks the order per call;
        `question.replace("<image>\\n", "")`; temperature=0.2, top_p=0.2, max_tokens=2048;
        the verdict regex -> VL_REWARDBENCH_PATTERN (applied after removing "\\n" and "*").
  Multimodal RewardBench, github.com/facebookresearch/multimodal_rewardbench
    scripts/1_run_model_as_judge_gpt4o.py (commit 3366b34): `judge_prompt` -> MM_REWARDBENCH_PROMPT,
        answer_a = Output1, answer_b = Output2 (one fixed order), max_tokens=1024
    scripts/2_get_accuracy.py (commit 3366b34): `extract_judgment` -> "[[A]]" in text, then
        "[[B]]" in text, else a coin flip from random.seed(123) (done in scoring.py).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt
from selfjudge.shared.verdict import parse_verdict

VL_REWARDBENCH = "vl-rewardbench"
MM_REWARDBENCH = "mm-rewardbench"
HELDOUT = "heldout"
BENCHMARKS = (VL_REWARDBENCH, MM_REWARDBENCH)

# vl-rewardbench/VL_RewardBench prompt.py, verbatim (the leading space is in the original).
VL_REWARDBENCH_PROMPT = """ You are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please analyze the following image and question, then determine which of the two provided answers is better.

Question: {query}

Answer 1: {answer_1}

Answer 2: {answer_2}

Please evaluate both answers based on the following criteria:
1. Accuracy: How well does the answer align with the visual information in the image?
2. Completeness: Does the answer fully address all aspects of the question?
3. Clarity: Is the answer easy to understand and well-articulated?
4. Relevance: Does the answer directly relate to the question and the image?

After your evaluation, please:
1. Explain your reasoning for each criterion.
2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: Overall Judgment: Answer X is better.

Your response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task."""

# vl-rewardbench/VL_RewardBench inference.py / cal.py, verbatim.
VL_REWARDBENCH_PATTERN = re.compile(
    r"(?:Overall Judgment|Therefore)\s*.*\s*-*\s*Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?better", re.IGNORECASE
)

# facebookresearch/multimodal_rewardbench scripts/1_run_model_as_judge_gpt4o.py `judge_prompt`, verbatim
# (the original's "\n" escapes inside the triple-quoted string are real newlines there too).
MM_REWARDBENCH_PROMPT = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. You should choose the assistant that follows the user's instructions and answers the user's question better. Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the order in which the responses were presented does not influence your decision. Do not allow the length of the responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective as possible. After providing your explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better.

[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"""


@dataclass(frozen=True)
class Parsed:
    choice: str | None  # "A" (first shown) | "B" (second shown) | None
    reason: str  # "ok" or why there is no verdict


def parse_vl_rewardbench(text: str | None) -> Parsed:
    """The official regex. An answer number other than 1 or 2 is no verdict (the official script would
    count it as agreeing with the preferred response, an accident of comparing with the rejected one)."""
    if not text:
        return Parsed(None, "empty")
    m = VL_REWARDBENCH_PATTERN.search(text.replace("\n", "").replace("*", ""))
    if m is None:
        return Parsed(None, "no_verdict")
    number = int(m.group(1))
    if number not in (1, 2):
        return Parsed(None, "answer_out_of_range")
    return Parsed("A" if number == 1 else "B", "ok")


def parse_mm_rewardbench(text: str | None) -> Parsed:
    """The official substring test: "[[A]]" anywhere wins, then "[[B]]"; the coin flip is the scorer's."""
    if not text:
        return Parsed(None, "empty")
    if "[[A]]" in text:
        return Parsed("A", "ok")
    if "[[B]]" in text:
        return Parsed("B", "ok")
    return Parsed(None, "no_verdict")


def parse_selfjudge(text: str | None) -> Parsed:
    v = parse_verdict(text)
    return Parsed(v.choice, v.reason)


def correct_letter(order: str) -> str:
    if order not in ("AB", "BA"):
        raise ValueError(f"order must be AB or BA, not {order!r}")
    return "A" if order == "AB" else "B"


def shown(preferred: str, rejected: str, order: str) -> tuple[str, str]:
    return (preferred, rejected) if order == "AB" else (rejected, preferred)


@dataclass(frozen=True)
class Protocol:
    """How one benchmark is put to a judge. `k` official samples per item; `both_orders` adds one
    greedy judgment in each order (position-consistent accuracy and position bias)."""

    benchmark: str
    k: int
    temperature: float
    top_p: float
    parser: str = "official"  # "official" | "selfjudge" (shared.verdict: also [[A]], "Verdict: B", ...)
    both_orders: bool = True
    max_new_tokens: int | None = None
    seed: int = 0

    def parse(self, text: str | None) -> Parsed:
        if self.parser == "selfjudge" or self.benchmark == HELDOUT:
            return parse_selfjudge(text)
        return parse_vl_rewardbench(text) if self.benchmark == VL_REWARDBENCH else parse_mm_rewardbench(text)

    def prompt(self, query: str, preferred: str, rejected: str, order: str) -> tuple[str, str | None]:
        """(user text, system text) with the two responses shown in `order`."""
        first, second = shown(preferred, rejected, order)
        if self.benchmark == VL_REWARDBENCH:
            text = VL_REWARDBENCH_PROMPT.format(query=query, answer_1=first, answer_2=second)
            return text.replace("<image>\n", ""), None
        if self.benchmark == MM_REWARDBENCH:
            return MM_REWARDBENCH_PROMPT.format(question=query, answer_a=first, answer_b=second), None
        return judge_prompt(query, first, second), JUDGE_SYSTEM

    def official_orders(self, item_id: str, better: int) -> list[str]:
        """The order of each official sample. VL-RewardBench: a coin per call (seeded by item and sample,
        the same for every checkpoint, so checkpoints are compared on the same prompts).
        Multimodal RewardBench: Output1 is always A. Held-out: both orders are the protocol."""
        if self.benchmark == VL_REWARDBENCH:
            return [
                "AB" if random.Random(f"{self.seed}:{self.benchmark}:{item_id}:{s}").random() < 0.5 else "BA"
                for s in range(self.k)
            ]
        if self.benchmark == MM_REWARDBENCH:
            return ["AB" if better == 0 else "BA"] * self.k
        return []


def make_protocol(
    benchmark: str, k: int | None = None, parser: str = "official", max_new_tokens: int | None = None, seed: int = 0
) -> Protocol:
    """max_new_tokens None: the official limit (VL-RewardBench max_tokens=2048, MM-RewardBench 1024)."""
    if parser not in ("official", "selfjudge"):
        raise ValueError(f"parser must be 'official' or 'selfjudge', not {parser!r}")
    if benchmark == VL_REWARDBENCH:  # inference.py: temperature=0.2, top_p=0.2; the paper reports k = 5
        return Protocol(benchmark, k or 5, 0.2, 0.2, parser, True, max_new_tokens or 2048, seed)
    if benchmark == MM_REWARDBENCH:  # one judgment per item in the file's order; greedy for an open judge
        if k not in (None, 1):
            raise ValueError("mm-rewardbench's protocol judges each item once (k = 1)")
        return Protocol(benchmark, 1, 0.0, 1.0, parser, True, max_new_tokens or 1024, seed)
    if benchmark == HELDOUT:  # both orders, greedy, the selfjudge prompt
        return Protocol(benchmark, 0, 0.0, 1.0, "selfjudge", True, max_new_tokens, seed)
    raise ValueError(f"unknown benchmark {benchmark!r} (have: {', '.join(BENCHMARKS)})")
