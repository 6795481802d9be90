"""Trainer memory vs data size: peak memory training on 20,000 traces vs on 1,000, same steps.

Each side runs in a fresh subprocess what the trainer stage runs: the traces (judge prompt, answer,
image key; every trace its own distinct 112 px PNG in a local store, as filter shards write them)
are spilled to a local file and read one example at a time (services/trainer/examples.py), with
DataLoader workers fetching and encoding micro-batches; `sft` trains the tiny model for the same
`steps` optimizer steps on both sides. Peak memory is the largest resident set of the trainer
process plus that of its largest worker (ru_maxrss); training speed is tokens per second over the
steps after the first (the length pass over all traces is not in it). The sides alternate,
`repeats` runs each: the highest peak and the best speed of each side count. Target: 20k / 1k <=
1.15x, tokens/s within 15%. Loading every trace's image first (what the trainer did before) would hold
20,000 x 37 KB of decoded pixels.

    python bench/train_memory_bench.py [--small 1000] [--large 20000] [--steps 24]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Result, build_model

HERE = Path(__file__).resolve().parent


def write_traces(store_root: Path, n: int) -> str:
    """n judge traces with distinct images in a local store; returns the shard key."""
    from PIL import Image

    from selfjudge.shared.store import LocalStore, put_image, put_jsonl

    store = LocalStore(store_root)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    records = []
    for i in range(n):
        img = Image.new("RGB", (112, 112), colours[i % 6])
        img.putpixel((i % 112, (i // 112) % 112), (i % 251, i % 241, i % 239))  # distinct bytes per trace
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        _, key = put_image(store, buf.getvalue())
        c = colours[i % 6]
        records.append({
            "example_id": i, "image_key": key,
            "prompt_text": f"Question: which shape is {c}? Response A: the {c} circle. Response B: the {c} square. "
                           "Which response is better? Think step by step, then answer [[A]] or [[B]].",
            "answer": f"The image shows a {c} circle, so response {'AB'[i % 2]} is right. [[{'AB'[i % 2]}]]",
        })  # fmt: skip
    key = f"runs/1/iter1/examples/{n}.jsonl"
    put_jsonl(store, key, records)
    return key


def child(model: str, store_root: str, key: str, steps: int, out: str) -> dict:
    """One trainer run (in its own process): peak RSS and tokens/s."""
    import resource
    import time

    import torch

    from selfjudge.services.trainer.examples import StoreExamples
    from selfjudge.shared.config import TrainConfig
    from selfjudge.shared.models.sft.loop import sft
    from selfjudge.shared.store import LocalStore

    torch.set_num_threads(1)
    store = LocalStore(store_root)
    examples = StoreExamples.spill(store, [key], Path(out) / "traces.jsonl", reopen=lambda: LocalStore(store_root))
    cfg = TrainConfig(
        lr=1e-4, epochs=1, batch_size=4, max_steps=steps, warmup_ratio=0.0, max_length=512, loader_workers=2
    )
    stamps: list[float] = []
    res = sft(model, examples, Path(out) / "model", cfg, progress=lambda s, t, l: stamps.append(time.perf_counter()))
    per_step = res.tokens / res.steps  # tokens are near equal per step; the first step (warm-up) is left out
    tokens_per_s = per_step * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"traces": len(examples), "peak_mb": me + workers, "main_mb": me, "worker_mb": workers,
            "tokens_per_s": tokens_per_s, "steps": res.steps, "seconds": res.seconds}  # fmt: skip


def run_child(model: Path, store: Path, key: str, steps: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(HERE / "train_memory_bench.py"),
        "--child",
        str(model),
        str(store),
        key,
        str(steps),
        str(work),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"trainer run failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(work: Path, small: int = 1000, large: int = 20000, steps: int = 24, repeats: int = 2) -> list[Result]:
    model = build_model(work / "model")
    store = work / "trace-store"
    keys = {n: write_traces(store, n) for n in (small, large)}
    runs: dict[int, list[dict]] = {small: [], large: []}
    for r in range(repeats):  # alternate (the machine is shared): the highest peak, the best speed of each side
        for n in (small, large):
            runs[n].append(run_child(model, store, keys[n], steps, work / f"mem-{n}-{r}"))
    a, b = ({**max(runs[n], key=lambda x: x["peak_mb"]), "tokens_per_s": max(x["tokens_per_s"] for x in runs[n]),
             "seconds": min(x["seconds"] for x in runs[n])} for n in (small, large))  # fmt: skip
    ratio = b["peak_mb"] / a["peak_mb"]
    speed = b["tokens_per_s"] / a["tokens_per_s"]
    detail = (f"peak {a['peak_mb']:.0f} MB ({a['main_mb']:.0f} trainer + {a['worker_mb']:.0f} worker) at {small} traces vs "
              f"{b['peak_mb']:.0f} MB ({b['main_mb']:.0f} + {b['worker_mb']:.0f}) at {large}; {steps} steps; "
              f"{a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f} tok/s ({speed:.2f}x); "
              f"whole call {a['seconds']:.0f}s vs {b['seconds']:.0f}s (the length pass reads every trace once)")  # fmt: skip
    return [Result(f"train_peak_memory_{large // 1000}k_vs_{small // 1000}k_traces", ratio, 1.15, detail,
                   extra_ok=abs(speed - 1) <= 0.15, at_most=True)]  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, store, key, steps, out = sys.argv[2:7]
        print(json.dumps(child(model, store, key, int(steps), out)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-memory-bench-") as tmp:
        for r in compare(Path(tmp), args.small, args.large, args.steps):
            print(r.line())
            print(f"  {r.detail}")


if __name__ == "__main__":
    main()
