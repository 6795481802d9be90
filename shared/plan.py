"""`selfjudge plan`: what a config will cost, from the model's config.json alone (no weights).

For each stage it states the GPU memory (weights, KV cache, gradients and optimizer state,
activations), the tokens it generates or trains on per iteration, and the GPU-hours per
iteration and for the run, from throughputs it prints (THROUGHPUTS, overridable), and warns
when a stage does not fit its GPUs. Every figure is an estimate from stated assumptions
(Assumptions, printed with the plan); token counts are budgets (max_new_tokens), i.e. upper
bounds. Generation time is output tokens / throughput: the prompts' prefill is inside the measured
throughput's workload (322-token prompts), not counted apart.

Parameters are counted exactly from config.json for Qwen2-VL/Qwen2.5-VL (text decoder +
window-attention vision tower + merger) and Mllama (Llama-3.2-Vision: self- and cross-attention
layers, tiled vision encoder with global layers, projector); any other decoder-only config
counts its text decoder and warns that its vision tower is not counted.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import Settings

GIB = 1024**3
# Throughput per GPU, tokens/s, for an 8.3B model (Qwen2.5-VL-7B size) in bf16 on one H200. Measured
# (MACHINE-NOTES.md, "the lent GPU card"): transformers generate at batch 64 692 tok/s, SFT 2,992 tok/s
# (batch 4 x 1024, MFU 15%). vLLM was not measured on the card: 3,000 tok/s is an assumption (vLLM's
# continuous batching at 64+ sequences). Other model sizes scale by 8.3B / params. Override with
# `--throughput generate_vllm=5000` etc.
THROUGHPUTS = {
    "generate_transformers": 692.0,
    "generate_vllm": 3000.0,
    "generate_openai": 3000.0,
    "train_full": 2992.0,
    "train_lora": 4500.0,
}
REFERENCE_PARAMS = 8.3e9
BENCHMARK_ITEMS = {"vl-rewardbench": 1250, "mm-rewardbench": 5211}  # published sizes


@dataclass
class Assumptions:
    gpu_memory_gib: float = 141.0  # H200 (80 for an H100/A100-80GB)
    gpus_per_stage: int = 1  # generation: one worker (one GPU) per stage; trainer: train.nproc
    closed_share: float = 0.5  # share of prompts classed closed-ended
    keep_rate: float = 0.3  # share of judgments that become training examples
    prompt_tokens: int = 600  # text tokens of a prompt, a judge prompt adds both responses
    image_width: int = 640  # a typical LLaVA-OneVision image
    image_height: int = 480
    vllm_memory_utilization: float = 0.9
    sequences_in_flight: int = 64  # KV cache: concurrent sequences per generation worker


@dataclass
class Stage:
    name: str
    gpus: int
    memory_gib: dict[str, float]  # per GPU: weights, kv_cache, gradients, optimizer, activations
    tokens: int  # generated (generation stages) or trained (trainer) per iteration
    tokens_kind: str
    throughput: float  # tokens/s per GPU used
    gpu_hours: float  # per iteration
    warnings: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(self.memory_gib.values())


@dataclass
class Plan:
    model: str
    config_path: str
    params: dict[str, int]
    stages: list[Stage]
    iterations: int
    assumptions: Assumptions
    throughputs: dict[str, float]
    warnings: list[str]

    @property
    def gpu_hours_per_iteration(self) -> float:
        return sum(s.gpu_hours for s in self.stages if s.name != "evaluator") + self.eval_hours

    @property
    def eval_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages if s.name == "evaluator")

    @property
    def gpu_hours_run(self) -> float:
        """Every iteration, plus the base judge's evaluation (iteration 0)."""
        return self.iterations * self.gpu_hours_per_iteration + self.eval_hours

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "gpu_hours_per_iteration": self.gpu_hours_per_iteration,
            "gpu_hours_run": self.gpu_hours_run,
        }


# --- config.json ----------------------------------------------------------------------------


