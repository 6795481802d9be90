"""Per-iteration reports over the database of what the filter kept and the judges said, shown by
`selfjudge status --json`.

keep_rate_by(s, run, k)       kept pairs / pairs of iteration k, by question type, error type,
                              source, method and kind: {group: {value: {pairs, kept, rate}}}.
                              A pair is kept when at least one of its traces became a training
                              example. Selection-holdout pairs are left out (never trainable).
                              Error type: each entry of Pair.errors (a pair with two injected
                              errors counts under both); closed pairs have "wrong_answer".
parse_failures(s, run, k)     {parse_reason: judgments} for judge outputs with no verdict.
selection_signal(s, run, k)   the label-free checkpoint-selection signal of the checkpoint that
                              iteration k produced (k = 0: the base judge); see below.

The selection signal (beyond the paper: it picks a checkpoint without any gold label).
Checkpoint k is the judge of iteration k+1, whose reasoner judges freshly synthesized pairs that
no checkpoint has trained on: prompts are drawn anew every iteration, and with
`filter.selection_holdout` > 0 a fixed share of prompts (by a hash of their source id) is never
trained on in any iteration, and only those pairs are used. On them:
  agreement    share of pairs where the judge's majority verdict (over its samples) picks the
               synthetic preference in both orders: the filter's consistency rule, measured
               instead of applied. This is the signal (`score`).
  consistency  share of pairs where both orders pick the same response, right or wrong: position
               consistency, which needs no label at all.
  parse_rate   share of outputs with a verdict.
The synthetic preference is the synthesizer's (majority vote / injected error), never a gold
label. Higher is better; keep the checkpoint with the highest score. Limits: the last checkpoint
of a run has no next iteration to be scored in (it is None until one runs), and the pairs of
different iterations differ (compare many pairs, or use a holdout share). At most 2000 pairs
(the first by id) are read, so `selfjudge status` stays fast on large iterations.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from sqlalchemy import String, case, cast, func, select
from sqlalchemy.orm import Session

from selfjudge.shared.db import Iteration, Judgment, Pair, Prompt, TrainingExample

GROUPS = ("question_type", "error_type", "source", "method", "kind")


def _rates(counts: dict[str, list[int]]) -> dict[str, dict]:
    return {
        key: {"pairs": n, "kept": k, "rate": round(k / n, 4) if n else None} for key, (n, k) in sorted(counts.items())
    }


def keep_rate_by(s: Session, run_id: int, iteration: int) -> dict[str, dict]:
    """Aggregated in SQL (one row per combination of the grouped columns), so it stays cheap on
    100k-pair iterations; only the errors lists are split in Python."""
    kept_ids = select(TrainingExample.pair_id).where(
        TrainingExample.run_id == run_id, TrainingExample.iteration == iteration
    )
    kept = case((Pair.id.in_(kept_ids), 1), else_=0)
    holdout = Pair.meta["holdout"].as_boolean()
    errors = cast(Pair.errors, String)
    rows = s.execute(
        select(
            Prompt.question_type, Prompt.source, Pair.method, Prompt.kind, errors, holdout, func.count(), func.sum(kept)
        )
        .join(Prompt, Prompt.id == Pair.prompt_id)
        .where(Pair.run_id == run_id, Pair.iteration == iteration)
        .group_by(Prompt.question_type, Prompt.source, Pair.method, Prompt.kind, errors, holdout)
    ).all()
    counts: dict[str, dict[str, list[int]]] = {g: defaultdict(lambda: [0, 0]) for g in GROUPS}
    for qtype, source, method, kind, errors_json, is_holdout, n, hit in rows:
        if is_holdout:
            continue
        keys = {
            "question_type": [qtype],
            "error_type": list(json.loads(errors_json or "[]") or []) or ["none"],
            "source": [source],
            "method": [method],
            "kind": [kind],
        }
        for group, values in keys.items():
            for value in values:
                counts[group][value][0] += n
                counts[group][value][1] += int(hit or 0)
    return {group: _rates(c) for group, c in counts.items()}


def parse_failures(s: Session, run_id: int, iteration: int) -> dict[str, int]:
    return {
        reason: n
        for reason, n in s.execute(
            select(Judgment.parse_reason, func.count())
            .where(Judgment.run_id == run_id, Judgment.iteration == iteration, Judgment.verdict.is_(None))
            .group_by(Judgment.parse_reason)
            .order_by(Judgment.parse_reason)
        )
    }


def _majority(verdicts: list[str | None]) -> str | None:
    top = Counter(v for v in verdicts if v).most_common()
    if not top or (len(top) > 1 and top[0][1] == top[1][1]) or top[0][1] * 2 <= len(verdicts):
        return None  # no strict majority of all samples
    return top[0][0]


def signal_from_judgments(judgments: list[tuple[int, str, str | None]]) -> dict | None:
    """(pair_id, order, verdict) -> {pairs, agreement, consistency, parse_rate, score}."""
    if not judgments:
        return None
    by_pair: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for pair_id, order, verdict in judgments:
        by_pair[pair_id][order].append(verdict)
    agree = consistent = 0
    for orders in by_pair.values():
        ab, ba = _majority(orders.get("AB", [])), _majority(orders.get("BA", []))
        agree += ab == "A" and ba == "B"
        consistent += ab is not None and ba is not None and ab != ba  # "A" then "B": the same response
    n = len(by_pair)
    agreement = agree / n
    return {
        "pairs": n,
        "agreement": round(agreement, 4),
        "consistency": round(consistent / n, 4),
        "parse_rate": round(sum(v is not None for _, _, v in judgments) / len(judgments), 4),
        "score": round(agreement, 4),
    }


def selection_signal(s: Session, run_id: int, iteration: int, max_pairs: int = 2000) -> dict | None:
    """Without a holdout share, the first `max_pairs` pairs (by id) judged by the checkpoint are used."""
    it = s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == iteration))
    if it is None or it.output_checkpoint_id is None:
        return None
    ckpt = it.output_checkpoint_id
    judged = select(Judgment.pair_id).where(
        Judgment.run_id == run_id, Judgment.iteration == iteration + 1, Judgment.checkpoint_id == ckpt
    )
    pairs = select(Pair.id).where(Pair.id.in_(judged))
    held = s.scalars(pairs.where(Pair.meta["holdout"].as_boolean().is_(True)).order_by(Pair.id).limit(max_pairs)).all()
    used = held or s.scalars(pairs.order_by(Pair.id).limit(max_pairs)).all()
    if not used:
        return None
    rows = s.execute(
        select(Judgment.pair_id, Judgment.order, Judgment.verdict).where(
            Judgment.run_id == run_id,
            Judgment.iteration == iteration + 1,
            Judgment.checkpoint_id == ckpt,
            Judgment.pair_id.in_(used),
        )
    ).all()
    signal = signal_from_judgments([tuple(r) for r in rows])
    signal.update(checkpoint_id=ckpt, judged_in_iteration=iteration + 1, set="holdout" if held else "all")
    return signal
