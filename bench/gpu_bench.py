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
over `--timed-steps` steady steps after `--warmup-steps` (the same steps both sides; load, length
pass and warm-up are not timed). Model FLOPs per example (same formula both sides): 6 x
(text-layer params) per token + 6 x layers x hidden x seq^2 (causal attention within the
example) + 6 x hidden x vocab per answer token + 6 x (vision params) per image patch. Peak: bf16
dense of the detected card (H100/H200 SXM 989 TFLOPS, H100 PCIe 756, A100 312) or `--peak-tflops`.
Then the ratio line (targets: ours >= 3x plain, >= 35% MFU); then where the time goes:

- `gpu_bench breakdown plain|ours|<variant>`: the mean timed step split into data wait, forward +
  backward, optimizer (clip, step, the loss read back) and other, on the GPU timeline (CUDA events
  at the phase ends, `sft(timer=...)`; read after the run, so nothing is synchronized for it) and
  on the CPU clock;
- `gpu_bench profile ours` (`--profile`): one more step after the timed ones under torch.profiler:
  GPU busy time against the timed mean step (low: the GPU waits on the CPU, e.g. kernel launches),
  the kernel count, kernel time by kind and the top kernels; the profiler's tables go to the log;
- `gpu_bench variant <name>` (`--variants a,b`): ours again with a candidate change of its config
  (`VARIANTS`: vision-varlen, workers8, compile, liger, bf16, sdpa, all, all+liger), not written, against ours
  with the defaults (read from `--state`), with its breakdown; one that fails says why, one that
  would end after `--deadline` is skipped.

Last, where bench/gpu_generate.py exists, its generation comparison on the same model
(`gpu_generate.main(argv)`, --model the model folder).

    python bench/gpu_bench.py                          # on a GPU machine (~2 minutes on an H200)
    python bench/gpu_bench.py --device cpu --tiny      # smoke check of the same code paths
    bash bench/gpu_check.sh                            # on the card: each part its own process and time limit

Run it from an installed selfjudge (`pip install .`, editable or not); the bench folder is never
a package source.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import build_model, sft_examples

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def big_config(ids: dict[str, int]):
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
    from selfjudge.shared.sources.scenes.source import tokenizer_corpus

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


# name -> (TrainConfig changes, what they do); each is measured against ours with the defaults
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "vision-varlen": ({"vision_varlen": True}, "vision windows in one varlen attention call per block"),
    "workers8": ({"loader_workers": 8}, "8 DataLoader workers"),
    "compile": ({"compile": True}, "torch.compile of each decoder layer (vision blocks too with vision-varlen)"),
    "liger": ({"kernels": "liger"}, "Liger RMSNorm, SwiGLU, fused linear cross-entropy"),
    "bf16": ({"precision": "bf16"}, "bf16 weights and AdamW states, no fp32 master"),
    "sdpa": ({"attn_implementation": "sdpa"}, "SDPA with a block mask instead of varlen attention"),
}


def combined(*names: str) -> tuple[dict[str, Any], str]:
    """The variant that makes all of these variants' changes at once."""
    return {k: v for name in names for k, v in VARIANTS[name][0].items()}, " + ".join(names)


VARIANTS["all"] = combined("vision-varlen", "workers8", "compile")
VARIANTS["all+liger"] = combined("vision-varlen", "workers8", "compile", "liger")
# gpu_check.sh's order, most telling first: the biggest expected single win, the candidate defaults together, the rest
SWEEP = ["vision-varlen", "all", "compile", "workers8", "liger", "all+liger", "bf16"]
SLOW = {
    "compile": 60.0,
    "all": 90.0,
    "all+liger": 90.0,
}  # extra seconds (compilation) on top of a defaults run, for the time cap