def find_config(model: str) -> Path:
    """config.json of a local folder, or of a hub id from the Hugging Face cache (never downloaded)."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return folder / "config.json"
    if folder.is_file() and folder.name.endswith(".json"):
        return folder
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except Exception:  # noqa: BLE001 - not a valid repo id either
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached)
    raise FileNotFoundError(
        f"no config.json for {model!r}: not a folder holding one and not in the Hugging Face "
        f"cache ({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'})"
    )


def _text(cfg: dict) -> dict:
    return cfg.get("text_config") or cfg


def _decoder_layer(h: int, heads: int, kv: int, inter: int, head_dim: int, qkv_bias: bool) -> int:
    attn = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
    if qkv_bias:
        attn += heads * head_dim + 2 * kv * head_dim
    return attn + 3 * h * inter + 2 * h


def count_params(cfg: dict) -> dict[str, int]:
    """{text, vision, projector, total}; exact for qwen2_vl / qwen2_5_vl / mllama configs."""
    t = _text(cfg)
    mt = cfg.get("model_type", "")
    h, layers, heads = t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"]
    kv, inter, vocab = t.get("num_key_value_heads", heads), t["intermediate_size"], t["vocab_size"]
    head_dim = t.get("head_dim") or h // heads
    tied = cfg.get("tie_word_embeddings", t.get("tie_word_embeddings", False))
    out = {"text": 0, "vision": 0, "projector": 0}
    if mt == "mllama":
        cross = set(t.get("cross_attention_layers", []))
        layer = _decoder_layer(h, heads, kv, inter, head_dim, False)
        out["text"] = (
            (vocab + 8) * h + layers * layer + len(cross) * (2 * head_dim + 2) + h + (0 if tied else vocab * h)
        )
        v = cfg["vision_config"]
        vh, vi, vl, vg = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["num_global_layers"]
        patches = (v["image_size"] // v["patch_size"]) ** 2 + 1
        ratios = v.get("max_aspect_ratio_id") or len(v.get("supported_aspect_ratios", [])) or 8
        tiles = v["max_num_tiles"]
        vlayer = 4 * vh * vh + (vh * vi + vi) + (vi * vh + vh) + 4 * vh
        out["vision"] = (
            v.get("num_channels", 3) * v["patch_size"] ** 2 * vh
            + vh
            + patches * vh
            + 1
            + (ratios + 1) * tiles * patches * vh
            + 2 * ((ratios + 1) * tiles * vh + 1)
            + 4 * vh
            + vl * vlayer
            + vg * (vlayer + 2)
        )
        out["projector"] = v["vision_output_dim"] * h + h
    else:
        qkv_bias = mt.startswith("qwen2")
        out["text"] = (
            vocab * h
            + layers * _decoder_layer(h, heads, kv, inter, head_dim, qkv_bias)
            + h
            + (0 if tied else vocab * h)
        )
        v = cfg.get("vision_config")
        if mt == "qwen2_5_vl" and v:
            vh, vi, depth = v["hidden_size"], v["intermediate_size"], v["depth"]
            merged = vh * v.get("spatial_merge_size", 2) ** 2
            out["vision"] = v.get("in_chans", 3) * v.get("temporal_patch_size", 2) * v[
                "patch_size"
            ] ** 2 * vh + depth * (2 * vh + 3 * vh * vh + 3 * vh + vh * vh + vh + 2 * (vh * vi + vi) + vi * vh + vh)
            out["projector"] = vh + merged * merged + merged + merged * v["out_hidden_size"] + v["out_hidden_size"]
        elif mt == "qwen2_vl" and v:
            vh, depth = v["embed_dim"], v["depth"]
            vi = int(vh * v.get("mlp_ratio", 4))
            merged = vh * v.get("spatial_merge_size", 2) ** 2
            out["vision"] = v.get("in_chans", 3) * v.get("temporal_patch_size", 2) * v[
                "patch_size"
            ] ** 2 * vh + depth * (4 * vh + 3 * vh * vh + 3 * vh + vh * vh + vh + vh * vi + vi + vi * vh + vh)
            out["projector"] = 2 * vh + merged * merged + merged + merged * v["hidden_size"] + v["hidden_size"]
    out["total"] = out["text"] + out["vision"] + out["projector"]
    return out


def kv_bytes_per_token(cfg: dict, dtype_bytes: int) -> int:
    """K and V of every self-attention layer for one token (Mllama's cross-attention layers hold the
    image's K/V once per sequence instead: see image_kv_bytes)."""
    t = _text(cfg)
    heads = t["num_attention_heads"]
    head_dim = t.get("head_dim") or t["hidden_size"] // heads
    layers = t["num_hidden_layers"] - len(t.get("cross_attention_layers", []))
    return 2 * layers * t.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def image_tokens(cfg: dict, width: int, height: int) -> tuple[int, int]:
    """(tokens the image adds to the sequence, vision tokens held as cross-attention K/V)."""
    if cfg.get("model_type") == "mllama":
        v = cfg["vision_config"]
        tiles = min(v["max_num_tiles"], math.ceil(width / v["image_size"]) * math.ceil(height / v["image_size"]))
        return 1, tiles * ((v["image_size"] // v["patch_size"]) ** 2 + 1)
    v = cfg.get("vision_config") or {}
    unit = v.get("patch_size", 14) * v.get("spatial_merge_size", 2)
    return math.ceil(width / unit) * math.ceil(height / unit), 0


# --- the plan ------------------------------------------------------------------------------


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "fp32") else 2


def make_plan(
    settings: Settings, assumptions: Assumptions | None = None, throughputs: dict[str, float] | None = None
) -> Plan:
    a = assumptions or Assumptions()
    tp = {**THROUGHPUTS, **(throughputs or {})}
    path = find_config(settings.model.base)
    cfg = json.loads(path.read_text())
    params = count_params(cfg)
    warnings = []
    if params["vision"] == 0 and cfg.get("vision_config"):
        warnings.append(f"model_type {cfg.get('model_type')!r}: the vision tower's parameters are not counted")
    scale = REFERENCE_PARAMS / params["total"]
    dbytes = _dtype_bytes(settings.model.dtype)
    seq_image, cross_image = image_tokens(cfg, a.image_width, a.image_height)
    t_cfg = _text(cfg)
    cross_layers = len(t_cfg.get("cross_attention_layers", []))
    heads = t_cfg["num_attention_heads"]
    head_dim = t_cfg.get("head_dim") or t_cfg["hidden_size"] // heads
    cross_kv = 2 * cross_layers * t_cfg.get("num_key_value_heads", heads) * head_dim * dbytes * cross_image
    weights = params["total"] * dbytes / GIB
    backend = settings.model.backend
    if backend == "vllm" and cfg.get("model_type") == "mllama":
        warnings.append("vLLM does not serve Mllama (Llama-3.2-Vision): use model.backend transformers")

    def generation(name: str, tokens: int, max_len: int) -> Stage:
        """Weights + the KV cache of `sequences_in_flight` sequences of max_len tokens; GPU-hours = tokens / rate."""
        kv = a.sequences_in_flight * (max_len * kv_bytes_per_token(cfg, dbytes) + cross_kv) / GIB
        rate = tp[f"generate_{backend}"] * scale
        stage = Stage(
            name,
            a.gpus_per_stage,
            {"weights": round(weights, 2), "kv_cache": round(kv, 2)},
            tokens,
            "generated",
            round(rate, 1),
            tokens / rate / 3600,
        )
        budget = a.gpu_memory_gib * (a.vllm_memory_utilization if backend == "vllm" else 1.0)
        if stage.total_gib > budget:
            stage.warnings.append(
                f"{name}: needs {stage.total_gib:.1f} GiB per GPU, more than {budget:.0f} GiB "
                f"(lower sequences in flight or max_new_tokens, or shard the model)"
            )
        return stage

    s, run = settings.synth, settings.run
    prompts = run.prompts_per_iteration
    closed = round(prompts * a.closed_share)
    sampled = prompts if s.classify in ("samples", "both") else closed  # probes reuse their samples as votes
    alteration = max(s.alter_max_new_tokens, math.ceil(s.alter_budget_ratio * s.open_max_new_tokens))
    opened = prompts - closed
    synth_tokens = sampled * s.n_samples * s.max_new_tokens + opened * (
        s.open_max_new_tokens + s.alter_samples * alteration
    )
    prompt_len = a.prompt_tokens + seq_image
    synth = generation("synthesizer", synth_tokens, prompt_len + s.open_max_new_tokens + alteration)
    pairs = prompts  # at most one pair per prompt
    judgments = pairs * 2 * settings.reason.samples_per_order
    judge_len = prompt_len + 2 * s.open_max_new_tokens + settings.reason.max_new_tokens
    reason = generation("reasoner", judgments * settings.reason.max_new_tokens, judge_len)
    eval_tokens = 0
    for b in settings.eval.benchmarks:
        items = b.limit or BENCHMARK_ITEMS[b.name]
        k = b.k or (5 if b.name == "vl-rewardbench" else 1)
        eval_tokens += items * (k + 2) * (b.max_new_tokens or settings.eval.max_new_tokens)  # official k + both orders
    eval_tokens += run.heldout_pairs * 2 * settings.eval.max_new_tokens
    evaluate = generation("evaluator", eval_tokens, judge_len)

    t = settings.train
    examples = judgments * a.keep_rate
    example_len = min(t.max_length, judge_len)
    trained = round(examples * example_len * t.epochs)
    gpus = t.nproc if t.distributed != "none" else 1
    full = t.method == "full"
    shard = gpus if t.distributed == "fsdp" else 1
    mixed = t.precision in ("auto", "bf16-mixed", "fp32")
    master = 4 if mixed else dbytes
    trainable = (
        params["total"] - (params["vision"] if t.freeze_vision else 0)
        if full
        else 2 * t.lora_r * t_cfg["hidden_size"] * 7 * t_cfg["num_hidden_layers"]
    )
    tokens_per_micro = t.batch_size * example_len
    h = t_cfg["hidden_size"]
    # bytes per layer: its bf16 input only when checkpointed, else ~34 x hidden per token (Korthikanti et al.
    # 2022, without the attention scores: flash attention); plus one layer's MLP working set being recomputed
    per_layer = tokens_per_micro * h * (2 if t.gradient_checkpointing else 34)
    activations = (t_cfg["num_hidden_layers"] * per_layer + tokens_per_micro * t_cfg["intermediate_size"] * 2 * 4) / GIB
    memory = {
        "weights": round((params["total"] * (master if full else dbytes)) / shard / GIB, 2),
        "gradients": round(trainable * master / shard / GIB, 2),
        "optimizer": round(trainable * 8 / shard / GIB, 2),  # AdamW m and v in fp32
        "activations": round(activations, 2),
    }
    rate = tp["train_full" if full else "train_lora"] * scale
    train = Stage("trainer", gpus, memory, trained, "trained", round(rate, 1), trained / rate / 3600)
    if train.total_gib > a.gpu_memory_gib:
        train.warnings.append(
            f"trainer: needs {train.total_gib:.1f} GiB per GPU, more than {a.gpu_memory_gib:.0f} GiB "
            f"(use train.distributed fsdp over more GPUs, gradient_checkpointing, or lora)"
        )
    return Plan(
        settings.model.base, str(path), params, [synth, reason, train, evaluate], run.iterations, a, tp, warnings
    )


def format_plan(plan: Plan) -> str:
    a = plan.assumptions
    p = plan.params
    lines = [
        f"model {plan.model} ({plan.config_path})",
        f"parameters: {p['total'] / 1e9:.3f}B (text {p['text'] / 1e9:.3f}B, vision {p['vision'] / 1e9:.3f}B, "
        f"projector {p['projector'] / 1e6:.1f}M)",
        f"assumptions: {a.gpu_memory_gib:g} GiB per GPU, {a.sequences_in_flight} sequences in flight, "
        f"{a.closed_share:.0%} closed prompts, {a.keep_rate:.0%} of judgments kept, prompt {a.prompt_tokens} "
        f"tokens + a {a.image_width}x{a.image_height} image; token counts are budgets (upper bounds)",
        "throughputs (tokens/s per GPU at 8.3B, scaled by size): "
        + ", ".join(f"{k} {v:g}" for k, v in plan.throughputs.items()),
        "",
        f"{'stage':<12} {'GPUs':>4} {'GiB/GPU':>8}  {'memory':<58} {'tokens/iter':>14} {'tok/s/GPU':>10} "
        f"{'GPU-h/iter':>10}",
    ]
    for s in plan.stages:
        mem = ", ".join(f"{k} {v:g}" for k, v in s.memory_gib.items())
        lines.append(
            f"{s.name:<12} {s.gpus:>4} {s.total_gib:>8.1f}  {mem:<58} {s.tokens:>14,} {s.throughput:>10,.0f} "
            f"{s.gpu_hours:>10.2f}"
        )
    lines += [
        "",
        f"GPU-hours per iteration: {plan.gpu_hours_per_iteration:.1f}; for the run ({plan.iterations} "
        f"iterations + the base judge's evaluation): {plan.gpu_hours_run:.1f}",
    ]
    for w in plan.warnings + [w for s in plan.stages for w in s.warnings]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)
