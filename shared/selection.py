"""Label-free checkpoint selection: which checkpoint of a run to ship, without any gold label.

The selection set is fixed per run: the first `filter.selection_max_pairs` pairs (by id) of
iteration 1 whose prompts are in the selection holdout (`filter.selection_holdout`: a share of
prompts chosen by a hash of their source id, `is_holdout`). The filter never keeps a holdout
pair in any iteration, so no checkpoint is trained on the set (nor on any other pair of those
prompts).

Every checkpoint judges the same set with the reasoner's protocol (both orders, the judge prompt,
reason.* sampling):
  checkpoint 0 (the base judge) is iteration 1's judge: its reasoner judgments of those pairs;
  checkpoint k >= 1 is judged by the evaluator when it evaluates iteration k (`judge_selection`),
  the last checkpoint included.
The score is the share of pairs whose majority verdict picks the synthetic preference in both
orders (shared/filter_stats.signal_from_judgments: agreement; also consistency and parse
rate). It is stored as eval_summaries rows (benchmark "selection", category "overall").
`choose` takes the highest score (ties: the earlier checkpoint, the less trained one), says why,
and `record_choice` marks it in checkpoints.meta["selected"] and the store (runs/<id>/selection/choice.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from .db import Checkpoint, EvalSummary, Image, Iteration, Judgment, Pair, Prompt, utcnow
from .filter_stats import signal_from_judgments
from .store import Store

BENCHMARK = "selection"
METRICS = ("score", "agreement", "consistency", "parse_rate")
if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger(__name__)


def is_holdout(source_id: str, share: float) -> bool:
    """Deterministic, by a hash of the prompt's source id: the same prompts are held out in every
    iteration (and in every run), so a held-out prompt is never trained on."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"selection:{source_id}".encode()).digest()[:8], "big")
    return h / 2**64 < share


def selection_pairs(s: Session, run_id: int, limit: int) -> list[Pair]:
    """The run's fixed selection set (empty while iteration 1 has no holdout pairs)."""
    return list(
        s.scalars(
            select(Pair)
            .where(Pair.run_id == run_id, Pair.iteration == 1, Pair.meta["holdout"].as_boolean().is_(True))
            .order_by(Pair.id)
            .limit(limit)
        )
    )


def base_judgments(s: Session, run_id: int, pair_ids: list[int]) -> list[tuple[int, str, str | None]]:
    """Checkpoint 0's judgments of the set: iteration 1's reasoner (whose judge is the base)."""
    return [
        tuple(r)
        for r in s.execute(
            select(Judgment.pair_id, Judgment.order, Judgment.verdict).where(
                Judgment.run_id == run_id, Judgment.iteration == 1, Judgment.pair_id.in_(pair_ids)
            )
        )
    ]


def write_signal(s: Session, run_id: int, iteration: int, checkpoint_id: int, signal: dict) -> None:
    for metric in METRICS:
        s.add(
            EvalSummary(
                run_id=run_id,
                iteration=iteration,
                checkpoint_id=checkpoint_id,
                benchmark=BENCHMARK,
                category="overall",
                metric=metric,
                value=float(signal[metric]),
                n=int(signal["pairs"]),
            )
        )


def has_signal(s: Session, run_id: int, iteration: int) -> bool:
    return (
        s.scalar(
            select(EvalSummary.id)
            .where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration, EvalSummary.benchmark == BENCHMARK)
            .limit(1)
        )
        is not None
    )


