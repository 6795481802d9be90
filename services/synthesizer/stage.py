"""Synthesizer: a shard of prompts in, a shard of preference pairs out.

In:    ShardTask; input_key = prompts JSONL {prompt_id, image_key, instruction, kind, question_type, options}
Does:  closed-ended prompts: N sampled answers, majority (>= threshold) = preferred,
       a random different sampled answer = rejected.
       open-ended prompts: the model's answer = preferred, a copy with injected errors = rejected.
Out:   pairs JSONL runs/<run>/iter<k>/pairs/<i>.jsonl; rows in `pairs`; set-aside rows with reasons.
Next:  loop.on_synthesized -> reasoner.
"""
from __future__ import annotations

import logging
import time

from sqlalchemy import select

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import Checkpoint, Pair, Prompt
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.models.backend import ChatRequest, SamplingParams
from selfjudge.shared.sources.scenes import perturb
from selfjudge.shared.store import get_image, get_jsonl, put_jsonl

from .classify import classify
from .voting import majority_vote

STAGE = "synthesizer"
log = logging.getLogger(__name__)


def writer_checkpoint(ctx: Context, task: ShardTask) -> int:
    """Which model writes the responses: the run's base model, or the current judge."""
    if ctx.settings.synth.model == "judge":
        return task.judge_checkpoint_id
    with ctx.sessions() as s:
        return s.scalar(select(Checkpoint.id).where(Checkpoint.run_id == task.run_id, Checkpoint.iteration == 0))


def handle(payload: dict, ctx: Context) -> None:
    task = ShardTask.model_validate(payload)
    out_key = shards.shard_key(task.run_id, task.iteration, "pairs", task.index)
    with ctx.sessions() as s:
        if shards.is_done(s, STAGE, task):       # redelivered after it was recorded
            loop.on_synthesized(ctx, task, out_key)
            return
    shards.mark_attempt(ctx.sessions, STAGE, task)
    start, m, cfg = time.perf_counter(), ctx.metrics, ctx.settings.synth
    rng = loop.rng_for(ctx.settings.run.seed, STAGE, task.iteration, task.index)

    prompts, aside = [], []
    for p in get_jsonl(ctx.store, task.input_key):
        try:
            p["image"] = get_image(ctx.store, p["image_key"])
            prompts.append(p)
        except ValueError as exc:
            aside.append((p["source_id"], "bad_image", str(exc)))
    m.items_in.labels(STAGE).inc(len(prompts) + len(aside))

    writer_id = writer_checkpoint(ctx, task)
    backend = ctx.models.backend(writer_id)
    for p in prompts:
        if p["kind"] not in ("open", "closed"):    # "auto": decide from the instruction's cues
            p["kind"], p["kind_reason"] = classify(p["instruction"], p.get("options"))
    closed = [p for p in prompts if p["kind"] == "closed"]
    opened = [p for p in prompts if p["kind"] != "closed"]
    seed = rng.randrange(2**31)
    closed_gens = _generate(ctx, backend, closed, SamplingParams(
        n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens, seed=seed), "closed")
    open_gens = _generate(ctx, backend, opened, SamplingParams(
        n=1, temperature=0.0, max_new_tokens=cfg.open_max_new_tokens, seed=seed), "open")

    pairs: list[dict] = []
    for p, gen in zip(closed, closed_gens):
        vote = majority_vote(gen.texts, cfg.majority_threshold, rng, options=p.get("options"))
        if vote.reason != "ok":
            aside.append((p["source_id"], f"closed_{vote.reason}", f"top answer {vote.count}/{vote.total}"))
            continue
        pairs.append(dict(p, preferred=vote.majority.strip(), rejected=vote.rejected.strip(),
                          method="majority_vote", errors=[], vote_count=vote.count, n_samples=vote.total))
    for p, gen in zip(opened, open_gens):
        original = gen.texts[0].strip()
        if not original:
            aside.append((p["source_id"], "open_empty_response", ""))
            continue
        rejected, errors = perturb(original, rng)
        if not errors or rejected == original:
            aside.append((p["source_id"], "open_perturb_no_change", original[:80]))
            continue
        pairs.append(dict(p, preferred=original, rejected=rejected, method="rule_perturb", errors=errors,
                          vote_count=None, n_samples=1))

    with ctx.sessions.begin() as s:
        for p in prompts:
            if "kind_reason" in p:      # record the open/closed decision and why
                row = s.get(Prompt, p["prompt_id"])
                row.kind, row.kind_reason = p["kind"], p["kind_reason"]
        for p in pairs:
            row = Pair(run_id=task.run_id, iteration=task.iteration, shard_index=task.index,
                       prompt_id=p["prompt_id"], preferred=p["preferred"], rejected=p["rejected"],
                       method=p["method"], errors=p["errors"], vote_count=p["vote_count"],
                       n_samples=p["n_samples"], checkpoint_id=writer_id, meta=p.get("meta"))
            s.add(row)
            s.flush()
            p["pair_id"] = row.id
            p.pop("image")
        for record_id, code, detail in aside:
            shards.set_aside(s, task, STAGE, record_id, f"{code}: {detail}" if detail else code)
            m.items_rejected.labels(STAGE, code).inc()
        put_jsonl(ctx.store, out_key, pairs)
        seconds = time.perf_counter() - start
        shards.finish(s, STAGE, task, out_key, len(prompts) + len(aside), len(pairs), seconds)
    m.items_out.labels(STAGE).inc(len(pairs))
    m.shards.labels(STAGE, "done").inc()
    m.shard_seconds.labels(STAGE).observe(seconds)
    log.info("synthesizer: run %s iter %s shard %s: %s prompts -> %s pairs, %s set aside (%.1fs)",
             task.run_id, task.iteration, task.index, len(prompts), len(pairs), len(aside), seconds)
    loop.on_synthesized(ctx, task, out_key)


def _generate(ctx: Context, backend, prompts: list[dict], params: SamplingParams, what: str) -> list:  # noqa: ANN001
    if not prompts:
        return []
    requests = [ChatRequest(text=p["instruction"], images=[p["image"]], key=str(p["prompt_id"])) for p in prompts]
    start = time.perf_counter()
    gens = backend.generate(requests, params, progress=lambda done, total: log.info(
        "synthesizer: %s prompts %s/%s", what, done, total))
    m = ctx.metrics
    m.generation_seconds.labels(STAGE).inc(time.perf_counter() - start)
    m.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens))
    m.samples.labels(STAGE).inc(sum(len(g.texts) for g in gens))
    return gens
