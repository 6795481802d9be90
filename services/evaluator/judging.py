"""Judging: eval items put to a judge under a protocol, each output read back as a verdict.

`judge_items` is the evaluator's only contact with a model. For each item it asks for the
protocol's official judgments (the benchmark's order rule, samples at its temperature) and, when
the protocol judges both orders, one greedy judgment with the preferred response shown first and
one with it shown second (recorded under "<benchmark>:both"; the held-out set's judgments are
these two, under "heldout"). A greedy official judgment and a both-orders one of the same item and
order share one generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL.Image import Image

from selfjudge.shared.metrics import Metrics
from selfjudge.shared.models.generation.backend import ChatRequest, Generation, GenerationBackend, SamplingParams
from selfjudge.shared.records import EvalItem, EvalJudgment, Order

from .protocols import HELDOUT, Protocol, correct_letter

STAGE = "evaluator"


def both_name(benchmark: str) -> str:
    """Where a benchmark's both-orders judgments are recorded."""
    return f"{benchmark}:both"


@dataclass(frozen=True)
class Planned:
    """One judgment to record: which generation answers it (`("sampled", i)` or `("greedy", (item, order))`)."""

    item: EvalItem
    benchmark: str
    order: Order
    sample: int
    generation: tuple


def request(protocol: Protocol, item: EvalItem, order: str, image: Image, key: str) -> ChatRequest:
    """The item in one order ("AB": the preferred response first), as the protocol words it."""
    preferred, rejected = item.responses[item.better], item.responses[1 - item.better]
    text, system = protocol.prompt(item.query, preferred, rejected, order)
    return ChatRequest(text=text, images=[image], system=system, key=key)


def plan_judgments(
    protocol: Protocol, items: list[EvalItem], images: dict[str, Image]
) -> tuple[list[ChatRequest], dict[tuple[str, str], ChatRequest], list[Planned]]:
    """(sampled requests, greedy requests by (item, order), the judgments to record)."""
    name = protocol.benchmark  # the official judgments (the held-out protocol has none)
    both = both_name(name) if name != HELDOUT else HELDOUT
    sampled: list[ChatRequest] = []
    greedy: dict[tuple[str, str], ChatRequest] = {}
    planned: list[Planned] = []
    for item in items:
        image = images[item.image_key]
        for sample, order in enumerate(protocol.official_orders(item.item_id, item.better)):
            if protocol.temperature > 0:
                sampled.append(request(protocol, item, order, image, f"{item.item_id}:{sample}"))
                planned.append(Planned(item, name, order, sample, ("sampled", len(sampled) - 1)))
            else:
                greedy.setdefault(
                    (item.item_id, order), request(protocol, item, order, image, f"{item.item_id}:{order}")
                )
                planned.append(Planned(item, name, order, sample, ("greedy", (item.item_id, order))))
        if protocol.both_orders:
            for order in ("AB", "BA"):
                greedy.setdefault(
                    (item.item_id, order), request(protocol, item, order, image, f"{item.item_id}:{order}")
                )
                planned.append(Planned(item, both, order, 0, ("greedy", (item.item_id, order))))
    return sampled, greedy, planned


def generate(
    backend: GenerationBackend,
    protocol: Protocol,
    sampled: list[ChatRequest],
    greedy: dict[tuple[str, str], ChatRequest],
    progress: Callable[[int, int], None] | None = None,
) -> dict[tuple, Generation]:
    """Every generation the planned judgments need, by their `Planned.generation` key."""
    max_new = protocol.max_new_tokens or 128
    gens: dict[tuple, Generation] = {}
    if sampled:
        params = SamplingParams(
            n=1, temperature=protocol.temperature, top_p=protocol.top_p, max_new_tokens=max_new, seed=protocol.seed
        )
        outs = backend.generate(sampled, params, progress=progress)
        gens.update({("sampled", i): g for i, g in enumerate(outs)})
    if greedy:
        keys = list(greedy)
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new)
        outs = backend.generate([greedy[k] for k in keys], params, progress=progress)
        gens.update({("greedy", k): g for k, g in zip(keys, outs)})
    return gens


def judge_items(
    backend: GenerationBackend,
    protocol: Protocol,
    items: list[EvalItem],
    images: dict[str, Image],
    metrics: Metrics | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[EvalJudgment]]:
    """Every judgment of these items under the protocol, by item id."""
    sampled, greedy, planned = plan_judgments(protocol, items, images)
    start = time.perf_counter()
    gens = generate(backend, protocol, sampled, greedy, progress)
    if metrics is not None:
        metrics.generation_seconds.labels(STAGE).inc(time.perf_counter() - start)
        metrics.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens.values()))
        metrics.samples.labels(STAGE).inc(len(gens))
    results: dict[str, list[EvalJudgment]] = {item.item_id: [] for item in items}
    for p in planned:
        text = gens[p.generation].texts[0]
        parsed = protocol.parse(text)
        if parsed.choice is None and metrics is not None:
            metrics.parse_failures.labels(STAGE, parsed.reason).inc()
        results[p.item.item_id].append(
            EvalJudgment(
                benchmark=p.benchmark,
                item_id=p.item.item_id,
                category=p.item.category,
                order=p.order,
                sample=p.sample,
                output=text,
                verdict=parsed.choice,
                correct=parsed.choice == correct_letter(p.order),
            )
        )
    return results