def judge_selection(ctx: Context, run_id: int, iteration: int, checkpoint_id: int) -> dict | None:
    """Score checkpoint `iteration` on the selection set (and checkpoint 0 from its reasoner judgments,
    once they exist); returns the signal of `iteration` (as stored, if it was judged before), or None
    without a selection set. Never judges a checkpoint twice."""
    from .judge import JUDGE_SYSTEM, judge_prompt, ordered
    from .loop import rng_for
    from .models.generation.backend import ChatRequest, SamplingParams
    from .records import SelectionJudgment, write_records
    from .store import get_image
    from .verdict import parse_verdict

    cfg = ctx.settings
    with ctx.sessions() as s:
        pairs = selection_pairs(s, run_id, cfg.filter.selection_max_pairs)
        if not pairs:
            return None
        ids = [p.id for p in pairs]
        base_missing = iteration >= 1 and not has_signal(s, run_id, 0)
        base = signal_from_judgments(base_judgments(s, run_id, ids)) if base_missing else None
        base_ckpt = s.scalar(
            select(Iteration.output_checkpoint_id).where(Iteration.run_id == run_id, Iteration.number == 0)
        )
        done = has_signal(s, run_id, iteration)
        keys = {
            p.id: s.scalar(select(Image.key).join(Prompt, Prompt.image_id == Image.id).where(Prompt.id == p.prompt_id))
            for p in pairs
        }
        items = [(p.id, s.get(Prompt, p.prompt_id).instruction, p.preferred, p.rejected) for p in pairs]
    signal = None
    if iteration >= 1 and not done:
        requests, slots = [], []
        for pair_id, instruction, preferred, rejected in items:
            image = get_image(ctx.store, keys[pair_id])
            for order in ("AB", "BA"):
                a, b, _ = ordered(preferred, rejected, order)
                requests.append(
                    ChatRequest(
                        text=judge_prompt(instruction, a, b),
                        images=[image],
                        system=JUDGE_SYSTEM,
                        key=f"{pair_id}:{order}",
                    )
                )
                slots.append((pair_id, order))
        r = cfg.reason
        params = SamplingParams(
            n=r.samples_per_order,
            temperature=r.temperature,
            top_p=r.top_p,
            max_new_tokens=r.max_new_tokens,
            seed=rng_for(cfg.run.seed, BENCHMARK, iteration).randrange(2**31),
        )
        gens = ctx.models.backend(checkpoint_id).generate(requests, params)
        judgments = [
            (pair_id, order, parse_verdict(text).choice) for (pair_id, order), g in zip(slots, gens) for text in g.texts
        ]
        write_records(
            ctx.store,
            f"runs/{run_id}/selection/iter{iteration}.jsonl",
            [SelectionJudgment(pair_id=p, order=o, verdict=v) for p, o, v in judgments],
        )
        signal = signal_from_judgments(judgments)
    with ctx.sessions.begin() as s:
        if base is not None and base_ckpt is not None and not has_signal(s, run_id, 0):
            write_signal(s, run_id, 0, base_ckpt, base)
        if signal is not None and not has_signal(s, run_id, iteration):
            write_signal(s, run_id, iteration, checkpoint_id, signal)
    if signal is None:  # judged before (a redelivered evaluation): the stored figures
        with ctx.sessions() as s:
            return signals(s, run_id).get(iteration)
    log.info(
        "selection: run %s checkpoint %s (iteration %s): score %.3f on %s pairs",
        run_id,
        checkpoint_id,
        iteration,
        signal["score"],
        signal["pairs"],
    )
    return signal


def signals(s: Session, run_id: int) -> dict[int, dict]:
    """{iteration: {checkpoint_id, pairs, score, agreement, consistency, parse_rate}} as stored."""
    out: dict[int, dict] = {}
    for e in s.scalars(
        select(EvalSummary)
        .where(EvalSummary.run_id == run_id, EvalSummary.benchmark == BENCHMARK)
        .order_by(EvalSummary.iteration)
    ):
        row = out.setdefault(e.iteration, {"checkpoint_id": e.checkpoint_id, "pairs": e.n})
        row[e.metric] = e.value
    return out


def choose(by_iteration: dict[int, dict]) -> dict | None:
    """The highest score (ties: the earlier checkpoint), with the reason in words."""
    if not by_iteration:
        return None
    best = max(sorted(by_iteration), key=lambda k: (by_iteration[k]["score"], -k))
    b = by_iteration[best]
    others = ", ".join(f"iteration {k} {v['score']:.3f}" for k, v in sorted(by_iteration.items()) if k != best)
    reason = (
        f"iteration {best} (checkpoint {b['checkpoint_id']}) has the highest selection score {b['score']:.3f}: "
        f"the share of {b['pairs']} fixed synthetic pairs, never trained on, that it judges right in both "
        f"orders (consistency {b['consistency']:.3f}, parse rate {b['parse_rate']:.3f})"
        + (f"; others: {others}" if others else "")
    )
    return {
        "iteration": best,
        "checkpoint_id": b["checkpoint_id"],
        "score": b["score"],
        "reason": reason,
        "scores": {k: v["score"] for k, v in sorted(by_iteration.items())},
    }


def record_choice(sessions: sessionmaker, store: Store, run_id: int, choice: dict) -> None:
    """checkpoints.meta["selected"] on the chosen checkpoint (cleared on the run's others) and
    runs/<id>/selection/choice.json in the store."""
    with sessions.begin() as s:
        for ckpt in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)):
            meta = dict(ckpt.meta or {})
            meta.pop("selected", None)
            if ckpt.id == choice["checkpoint_id"]:
                meta["selected"] = {"reason": choice["reason"], "score": choice["score"], "at": utcnow().isoformat()}
            ckpt.meta = meta
    store.put_bytes(f"runs/{run_id}/selection/choice.json", json.dumps(choice, indent=1).encode())


def recorded_choice(s: Session, run_id: int) -> dict | None:
    for ckpt in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run_id)):
        if (ckpt.meta or {}).get("selected"):
            return {"checkpoint_id": ckpt.id, "iteration": ckpt.iteration, **ckpt.meta["selected"]}
    return None
