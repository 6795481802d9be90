"""GPU check: SFT tokens/s and MFU of plain transformers vs selfjudge's `sft` on a ~1.9B Qwen2.5-VL.

The model is randomly initialised from a config shaped like Qwen2.5-VL with a Qwen2.5-1.5B text
model (hidden 1536, 28 layers, GQA 12/2, vocab 151936, tied embeddings) and a 16-block vision
tower (the real one has 32), built straight on the device in bf16 and saved once; nothing is
downloaded. Both sides train the same saved model on the same examples (scene QA + judge traces,
one 224 px image each), with the same examples in every optimizer step:

- plain: the usual transformers loop - fp32 weights under bf16 autocast, right-padded
  micro-batches of `--plain-micro` examples with an attention mask, `model(**batch, labels=...)`
  (full-vocabulary logits at every position), gradient accumulation to `--step-examples`
  examples per step, torch AdamW (its default foreach kernel), clipping at 1.0;
- ours: `sft` (the trainer's code path): the same precision, micro-batches packed without padding
  up to `--micro-tokens` tokens (per-example mrope position ids; attention through torch's
  FlashAttention varlen kernel where it passes its check on the card), logits only at answer
  tokens, fused AdamW, examples encoded by DataLoader workers.

Each prints trained tokens/s (real tokens, no padding) and MFU = model FLOPs / (seconds x peak)
over the steps after `--warmup-steps`. Model FLOPs per example (same formula both sides): 6 x
(text-layer params) per token + 6 x layers x hidden x seq^2 (causal attention within the
example) + 6 x hidden x vocab per answer token + 6 x (vision params) per image patch. Peak: bf16
dense of the detected card (H100/H200 SXM 989 TFLOPS, H100 PCIe 756, A100 312) or `--peak-tflops`.
Then the ratio line (targets: ours >= 3x plain, >= 35% MFU), and, where bench/gpu_generate.py
exists, its generation comparison on the same model (`gpu_generate.main(argv)`, --model the
model folder).

    python bench/gpu_bench.py                          # on a GPU machine (~2 minutes on an H200)
    python bench/gpu_bench.py --device cpu --tiny      # smoke check of the same code paths

Run it from an installed selfjudge (`pip install .`, editable or not); the bench folder is never
a package source.
"""

from __future__ import annotations

import argparse
import importlib.util
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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


