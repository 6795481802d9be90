"""The pipeline's own cost: one iteration through the services vs the same model calls made directly,
and how wall time and memory grow with the work.

overhead  One iteration of the loop in embedded mode (every stage's real handler, the database, the
          artifact store, the in-process queue; default shard size) while every generation call
          (TransformersBackend.generate) and the training call are recorded with their inputs.
          Then the same calls are replayed directly in one process: the same model folders, the
          same requests and sampling parameters, the same training examples and config.
          ratio = direct seconds / pipeline seconds (1.0 = no overhead; target 0.95 = overhead < 5%).
scaling   The same iteration at 1x, 4x and 16x prompts, each in a fresh process: wall time should
          grow linearly (the exponent of a log-log fit is printed; ratio = per-prompt time at 1x /
          per-prompt time at 16x, so >= 1 is linear or better) and the peak memory of the process
          (which hosts every stage) should stay flat (ratio = peak RSS at 1x / peak RSS at 16x).

    python bench/pipeline_bench.py [--prompts 512] [--scales 1 4 16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Result

BASE_STEPS = 120  # a short format lesson: the judge must emit verdicts, so that the filter keeps traces


def base_model(work: Path) -> Path:
    """A tiny base model taught the judge format (shared by every run of this bench)."""
    from selfjudge.basemodel import build_base_model

    folder = work / "pipeline-base"
    if not (folder / "config.json").exists():
        build_base_model(folder, seed=0, pretrain_steps=BASE_STEPS)
    return folder


def write_config(work: Path, base: Path, prompts: int) -> Path:
    """One iteration; the demo's sampling settings; default shard size."""
    config = work / f"pipeline-{prompts}.yaml"
    config.write_text(
        json.dumps(
            {
                "run": {
                    "name": f"bench-{prompts}",
                    "iterations": 1,
                    "prompts_per_iteration": prompts,
                    "heldout_pairs": 16,
                    "work_dir": str(work / f"run-{prompts}"),
                },
                "model": {"base": str(base), "batch_size": 8},
                "synth": {
                    "n_samples": 4,
                    "majority_threshold": 2,
                    "max_new_tokens": 16,
                    "open_max_new_tokens": 48,
                    "injection": "both",
                    "alter_samples": 1,
                    "alter_max_new_tokens": 48,
                },
                "reason": {"temperature": 1.0, "max_new_tokens": 48},
                "filter": {"require_all_samples": False},
                "train": {"lr": 1e-4, "epochs": 1, "batch_size": 4, "max_length": 512},
                "eval": {"max_new_tokens": 48},
            }
        )
    )
    return config


