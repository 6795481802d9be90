"""`selfjudge replicate`: the method in miniature, on CPU, from one command.

1. Build the tiny base VLM (scene captioning/QA plus a judge-format lesson whose verdicts follow the
   model's own answers, never the gold ones: no preference information) - `selfjudge.basemodel`.
2. Run the ordinary loop, unchanged, in embedded mode for `iterations` iterations - once with
   majority-vote labels on closed-ended prompts (the paper) and once with the generator's gold
   answers instead (the paper's ablation), from the same base model and seed.
3. Read every held-out judgment back (pairs built from the generator's ground truth, never trained
   on) and print a table per arm and iteration: accuracy with a bootstrap 95% interval, by question
   type and error type, both-order accuracy, position bias, kept training examples. A plot of
   held-out accuracy per iteration and the numbers as JSON go next to it.

    selfjudge replicate --out .selfjudge/replicate [--iterations 3] [--arms majority gold]

Everything runs on the loop's `model.device` (`--set model.device=cuda` on a GPU machine: the base
model's training and answers, the base skills, `--ceiling` and both arms).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

from selfjudge.shared.config import deep_merge

log = logging.getLogger(__name__)
BASE_LR = 3e-4   # base pretraining, vision encoder frozen (cell descriptions, 900 steps: 1e-3 shape 29%; 3e-4 100%)
BASE_FORMAT_SHARE = 0.5   # share of judge-format examples in the base model's third phase
BASE_READING_STEPS = 700  # text-only steps of reading back and comparing a judge prompt's responses (lr 1e-3)

# The loop's settings for the miniature (the rest are the defaults). Every value is one a user
# could put in a config file; nothing here is special to the replication.
LOOP = {
    "run": {"prompts_per_iteration": 384, "shard_size": 64, "heldout_pairs": 180, "seed": 0},
    # a world the tiny vision tower learns to see in minutes: 56 px images (4 image tokens), one
    # object per cell of a 2 x 2 grid, at most 2 objects (4: colour seen 53%, 2: 77%), 1.6x the default size
    "source": {"image_size": 56, "layout": "grid", "max_objects": 2, "object_scale": 1.6},
    "model": {"batch_size": 16},
    "synth": {"n_samples": 8, "majority_threshold": 4, "max_new_tokens": 16, "open_max_new_tokens": 64,
              "injection": "both", "alter_samples": 1, "alter_max_new_tokens": 64},
    "reason": {"temperature": 0.8, "samples_per_order": 2, "max_new_tokens": 128},
    "filter": {"require_all_samples": False, "min_sample_agreement": 0.5, "max_per_prompt": 2},
    "train": {"lr": 3.0e-4, "epochs": 3, "batch_size": 8, "max_length": 512, "freeze_vision": True},
    "eval": {"max_new_tokens": 128},
}


def arm_config(out: Path, arm: str, base: Path, iterations: int, overrides: dict | None = None) -> Path:
    cfg = deep_merge(LOOP, overrides or {})
    cfg = deep_merge(cfg, {"run": {"name": f"replicate-{arm}", "iterations": iterations, "work_dir": str(out / arm)},
                       "model": {"base": str(base)}, "synth": {"closed_labels": arm}})
    path = out / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_arm(config: Path, logfile: Path) -> float:
    """The loop as a user runs it (`selfjudge run`), its log in `logfile`; returns its seconds."""
    start = time.perf_counter()
    with logfile.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "selfjudge.cli", "run", "--config", str(config)],
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"the loop with {config} failed; its log: {logfile}")
    return time.perf_counter() - start


def arm_results(work: Path) -> list[dict]:
    """Per iteration: held-out accuracy (+CI) overall, by question type and by error type,
    both-order accuracy, position bias, kept examples; read from the run's database and store."""
    from sqlalchemy import func, select

    from selfjudge.services.evaluator.scoring import bootstrap_ci, both_orders
    from selfjudge.shared.config import StoreConfig
    from selfjudge.shared.db import EvalResult, EvalSummary, Run, TrainingExample, make_sessionmaker
    from selfjudge.shared.loop import heldout_key
    from selfjudge.shared.store import get_jsonl, open_store

    sessions = make_sessionmaker(f"sqlite:///{work / 'selfjudge.db'}")
    store = open_store(StoreConfig(), str(work))     # the embedded run's local store
    rows = []
    with sessions() as s:
        run = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
        heldout = {r["item_id"]: r for r in get_jsonl(store, heldout_key(run.id))}
        iterations = sorted(set(s.scalars(select(EvalSummary.iteration).where(EvalSummary.run_id == run.id))))
        for k in iterations:
            results = [{"item_id": r.item_id, "category": r.category, "order": r.order, "verdict": r.verdict,
                        "correct": r.correct}
                       for r in s.scalars(select(EvalResult).where(EvalResult.run_id == run.id, EvalResult.iteration == k,
                                                                   EvalResult.benchmark == "heldout"))]
            summary = {(e.category, e.metric): e.value for e in s.scalars(select(EvalSummary).where(
                EvalSummary.run_id == run.id, EvalSummary.iteration == k, EvalSummary.benchmark == "heldout"))}
            per_item = both_orders(results)

            def stored(category: str, items: int) -> dict:
                """Accuracy and CI as the evaluator scored and stored them."""
                ci = (summary.get((category, "accuracy_ci_low")), summary.get((category, "accuracy_ci_high")))
                return {"accuracy": summary[(category, "accuracy")], "ci": None if None in ci else ci, "items": items}

            def scored(members: list[dict]) -> dict:
                """The same measure for a group the evaluator does not store (error types)."""
                right, judged = [m["right"] for m in members], [m["judged"] for m in members]
                return {"accuracy": sum(right) / max(sum(judged), 1), "ci": bootstrap_ci(right, judged),
                        "items": len(members)}

            by_type: dict[str, int] = defaultdict(int)
            by_error: dict[str, list] = defaultdict(list)
            for item_id, m in per_item.items():
                by_type[m["category"]] += 1
                error = heldout[item_id]["error_type"]
                by_error["wrong answer" if error == m["category"] else "+".join(sorted(error.split("+")))].append(m)
            kept = s.scalar(select(func.count()).select_from(TrainingExample).where(
                TrainingExample.run_id == run.id, TrainingExample.iteration == k)) if k > 0 else None
            rows.append({
                "iteration": k, **stored("overall", len(per_item)),
                "both_orders": summary.get(("overall", "both_orders")),
                "position_bias": summary.get(("overall", "position_bias")),
                "kept_examples": kept,
                "by_question_type": {c: stored(c, n) for c, n in sorted(by_type.items())},
                "by_error_type": {c: scored(v) for c, v in sorted(by_error.items())},
            })
    return rows


