"""Reasoner: a shard of pairs in, the judge's reasoning and verdicts out.

In:    ShardTask; input_key = pairs JSONL (from the synthesizer)
Does:  the current judge (checkpoint k-1) reads each pair in both orders (preferred shown as
       A, then as B), k samples per order, writes reasoning + a verdict; the verdict is parsed.
       Unparseable outputs are kept with their reason (parse_reason: empty | no_verdict | conflicting |
       too_long), counted in selfjudge_parse_failures_total{reason} and in `selfjudge status`
       (parse_failures per iteration).
Out:   judgments JSONL runs/<run>/iter<k>/judgments/<i>.jsonl; rows in `judgments`.
Next:  loop.on_reasoned -> filter.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import Judgment
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt, ordered
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
from selfjudge.shared.records import JudgmentRecord, PairRecord, RecordError, read_records, write_records
from selfjudge.shared.store import get_image
from selfjudge.shared.verdict import parse_verdict

STAGE = "reasoner"
ORDERS = ("AB", "BA")
log = logging.getLogger(__name__)


def handle(payload: dict, ctx: Context) -> None:
    task = ShardTask.model_validate(payload)
    out_key = shards.shard_key(task.run_id, task.iteration, "judgments", task.index)
    shards.run_shard(
        ctx,
        STAGE,
        task,
        lambda attempt: reason(ctx, task, out_key, attempt),
        hand_off=lambda: loop.on_reasoned(ctx, task, out_key),
    )


def reason(ctx: Context, task: ShardTask, out_key: str, attempt: shards.Attempt) -> None:
    """The shard's judgments, written with the shard's `done` in one transaction."""
    m, cfg = ctx.metrics, ctx.settings.reason

    bad: list[RecordError] = []
    pairs = list(read_records(ctx.store, task.input_key, PairRecord, invalid=bad.append))
    m.items_in.labels(STAGE).inc(len(pairs) + len(bad))
    requests, slots = [], []
    images = {}
    for p in pairs:
        if p.image_key not in images:
            images[p.image_key] = get_image(ctx.store, p.image_key)
        for order in ORDERS:
            a, b, correct = ordered(p.preferred, p.rejected, order)
            text = judge_prompt(p.instruction, a, b)
            requests.append(
                ChatRequest(text=text, images=[images[p.image_key]], system=JUDGE_SYSTEM, key=f"{p.pair_id}:{order}")
            )
            slots.append((p, order, correct, text))

    backend = ctx.models.backend(task.judge_checkpoint_id)
    params = SamplingParams(
        n=cfg.samples_per_order,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=loop.rng_for(ctx.settings.run.seed, STAGE, task.iteration, task.index).randrange(2**31),
    )
    gen_start = time.perf_counter()
    gens = (
        backend.generate(requests, params, progress=lambda done, total: log.info("reasoner: judged %s/%s", done, total))
        if requests
        else []
    )
    m.generation_seconds.labels(STAGE).inc(time.perf_counter() - gen_start)
    m.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens))
    m.samples.labels(STAGE).inc(sum(len(g.texts) for g in gens))

    failpoint("reasoner.before_commit")  # fault tests: die after the work, before recording it
    records: list[JudgmentRecord] = []
    failures = Counter()
    with ctx.sessions.begin() as s:
        for (p, order, correct, text), gen in zip(slots, gens):
            for sample, (output, tokens) in enumerate(zip(gen.texts, gen.token_counts)):
                verdict = parse_verdict(output)
                if verdict.choice is None:
                    m.parse_failures.labels(STAGE, verdict.reason).inc()
                    failures[verdict.reason] += 1
                row = Judgment(
                    run_id=task.run_id,
                    iteration=task.iteration,
                    shard_index=task.index,
                    pair_id=p.pair_id,
                    order=order,
                    sample=sample,
                    prompt_text=text,
                    output=output,
                    verdict=verdict.choice,
                    parse_reason=verdict.reason,
                    correct=verdict.choice == correct,
                    tokens=tokens,
                    checkpoint_id=task.judge_checkpoint_id,
                )
                s.add(row)
                s.flush()
                records.append(
                    JudgmentRecord(
                        judgment_id=row.id,
                        pair_id=p.pair_id,
                        order=order,
                        sample=sample,
                        image_key=p.image_key,
                        prompt_text=text,
                        output=output,
                        verdict=verdict.choice,
                        parse_reason=verdict.reason,
                        correct=row.correct,
                        question_type=p.question_type,
                        errors=p.errors,
                        method=p.method,
                        source=p.source,
                        prompt_id=p.prompt_id,
                        holdout=p.holdout,
                    )
                )
        attempt.set_aside(s, (err.set_aside() for err in bad))  # lines that are no record
        write_records(ctx.store, out_key, records)
        seconds = attempt.finish(s, out_key, len(pairs) + len(bad), len(records))
    log.info(
        "reasoner: run %s iter %s shard %s: %s pairs -> %s judgments, %s correct, unparseable %s (%.1fs)",
        task.run_id,
        task.iteration,
        task.index,
        len(pairs),
        len(records),
        sum(r.correct for r in records),
        dict(failures),
        seconds,
    )
