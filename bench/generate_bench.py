"""Generation throughput: TransformersBackend vs a plain `model.generate` loop, same model and prompts.

The baseline is what a caller without the backend writes: for each request, render the chat
template, run the processor and `model.generate` (greedy, same stop tokens and max_new_tokens).
The backend batches requests (grouped by image count and length, left-padded). Both use the same
loaded model object; generated tokens are counted up to and including the stop token.

    python bench/generate_bench.py [--requests 16] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import Result, build_model, chat_requests


def plain_loop(be, reqs: list, max_new_tokens: int) -> tuple[int, list[list[int]]]:
    from selfjudge.shared.models.chat_format import chat_messages

    proc, model = be.processor, be.model
    tokens, outs = 0, []
    with torch.inference_mode():
        for r in reqs:
            text = proc.apply_chat_template(chat_messages(r.text, r.images, r.system), add_generation_prompt=True,
                                            tokenize=False)  # fmt: skip
            enc = proc(text=[text], images=[r.images] if r.images else None, return_tensors="pt").to(model.device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=be.stop_ids,
                                 pad_token_id=be.pad_id)  # fmt: skip
            new = out[0, enc["input_ids"].shape[1] :].tolist()
            n = next((i + 1 for i, t in enumerate(new) if t in be.stop_ids), len(new))
            tokens += n
            outs.append(new[:n])
    return tokens, outs


def compare(work: Path, n_requests: int = 16, max_new_tokens: int = 32, repeats: int = 2) -> list[Result]:
    from selfjudge.shared.models.generation.backend import SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

    model = build_model(work / "model")
    reqs = chat_requests(n_requests)
    be = TransformersBackend(str(model), batch_size=8)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    be.generate(reqs[:2], SamplingParams(max_new_tokens=2))  # warm-up (first-call allocations)
    best_plain = best_be = float("inf")
    for _ in range(repeats):  # alternate A/B and keep each side's best: the machine is shared
        t0 = time.perf_counter()
        plain_tokens, plain_outs = plain_loop(be, reqs, max_new_tokens)
        best_plain = min(best_plain, time.perf_counter() - t0)
        t0 = time.perf_counter()
        gens = be.generate(reqs, params)
        best_be = min(best_be, time.perf_counter() - t0)
    be_tokens = sum(g.token_counts[0] for g in gens)
    same = sum(
        g.texts[0] == be.processor.tokenizer.decode(o, skip_special_tokens=True) for g, o in zip(gens, plain_outs)
    )
    ratio = (be_tokens / best_be) / (plain_tokens / best_plain)
    detail = (f"{n_requests} judge prompts x {max_new_tokens} new tokens: backend {be_tokens / best_be:.0f} tok/s, "
              f"plain generate loop {plain_tokens / best_plain:.0f} tok/s; identical greedy outputs {same}/{len(gens)}")  # fmt: skip
    return [Result("generate_tokens_per_s_vs_plain_generate", ratio, 1.0, detail)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="generate-bench-") as tmp:
        for r in compare(Path(tmp), args.requests, args.max_new_tokens):
            print(r.line())
            print(f"  {r.detail}")


if __name__ == "__main__":
    main()
