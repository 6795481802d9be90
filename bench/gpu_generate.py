"""Generation on the card: plain `generate` against a static KV cache with compiled decode, and
the memory a checkpoint swap gives back.

On one model folder (the ~1.9B random-init Qwen2.5-VL that bench/gpu_bench.py builds, or
`--model`), in one run:

- plain: TransformersBackend(decode="plain") (a dynamic KV cache), bf16 on CUDA;
- static: TransformersBackend(decode="static") (a static KV cache; transformers compiles the
  decode step with torch.compile, CUDA graphs, on CUDA), after one warm-up call of the same shape
  that pays for the compile (its seconds are printed; plain gets a short warm-up);

each on `--batch` judge prompts with one image, greedy, `--tokens` new tokens, in one batch.
Prints tokens/s of both, their ratio, the share of identical completions, and for each backend
the memory before loading and after close() (torch.cuda.memory_allocated on CUDA; process RSS
on CPU). transformers' continuous batching (`generate_batch`) takes token ids only, not images,
so it cannot run these requests and is not measured.

    python bench/gpu_generate.py                        # on a GPU machine (1-3 minutes)
    python bench/gpu_generate.py --device cpu --tiny    # smoke check of the same code paths

`main(argv)` is what bench/gpu_bench.py calls (pass `--model FOLDER` to reuse its model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
try:  # an installed selfjudge stays first: common.py would put the source folder (no shared/) ahead of it
    import selfjudge.shared  # noqa: F401

    sys.path.append(str(BENCH.parent))
except ImportError:
    pass

import torch  # noqa: E402
from common import build_model, chat_requests  # noqa: E402

MiB = 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory(device: str) -> int:
    """Bytes held: CUDA tensors on CUDA, this process's RSS on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def measure(folder: Path, device: str, decode: str, batch: int, tokens: int) -> dict:
    """Load, warm up, time one batch, close: tokens/s, the texts, and memory before / after close."""
    from selfjudge.shared.models.generation.backend import SamplingParams, close_backend, free_memory
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    free_memory()
    before = memory(device)
    be = TransformersBackend(str(folder), device=device, dtype=dtype, batch_size=batch, decode=decode)
    loaded = memory(device)
    reqs, params = chat_requests(batch, seed=5), SamplingParams(max_new_tokens=tokens)
    t0 = time.perf_counter()
    if decode == "static":  # warm-up of the very same shape: the compile happens here
        be.generate(reqs, params)
    else:
        be.generate(reqs[:2], SamplingParams(max_new_tokens=4))
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    gens = be.generate(reqs, params)
    sync(device)
    seconds = time.perf_counter() - t0
    close_backend(be)
    del be
    after = memory(device)
    n = sum(g.token_counts[0] for g in gens)
    return dict(decode=decode, tok_s=n / seconds, tokens=n, seconds=seconds, warm=warm, texts=[g.texts[0] for g in gens],
                before=before, loaded=loaded, after=after, dtype=dtype)  # fmt: skip


def report(plain: dict, static: dict | str, batch: int, device: str) -> list[str]:
    what = "memory_allocated" if device.startswith("cuda") else "RSS"
    lines = [f"gpu_generate plain: {plain['tok_s']:.0f} tok/s ({batch} requests in one batch, {plain['tokens']} new tokens, "
             f"{plain['seconds']:.2f}s, {plain['dtype']})"]  # fmt: skip
    runs = [plain]
    if isinstance(static, str):
        lines.append(f"gpu_generate static: FAILED {static}")
    else:
        runs.append(static)
        same = sum(a == b for a, b in zip(plain["texts"], static["texts"])) / len(plain["texts"])
        lines += [
            f"gpu_generate static: {static['tok_s']:.0f} tok/s ({static['tokens']} new tokens, {static['seconds']:.2f}s; "
            f"first call with compile {static['warm']:.1f}s)",
            f"gpu_generate static/plain: {static['tok_s'] / plain['tok_s']:.2f}x, identical completions {same:.0%}",
        ]  # fmt: skip
    for r in runs:
        lines.append(f"gpu_generate swap {r['decode']}: {what} {r['before'] / MiB:.0f} MiB before load, "
                     f"{r['loaded'] / MiB:.0f} loaded, {r['after'] / MiB:.0f} after close "
                     f"(delta {(r['after'] - r['before']) / MiB:+.0f} MiB)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model, a few tokens (smoke check)")
    ap.add_argument("--model", default=None, help="an existing model folder (default: build one)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--work", default=None, help="folder for the built model (default: a temporary one)")
    args = ap.parse_args(argv)
    args.batch = args.batch or (4 if args.tiny else 32)
    args.tokens = args.tokens or (8 if args.tiny else 128)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_generate: no CUDA device here (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-generate-", dir=args.work) as tmp:
        folder = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            t0 = time.perf_counter()
            if args.tiny:
                build_model(folder)
            else:
                from gpu_bench import build_big  # the same ~1.9B model as gpu_bench

                build_big(folder, args.device)
            print(f"gpu_generate model: built in {time.perf_counter() - t0:.0f}s on {args.device}", flush=True)
        plain = measure(folder, args.device, "plain", args.batch, args.tokens)
        try:
            static: dict | str = measure(folder, args.device, "static", args.batch, args.tokens)
        except Exception as exc:  # noqa: BLE001 - the plain figure still counts; say why static did not run
            static = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        for line in report(plain, static, args.batch, args.device):
            print(line, flush=True)
    return 0 if not isinstance(static, str) else 1


if __name__ == "__main__":
    sys.exit(main())