class Workload:
    """The examples, their encodings and the optimizer steps both sides take (sft's plan)."""

    def __init__(self, folder: Path, args: argparse.Namespace):
        from selfjudge.shared.config import TrainConfig
        from selfjudge.shared.models.sft.data import IGNORE, encode_example
        from selfjudge.shared.models.sft.loop import step_plan

        self.folder, self.args = folder, args
        if args.micro_tokens is None:  # varlen attention: one long row costs no more per token; else keep the mask small
            from selfjudge.shared.models.sft import varlen

            args.micro_tokens = 16384 if varlen.usable(torch.device(args.device)) else 4096
        self.data = sft_examples(args.train_examples, seed=7)
        self.cfg = TrainConfig(
            lr=1e-5, epochs=1, batch_size=args.step_examples, device=args.device, warmup_ratio=0.0, max_length=1024,
            # on CUDA only the written checkpoint's dtype (training keeps fp32 weights under bf16 autocast)
            dtype="bfloat16" if args.device.startswith("cuda") else "float32",
            micro_batch_tokens=args.micro_tokens, attn_implementation=args.attn,
        )  # fmt: skip
        from selfjudge.shared.models.sft.data import load_processor

        self.proc = load_processor(str(folder))
        self.enc = [encode_example(self.proc, ex, self.cfg.max_length) for ex in self.data]
        self.lengths = [len(e["input_ids"]) for e in self.enc]
        self.answers = [int((e["labels"][1:] != IGNORE).sum()) for e in self.enc]
        self.patches = [int(e["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in e else 0 for e in self.enc]
        self.plan = step_plan(self.lengths, self.cfg, packed=True)
        self.p = param_counts(folder)

    def step_flops(self, step: list[list[int]]) -> float:
        p, f = self.p, 0.0
        for i in (i for mb in step for i in mb):
            f += 6 * p["text_layers"] * self.lengths[i] + 6 * p["layers"] * p["hidden"] * self.lengths[i] ** 2
            f += 6 * p["hidden"] * p["vocab"] * self.answers[i] + 6 * p["vision"] * self.patches[i]
        return f

    def figures(self, stamps: list[float], start: float) -> tuple[float, float, int]:
        """(tokens/s, model FLOP/s, timed steps) over the steps after the warm-up."""
        warm = min(self.args.warmup_steps, len(self.plan) - 1)
        t = stamps[-1] - (stamps[warm - 1] if warm > 0 else start)
        timed = self.plan[warm : len(stamps)]
        tokens = sum(self.lengths[i] for s in timed for mb in s for i in mb)
        return tokens / t, sum(self.step_flops(s) for s in timed) / t, len(timed)


def mfu_text(flops_per_s: float, peak: float | None) -> str:
    return f"MFU {100 * flops_per_s / peak:.1f}%" if peak else "MFU n/a (unknown peak: --peak-tflops)"


def run_plain(w: Workload, peak: float | None) -> tuple[float, float]:
    """The plain transformers loop; returns (tokens/s, model FLOP/s)."""
    from transformers import AutoModelForImageTextToText

    from selfjudge.shared.models.sft.data import collate

    args, device = w.args, w.args.device
    model = AutoModelForImageTextToText.from_pretrained(w.folder, dtype=torch.float32).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = w.proc.tokenizer.pad_token_id
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    stamps: list[float] = []
    sync(device)
    start = time.perf_counter()
    for step in w.plan:
        examples = sorted(i for mb in step for i in mb)  # the step's examples, in the order a sampler gives
        chunks = [examples[c : c + args.plain_micro] for c in range(0, len(examples), args.plain_micro)]
        for chunk in chunks:
            batch = {k: v.to(device, non_blocking=True) for k, v in collate([w.enc[i] for i in chunk], pad).items()}
            with amp:
                loss = model(**batch).loss
            (loss / len(chunks)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        stamps.append(time.perf_counter())
    tps, flops, n = w.figures(stamps, start)
    print(f"gpu_bench train plain: {tps:.0f} tok/s, {flops / 1e12:.2f} TFLOPS model, {mfu_text(flops, peak)} "
          f"({n} steps of {args.step_examples} examples in padded micro-batches of {args.plain_micro}, "
          f"full-vocab logits, torch AdamW)", flush=True)  # fmt: skip
    del model, opt
    free(device)
    return tps, flops


def run_ours(w: Workload, out: Path, peak: float | None, attn: str = "") -> tuple[float, float]:
    from selfjudge.shared.models.sft.loop import sft

    cfg = w.cfg.model_copy(update={"attn_implementation": attn or w.cfg.attn_implementation})
    stamps: list[float] = []

    def progress(step: int, total: int, loss: float) -> None:
        sync(w.args.device)
        stamps.append(time.perf_counter())

    sync(w.args.device)
    start = time.perf_counter()
    res = sft(str(w.folder), w.data, out, cfg, progress=progress)
    tps, flops, n = w.figures(stamps, start)
    pad = 1 - res.tokens / res.padded_tokens
    label = f"ours{' ' + cfg.attn_implementation if cfg.attn_implementation else ''}"
    print(f"gpu_bench train {label}: {tps:.0f} tok/s, {flops / 1e12:.2f} TFLOPS model, {mfu_text(flops, peak)} "
          f"({n} steps of {w.args.step_examples} examples, attention {res.meta['attention']}, "
          f"{'packed' if res.meta['packed'] else 'padded'} micro-batches "
          f"of <= {cfg.micro_batch_tokens} tokens, padding {100 * pad:.1f}%, {w.p['total'] / 1e6:.0f}M params)", flush=True)  # fmt: skip
    free(w.args.device)
    return tps, flops


def run_generate(folder: Path, args: argparse.Namespace) -> None:
    """bench/gpu_generate.py's comparison on the same model, where that module exists."""
    if importlib.util.find_spec("gpu_generate") is None:
        print("gpu_bench generate: not run (bench/gpu_generate.py is not in this checkout)", flush=True)
        return
    import gpu_generate

    argv = ["--model", str(folder), "--device", args.device, *(["--tiny"] if args.tiny else [])]
    try:
        gpu_generate.main(argv)
    except Exception as exc:  # noqa: BLE001 - the training figures above stand; say why this one is missing
        print(f"gpu_bench generate: failed ({type(exc).__name__}: {exc})", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model and a few steps (smoke check)")
    ap.add_argument("--train-examples", type=int, default=None, help="examples trained on (one epoch)")
    ap.add_argument("--step-examples", type=int, default=None, help="examples per optimizer step, both sides")
    ap.add_argument("--plain-micro", type=int, default=None, help="plain side: examples per padded micro-batch")
    ap.add_argument("--micro-tokens", type=int, default=None,
                    help="ours: tokens per packed micro-batch (default: 16384 with varlen attention, else 4096)")
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--attn", default="", help="ours: attention implementation ('' = transformers' default, sdpa)")
    ap.add_argument("--also-attn", nargs="*", default=[], help="ours again with these attention implementations")
    ap.add_argument("--no-generate", action="store_true", help="skip bench/gpu_generate.py")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    ap.add_argument("--work", default=None, help="folder for the model (default: a temporary one)")
    args = ap.parse_args(argv)
    small = dict(train_examples=8, step_examples=4, plain_micro=2, micro_tokens=512, warmup_steps=1)
    big = dict(train_examples=448, step_examples=64, plain_micro=16, warmup_steps=2)
    for k, v in (small if args.tiny else big).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-bench-", dir=args.work) as tmp:
        folder = Path(tmp) / "model"
        t0 = time.perf_counter()
        build_model(folder) if args.tiny else build_big(folder, args.device)
        print(f"gpu_bench model: {param_counts(folder)['total'] / 1e6:.0f}M params, built in {time.perf_counter() - t0:.0f}s on {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""), flush=True)  # fmt: skip
        peak = peak_flops(args.peak_tflops, args.device)
        w = Workload(folder, args)
        plain_tps, _ = run_plain(w, peak)
        ours_tps, ours_flops = run_ours(w, Path(tmp) / "trained", peak)
        mfu = f"{100 * ours_flops / peak:.1f}%" if peak else "n/a"
        print(f"gpu_bench train ratio: {ours_tps / plain_tps:.2f}x ours/plain tok/s (target 3x); ours MFU {mfu} "
              f"(target 35%)", flush=True)  # fmt: skip
        for attn in args.also_attn:
            try:
                run_ours(w, Path(tmp) / f"trained-{attn}", peak, attn)
            except Exception as exc:  # noqa: BLE001 - an optional variant: say why it did not run
                print(f"gpu_bench train ours {attn}: failed ({type(exc).__name__}: {str(exc)[:200]})", flush=True)
        if not args.no_generate:
            run_generate(folder, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
