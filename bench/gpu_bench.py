"""A short GPU check: generation tokens/s and training MFU of a ~1.9B-parameter Qwen2.5-VL.

The model is randomly initialised from a config shaped like Qwen2.5-VL with a Qwen2.5-1.5B text
model (hidden 1536, 28 layers, GQA 12/2, vocab 151936, tied embeddings) and a 16-block vision
tower (the real one has 32), built straight on the device in bf16 and saved once; nothing is
downloaded. Then:

- generation: TransformersBackend (bf16) on `--gen-batch` judge prompts with one 224px image
  each, greedy, `--gen-tokens` new tokens; prints generated tokens/s;
- training: `sft` (full fine-tune, bf16 autocast over fp32 weights, fused AdamW) on scene QA +
  judge examples; prints trained tokens/s and MFU = model FLOPs / (seconds x peak) over the
  steps after `--warmup-steps`. Model FLOPs per step: 6 x (text-layer params) per real token +
  6 x layers x hidden x seq per token for causal attention + 6 x hidden x vocab per answer token
  (the LM head runs only there) + 6 x (vision params) per image patch. Peak: bf16 dense of the
  detected card (H100/H200 SXM 989 TFLOPS, H100 PCIe 756, A100 312) or `--peak-tflops`.

    python bench/gpu_bench.py                          # on a GPU machine (a few minutes)
    python bench/gpu_bench.py --device cpu --tiny      # smoke check of the same code paths
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_model, sft_examples  # noqa: E402

import torch  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def big_config(ids: dict[str, int]):  # noqa: ANN201 - Qwen2_5_VLConfig
    """Qwen2.5-VL with a Qwen2.5-1.5B text model and a 16-block vision tower (~1.9B params)."""
    from transformers import Qwen2_5_VLConfig

    hidden = 1536
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=hidden, intermediate_size=8960, num_hidden_layers=28,
            num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=16, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[3, 7, 11, 15], out_hidden_size=hidden,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )  # fmt: skip


def build_big(folder: Path, device: str, image_size: int = 224) -> Path:
    """The big_config model, random init on `device` in bf16, saved like a hub folder."""
    from transformers import (
        AutoModelForImageTextToText,
        GenerationConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from selfjudge.shared.models.tiny import QWEN2_VL_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_qwen_tokenizer
    from selfjudge.shared.sources.scenes import tokenizer_corpus

    tok = build_qwen_tokenizer(tokenizer_corpus(), vocab_size=2048)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    px = {"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size}
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=px, patch_size=14, temporal_patch_size=2, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(size=px, patch_size=14, temporal_patch_size=2, merge_size=2),
        tokenizer=tok, chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(big_config(ids), dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )  # fmt: skip
    model.save_pretrained(folder, safe_serialization=True)
    proc.save_pretrained(folder)
    del model
    return folder


def param_counts(folder: Path) -> dict[str, float]:
    """Parameters by part, read from the config (no weights loaded)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    out = {"total": 0.0, "text_layers": 0.0, "vision": 0.0}
    for name, p in model.named_parameters():
        out["total"] += p.numel()
        if "language_model.layers." in name:
            out["text_layers"] += p.numel()
        elif "visual" in name:
            out["vision"] += p.numel()
    cfg = model.config.text_config
    out |= {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size}
    return out


def peak_flops(arg: float | None, device: str) -> float | None:
    if arg:
        return arg * 1e12
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return tflops * 1e12
    return None


def bench_generate(folder: Path, device: str, batch: int, new_tokens: int) -> str:
    from common import chat_requests

    from selfjudge.shared.models.backend import SamplingParams, TransformersBackend

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    be = TransformersBackend(str(folder), device=device, dtype=dtype, batch_size=batch)
    reqs = chat_requests(batch, seed=5)
    be.generate(reqs[:2], SamplingParams(max_new_tokens=4))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    gens = be.generate(reqs, SamplingParams(max_new_tokens=new_tokens))
    sync(device)
    seconds = time.perf_counter() - t0
    tokens = sum(g.token_counts[0] for g in gens)
    del be
    return f"gpu_bench generate: {tokens / seconds:.0f} tok/s ({len(reqs)} requests in one batch, {tokens} new tokens, {seconds:.2f}s, {dtype})"