class Workload:
    """The examples, their lengths and the optimizer steps both sides take (sft's plan).

    The encodings themselves (what the plain side trains on) are made on first use; the lengths are
    kept in the state file, so a variant run in another process does not encode the data again.
    """

    def __init__(self, folder: Path, args: argparse.Namespace, state: dict):
        from selfjudge.shared.config import TrainConfig
        from selfjudge.shared.models.sft.loop import step_plan

        self.folder, self.args = folder, args
        if (
            args.micro_tokens is None
        ):  # varlen attention: one long row costs no more per token; else keep the mask small
            from selfjudge.shared.models.sft import varlen

            args.micro_tokens = 16384 if varlen.usable(torch.device(args.device)) else 4096
        self.data = sft_examples(args.train_examples, seed=7)
        self.cfg = TrainConfig(
            lr=1e-5, epochs=1, batch_size=args.step_examples, device=args.device, warmup_ratio=0.0, max_length=1024,
            # on CUDA only the written checkpoint's dtype (training keeps fp32 weights under bf16 autocast)
            dtype="bfloat16" if args.device.startswith("cuda") else "float32",
            micro_batch_tokens=args.micro_tokens, attn_implementation=args.attn,
        )  # fmt: skip
        self._enc: list[dict] | None = None
        self._proc: Any = None
        key = f"{args.train_examples}:{self.cfg.max_length}"
        if state.get("workload", {}).get("key") != key:
            enc = self.encoded
            state["workload"] = {
                "key": key,
                "lengths": [len(e["input_ids"]) for e in enc],
                "answers": [int((e["labels"][1:] != -100).sum()) for e in enc],
                "patches": [int(e["image_grid_thw"].prod(-1).sum()) if "image_grid_thw" in e else 0 for e in enc],
            }
        self.lengths, self.answers, self.patches = (state["workload"][k] for k in ("lengths", "answers", "patches"))
        self.plan = step_plan(self.lengths, self.cfg, packed=True)
        self.warm = min(args.warmup_steps, len(self.plan) - 1)
        self.timed = min(args.timed_steps, len(self.plan) - self.warm)
        self.p = param_counts(folder)

    @property
    def encoded(self) -> list[dict]:
        if self._enc is None:
            from selfjudge.shared.models.sft.data import encode_example

            self._enc = [encode_example(self.processor, ex, self.cfg.max_length) for ex in self.data]
        return self._enc

    @property
    def processor(self) -> Any:
        if self._proc is None:
            from selfjudge.shared.models.sft.data import load_processor

            self._proc = load_processor(str(self.folder))
        return self._proc

    def step_flops(self, step: list[list[int]]) -> float:
        p, f = self.p, 0.0
        for i in (i for mb in step for i in mb):
            f += 6 * p["text_layers"] * self.lengths[i] + 6 * p["layers"] * p["hidden"] * self.lengths[i] ** 2
            f += 6 * p["hidden"] * p["vocab"] * self.answers[i] + 6 * p["vision"] * self.patches[i]
        return f

    def figures(self, stamps: list[float], start: float) -> tuple[float, float, int]:
        """(tokens/s, model FLOP/s, timed steps) over the timed steps: those after the warm-up, no more."""
        last = self.warm + self.timed
        t = stamps[last - 1] - (stamps[self.warm - 1] if self.warm > 0 else start)
        timed = self.plan[self.warm : last]
        tokens = sum(self.lengths[i] for s in timed for mb in s for i in mb)
        return tokens / t, sum(self.step_flops(s) for s in timed) / t, len(timed)

    def steps_text(self) -> str:
        return f"steps {self.warm + 1}-{self.warm + self.timed} timed after {self.warm} warm-up"


