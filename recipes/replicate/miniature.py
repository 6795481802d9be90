"""`python -m recipes.replicate`: the method in miniature, on CPU, from one command.

1. Build the tiny base VLM (scene captioning/QA plus a judge-format lesson whose verdicts follow the
   model's own answers, never the gold ones: no preference information) - `curriculum`.
2. Run the ordinary loop, unchanged, in embedded mode for `iterations` iterations - once with
   majority-vote labels on closed-ended prompts (the paper) and once with the generator's gold
   answers instead (the paper's ablation), from the same base model and seed.
3. Read every held-out judgment back (pairs built from the generator's ground truth, never trained
   on) and print a table per arm and iteration: accuracy with a bootstrap 95% interval, by question
   type and error type, both-order accuracy, position bias, kept training examples. A plot of
   held-out accuracy per iteration and the numbers as JSON go next to it.

    python -m recipes.replicate --out .selfjudge/replicate [--iterations 3] [--arms majority gold]

Everything runs on the loop's `model.device` (`--set model.device=cuda` on a GPU machine: the base
model's training and answers, the base skills, `--ceiling` and both arms).

Two profiles (`--profile`): `cpu` (the default, `make replicate`: a ~4M-parameter model, 2 cores, 20
minutes, arms one after the other) and `gpu` (a ~27M-parameter model, bf16, large batches and 1,008
held-out pairs, sized for one H200 in minutes: the arms and the ceiling run side by side, each arm's
iterations are written to results.json as they finish, and `deadline` stops the arms in time and
keeps what they measured). Both are the same code; `--base-set` and `--set` change any part of one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from selfjudge.shared.config import deep_merge
from selfjudge.shared.models.tiny import TinySize

from .curriculum import build_curriculum_model
from .diagnostics import base_skills, format_ceiling, format_skills, supervised_ceiling

log = logging.getLogger(__name__)
BASE_LR = 3e-4  # base pretraining, vision encoder frozen (cell descriptions, 900 steps: 1e-3 shape 29%; 3e-4 100%)
BASE_FORMAT_SHARE = 0.5  # share of judge-format examples in the base model's third phase
BASE_READING_STEPS = 700  # text-only steps of reading back and comparing a judge prompt's responses (lr 1e-3)

# The loop's settings for the miniature (the rest are the defaults). Every value is one a user
# could put in a config file; nothing here is special to the replication.
LOOP = {
    "run": {"prompts_per_iteration": 384, "shard_size": 64, "heldout_pairs": 180, "seed": 0},
    # a world the tiny vision tower learns to see in minutes: 56 px images (4 image tokens), one
    # object per cell of a 2 x 2 grid, at most 2 objects (4: colour seen 53%, 2: 77%), 1.6x the default size
    "source": {"image_size": 56, "layout": "grid", "max_objects": 2, "object_scale": 1.6},
    "model": {"batch_size": 16},
    "synth": {
        "n_samples": 8,
        "majority_threshold": 4,
        "max_new_tokens": 16,
        "open_max_new_tokens": 64,
        "injection": "both",
        "alter_samples": 1,
        "alter_max_new_tokens": 64,
    },
    "reason": {"temperature": 0.8, "samples_per_order": 2, "max_new_tokens": 128},
    "filter": {"require_all_samples": False, "min_sample_agreement": 0.5, "max_per_prompt": 2},
    "train": {"lr": 3.0e-4, "epochs": 3, "batch_size": 8, "max_length": 512, "freeze_vision": True},
    "eval": {"max_new_tokens": 128},
}


@dataclass(frozen=True)
class BaseRecipe:
    """How `curriculum.build_curriculum_model` builds the base (its three phases; see there)."""

    perception_steps: int = 1400
    reading_steps: int = BASE_READING_STEPS
    pretrain_steps: int = 600  # phase 3 (`--base-steps`)
    batch_size: int = 8  # phases 1 and 3; reading: twice this
    lr: float = BASE_LR
    reading_lr: float = 1e-3
    format_share: float = BASE_FORMAT_SHARE
    max_examples: int = 0  # distinct examples per phase (0: one per example seen)
    micro_batch_tokens: int = 0  # TrainConfig's (-1: exactly batch_size per forward pass)
    answer_batch: int = 32  # generation batch: own answers, base skills, ceiling scores
    size: TinySize = field(default_factory=TinySize)

    def with_settings(self, settings: dict[str, str]) -> BaseRecipe:
        """This recipe with `settings` (name -> value as text; a TinySize field sets the size)."""
        mine = {f.name: f for f in dataclasses.fields(self)}
        sizes = {f.name: f for f in dataclasses.fields(TinySize)}
        top, size = {}, {}
        for key, text in settings.items():
            if key in mine and key != "size":
                top[key] = _typed(mine[key].type, text, key)
            elif key in sizes:
                size[key] = _typed(sizes[key].type, text, key)
            else:
                raise ValueError(
                    f"--base-set {key}: no such base model setting (have: "
                    f"{', '.join([*(k for k in mine if k != 'size'), *sizes])})"
                )
        return dataclasses.replace(self, **top, size=dataclasses.replace(self.size, **size))

    def tag(self) -> str:
        """'' for the CPU recipe (its folder names stay as they were), else a short name of the
        model's shape and a hash of everything but the step counts."""
        rest = {k: v for k, v in dataclasses.asdict(self).items() if not k.endswith("_steps")}
        if rest == {k: v for k, v in dataclasses.asdict(BaseRecipe()).items() if not k.endswith("_steps")}:
            return ""
        digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
        return f"-h{self.size.hidden}x{self.size.layers}-v{self.size.vision_depth}-batch{self.batch_size}-{digest}"


