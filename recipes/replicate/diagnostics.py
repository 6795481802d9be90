"""What the replication measures besides the loop: the base judge's skills and the supervised ceiling.

`base_skills` scores, per closed question type, what the judge needs and the base model can (not)
do in the judge's prompt, reading its reasoning back (`parse_reasoning`). `supervised_ceiling`
trains the base judge on right-in-every-part traces (`gold_judge_examples`) with the loop's
trainer settings and scores it on the held-out pairs: what one training round could reach at best.
Diagnostics only: nothing here is part of the base model or of the loop.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from pathlib import Path

from selfjudge.basemodel import CLAUSES, agreeing, judge_example, judge_reasoning
from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.sources.scenes.errors import perturb, wrong_answer
from selfjudge.shared.verdict import format_verdict

log = logging.getLogger(__name__)

_REASONING = re.compile(
    r"Response A says: (.*?)\. Response B says: (.*?)\. My answer: (.*?), "
    f"({'|'.join(map(re.escape, CLAUSES.values()))})\\."
)
_LETTER = {clause: letter for letter, clause in CLAUSES.items()}


def parse_reasoning(text: str) -> tuple[str, str, str, str] | None:
    """(response A, response B, own answer, agreeing letter "A"/"B"/"-") read back from a judge output in
    the `judge_reasoning` format for short answers; None when the output is not in that format."""
    m = _REASONING.search(text)
    if m is None:
        return None
    a, b, own, clause = m.groups()
    return a, b, own, _LETTER[clause]


def judge_requests(pairs: list) -> tuple[list, list[tuple]]:
    """The judge's prompt for each labelled pair in both orders: (requests, (pair, a, b, right letter))."""
    from selfjudge.shared.models.generation.backend import ChatRequest

    requests, shown = [], []
    for p in pairs:
        for a, b, right in ((p.preferred, p.rejected, "A"), (p.rejected, p.preferred, "B")):
            requests.append(ChatRequest(text=judge_prompt(p.instruction, a, b), images=[p.image], system=JUDGE_SYSTEM))
            shown.append((p, a, b, right))
    return requests, shown


def base_skills(
    model: str | Path, pairs: list, batch_size: int = 32, device: str = "cpu", dtype: str = "float32"
) -> dict[str, dict[str, float | int]]:
    """What the judge needs and the base model can (not) do, per closed question type, on labelled
    held-out pairs (evaluation only): `qa` answers the plain question right; in the judge's prompt
    (both orders, greedy), `format` writes the reasoning format, `restates` copies both responses,
    `own_right` gives the right answer itself, `agrees_own` names the response that says its own
    answer (the string comparison), `agrees_right` names the right response, `verdict_a` says [[A]]."""
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.verdict import parse_verdict

    closed = [p for p in pairs if p.question_type in ("count", "colour", "choice", "position")]
    backend = TransformersBackend(str(model), batch_size=batch_size, device=device, dtype=dtype)
    answers = backend.generate(
        [ChatRequest(text=p.instruction, images=[p.image]) for p in closed], SamplingParams(max_new_tokens=8)
    )
    requests, shown = judge_requests(closed)
    judged = backend.generate(
        requests,
        SamplingParams(max_new_tokens=64),
        progress=lambda done, total: log.info("base skills: %s/%s judge prompts", done, total),
    )
    counts: dict[str, dict[str, int]] = {}
    for p, gen in zip(closed, answers):
        c = counts.setdefault(
            p.question_type,
            dict.fromkeys(
                ["qa", "format", "restates", "own_right", "agrees_own", "agrees_right", "verdict_a", "pairs"], 0
            ),
        )
        c["qa"] += gen.texts[0].strip() == p.preferred
        c["pairs"] += 1
    for (p, a, b, right), gen in zip(shown, judged):
        c, text = counts[p.question_type], gen.texts[0]
        c["verdict_a"] += parse_verdict(text).choice == "A"
        parsed = parse_reasoning(text)
        if parsed is None:
            continue
        said_a, said_b, own, letter = parsed
        c["format"] += 1
        c["restates"] += (said_a, said_b) == (a, b)
        c["own_right"] += own == p.preferred
        c["agrees_own"] += letter == agreeing(own, said_a, said_b)
        c["agrees_right"] += letter == right
    return {
        t: {
            "pairs": c["pairs"],
            "qa": c["qa"] / c["pairs"],
            **{k: v / (2 * c["pairs"]) for k, v in c.items() if k not in ("qa", "pairs")},
        }
        for t, c in sorted(counts.items())
    }


def format_skills(skills: dict[str, dict[str, float | int]]) -> str:
    keys = ["qa", "format", "restates", "own_right", "agrees_own", "agrees_right", "verdict_a"]
    head = f"{'base model':10} {'pairs':>5} " + " ".join(f"{k:>12}" for k in keys)
    return "\n".join(
        [head, "-" * len(head)]
        + [f"{t:10} {s['pairs']:>5} " + " ".join(f"{100 * s[k]:11.1f}%" for k in keys) for t, s in skills.items()]
    )