class StepTimer:
    """What sft's loop calls at each phase end (`timer(phase)`): a CUDA event and the CPU clock per mark.

    Phases: "step" (a step begins; the time since the last step's "optimizer" is `other`: progress,
    checkpoints), "data" (a micro-batch arrived from the loader), "compute" (its forward and backward
    were queued), "optimizer" (clipping, the step, the loss read back). Durations come from the events
    (the GPU timeline: a phase the GPU waits through, like a late micro-batch, shows as its length),
    read once after the run, so the loop is not synchronized by the timing itself.
    """

    PHASES = ("data", "compute", "optimizer", "other")

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: list[tuple[str, float, Any]] = []

    def __call__(self, phase: str) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks.append((phase, time.perf_counter(), event))

    def per_step(self, gpu: bool = True) -> list[dict[str, float]]:
        """Seconds per phase, one dict per step (GPU timeline where there is one, else the CPU clock)."""
        if gpu and self.cuda:
            torch.cuda.synchronize()
        steps: list[dict[str, float]] = []
        last: tuple[float, Any] | None = None
        for phase, t, event in self.marks:
            if last is not None and steps:  # the gap before a step begins belongs to the step before it
                dt = last[1].elapsed_time(event) / 1e3 if gpu and self.cuda else t - last[0]
                steps[-1]["other" if phase == "step" else phase] += dt
            if phase == "step":
                steps.append(dict.fromkeys(self.PHASES, 0.0))
            last = (t, event)
        return steps

    def line(self, label: str, first: int, n: int) -> str:
        """The mean of steps first..first+n-1 (0-based), GPU timeline and CPU clock."""
        parts = []
        for gpu in (True, False) if self.cuda else (False,):
            steps = self.per_step(gpu)[first : first + n]
            if not steps:
                return f"gpu_bench breakdown {label}: no timed steps"
            mean = {k: 1e3 * sum(s[k] for s in steps) / len(steps) for k in self.PHASES}
            total = sum(mean.values())
            parts.append(f"{'GPU timeline' if gpu else 'CPU clock'} {total:.0f} ms = data wait {mean['data']:.0f} "
                         f"+ forward/backward {mean['compute']:.0f} + optimizer {mean['optimizer']:.0f} "
                         f"+ other {mean['other']:.0f}")  # fmt: skip
        return f"gpu_bench breakdown {label}: mean timed step, " + "; ".join(parts)

    def mean_step(self, first: int, n: int) -> float:
        steps = self.per_step(self.cuda)[first : first + n]
        return sum(sum(s.values()) for s in steps) / max(1, len(steps))


