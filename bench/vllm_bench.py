"""Generation throughput: VLLMBackend vs a plain `LLM.generate` call, same engine and prompts.

The baseline is what a caller without the backend writes: the chat template rendered per request,
images as multi-modal data, one `LLM.generate` over all prompts (greedy, same max tokens and stop
tokens). Both sides use the same `vllm.LLM` object; tokens are counted up to the stop token.
Runs where vLLM imports (`make vllm` on CPU).

    python bench/vllm_bench.py [--requests 32] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Result, build_model, chat_requests


def plain_generate(be, reqs: list, max_new_tokens: int) -> int:
    from vllm import SamplingParams as VSamplingParams

    from selfjudge.shared.models.chat_format import chat_messages

    prompts = []
    for r in reqs:
        text = be.processor.apply_chat_template(
            chat_messages(r.text, r.images, r.system), add_generation_prompt=True, tokenize=False
        )
        prompts.append(
            {"prompt": text, "multi_modal_data": {"image": list(r.images)}} if r.images else {"prompt": text}
        )
    params = VSamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(be.stop_ids))
    outs = be.llm.generate(prompts, params, use_tqdm=False)
    return sum(be._count(list(o.outputs[0].token_ids)) for o in outs)  # up to the stop token, as ours


def compare(work: Path, n_requests: int = 32, max_new_tokens: int = 32, rounds: int = 2) -> list[Result]:
    from selfjudge.shared.models.generation.backend import SamplingParams
    from selfjudge.shared.models.generation.vllm_backend import VLLMBackend

    model = build_model(work / "tiny")
    reqs = chat_requests(n_requests)
    be = VLLMBackend(str(model), kv_cache_gib=1)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    be.generate(reqs[:4], params)  # warm-up (both sides share the engine)
    best_ours = best_plain = float("inf")
    tokens_ours = tokens_plain = 0
    for _ in range(rounds):  # alternate, keep each side's best
        t0 = time.perf_counter()
        tokens_ours = sum(sum(g.token_counts) for g in be.generate(reqs, params))
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tokens_plain = plain_generate(be, reqs, max_new_tokens)
        best_plain = min(best_plain, time.perf_counter() - t0)
    be.close()
    ours, plain = tokens_ours / best_ours, tokens_plain / best_plain
    detail = (
        f"{n_requests} judge prompts with an image, greedy, {max_new_tokens} new tokens: VLLMBackend "
        f"{ours:.0f} tok/s ({tokens_ours} tokens), plain LLM.generate {plain:.0f} tok/s ({tokens_plain} tokens)"
    )
    return [
        Result(
            "vllm backend vs plain LLM.generate (tok/s)",
            ours / plain,
            0.95,
            detail,
            extra_ok=tokens_ours == tokens_plain,
        )
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfjudge-bench-") as tmp:
        for r in compare(Path(tmp), args.requests, args.max_new_tokens):
            print(r.line(), "-", r.detail)