def gold_judge_examples(prompts: list, rng: random.Random, n: int) -> list[SFTExample]:
    """DIAGNOSTIC ONLY (`python -m recipes.replicate --ceiling`): never part of the base model or of the loop.

    Judge traces that are right in every part: the own answer is the gold answer, the agreement
    clause names the response that says it, and the verdict names the gold response (closed: gold
    vs a wrong answer; open: the gold text vs a perturbed one), A or B at random. Training the base
    judge on these with the loop's trainer settings tells how far the trainer could take it if
    every kept trace were right: an upper bound on what the loop can teach at that budget."""
    examples = []
    for image, p in prompts:
        if len(examples) == n:
            break
        bad = wrong_answer(p, rng) if p.kind == "closed" else perturb(p.gold, rng)[0]
        if bad == p.gold:  # no wrong value, or no word the perturber could change
            continue
        a, b, right = (p.gold, bad, "A") if rng.random() < 0.5 else (bad, p.gold, "B")
        reply = f"{judge_reasoning(p.gold, a, b, p.kind == 'closed')} {format_verdict(right)}"
        examples.append(judge_example(p.instruction, [image], a, b, reply))
    return examples


def judge_accuracy(
    model: Path, pairs: list, batch_size: int = 32, device: str = "cpu", dtype: str = "float32"
) -> dict[str, dict]:
    """Greedy verdicts on the held-out pairs in both orders, scored as the evaluator scores them
    (`summarize_heldout`: accuracy over judgments with its CI, per question type and overall; an
    unparseable verdict is wrong), plus the share of [[A]] verdicts."""
    from selfjudge.services.evaluator.scoring import Judged, summarize_heldout
    from selfjudge.shared.models.generation.backend import SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.verdict import parse_verdict

    requests, shown = judge_requests(pairs)
    judged = TransformersBackend(str(model), batch_size=batch_size, device=device, dtype=dtype).generate(
        requests,
        SamplingParams(max_new_tokens=128),
        progress=lambda done, total: log.info("judge accuracy: %s/%s judge prompts", done, total),
    )
    rows = [
        Judged(p.pair_id, p.question_type, "AB" if right == "A" else "BA", parse_verdict(gen.texts[0]).choice)
        for (p, _, _, right), gen in zip(shown, judged)
    ]
    scores: dict[str, dict] = defaultdict(dict)
    for category, metric, value, n in summarize_heldout(rows):
        if metric == "accuracy":
            scores[category].update(accuracy=value, judgments=n)
        elif metric.startswith("accuracy_ci_"):
            scores[category][metric.removeprefix("accuracy_")] = value
    for category, score in scores.items():
        verdicts = [r.verdict for r in rows if category in ("overall", r.category)]
        score["verdict_a"] = verdicts.count("A") / len(verdicts)
    return dict(sorted(scores.items()))


def supervised_ceiling(
    base: Path,
    out: Path,
    loop: dict,
    pairs: list,
    n: int,
    batch_size: int = 32,
) -> dict:
    """The loop's trainer settings on `n` right-in-every-part judge traces (`gold_judge_examples`,
    from the pretrain split, never the held-out one), scored on the held-out pairs: how far one
    training round could take the base judge if every kept trace were right. A diagnostic only."""
    from selfjudge.services.trainer.stage import train_config
    from selfjudge.shared.models.sft.launch import train
    from selfjudge.shared.sources.scenes.source import pretraining_prompts

    world = loop.source
    prompts = pretraining_prompts(
        loop.run.seed + 7,
        2 * n,
        image_size=world.image_size,
        max_objects=world.max_objects,
        object_scale=world.object_scale,
        layout=world.layout,
    )
    examples = gold_judge_examples(prompts, random.Random(loop.run.seed + 7), n)
    cfg = train_config(loop, iteration=1)  # exactly what the trainer runs for iteration 1
    folder = out / "ceiling"
    result = train(
        str(base),
        examples,
        folder,
        cfg,
        progress=lambda step, total, loss: (
            log.info("ceiling: step %s/%s loss %.3f", step, total, loss) if step % 25 == 0 or step == total else None
        ),
        spec_dir=out,
    )
    scores = judge_accuracy(folder, pairs, batch_size=batch_size, device=loop.model.device, dtype=loop.model.dtype)
    return {"examples": len(examples), "steps": result.steps, "lr": cfg.lr, "epochs": cfg.epochs, "scores": scores}


def format_ceiling(ceiling: dict) -> str:
    scores = ceiling["scores"]
    head = (
        f"supervised ceiling ({ceiling['examples']} gold traces, {ceiling['steps']} steps at lr {ceiling['lr']:g}; "
        "diagnostic, not the method): held-out acc "
    )
    return (
        head
        + " ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in scores.items())
        + f"; [[A]] {100 * scores['overall']['verdict_a']:.0f}%"
    )