def bench_train(folder: Path, out: Path, device: str, n: int, batch: int, warmup: int, peak: float | None) -> str:
    from transformers import AutoProcessor

    from selfjudge.shared.models.training import IGNORE, TrainConfig, encode_example, sft, step_plan

    data = sft_examples(n, seed=7)
    cfg = TrainConfig(lr=1e-5, epochs=1, batch_size=batch, device=device, warmup_ratio=0.0, max_length=1024)
    proc = AutoProcessor.from_pretrained(folder)
    enc = [encode_example(proc, ex, cfg.max_length) for ex in data]
    lengths = [len(e["input_ids"]) for e in enc]
    answers = [int((e["labels"][1:] != IGNORE).sum()) for e in enc]
    patches = [int(e["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in e else 0 for e in enc]
    plan = step_plan(lengths, cfg)
    p = param_counts(folder)

    def step_flops(step: list[list[int]]) -> float:
        f = 0.0
        for i in (i for mb in step for i in mb):
            f += 6 * p["text_layers"] * lengths[i] + 6 * p["layers"] * p["hidden"] * lengths[i] ** 2
            f += 6 * p["hidden"] * p["vocab"] * answers[i] + 6 * p["vision"] * patches[i]
        return f

    stamps: list[float] = []

    def progress(step: int, total: int, loss: float) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    sync(device)
    start = time.perf_counter()
    sft(str(folder), data, out, cfg, progress=progress)
    warm = min(warmup, len(plan) - 1)
    t = stamps[-1] - (stamps[warm - 1] if warm > 0 else start)
    timed = plan[warm:]
    tokens = sum(lengths[i] for s in timed for mb in s for i in mb)
    flops = sum(step_flops(s) for s in timed)
    mfu = f"MFU {100 * flops / (t * peak):.1f}% of {peak / 1e12:g} TFLOPS" if peak else "MFU n/a (unknown peak: --peak-tflops)"
    return (f"gpu_bench train: {tokens / t:.0f} tok/s, {flops / t / 1e12:.2f} TFLOPS model, {mfu} "
            f"({len(timed)} steps of {batch} examples after {warm} warm-up, {p['total'] / 1e6:.0f}M params)")  # fmt: skip


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model and a few steps (smoke check)")
    ap.add_argument("--gen-batch", type=int, default=None)
    ap.add_argument("--gen-tokens", type=int, default=None)
    ap.add_argument("--train-examples", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=None)
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    ap.add_argument("--work", default=None, help="folder for the model (default: a temporary one)")
    args = ap.parse_args(argv)
    small = dict(gen_batch=2, gen_tokens=4, train_examples=4, train_batch=2, warmup_steps=1)
    big = dict(gen_batch=32, gen_tokens=128, train_examples=96, train_batch=8, warmup_steps=3)
    for k, v in (small if args.tiny else big).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-bench-", dir=args.work) as tmp:
        folder = Path(tmp) / "model"
        t0 = time.perf_counter()
        build_model(folder) if args.tiny else build_big(folder, args.device)
        print(f"gpu_bench model: {param_counts(folder)['total'] / 1e6:.0f}M params, built in {time.perf_counter() - t0:.0f}s on {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), flush=True)  # fmt: skip
        print(bench_generate(folder, args.device, args.gen_batch, args.gen_tokens), flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        peak = peak_flops(args.peak_tflops, args.device)
        print(bench_train(folder, Path(tmp) / "trained", args.device, args.train_examples, args.train_batch,
                          args.warmup_steps, peak), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