def _typed(kind: str | type, text: str, key: str) -> int | float:
    try:
        return int(text) if kind in (int, "int") else float(text)
    except ValueError:
        raise ValueError(f"--base-set {key}={text}: not a number") from None


@dataclass(frozen=True)
class Profile:
    loop: dict  # the loop's settings (merged over the defaults; `--set` over these)
    base: BaseRecipe
    side_by_side: bool  # the arms (and `--ceiling`) at once on one device, else one after the other


# One H200 (bf16 ~790 TFLOP/s peak, 141 GB): a model ~7x the CPU one, batches of hundreds; a model this
# small is bound by kernel launches and Python, not by FLOPs, so a larger batch costs little extra time.
# docs/replicate-gpu.md: how these were sized, and the time each part is expected to take.
GPU_LOOP = deep_merge(
    LOOP,
    {
        "run": {"prompts_per_iteration": 1024, "shard_size": 512, "heldout_pairs": 1008},
        "model": {"batch_size": 512, "dtype": "bfloat16"},
        "train": {"lr": 1.0e-4, "epochs": 4, "batch_size": 32, "warmup_ratio": 0.1, "micro_batch_tokens": -1},
    },
)
GPU_BASE = BaseRecipe(
    perception_steps=800,
    reading_steps=400,
    pretrain_steps=500,
    batch_size=64,
    lr=3e-4,
    reading_lr=5e-4,
    max_examples=12288,
    micro_batch_tokens=-1,
    answer_batch=512,
    size=TinySize(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536),
)
PROFILES = {
    "cpu": Profile(LOOP, BaseRecipe(), side_by_side=False),
    "gpu": Profile(GPU_LOOP, GPU_BASE, side_by_side=True),
}


