"""Evaluator: a judge checkpoint in, its accuracy on held-out generator-labelled pairs out.

In:    EvalTask (iteration 0 = the base judge; iteration k = judge k)
Does:  judges every held-out pair in both orders (greedy); the labels come from the scene
       generator and are never used for training.
Out:   `eval_results` rows (per item and order) and `eval_summaries` rows: accuracy (over all
       judgments), both_orders (right in both orders), position_bias (same letter both times),
       overall and per question type.
Next:  loop.on_evaluated -> the next iteration, or the end of the run.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

from sqlalchemy import select

from selfjudge.shared import loop
from selfjudge.shared.context import Context
from selfjudge.shared.db import EvalResult, EvalSummary
from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt, ordered
from selfjudge.shared.messages import EvalTask
from selfjudge.shared.models.backend import ChatRequest, SamplingParams
from selfjudge.shared.store import get_image, get_jsonl
from selfjudge.shared.verdict import parse_verdict

STAGE = "evaluator"
BENCHMARK = "heldout"
log = logging.getLogger(__name__)


def summarize(results: list[dict]) -> list[tuple[str, str, float, int]]:
    """(category, metric, value, n) from per-order results {item_id, category, order, correct, verdict}."""
    by_item: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_item[r["item_id"]].append(r)
    rows = []
    categories = sorted({r["category"] for r in results})
    for category in ["overall", *categories]:
        items = [rs for rs in by_item.values() if category == "overall" or rs[0]["category"] == category]
        judgments = [r for rs in items for r in rs]
        if not items:
            continue
        rows.append((category, "accuracy", sum(r["correct"] for r in judgments) / len(judgments), len(judgments)))
        rows.append((category, "both_orders", sum(all(r["correct"] for r in rs) for rs in items) / len(items),
                     len(items)))
        same = [len({r["verdict"] for r in rs}) == 1 and rs[0]["verdict"] is not None for rs in items]
        rows.append((category, "position_bias", sum(same) / len(items), len(items)))
    return rows


def handle(payload: dict, ctx: Context) -> None:
    task = EvalTask.model_validate(payload)
    with ctx.sessions() as s:
        done = s.scalar(select(EvalSummary.id).where(
            EvalSummary.run_id == task.run_id, EvalSummary.iteration == task.iteration,
            EvalSummary.benchmark == BENCHMARK).limit(1))
    if done is not None:
        loop.on_evaluated(ctx, task)
        return
    start, m = time.perf_counter(), ctx.metrics
    items = list(get_jsonl(ctx.store, loop.heldout_key(task.run_id)))
    m.items_in.labels(STAGE).inc(len(items))
    requests, slots, images = [], [], {}
    for item in items:
        if item["image_key"] not in images:
            images[item["image_key"]] = get_image(ctx.store, item["image_key"])
        for order in ("AB", "BA"):
            a, b, correct = ordered(item["preferred"], item["rejected"], order)
            requests.append(ChatRequest(text=judge_prompt(item["instruction"], a, b),
                                        images=[images[item["image_key"]]], system=JUDGE_SYSTEM,
                                        key=f"{item['item_id']}:{order}"))
            slots.append((item, order, correct))
    backend = ctx.models.backend(task.checkpoint_id)
    gen_start = time.perf_counter()
    gens = backend.generate(requests, SamplingParams(n=1, temperature=0.0,
                                                     max_new_tokens=ctx.settings.eval.max_new_tokens),
                            progress=lambda done, total: log.info("evaluator: %s/%s", done, total)) if requests else []
    m.generation_seconds.labels(STAGE).inc(time.perf_counter() - gen_start)
    m.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens))
    m.samples.labels(STAGE).inc(len(gens))

    results = []
    for (item, order, correct), gen in zip(slots, gens):
        verdict = parse_verdict(gen.texts[0])
        if verdict.choice is None:
            m.parse_failures.labels(STAGE, verdict.reason).inc()
        results.append({"item_id": item["item_id"], "category": item["category"], "order": order,
                        "output": gen.texts[0], "verdict": verdict.choice, "correct": verdict.choice == correct})
    summary = summarize(results)
    with ctx.sessions.begin() as s:
        for r in results:
            s.add(EvalResult(run_id=task.run_id, iteration=task.iteration, checkpoint_id=task.checkpoint_id,
                             benchmark=BENCHMARK, item_id=r["item_id"], category=r["category"], order=r["order"],
                             sample=0, output=r["output"], verdict=r["verdict"], correct=r["correct"]))
        for category, metric, value, n in summary:
            s.add(EvalSummary(run_id=task.run_id, iteration=task.iteration, checkpoint_id=task.checkpoint_id,
                              benchmark=BENCHMARK, category=category, metric=metric, value=value, n=n))
    for category, metric, value, _ in summary:
        if metric == "accuracy":
            m.eval_accuracy.labels(str(task.run_id), str(task.iteration), BENCHMARK, category).set(value)
    m.items_out.labels(STAGE).inc(len(results))
    m.shard_seconds.labels(STAGE).observe(time.perf_counter() - start)
    overall = {metric: value for category, metric, value, _ in summary if category == "overall"}
    log.info("evaluator: run %s iter %s checkpoint %s: accuracy %.3f, both orders %.3f, position bias %.3f",
             task.run_id, task.iteration, task.checkpoint_id, overall.get("accuracy", 0),
             overall.get("both_orders", 0), overall.get("position_bias", 0))
    loop.on_evaluated(ctx, task)