def format_table(arm: str, rows: list[dict]) -> str:
    def pct(x: float | None) -> str:
        return "  -  " if x is None else f"{100 * x:5.1f}"

    types = list(rows[0]["by_question_type"]) if rows else []
    head = f"{'arm':9} {'iter':>4} {'held-out acc [95% CI]':>23} {'both':>6} {'bias':>6} {'kept':>5}  " + \
        " ".join(f"{t[:8]:>8}" for t in types)
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = r["ci"] or (float("nan"), float("nan"))
        lines.append(f"{arm:9} {r['iteration']:>4} {pct(r['accuracy']):>7} [{pct(ci[0])}, {pct(ci[1])}]"
                     f" {pct(r['both_orders']):>6} {pct(r['position_bias']):>6} {r['kept_examples'] or '-':>5}  "
                     + " ".join(f"{pct(r['by_question_type'][t]['accuracy']):>8}" for t in types))
    errors = list(rows[-1]["by_error_type"]) if rows else []
    lines.append(f"{'':9} by error type (held-out accuracy per iteration): " + "; ".join(
        f"{e}: " + " ".join(pct(r["by_error_type"].get(e, {}).get("accuracy")) for r in rows) for e in errors))
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, rows in results.items():
        xs = [r["iteration"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        lo = [100 * (r["ci"] or (r["accuracy"],) * 2)[0] for r in rows]
        hi = [100 * (r["ci"] or (r["accuracy"],) * 2)[1] for r in rows]
        axes[0].plot(xs, ys, marker="o", label=f"{arm} labels")
        axes[0].fill_between(xs, lo, hi, alpha=0.2)
    axes[0].axhline(50, color="grey", lw=0.8, ls="--")
    axes[0].set(xlabel="iteration (0 = base judge)", ylabel="held-out judge accuracy (%)",
                title="held-out pairs (generator labels), 95% CI")
    axes[0].legend()
    first = next(iter(results.values()))
    for qtype in first[0]["by_question_type"] if first else []:
        axes[1].plot([r["iteration"] for r in first], [100 * r["by_question_type"][qtype]["accuracy"] for r in first],
                     marker=".", label=qtype)
    axes[1].axhline(50, color="grey", lw=0.8, ls="--")
    axes[1].set(xlabel="iteration", ylabel="accuracy (%)", title=f"{next(iter(results))} labels, by question type")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(sorted({r["iteration"] for rows in results.values() for r in rows}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def judge_accuracy(model: Path, pairs: list, batch_size: int = 32, device: str = "cpu") -> dict[str, dict]:
    """Greedy verdicts on the held-out pairs in both orders, scored as the evaluator scores them
    (`summarize_heldout`: accuracy over judgments with its CI, per question type and overall; an
    unparseable verdict is wrong), plus the share of [[A]] verdicts."""
    from selfjudge.basemodel import judge_requests
    from selfjudge.services.evaluator.scoring import summarize_heldout
    from selfjudge.shared.models.backend import SamplingParams, TransformersBackend
    from selfjudge.shared.verdict import parse_verdict

    requests, shown = judge_requests(pairs)
    judged = TransformersBackend(str(model), batch_size=batch_size, device=device).generate(
        requests, SamplingParams(max_new_tokens=128),
        progress=lambda done, total: log.info("judge accuracy: %s/%s judge prompts", done, total))
    rows = [{"item_id": p.pair_id, "category": p.question_type, "order": "AB" if right == "A" else "BA",
             "verdict": parse_verdict(gen.texts[0]).choice} for (p, _, _, right), gen in zip(shown, judged)]
    scores: dict[str, dict] = defaultdict(dict)
    for category, metric, value, n in summarize_heldout(rows):
        if metric == "accuracy":
            scores[category].update(accuracy=value, judgments=n)
        elif metric.startswith("accuracy_ci_"):
            scores[category][metric.removeprefix("accuracy_")] = value
    for category, score in scores.items():
        verdicts = [r["verdict"] for r in rows if category in ("overall", r["category"])]
        score["verdict_a"] = verdicts.count("A") / len(verdicts)
    return dict(sorted(scores.items()))


def supervised_ceiling(base: Path, out: Path, loop, pairs: list, n: int) -> dict:  # noqa: ANN001 - Settings
    """The loop's trainer settings on `n` right-in-every-part judge traces (`gold_judge_examples`,
    from the pretrain split, never the held-out one), scored on the held-out pairs: how far one
    training round could take the base judge if every kept trace were right. A diagnostic only."""
    import random

    from selfjudge.basemodel import gold_judge_examples
    from selfjudge.services.trainer.stage import train_config
    from selfjudge.shared.models.distributed import train
    from selfjudge.shared.sources.scenes import pretraining_prompts

    world = loop.source
    prompts = pretraining_prompts(loop.run.seed + 7, 2 * n, image_size=world.image_size, max_objects=world.max_objects,
                                  object_scale=world.object_scale, layout=world.layout)
    examples = gold_judge_examples(prompts, random.Random(loop.run.seed + 7), n)
    cfg = train_config(loop, iteration=1)      # exactly what the trainer runs for iteration 1
    folder = out / "ceiling"
    result = train(str(base), examples, folder, cfg, progress=lambda step, total, loss: log.info(
        "ceiling: step %s/%s loss %.3f", step, total, loss) if step % 25 == 0 or step == total else None,
        spec_dir=out)
    scores = judge_accuracy(folder, pairs, device=loop.model.device)
    return {"examples": len(examples), "steps": result.steps, "lr": cfg.lr, "epochs": cfg.epochs, "scores": scores}


def format_ceiling(ceiling: dict) -> str:
    scores = ceiling["scores"]
    head = (f"supervised ceiling ({ceiling['examples']} gold traces, {ceiling['steps']} steps at lr {ceiling['lr']:g}; "
            "diagnostic, not the method): held-out acc ")
    return head + " ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in scores.items()) + \
        f"; [[A]] {100 * scores['overall']['verdict_a']:.0f}%"


def replicate(out: Path, iterations: int = 3, arms: tuple[str, ...] = ("majority", "gold"), base_steps: int = 600,
              overrides: dict | None = None, base: Path | None = None, perception_steps: int = 1400,
              ceiling: int = 0) -> dict:
    """Build the base model for the loop's world (kept under `out`, reused by a later call; or
    use `base`), run each arm, print the tables, write the plot and results.json. With `ceiling`
    > 0, first train the base judge on that many gold judge traces with the loop's trainer settings
    and score it on the held-out pairs (`supervised_ceiling`: what the loop could reach at best)."""
    from selfjudge.basemodel import base_skills, build_base_model, format_skills
    from selfjudge.shared.config import load_settings
    from selfjudge.shared.sources.scenes import heldout_pairs

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    loop = load_settings(None, overrides=deep_merge(LOOP, overrides or {}))
    world = loop.source   # the base learns the loop's world
    base = base or out / (f"base-steps{perception_steps}+{BASE_READING_STEPS}+{base_steps}-size{world.image_size}"
                          f"-objects{world.max_objects}-scale{world.object_scale:g}-{world.layout}-frozen-vision")
    if not (base / "config.json").exists():
        log.info("replicate: building the base model (%s + %s steps, %s objects at most, object scale %s, %s layout)",
                 perception_steps, base_steps, world.max_objects, world.object_scale, world.layout)
        build_base_model(base, seed=0, pretrain_steps=base_steps, perception_steps=perception_steps, lr=BASE_LR,
                         format_share=BASE_FORMAT_SHARE, reading_steps=BASE_READING_STEPS,
                         image_size=world.image_size, max_objects=world.max_objects, object_scale=world.object_scale,
                         layout=world.layout, device=loop.model.device)
    timings = {"base_model": time.perf_counter() - start}
    # what the base judge can do before any iteration, on the held-out pairs the loop is scored on
    pairs = heldout_pairs(loop.run.seed, loop.run.heldout_pairs, image_size=world.image_size,
                          max_objects=world.max_objects, object_scale=world.object_scale, layout=world.layout)
    skills = base_skills(base, pairs, device=loop.model.device)
    print(format_skills(skills), flush=True)
    timings["base_skills"] = time.perf_counter() - start - timings["base_model"]
    bound = None
    if ceiling > 0:
        mark = time.perf_counter()
        bound = supervised_ceiling(base, out, loop, pairs, ceiling)
        print(format_ceiling(bound), flush=True)
        timings["ceiling"] = time.perf_counter() - mark
    results = {}
    for arm in arms:
        if (out / arm).exists():
            import shutil
            shutil.rmtree(out / arm)
        log.info("replicate: %s labels, %s iterations (log: %s)", arm, iterations, out / f"{arm}.log")
        timings[arm] = run_arm(arm_config(out, arm, base, iterations, overrides), out / f"{arm}.log")
        results[arm] = arm_results(out / arm)
        print(format_table(arm, results[arm]), flush=True)
    timings["total"] = time.perf_counter() - start
    figure = plot(results, out / "heldout_accuracy.png")
    summary = {"results": results, "base_skills": skills, "ceiling": bound, "seconds": timings, "figure": str(figure),
               "gain": {arm: max(r["accuracy"] for r in rows) - rows[0]["accuracy"] for arm, rows in results.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    for arm, gain in summary["gain"].items():
        print(f"{arm}: held-out accuracy, best iteration vs iteration 0: {100 * gain:+.1f} points", flush=True)
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; figure: {figure}", flush=True)
    return summary
