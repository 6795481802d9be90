"""Synthesizer: a shard of prompts in, a shard of preference pairs out.

In:    ShardTask; input_key = prompts JSONL {prompt_id, source_id, image_key, instruction, kind, question_type,
       options}; gold answers and sources are read from the `prompts` rows.
Does:  1. duplicates (same image bytes + normalised instruction, `source.dedup`) are set aside as "duplicate";
       options are read from the instruction text ("A. cat\\nB. dog") when the source gave none.
       2. "auto" prompts are classed open/closed (classify.py): a strong answer-format cue decides,
       otherwise N sampled answers do (short and agreeing -> closed; the samples are reused as votes).
       The decision and its reason go to Prompt.kind / Prompt.kind_reason.
       3. closed: N samples (synth.n_samples, temperature, top_k, top_p), answers normalised, the
       majority (>= synth.majority_threshold) is preferred and a random different sample rejected
       (synth.closed_labels = "gold": the source's gold answer is preferred instead, the ablation).
       No majority / a tie / no alternative: set aside, the reason counted.
       4. open: the greedy response is preferred; the rejected one gets injected errors
       (inject.py, synth.injection = model | rule | both): the model rewrites its response with a
       detail-alteration or style-mimic prompt, the candidate is checked (changed? length within
       the bound? still an edit?). The alteration may write synth.alter_budget_ratio (1.3) x the
       original's token budget. A rejected alteration falls back to the rule perturber only where
       synth.fallback_to_rule says so (default: in the scenes world only); else it is set aside.
Out:   pairs JSONL runs/<run>/iter<k>/pairs/<i>.jsonl; rows in `pairs` (method, errors, meta with
       every decision: votes, label source, injection variant, attempts and why they failed);
       set-aside rows with reasons.
Next:  loop.on_synthesized -> reasoner.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from selfjudge.shared import loop, shards
from selfjudge.shared.config import SynthConfig
from selfjudge.shared.context import Context
from selfjudge.shared.db import Checkpoint, Pair, Prompt
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.messages import ShardTask
from selfjudge.shared.models.generation.backend import ChatRequest, GenerationBackend, SamplingParams
from selfjudge.shared.records import PairRecord, PromptRecord, SetAsideRecord, read_records, write_records
from selfjudge.shared.selection import is_holdout
from selfjudge.shared.sources.scenes.errors import perturb
from selfjudge.shared.store import get_image

from .classify import Decision, classify_cues, decide, extract_options, needs_samples
from .inject import alteration_prompt, check_alteration
from .voting import gold_vote, majority_vote, normalize_answer

if TYPE_CHECKING:
    from PIL.Image import Image

STAGE = "synthesizer"
log = logging.getLogger(__name__)


@dataclass
class Draft:
    """A prompt on its way through the synthesizer: its shard record and what the stage learns about
    it (the `prompts` row's gold answer and source, the options, the open/closed decision). Internal
    to the stage: what goes on is a PairRecord."""

    prompt: PromptRecord
    image: Image
    gold: str | None = None
    source: str = ""
    options: list[str] | None = None  # the source's, else read from the instruction
    options_from: str | None = None  # "source" | "instruction" | None
    holdout: bool = False  # in the checkpoint-selection holdout
    source_kind: str | None = None  # "open" | "closed" when the source says so
    kind: str = "auto"  # the decision: "open" | "closed"
    kind_reason: str = ""
    cue: Decision | None = None  # the instruction's cue, while the samples are pending

    @property
    def prompt_id(self) -> int:
        return self.prompt.prompt_id

    @property
    def source_id(self) -> str:
        return self.prompt.source_id


@dataclass
class Labelled:
    """A pair decided for a draft, before its `pairs` row (and so its id) exists."""

    draft: Draft
    preferred: str
    rejected: str
    method: str
    errors: list[str]
    vote_count: int | None
    n_samples: int
    meta: dict[str, Any]

    def record(self, pair_id: int) -> PairRecord:
        d, p = self.draft, self.draft.prompt
        return PairRecord(
            prompt_id=p.prompt_id,
            source_id=p.source_id,
            image_key=p.image_key,
            instruction=p.instruction,
            kind=d.kind,
            question_type=p.question_type,
            options=d.options,
            source=d.source,
            holdout=d.holdout,
            kind_reason=d.kind_reason,
            preferred=self.preferred,
            rejected=self.rejected,
            method=self.method,
            errors=self.errors,
            vote_count=self.vote_count,
            n_samples=self.n_samples,
            meta=self.meta,
            pair_id=pair_id,
        )


@dataclass
class Injection:
    """An open draft waiting for its rejected response: the greedy original and how to alter it."""

    draft: Draft
    original: str
    requested: str  # "model" | "rule"
    variant: str  # "detail" | "style_mimic"


def writer_checkpoint(ctx: Context, task: ShardTask) -> int:
    """Which model writes the responses: the run's base model, or the current judge."""
    if ctx.settings.synth.model == "judge":
        return task.judge_checkpoint_id
    with ctx.sessions() as s:
        return s.scalar(select(Checkpoint.id).where(Checkpoint.run_id == task.run_id, Checkpoint.iteration == 0))


def normalize_instruction(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").replace("<image>", " ")).strip().strip(" .?!").lower()


def find_duplicates(ctx: Context, task: ShardTask, prompt_ids: list[int], scope: str) -> dict[int, str]:
    """{prompt_id: source_id of the first copy} for prompts whose image (sha256 of its bytes) and
    normalised instruction were already drawn earlier (a lower prompt id) in this iteration
    ("iteration") or this run ("run"). Decided from the database, so shards agree without talking."""
    if scope == "off" or not prompt_ids:
        return {}
    ids = set(prompt_ids)
    with ctx.sessions() as s:
        mine = {r.id: r for r in s.scalars(select(Prompt).where(Prompt.id.in_(ids)))}
        query = select(Prompt.id, Prompt.image_id, Prompt.instruction, Prompt.source_id).where(
            Prompt.run_id == task.run_id, Prompt.image_id.in_({r.image_id for r in mine.values()})
        )
        if scope == "iteration":
            query = query.where(Prompt.iteration == task.iteration)
        first: dict[tuple[str, str], tuple[int, str]] = {}
        for pid, image_id, instruction, source_id in sorted(s.execute(query).all()):
            first.setdefault((image_id, normalize_instruction(instruction)), (pid, source_id))
    dups = {}
    for pid, row in mine.items():
        first_id, first_source = first[(row.image_id, normalize_instruction(row.instruction))]
        if first_id != pid:
            dups[pid] = first_source
    return dups


def handle(payload: dict, ctx: Context) -> None:
    task = ShardTask.model_validate(payload)
    out_key = shards.shard_key(task.run_id, task.iteration, "pairs", task.index)
    shards.run_shard(
        ctx,
        STAGE,
        task,
        lambda attempt: synthesize(ctx, task, out_key, attempt),
        hand_off=lambda: loop.on_synthesized(ctx, task, out_key),
    )


def synthesize(ctx: Context, task: ShardTask, out_key: str, attempt: shards.Attempt) -> None:
    """The shard's pairs, written with the shard's `done` in one transaction."""
    m, cfg = ctx.metrics, ctx.settings.synth
    rng = loop.rng_for(ctx.settings.run.seed, STAGE, task.iteration, task.index)

    prompts: list[Draft] = []
    aside: list[SetAsideRecord] = []
    for record in read_records(ctx.store, task.input_key, PromptRecord, invalid=lambda e: aside.append(e.set_aside())):
        try:
            prompts.append(Draft(record, get_image(ctx.store, record.image_key)))
        except ValueError as exc:
            aside.append(SetAsideRecord(record_id=record.source_id, code="bad_image", detail=str(exc)))
    m.items_in.labels(STAGE).inc(len(prompts) + len(aside))
    n_in = len(prompts) + len(aside)

    dups = find_duplicates(ctx, task, [p.prompt_id for p in prompts], ctx.settings.source.dedup)
    for p in prompts:
        if p.prompt_id in dups:
            aside.append(
                SetAsideRecord(
                    record_id=p.source_id, code="duplicate", detail=f"same image and instruction as {dups[p.prompt_id]}"
                )
            )
    prompts = [p for p in prompts if p.prompt_id not in dups]
    with ctx.sessions() as s:
        rows = {r.id: r for r in s.scalars(select(Prompt).where(Prompt.id.in_([p.prompt_id for p in prompts])))}
    for p in prompts:
        row = rows[p.prompt_id]
        p.gold, p.source = row.gold, row.source
        p.options = p.prompt.options or extract_options(p.prompt.instruction)
        p.options_from = ("source" if p.prompt.options else "instruction") if p.options else None
        p.holdout = is_holdout(p.source_id, ctx.settings.filter.selection_holdout)

    writer_id = writer_checkpoint(ctx, task)
    backend = ctx.models.backend(writer_id)
    seed = rng.randrange(2**31)
    closed_params = SamplingParams(
        n=cfg.n_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )

    # --- open or closed: source-given kinds stand; "auto" prompts by cues, then by samples
    sampled, probe = [], []
    for p in prompts:
        p.kind = p.prompt.kind
        p.source_kind = p.kind if p.kind in ("open", "closed") else None
        if p.source_kind and cfg.trust_source_kind:
            p.kind_reason = f"given by the source ({p.source})"
            if p.kind == "closed":
                sampled.append(p)
            continue
        p.cue = classify_cues(p.prompt.instruction, p.options)
        if needs_samples(cfg.classify, p.cue):
            sampled.append(p)
            probe.append(p)
        else:
            p.kind, p.kind_reason = decide(cfg.classify, p.cue, None)
            if p.kind == "closed":
                sampled.append(p)
    samples = dict(
        zip(
            (p.prompt_id for p in sampled), (g.texts for g in _generate(ctx, backend, sampled, closed_params, "closed"))
        )
    )
    for p in probe:
        p.kind, p.kind_reason = decide(
            cfg.classify, p.cue, samples[p.prompt_id], p.options, cfg.classify_max_words, cfg.classify_min_agreement
        )
    for p in prompts:
        p.cue = None
        if p.source_kind and not cfg.trust_source_kind:  # how the classifier compares with the source
            p.kind_reason += f"; the source says {p.source_kind}"
    closed = [p for p in prompts if p.kind == "closed"]
    opened = [p for p in prompts if p.kind != "closed"]

    labelled: list[Labelled] = []
    for p in closed:
        pair = _closed_pair(p, samples[p.prompt_id], cfg, rng, aside)
        if pair:
            labelled.append(pair)

    open_gens = _generate(
        ctx,
        backend,
        opened,
        SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.open_max_new_tokens, seed=seed),
        "open",
    )
    labelled.extend(_open_pairs(ctx, backend, opened, open_gens, cfg, rng, aside, seed))

    failpoint("synthesizer.before_commit")  # fault tests: die after the work, before recording it
    pairs: list[PairRecord] = []
    with ctx.sessions.begin() as s:
        for p in prompts:  # record the open/closed decision and why
            row = s.get(Prompt, p.prompt_id)
            row.kind, row.kind_reason = p.kind, p.kind_reason[:200]
        for lab in labelled:
            lab.meta["holdout"] = lab.draft.holdout
            row = Pair(
                run_id=task.run_id,
                iteration=task.iteration,
                shard_index=task.index,
                prompt_id=lab.draft.prompt_id,
                preferred=lab.preferred,
                rejected=lab.rejected,
                method=lab.method,
                errors=lab.errors,
                vote_count=lab.vote_count,
                n_samples=lab.n_samples,
                checkpoint_id=writer_id,
                meta=lab.meta,
            )
            s.add(row)
            s.flush()
            pairs.append(lab.record(row.id))
        attempt.set_aside(s, aside)
        write_records(ctx.store, out_key, pairs)
        seconds = attempt.finish(s, out_key, n_in, len(pairs))
    reasons = Counter(a.code for a in aside)
    methods = Counter(p.method for p in pairs)
    log.info(
        "synthesizer: run %s iter %s shard %s: %s prompts (%s closed, %s open) -> %s pairs %s, %s set aside %s (%.1fs)",
        task.run_id,
        task.iteration,
        task.index,
        n_in,
        len(closed),
        len(opened),
        len(pairs),
        dict(methods),
        len(aside),
        dict(reasons),
        seconds,
    )


def _closed_pair(
    p: Draft, texts: list[str], cfg: SynthConfig, rng: random.Random, aside: list[SetAsideRecord]
) -> Labelled | None:
    options = p.options
    majority = majority_vote(texts, cfg.majority_threshold, rng, options=options)
    gold_norm = normalize_answer(p.gold, options) if p.gold else None
    meta = {
        "label_source": cfg.closed_labels,
        "votes": dict(list(majority.counts.items())[:12]),
        "threshold": cfg.majority_threshold,
        "options": options,
        "options_from": p.options_from,
        "majority_reason": majority.reason,
        "majority_normalised": normalize_answer(majority.majority, options) if majority.majority else None,
    }
    if gold_norm is not None and majority.majority:
        meta["gold_agrees"] = meta["majority_normalised"] == gold_norm  # analysis only, never a label
    vote = majority if cfg.closed_labels == "majority" else gold_vote(texts, p.gold, rng, options)
    if vote.reason != "ok":
        detail = (
            f"top answer {vote.count}/{vote.total}"
            if cfg.closed_labels == "majority"
            else f"{vote.count}/{vote.total} samples agree with the gold answer"
        )
        aside.append(SetAsideRecord(record_id=p.source_id, code=f"closed_{vote.reason}", detail=detail))
        return None
    meta["rejected_normalised"] = normalize_answer(vote.rejected, options)
    return Labelled(
        p,
        preferred=vote.majority.strip(),
        rejected=vote.rejected.strip(),
        method="majority_vote" if cfg.closed_labels == "majority" else "gold_label",
        errors=["wrong_answer"],
        vote_count=vote.count,
        n_samples=vote.total,
        meta=meta,
    )


def alteration_budget(cfg: SynthConfig) -> int:
    """New tokens for an alteration: at least synth.alter_budget_ratio x the original's budget."""
    return max(cfg.alter_max_new_tokens, math.ceil(cfg.alter_budget_ratio * cfg.open_max_new_tokens))


def fallback_to_rule(cfg: SynthConfig, source_kind: str) -> bool:
    """synth.fallback_to_rule, or by default: only in the built-in scenes world."""
    return cfg.fallback_to_rule if cfg.fallback_to_rule is not None else source_kind == "scenes"


def _open_pairs(
    ctx: Context,
    backend: GenerationBackend,
    opened: list[Draft],
    gens: list,
    cfg: SynthConfig,
    rng: random.Random,
    aside: list[SetAsideRecord],
    seed: int,
) -> list[Labelled]:
    todo: list[Injection] = []
    for p, gen in zip(opened, gens):
        original = gen.texts[0].strip()
        if not original:
            aside.append(SetAsideRecord(record_id=p.source_id, code="open_empty_response"))
            continue
        use_model = cfg.injection == "model" or (cfg.injection == "both" and rng.random() < cfg.model_share)
        variant = "style_mimic" if rng.random() < cfg.style_mimic_share else "detail"
        todo.append(Injection(p, original, "model" if use_model else "rule", variant))

    # model alteration, batched: one request per prompt, synth.alter_samples candidates each
    to_model = [t for t in todo if t.requested == "model"]
    requests = [
        ChatRequest(
            text=alteration_prompt(t.variant, t.draft.prompt.instruction, t.original, n_errors=rng.randint(1, 2)),
            images=[t.draft.image],
            key=str(t.draft.prompt_id),
        )
        for t in to_model
    ]
    alter_gens = _generate_requests(
        ctx,
        backend,
        requests,
        SamplingParams(
            n=cfg.alter_samples,
            temperature=cfg.alter_temperature,
            top_p=cfg.alter_top_p,
            max_new_tokens=alteration_budget(cfg),
            seed=seed + 1,
        ),
        "alteration",
    )
    candidates = {t.draft.prompt_id: (req.text, g.texts) for t, req, g in zip(to_model, requests, alter_gens)}

    pairs = []
    for t in todo:
        p, original, variant, requested = t.draft, t.original, t.variant, t.requested
        meta: dict[str, Any] = {"injection_requested": requested}
        result = None
        if requested == "model":
            prompt_text, texts = candidates[p.prompt_id]
            bound = cfg.max_length_ratio if variant == "style_mimic" else cfg.detail_max_length_ratio
            overlap = cfg.min_word_overlap if variant == "style_mimic" else cfg.detail_min_word_overlap
            checks = [check_alteration(original, t, bound, overlap) for t in texts]
            meta.update(
                variant=variant,
                alteration_prompt=prompt_text[:2000],
                max_length_ratio=bound,
                min_word_overlap=overlap,
                attempts=[c.summary() for c in checks],
            )
            good = next((c for c in checks if c.ok), None)
            if good is not None:
                result = (good.text, good.errors, f"model_{variant}", good)
            elif not fallback_to_rule(cfg, ctx.settings.source.kind):
                aside.append(
                    SetAsideRecord(
                        record_id=p.source_id,
                        code="open_alteration_rejected",
                        detail=",".join(sorted({c.reason for c in checks})),
                    )
                )
                continue
            else:
                meta["fallback"] = "rule"
        if result is None:  # the rule perturber: asked for, or the fallback
            rejected, kinds = perturb(original, rng, max_edits=cfg.rule_max_edits)
            check = check_alteration(original, rejected, cfg.detail_max_length_ratio)
            meta["rule"] = check.summary()
            if not kinds or not check.ok:
                code = "open_perturb_no_change" if not kinds else f"open_perturb_{check.reason}"
                aside.append(SetAsideRecord(record_id=p.source_id, code=code, detail=original[:80]))
                continue
            result = (check.text, kinds, "rule_perturb", check)
        rejected, errors, method, check = result
        meta.update(
            injection="model" if method.startswith("model") else "rule",
            length_ratio=round(check.length_ratio, 3),
            word_overlap=round(check.overlap, 3),
            changes=[list(c) for c in check.changes[:8]],
        )
        pairs.append(
            Labelled(
                p,
                preferred=original,
                rejected=rejected,
                method=method,
                errors=errors,
                vote_count=None,
                n_samples=1,
                meta=meta,
            )
        )
    return pairs


def _generate(
    ctx: Context, backend: GenerationBackend, prompts: list[Draft], params: SamplingParams, what: str
) -> list:
    requests = [ChatRequest(text=p.prompt.instruction, images=[p.image], key=str(p.prompt_id)) for p in prompts]
    return _generate_requests(ctx, backend, requests, params, what)


def _generate_requests(
    ctx: Context,
    backend: GenerationBackend,
    requests: list[ChatRequest],
    params: SamplingParams,
    what: str,
) -> list:
    if not requests:
        return []
    start = time.perf_counter()
    gens = backend.generate(
        requests, params, progress=lambda done, total: log.info("synthesizer: %s prompts %s/%s", what, done, total)
    )
    m = ctx.metrics
    m.generation_seconds.labels(STAGE).inc(time.perf_counter() - start)
    m.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens))
    m.samples.labels(STAGE).inc(sum(len(g.texts) for g in gens))
    return gens