class Recorder:
    """Wraps the backend's generate and the trainer's train: records each call and its seconds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple, float]] = []  # (kind, model path, args, seconds)

    def __enter__(self) -> "Recorder":
        from selfjudge.services.trainer import stage as trainer_stage
        from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

        self._generate, self._train = TransformersBackend.generate, trainer_stage.train
        rec, generate, train = self, self._generate, self._train

        def recorded_generate(backend, requests, params, progress=None):
            t0 = time.perf_counter()
            out = generate(backend, requests, params, progress)
            rec.calls.append(
                ("generate", backend.model.name_or_path, (list(requests), params), time.perf_counter() - t0)
            )
            return out

        def recorded_train(model_path, examples, out_dir, cfg, **kw):
            t0 = time.perf_counter()
            out = train(model_path, examples, out_dir, cfg, **kw)
            rec.calls.append(("train", str(model_path), (list(examples), cfg), time.perf_counter() - t0))
            return out

        TransformersBackend.generate = recorded_generate
        trainer_stage.train = recorded_train
        return self

    def __exit__(self, *exc: object) -> None:
        from selfjudge.services.trainer import stage as trainer_stage
        from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

        TransformersBackend.generate, trainer_stage.train = self._generate, self._train


def run_pipeline(config: Path) -> float:
    from selfjudge.cli import main as cli_main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's status table is not bench output
        rc = cli_main(["run", "--config", str(config), "--json"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"the pipeline run with {config} did not finish")
    return seconds


def replay(calls: list, work: Path) -> float:
    """The recorded calls, made directly: each model folder loaded once, calls in the same order."""
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.models.sft.loop import sft

    backends: dict[str, TransformersBackend] = {}
    t0 = time.perf_counter()
    for i, (kind, path, args, _) in enumerate(calls):
        if kind == "generate":
            if path not in backends:
                backends.clear()  # one model in memory at a time, as a worker keeps it
                backends[path] = TransformersBackend(path, batch_size=8)
            backends[path].generate(*args)
        else:
            examples, cfg = args
            sft(path, examples, work / f"replay-train-{i}", cfg)
    return time.perf_counter() - t0


def overhead(work: Path, prompts: int, base: Path | None = None) -> Result:
    base = base or base_model(work)
    config = write_config(work, base, prompts)
    with Recorder() as rec:
        pipeline = run_pipeline(config)
    model_seconds = sum(c[3] for c in rec.calls)
    direct = replay(rec.calls, work)
    n_gen = sum(c[0] == "generate" for c in rec.calls)
    detail = (
        f"{prompts} prompts, 1 iteration: pipeline {pipeline:.1f}s (model calls inside it {model_seconds:.1f}s), "
        f"the same {n_gen} generate + {len(rec.calls) - n_gen} train calls made directly {direct:.1f}s; "
        f"overhead {100 * (pipeline - direct) / pipeline:.1f}% of wall time"
    )
    return Result("pipeline vs direct model calls (1 - overhead)", direct / pipeline, 0.95, detail)


def scaled_run(prompts: int, work: Path) -> dict:
    """In this (fresh) process: one iteration at `prompts`; wall seconds and peak RSS."""
    config = write_config(work, base_model(work), prompts)
    seconds = run_pipeline(config)
    return {
        "prompts": prompts,
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def scaling(work: Path, prompts: int, scales: list[int]) -> list[Result]:
    base_model(work)  # built once, before the timed runs
    runs = []
    for scale in scales:
        out = subprocess.run(
            [sys.executable, __file__, "--scaled-run", str(prompts * scale), "--work", str(work)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode != 0:
            raise RuntimeError(f"scaled run x{scale} failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    xs = [math.log(r["prompts"]) for r in runs]
    ys = [math.log(r["seconds"]) for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    exponent = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    first, last = runs[0], runs[-1]
    per_prompt = (first["seconds"] / first["prompts"]) / (last["seconds"] / last["prompts"])
    table = ", ".join(f"{r['prompts']} prompts {r['seconds']:.1f}s {r['peak_rss_mb']:.0f} MB" for r in runs)
    return [
        Result(
            f"scaling {scales[-1]}x prompts: time per prompt (exponent {exponent:.2f})",
            per_prompt,
            1.0,
            f"{table}; wall ~ prompts^{exponent:.2f}",
        ),
        Result(
            f"scaling {scales[-1]}x prompts: peak memory (1x / {scales[-1]}x)",
            first["peak_rss_mb"] / last["peak_rss_mb"],
            0.9,
            table,
        ),
    ]


def compare(work: Path, prompts: int = 512, scales: list[int] | None = None) -> list[Result]:
    return [overhead(work, prompts), *scaling(work, 32, scales or [1, 4, 16])]


def main() -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=512, help="prompts in the overhead iteration")
    ap.add_argument("--scales", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--scaled-run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.scaled_run:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(scaled_run(args.scaled_run, Path(args.work))))
        return
    with tempfile.TemporaryDirectory(prefix="selfjudge-bench-") as tmp:
        for r in compare(Path(tmp), args.prompts, args.scales):
            print(r.line(), "-", r.detail)


if __name__ == "__main__":
    main()