KERNEL_KINDS = (
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "wgmma")),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("copies", ("memcpy", "memset")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_lines(prof: Any, label: str, step_s: float) -> list[str]:
    """One profiled step summed up: GPU busy time against the timed mean step, kernel count and kinds,
    the top kernels; then (lines without the gpu_ prefix, for the log) the profiler's own tables."""
    from torch.autograd import DeviceType

    table = prof.key_averages()
    dev = [e for e in table if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]
    cpu_ops = sum(e.count for e in table if e.device_type == DeviceType.CPU)
    out = []
    if dev:
        busy = sum(e.self_device_time_total for e in dev) / 1e6
        launches = sum(e.count for e in dev)
        kinds: dict[str, float] = {}
        for e in dev:
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e3
        kind_text = ", ".join(f"{k} {v:.0f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        out.append(f"gpu_bench profile {label}: GPU busy {1e3 * busy:.0f} ms in one step = {100 * busy / step_s:.0f}% of the "
                   f"timed mean step ({1e3 * step_s:.0f} ms); {launches} kernels (mean {1e6 * busy / max(1, launches):.0f} us), "
                   f"{cpu_ops} CPU ops; kernel ms by kind: {kind_text}")  # fmt: skip
        top = sorted(dev, key=lambda e: -e.self_device_time_total)[:6]
        out.append(f"gpu_bench profile {label} top kernels: "
                   + "; ".join(f"{e.key[:48]} x{e.count} {e.self_device_time_total / 1e3:.1f} ms" for e in top))  # fmt: skip
        out.append(table.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
    else:
        out.append(f"gpu_bench profile {label}: no device kernels recorded (CPU run); {cpu_ops} CPU ops in one step")
    out.append(table.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))
    return out


def mfu_text(flops_per_s: float, peak: float | None) -> str:
    return f"MFU {100 * flops_per_s / peak:.1f}%" if peak else "MFU n/a (unknown peak: --peak-tflops)"


def peak_memory(device: str) -> str:
    return f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.startswith("cuda") else ""


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def run_plain(w: Workload, peak: float | None) -> tuple[float, float, list[str]]:
    """The plain transformers loop; returns (tokens/s, model FLOP/s, breakdown lines)."""
    from transformers import AutoModelForImageTextToText

    from selfjudge.shared.models.sft.data import collate

    args, device = w.args, w.args.device
    enc = w.encoded
    reset_peak(device)
    model = AutoModelForImageTextToText.from_pretrained(w.folder, dtype=torch.float32).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = w.processor.tokenizer.pad_token_id
    amp = (
        torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
        if device.startswith("cuda")
        else torch.autocast("cpu", enabled=False)
    )
    timer = StepTimer(device.startswith("cuda"))
    stamps: list[float] = []
    sync(device)
    start = time.perf_counter()
    for step in w.plan[: w.warm + w.timed]:
        timer("step")
        examples = sorted(i for mb in step for i in mb)  # the step's examples, in the order a sampler gives
        chunks = [examples[c : c + args.plain_micro] for c in range(0, len(examples), args.plain_micro)]
        for chunk in chunks:
            batch = {k: v.to(device, non_blocking=True) for k, v in collate([enc[i] for i in chunk], pad).items()}
            timer("data")
            with amp:
                loss = model(**batch).loss
            (loss / len(chunks)).backward()
            timer("compute")
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer("optimizer")
        sync(device)
        stamps.append(time.perf_counter())
    tps, flops, n = w.figures(stamps, start)
    print(f"gpu_bench train plain: {tps:.0f} tok/s, {flops / 1e12:.2f} TFLOPS model, {mfu_text(flops, peak)} "
          f"({n} steps of {args.step_examples} examples in padded micro-batches of {args.plain_micro}, "
          f"full-vocab logits, torch AdamW; {w.steps_text()})", flush=True)  # fmt: skip
    lines = [f"{timer.line('plain', w.warm, w.timed)}{peak_memory(device)}"]
    del model, opt
    free(device)
    return tps, flops, lines


def run_ours(w: Workload, out: Path | None, peak: float | None, changes: dict[str, Any] | None = None,  # noqa: ARG001
             profile: bool = False) -> dict[str, Any]:  # fmt: skip
    """selfjudge's `sft` on the workload with `changes` to its config (None: as configured), writing the
    model to `out` (None: not written). Returns tokens/s, FLOP/s, the TrainResult, the timer, the
    seconds to the first timed step (load, length pass, warm-up steps) and the profile of one step
    after the timed ones (`profile`)."""

    from selfjudge.shared.models.sft.loop import sft

    device = w.args.device
    steps = w.warm + w.timed + (1 if profile else 0)
    cfg = w.cfg.model_copy(update={"max_steps": steps, **(changes or {})})
    stamps: list[float] = []
    timer = StepTimer(device.startswith("cuda"))
    prof: list[Any] = []

    def progress(step: int, total: int, loss: float) -> None:  # noqa: ARG001 - sft's progress callback
        sync(device)
        if profile and step == w.warm + w.timed + 1:
            prof[0].stop()
        stamps.append(time.perf_counter())
        if profile and step == w.warm + w.timed:  # the step after the timed ones runs under the profiler
            from torch.profiler import ProfilerActivity

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
            prof.append(torch.profiler.profile(activities=acts))
            prof[0].start()

    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    res = sft(str(w.folder), w.data, out, cfg, progress=progress, timer=timer)
    tps, flops, n = w.figures(stamps, start)
    warm_s = stamps[w.warm - 1] - start if w.warm > 0 else 0.0
    result = {"tps": tps, "flops": flops, "steps": n, "res": res, "cfg": cfg, "timer": timer, "warm_s": warm_s,
              "wall_s": time.perf_counter() - start, "memory": peak_memory(device), "profile": prof[0] if prof else None}  # fmt: skip
    free(device)
    return result


def ours_line(w: Workload, r: dict[str, Any], peak: float | None) -> str:
    cfg, res = r["cfg"], r["res"]
    pad = 1 - res.tokens / res.padded_tokens
    return (f"gpu_bench train ours: {r['tps']:.0f} tok/s, {r['flops'] / 1e12:.2f} TFLOPS model, {mfu_text(r['flops'], peak)} "
            f"({r['steps']} steps of {w.args.step_examples} examples, attention {res.meta['attention']}, "
            f"{'packed' if res.meta['packed'] else 'padded'} micro-batches "
            f"of <= {cfg.micro_batch_tokens} tokens, padding {100 * pad:.1f}%, {w.p['total'] / 1e6:.0f}M params; "
            f"{w.steps_text()})")  # fmt: skip


def run_train(w: Workload, tmp: Path, peak: float | None, state: dict) -> None:
    """plain, ours (defaults), the ratio line, then each side's step breakdown and ours' profiled step."""
    plain_tps, _, lines = run_plain(w, peak)
    r = run_ours(w, tmp / "trained", peak, profile=w.args.profile)
    print(ours_line(w, r, peak), flush=True)
    mfu = f"{100 * r['flops'] / peak:.1f}%" if peak else "n/a"
    print(f"gpu_bench train ratio: {r['tps'] / plain_tps:.2f}x ours/plain tok/s (target 3x); ours MFU {mfu} "
          f"(target 35%)", flush=True)  # fmt: skip
    state["ours"] = {"tps": r["tps"], "wall_s": r["wall_s"], "plain_tps": plain_tps}
    print(lines[0], flush=True)
    print(f"{r['timer'].line('ours', w.warm, w.timed)}; startup + warm-up {r['warm_s']:.1f} s{r['memory']}", flush=True)
    if r["profile"] is not None:
        for line in profile_lines(r["profile"], "ours", r["timer"].mean_step(w.warm, w.timed)):
            print(line, flush=True)


def refusal(name: str, state: dict, deadline: float | None) -> str | None:
    """Why this variant does not run (unknown, or its estimate ends after the deadline), or None."""
    if name not in VARIANTS:
        return f"gpu_bench variant {name}: unknown (known: {', '.join(VARIANTS)})"
    need = 10.0 + state.get("ours", {}).get("wall_s", 30.0) + SLOW.get(name, 0.0)  # 10 s: the process starting
    if deadline is not None and time.time() + need > deadline:
        return f"gpu_bench variant {name}: skipped (time cap: needs ~{need:.0f} s, {deadline - time.time():.0f} s left)"
    return None


def run_variant(w: Workload, name: str, peak: float | None, state: dict, deadline: float | None) -> None:
    """ours with one variant's config changes, not written: one line (or why it did not run) + its breakdown."""
    why = refusal(name, state, deadline)
    if why:
        print(why, flush=True)
        return
    changes, what = VARIANTS[name]
    base = state.get("ours", {})
    try:
        r = run_ours(w, None, peak, changes)
    except Exception as exc:  # noqa: BLE001 - a candidate that does not run here: say why, the others go on
        print(
            f"gpu_bench variant {name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''})",
            flush=True,
        )
        return
    vs = f"{r['tps'] / base['tps']:.2f}x ours defaults, " if base.get("tps") else ""
    print(f"gpu_bench variant {name}: {r['tps']:.0f} tok/s, {mfu_text(r['flops'], peak)} ({vs}{what}; attention "
          f"{r['res'].meta['attention']}; startup + warm-up {r['warm_s']:.1f} s{r['memory']})", flush=True)  # fmt: skip
    print(r["timer"].line(name, w.warm, w.timed), flush=True)


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


PARTS = ("build", "train", "variants", "generate")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model and a few steps (smoke check)")
    ap.add_argument(
        "--parts",
        default="build,train,variants,generate",
        help=f"comma-separated, run in this order: {', '.join(PARTS)} (build: only if the model is missing)",
    )
    ap.add_argument("--variants", default="", help=f"ours again with these config changes: {', '.join(VARIANTS)} "
                    f"(gpu_check.sh runs {','.join(SWEEP)}, one process each)")  # fmt: skip
    ap.add_argument(
        "--model", default=None, help="model folder, kept (built there if missing; default: a temporary one)"
    )
    ap.add_argument(
        "--state", default=None, help="JSON file shared by runs on one model: the data's lengths, ours' figures"
    )
    ap.add_argument("--deadline", type=float, default=None, help="unix time: a variant that would end later is skipped")
    ap.add_argument("--profile", action="store_true", help="profile one more step of ours after the timed ones")
    ap.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help="examples trained on (default: enough for the warm-up, timed and profiled steps)",
    )
    ap.add_argument("--step-examples", type=int, default=None, help="examples per optimizer step, both sides")
    ap.add_argument("--plain-micro", type=int, default=None, help="plain side: examples per padded micro-batch")
    ap.add_argument(
        "--micro-tokens",
        type=int,
        default=None,
        help="ours: tokens per packed micro-batch (default: 16384 with varlen attention, else 4096)",
    )
    ap.add_argument("--warmup-steps", type=int, default=None)
    ap.add_argument("--timed-steps", type=int, default=None)
    ap.add_argument(
        "--attn", default="", help="ours: attention implementation ('' = varlen on CUDA where it passes its check)"
    )
    ap.add_argument(
        "--no-generate", action="store_true", help="skip bench/gpu_generate.py (same as leaving it out of --parts)"
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak of the device")
    ap.add_argument("--work", default=None, help="folder for the temporary model (default: the system's temp folder)")
    args = ap.parse_args(argv)
    small = dict(step_examples=4, plain_micro=2, micro_tokens=512, warmup_steps=1, timed_steps=1)
    big = dict(step_examples=64, plain_micro=16, warmup_steps=2, timed_steps=5)
    for k, v in (small if args.tiny else big).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_examples is None:
        args.train_examples = (args.warmup_steps + args.timed_steps + 1) * args.step_examples
    args.parts = [p for p in args.parts.split(",") if p and not (p == "generate" and args.no_generate)]
    args.variants = [v for v in args.variants.split(",") if v]
    return args


def ensure_model(folder: Path, args: argparse.Namespace, announce: bool = True) -> None:
    """Build the model into `folder` unless it is there; one line (a reused one: if `announce`)."""
    where = f"on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    if (folder / "config.json").exists():
        if announce:
            print(
                f"gpu_bench model: {param_counts(folder)['total'] / 1e6:.0f}M params, reused from {folder} {where}",
                flush=True,
            )
        return
    t0 = time.perf_counter()
    build_model(folder) if args.tiny else build_big(folder, args.device)
    print(
        f"gpu_bench model: {param_counts(folder)['total'] / 1e6:.0f}M params, built in {time.perf_counter() - t0:.0f}s {where}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here (use --device cpu --tiny for a smoke check)", file=sys.stderr)
        return 2
    state_file = Path(args.state) if args.state else None
    state = json.loads(state_file.read_text()) if state_file and state_file.exists() else {}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-", dir=args.work) as tmp:
        folder = Path(args.model) if args.model else Path(tmp) / "model"
        ensure_model(folder, args, announce="build" in args.parts or "train" in args.parts)
        peak = peak_flops(args.peak_tflops, args.device)
        todo = args.variants if "variants" in args.parts else []
        if "train" in args.parts or any(refusal(name, state, args.deadline) is None for name in todo):
            w = Workload(folder, args, state)
            if "train" in args.parts:
                run_train(w, Path(tmp), peak, state)
            if state_file:
                state_file.write_text(json.dumps(state))
            for name in todo:
                run_variant(w, name, peak, state, args.deadline)
        else:  # nothing to run: say why without loading anything
            for name in todo:
                print(refusal(name, state, args.deadline), flush=True)
        if "generate" in args.parts:
            run_generate(folder, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
