"""`make bench`: every comparison, one line each, `<name>: <ratio>x (target <t>x)`, in one run.

The comparisons share one tiny offline model folder and the same data/prompts (bench/common.py).
To add one, write `bench/<name>_bench.py` with `compare(work: Path) -> list[Result]` and add its
module name to COMPARISONS (a vLLM comparison, for one).

    python bench/run.py [--only train generate] [--threads 1] [--strict] [-v]

Torch runs on `--threads` intra-op threads (default 1): on a shared 2-core machine OpenMP
threads spin against the other jobs and timings swing 5-10x; one thread per side is stable and
the same for both sides of every comparison. `--threads 0` keeps torch's default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Result

# name -> module in bench/ with compare(work: Path) -> list[Result]; run in this order
COMPARISONS: dict[str, str] = {
    "generate": "generate_bench",
    "train": "train_bench",
    "train_memory": "train_memory_bench",
    "vllm": "vllm_bench",
    "pipeline": "pipeline_bench",
    "source": "source_bench",
}


def run(names: list[str], work: Path) -> list[Result]:
    results = []
    for name in names:
        module = importlib.import_module(COMPARISONS[name])
        t0 = time.perf_counter()
        try:
            compared = module.compare(work)
        except ImportError as exc:  # e.g. vLLM where `make vllm` has not run: said, not hidden
            print(f"{name}: not run ({exc})", flush=True)
            continue
        for r in compared:
            results.append(r)
            print(r.line(), flush=True)
            logging.getLogger("bench").info("  %s [%.0fs]", r.detail, time.perf_counter() - t0)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="selfjudge throughput comparisons")
    ap.add_argument("--only", nargs="*", choices=sorted(COMPARISONS), help="run these comparisons only")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target (or side condition) is missed")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each comparison's details")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    for noisy in ("transformers", "torch", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="selfjudge-bench-") as tmp:
        results = run(args.only or list(COMPARISONS), Path(tmp))
    return 1 if args.strict and not all(r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