def arm_config(
    out: Path, arm: str, base: Path, iterations: int, overrides: dict | None = None, loop: dict | None = None
) -> Path:
    cfg = deep_merge(LOOP if loop is None else loop, overrides or {})
    cfg = deep_merge(
        cfg,
        {
            "run": {"name": f"replicate-{arm}", "iterations": iterations, "work_dir": str(out / arm)},
            "model": {"base": str(base)},
            "synth": {"closed_labels": arm},
        },
    )
    path = out / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_arm(config: Path, logfile: Path) -> subprocess.Popen:
    """The loop as a user runs it (`selfjudge run`), its log in `logfile`, started in the background."""
    with logfile.open("w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "selfjudge.cli", "run", "--config", str(config)], stdout=f, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """End a loop process: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def evaluated(work: Path) -> list[int]:
    """The iterations of the arm's last run scored on the held-out pairs so far ([] before any)."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    from selfjudge.shared.db import EvalSummary, Run, make_sessionmaker

    if not (work / "selfjudge.db").exists():
        return []
    try:
        with make_sessionmaker(f"sqlite:///{work / 'selfjudge.db'}")() as s:
            run = s.scalar(select(Run.id).order_by(Run.id.desc()).limit(1))
            return (
                sorted(
                    set(
                        s.scalars(
                            select(EvalSummary.iteration).where(
                                EvalSummary.run_id == run,
                                EvalSummary.benchmark == "heldout",
                                EvalSummary.category == "overall",
                                EvalSummary.metric == "accuracy",
                            )
                        )
                    )
                )
                if run is not None
                else []
            )
    except OperationalError:  # the schema is not there yet (the loop is starting)
        return []


def arm_results(work: Path) -> list[dict]:
    """Per iteration: held-out accuracy (+CI) overall, by question type and by error type,
    both-order accuracy, position bias, kept examples; read from the run's database and store."""
    from sqlalchemy import func, select

    from selfjudge.services.evaluator.results import result_rows
    from selfjudge.services.evaluator.scoring import ItemOrders, bootstrap_ci, both_orders, paired_bootstrap
    from selfjudge.shared.config import StoreConfig
    from selfjudge.shared.db import EvalSummary, Run, TrainingExample, make_sessionmaker
    from selfjudge.shared.loop import heldout_key
    from selfjudge.shared.store import get_jsonl, open_store

    sessions = make_sessionmaker(f"sqlite:///{work / 'selfjudge.db'}")
    store = open_store(StoreConfig(), str(work))  # the embedded run's local store
    rows, items = [], {}
    with sessions() as s:
        run = s.scalar(select(Run).order_by(Run.id.desc()).limit(1))
        heldout = {r["item_id"]: r for r in get_jsonl(store, heldout_key(run.id))}
        iterations = sorted(set(s.scalars(select(EvalSummary.iteration).where(EvalSummary.run_id == run.id))))
        for k in iterations:
            results = result_rows(s, run.id, k, "heldout")
            summary = {
                (e.category, e.metric): e.value
                for e in s.scalars(
                    select(EvalSummary).where(
                        EvalSummary.run_id == run.id, EvalSummary.iteration == k, EvalSummary.benchmark == "heldout"
                    )
                )
            }
            per_item = both_orders(results)
            items[k] = per_item

            def stored(category: str, items: int, summary: dict = summary) -> dict:
                """Accuracy and CI as the evaluator scored and stored them."""
                ci = (summary.get((category, "accuracy_ci_low")), summary.get((category, "accuracy_ci_high")))
                return {"accuracy": summary[(category, "accuracy")], "ci": None if None in ci else ci, "items": items}

            def scored(members: list[ItemOrders]) -> dict:
                """The same measure for a group the evaluator does not store (error types)."""
                right, judged = [m.right for m in members], [m.judged for m in members]
                return {
                    "accuracy": sum(right) / max(sum(judged), 1),
                    "ci": bootstrap_ci(right, judged),
                    "items": len(members),
                }

            by_type: dict[str, int] = defaultdict(int)
            by_error: dict[str, list] = defaultdict(list)
            for item_id, m in per_item.items():
                by_type[m.category] += 1
                error = heldout[item_id]["error_type"]
                by_error["wrong answer" if error == m.category else "+".join(sorted(error.split("+")))].append(m)
            kept = (
                s.scalar(
                    select(func.count())
                    .select_from(TrainingExample)
                    .where(TrainingExample.run_id == run.id, TrainingExample.iteration == k)
                )
                if k > 0
                else None
            )
            rows.append(
                {
                    "iteration": k,
                    **stored("overall", len(per_item)),
                    "both_orders": summary.get(("overall", "both_orders")),
                    "position_bias": summary.get(("overall", "position_bias")),
                    "kept_examples": kept,
                    "by_question_type": {c: stored(c, n) for c, n in sorted(by_type.items())},
                    "by_error_type": {c: scored(v) for c, v in sorted(by_error.items())},
                }
            )
    for row in rows:  # iteration k vs the first on the same held-out pairs, resampled together
        first, now = items[rows[0]["iteration"]], items[row["iteration"]]
        row["vs_first"] = paired_bootstrap(
            {i: m.right for i, m in first.items()},
            {i: m.right for i, m in now.items()},
            {i: m.judged for i, m in first.items()},
        )
    return rows


def best_vs_first(rows: list[dict]) -> dict | None:
    """The best iteration against the first (iteration 0, the base judge) with the paired interval."""
    if len(rows) < 2:
        return None
    best = max(rows[1:], key=lambda r: r["accuracy"])
    paired = best["vs_first"]
    return {
        "iteration": best["iteration"],
        "accuracy": best["accuracy"],
        "first": rows[0]["accuracy"],
        "difference": paired["difference"],
        "ci": paired["ci"],
        "p": paired["p"],
        "pairs": paired["n"],
    }


def format_table(arm: str, rows: list[dict]) -> str:
    def pct(x: float | None) -> str:
        return "  -  " if x is None else f"{100 * x:5.1f}"

    def points(x: float) -> str:
        return f"{100 * x:+5.1f}"

    def versus(r: dict) -> str:
        """Iteration k - iteration 0 with the paired interval; '-' for iteration 0 itself."""
        v = r.get("vs_first")
        if r is rows[0] or not v or v["ci"] is None:
            return "-"
        return f"{points(v['difference'])} [{points(v['ci'][0])}, {points(v['ci'][1])}]"

    types = list(rows[0]["by_question_type"]) if rows else []
    head = (
        f"{'arm':9} {'iter':>4} {'held-out acc [95% CI]':>23} {'vs 0 [paired 95% CI]':>22} {'both':>6} "
        f"{'bias':>6} {'kept':>5}  " + " ".join(f"{t[:8]:>8}" for t in types)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = r["ci"] or (float("nan"), float("nan"))
        lines.append(
            f"{arm:9} {r['iteration']:>4} {pct(r['accuracy']):>7} [{pct(ci[0])}, {pct(ci[1])}]"
            f" {versus(r):>22} {pct(r['both_orders']):>6} {pct(r['position_bias']):>6}"
            f" {r['kept_examples'] or '-':>5}  "
            + " ".join(f"{pct(r['by_question_type'][t]['accuracy']):>8}" for t in types)
        )
    errors = list(rows[-1]["by_error_type"]) if rows else []
    lines.append(
        f"{'':9} by error type (held-out accuracy per iteration): "
        + "; ".join(
            f"{e}: " + " ".join(pct(r["by_error_type"].get(e, {}).get("accuracy")) for r in rows) for e in errors
        )
    )
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {arm: rows for arm, rows in results.items() if rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, rows in results.items():
        xs = [r["iteration"] for r in rows]
        ys = [100 * r["accuracy"] for r in rows]
        lo = [100 * (r["ci"] or (r["accuracy"],) * 2)[0] for r in rows]
        hi = [100 * (r["ci"] or (r["accuracy"],) * 2)[1] for r in rows]
        axes[0].plot(xs, ys, marker="o", label=f"{arm} labels")
        axes[0].fill_between(xs, lo, hi, alpha=0.2)
    axes[0].axhline(50, color="grey", lw=0.8, ls="--")
    axes[0].set(
        xlabel="iteration (0 = base judge)",
        ylabel="held-out judge accuracy (%)",
        title="held-out pairs (generator labels), 95% CI",
    )
    if results:
        axes[0].legend()
    first = next(iter(results.values()), [])
    for qtype in first[0]["by_question_type"] if first else []:
        axes[1].plot(
            [r["iteration"] for r in first],
            [100 * r["by_question_type"][qtype]["accuracy"] for r in first],
            marker=".",
            label=qtype,
        )
    axes[1].axhline(50, color="grey", lw=0.8, ls="--")
    axes[1].set(xlabel="iteration", ylabel="accuracy (%)", title=f"{next(iter(results), '-')} labels, by question type")
    if first:
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(sorted({r["iteration"] for rows in results.values() for r in rows}))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def say(text: str) -> None:
    """A progress line on stdout, with the time of day (UTC)."""
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {text}", flush=True)


class Stopped(BaseException):
    """SIGTERM (e.g. `timeout`): stop the arms, keep what they measured (not an Exception, so no
    `except Exception` on the way swallows it)."""


def _stop_on_sigterm(signum: int, frame: object) -> None:  # noqa: ARG001
    raise Stopped(f"signal {signum}")


@dataclass
class Record:
    """results.json, rewritten whenever something new is measured (a later crash keeps the rest)."""

    path: Path
    summary: dict
    lock: threading.RLock = field(default_factory=threading.RLock)  # the ceiling writes from its thread

    def update(self, **parts: object) -> None:
        with self.lock:
            self.summary.update(parts)
            self.summary["best_vs_0"] = {arm: best_vs_first(rows) for arm, rows in self.summary["results"].items()}
            self.summary["gain"] = {
                arm: max(r["accuracy"] for r in rows) - rows[0]["accuracy"]
                for arm, rows in self.summary["results"].items()
                if rows
            }
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.summary, indent=2))
            tmp.replace(self.path)

    def arm(self, arm: str, rows: list[dict]) -> None:
        with self.lock:
            self.summary["results"][arm] = rows
            self.update()

    def seconds(self, part: str, value: float) -> None:
        with self.lock:
            self.summary["seconds"][part] = value


def watch(
    arms: dict[str, tuple[subprocess.Popen, Path]], record: Record, deadline: float | None, every: float = 10.0
) -> list[str]:
    """Until every arm process has ended: each new held-out score goes to results.json and one
    progress line; at `deadline` (time.monotonic) the arms still running are stopped (returned)."""
    seen = {arm: 0 for arm in arms}
    while True:
        running = [arm for arm, (proc, _) in arms.items() if proc.poll() is None]
        for arm, (_, work) in arms.items():
            try:
                done = evaluated(work)
                if len(done) > seen[arm]:
                    rows = arm_results(work)
                    record.arm(arm, rows)
                    for r in rows[seen[arm] :]:
                        say(
                            f"{arm}: iteration {r['iteration']} held-out {100 * r['accuracy']:.1f}% "
                            f"(both orders {100 * (r['both_orders'] or 0):.1f}%, position bias "
                            f"{100 * (r['position_bias'] or 0):.1f}%, kept {'-' if r['kept_examples'] is None else r['kept_examples']})"
                        )
                    seen[arm] = len(rows)
            except Exception as exc:  # noqa: BLE001 - a read while the loop writes: next time
                log.debug("replicate: could not read %s yet: %s", arm, exc)
        if not running:
            return []
        if deadline is not None and time.monotonic() > deadline:
            for arm in running:
                say(f"{arm}: stopped at the deadline (what it measured is kept)")
                stop(arms[arm][0])
            return running
        time.sleep(every)


def run_arms(
    out: Path,
    arms: tuple[str, ...],
    base: Path,
    iterations: int,
    loop: dict,
    record: Record,
    deadline: float | None,
    side_by_side: bool,
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, str]:
    """Run each arm's loop (all at once, or one after the other), `meanwhile()` in a thread of this
    process while the first ones run (this thread watches the arms and the deadline); returns each
    arm's error (none when it finished)."""
    import shutil

    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    errors: dict[str, str] = {}
    ended: set[str] = set()  # arms whose loop ran to its end (or failed on its own)
    groups = [arms] if side_by_side else [(arm,) for arm in arms]
    try:
        for group in groups:
            if deadline is not None and time.monotonic() > deadline:
                errors.update({arm: "not started: the deadline had passed" for arm in group})
                continue
            started = time.perf_counter()
            batch = {}
            for arm in group:
                shutil.rmtree(out / arm, ignore_errors=True)
                say(f"{arm}: {iterations} iterations of the loop (log: {out / f'{arm}.log'})")
                batch[arm] = (
                    start_arm(arm_config(out, arm, base, iterations, None, loop), out / f"{arm}.log"),
                    out / arm,
                )
            procs.update(batch)
            beside = None
            if meanwhile is not None:  # a daemon: a SIGTERM ends the process whatever it is doing
                beside = threading.Thread(target=meanwhile, name="beside-the-arms", daemon=True)
                beside.start()
                meanwhile = None
            late = watch(batch, record, deadline)
            if beside is not None:
                beside.join()
            for arm, (proc, work) in batch.items():
                record.seconds(arm, time.perf_counter() - started)
                record.arm(arm, arm_results(work) if evaluated(work) else [])
                ended.add(arm)
                if arm in late:  # stopped after its last iteration was scored (writing its report): done
                    if len(evaluated(work)) <= iterations:
                        errors[arm] = "stopped at the deadline"
                elif proc.returncode != 0:
                    errors[arm] = f"the loop exited with {proc.returncode}; its log: {out / f'{arm}.log'}"
    finally:
        for arm, (proc, work) in procs.items():  # stopped from outside: end the loops, keep their scores
            if arm not in ended:
                stop(proc)
                if len(evaluated(work)) <= iterations:
                    errors[arm] = "stopped before it finished"
                try:
                    record.arm(arm, arm_results(work) if evaluated(work) else [])
                except Exception as exc:  # noqa: BLE001
                    log.warning("replicate: %s's scores could not be read: %s", arm, exc)
        record.update(errors={**record.summary.get("errors", {}), **errors})
    return errors


def figure_lines(summary: dict) -> list[str]:
    """One line per figure of a results.json (what the device script prints)."""
    lines = [f"seconds {k}: {v:.0f}" for k, v in summary.get("seconds", {}).items()]
    lines.append(f"held-out pairs: {summary.get('heldout_pairs')}")
    for qtype, skill in (summary.get("base_skills") or {}).items():
        lines.append(
            f"base skills {qtype}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in skill.items() if k != "pairs")
        )
    ceiling = summary.get("ceiling") or {}
    if "scores" in ceiling:
        o = ceiling["scores"]["overall"]
        lo, hi = o.get("ci_low", float("nan")), o.get("ci_high", float("nan"))
        lines.append(
            f"ceiling ({ceiling['examples']} gold traces, {ceiling['steps']} steps): "
            f"{100 * o['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]; by type: "
            + ", ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in ceiling["scores"].items() if k != "overall")
        )
    elif ceiling:
        lines.append(f"ceiling: {ceiling.get('error')}")
    for arm, rows in summary.get("results", {}).items():
        for r in rows:
            lines.append(
                f"{arm} iteration {r['iteration']}: held-out {100 * r['accuracy']:.1f}, both orders "
                f"{100 * (r['both_orders'] or 0):.1f}, position bias {100 * (r['position_bias'] or 0):.1f}, "
                f"kept {'-' if r['kept_examples'] is None else r['kept_examples']}"
            )
        best = (summary.get("best_vs_0") or {}).get(arm)
        if best:
            lo, hi = best["ci"]
            lines.append(
                f"{arm} best (iteration {best['iteration']}) vs 0: {100 * best['difference']:+.1f} points, "
                f"paired 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] on {best['pairs']} pairs"
            )
    lines += [f"error {k}: {v}" for k, v in summary.get("errors", {}).items()]
    return lines


def replicate(
    out: Path,
    iterations: int = 3,
    arms: tuple[str, ...] = ("majority", "gold"),
    base_steps: int | None = None,
    overrides: dict | None = None,
    base: Path | None = None,
    perception_steps: int | None = None,
    ceiling: int = 0,
    profile: str = "cpu",
    reading_steps: int | None = None,
    base_settings: dict[str, str] | None = None,
    deadline: float | None = None,
) -> dict:
    """Build the base model for the loop's world (kept under `out`, reused by a later call; or
    use `base`), run each arm, print the tables, write the plot and results.json. With `ceiling`
    > 0, also train the base judge on that many gold judge traces with the loop's trainer settings
    and score it on the held-out pairs (`supervised_ceiling`: what the loop could reach at best).

    `profile` ("cpu" | "gpu", PROFILES) gives the loop's settings (`overrides` on top), the base
    recipe (`base_settings`, and the three step counts when given, on top) and whether the arms run
    side by side. `deadline`: seconds from the start after which running arms are stopped; their
    evaluated iterations are kept. A failed arm or ceiling is recorded and the rest goes on."""
    from selfjudge.shared.config import load_settings
    from selfjudge.shared.sources.scenes.source import heldout_pairs

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    until = None if deadline is None else time.monotonic() + deadline
    chosen = PROFILES[profile]
    steps = {
        k: v
        for k, v in (
            ("perception_steps", perception_steps),
            ("reading_steps", reading_steps),
            ("pretrain_steps", base_steps),
        )
        if v is not None
    }
    recipe = dataclasses.replace(chosen.base.with_settings(base_settings or {}), **steps)
    loop_dict = deep_merge(chosen.loop, overrides or {})
    loop = load_settings(None, overrides=loop_dict)
    world = loop.source  # the base learns the loop's world
    record = Record(
        out / "results.json",
        {
            "profile": profile,
            "recipe": dataclasses.asdict(recipe),
            "heldout_pairs": loop.run.heldout_pairs,
            "results": {},
            "base_skills": None,
            "ceiling": None,
            "seconds": {},
            "errors": {},
        },
    )
    record.update()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if main else None
    try:
        base = base or out / (
            f"base-steps{recipe.perception_steps}+{recipe.reading_steps}+{recipe.pretrain_steps}"
            f"-size{world.image_size}-objects{world.max_objects}-scale{world.object_scale:g}"
            f"-{world.layout}-frozen-vision{recipe.tag()}"
        )
        if not (base / "config.json").exists():
            say(
                f"base model: building {base.name} ({recipe.perception_steps} + {recipe.reading_steps} + "
                f"{recipe.pretrain_steps} steps of {recipe.batch_size}, text {recipe.size.hidden} x "
                f"{recipe.size.layers} layers, on {loop.model.device})"
            )
            build_curriculum_model(
                base,
                seed=0,
                pretrain_steps=recipe.pretrain_steps,
                perception_steps=recipe.perception_steps,
                lr=recipe.lr,
                format_share=recipe.format_share,
                reading_steps=recipe.reading_steps,
                reading_lr=recipe.reading_lr,
                batch_size=recipe.batch_size,
                image_size=world.image_size,
                max_objects=world.max_objects,
                object_scale=world.object_scale,
                layout=world.layout,
                device=loop.model.device,
                size=recipe.size,
                max_examples=recipe.max_examples,
                micro_batch_tokens=recipe.micro_batch_tokens,
                answer_batch=recipe.answer_batch,
                answer_dtype=loop.model.dtype,
            )
        timings = record.summary["seconds"]
        timings["base_model"] = time.perf_counter() - start
        say(f"base model: ready in {timings['base_model']:.0f}s ({base})")
        # what the base judge can do before any iteration, on the held-out pairs the loop is scored on
        pairs = heldout_pairs(
            loop.run.seed,
            loop.run.heldout_pairs,
            image_size=world.image_size,
            max_objects=world.max_objects,
            object_scale=world.object_scale,
            layout=world.layout,
        )
        mark = time.perf_counter()
        skills = base_skills(
            base, pairs, batch_size=recipe.answer_batch, device=loop.model.device, dtype=loop.model.dtype
        )
        print(format_skills(skills), flush=True)
        timings["base_skills"] = time.perf_counter() - mark
        record.update(base_skills=skills, base_model=str(base))

        def measure_ceiling() -> None:
            mark = time.perf_counter()
            say(f"ceiling: training the base judge on {ceiling} gold traces")
            try:
                bound = supervised_ceiling(base, out, loop, pairs, ceiling, batch_size=recipe.answer_batch)
                print(format_ceiling(bound), flush=True)
            except Exception as exc:
                log.exception("replicate: the supervised ceiling failed")
                bound = {"error": f"{type(exc).__name__}: {exc}"}
            record.seconds("ceiling", time.perf_counter() - mark)
            record.update(ceiling=bound)

        measure = measure_ceiling if ceiling > 0 else None
        if measure is not None and not chosen.side_by_side:
            measure()  # before the loop, as the CPU miniature always did
            measure = None
        run_arms(out, arms, base, iterations, loop_dict, record, until, chosen.side_by_side, meanwhile=measure)
    except Stopped as exc:
        say(f"stopped ({exc}); results.json keeps what was measured")
        record.update(errors={**record.summary["errors"], "replicate": f"stopped by {exc}"})
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    summary = record.summary
    record.seconds("total", time.perf_counter() - start)
    for arm in arms:
        if summary["results"].get(arm):
            print(format_table(arm, summary["results"][arm]), flush=True)
    summary["figure"] = str(plot(summary["results"], out / "heldout_accuracy.png"))
    record.update()
    for arm, best in summary["best_vs_0"].items():
        if best is None:
            continue
        lo, hi = best["ci"]
        print(
            f"{arm}: held-out accuracy, best iteration vs iteration 0: {100 * best['difference']:+.1f} points "
            f"(iteration {best['iteration']}; paired bootstrap 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] "
            f"on {best['pairs']} pairs)",
            flush=True,
        )
    for arm, error in summary["errors"].items():
        print(f"{arm}: {error}", flush=True)
    print(
        "time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items()) + f"; figure: {summary['figure']}",
        flush=True,
    )
    return summary
