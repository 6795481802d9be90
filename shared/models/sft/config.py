"""The training settings `sft` takes (`TrainConfig`) and the values its fields may take."""

from __future__ import annotations

from dataclasses import dataclass

from ..dtypes import DTYPES

# LoRA on the language model's attention and MLP projections only (vision towers use the same names).
LORA_TARGET = r".*(language_model|text_model).*layers\.\d+\.(self_attn|cross_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"
METHODS, PRECISIONS, DISTRIBUTED = ("full", "lora"), ("auto", "fp32", "bf16-mixed", "bf16"), ("none", "ddp", "fsdp")
KERNELS = ("", "liger")


@dataclass
class TrainConfig:
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 4  # examples per micro-batch (on average), per process
    grad_accum: int = 1  # micro-batches per optimizer step (on average), per process
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = 0
    dtype: str = "float32"  # dtype of the written checkpoint (and of the weights under precision "auto" on CPU)
    device: str = "cpu"  # "cuda" under torchrun means cuda:LOCAL_RANK
    lr_scheduler: str = "cosine"  # any transformers scheduler name taking warmup + total steps: cosine, linear, constant_with_warmup, ...
    precision: str = "auto"  # auto (CUDA: bf16-mixed, CPU: weights in `dtype`) | fp32 | bf16-mixed | bf16
    method: str = "full"  # full | lora
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_merge: bool = True  # True: write merged full weights; False: write the adapter only
    lora_target: str = LORA_TARGET
    # full fine-tuning: keep the vision encoder's weights as they are (its projector into the language
    # model still trains), as LLaVA-style recipes do; LoRA never touches the vision encoder anyway
    freeze_vision: bool = False
    save_every: int = 0  # optimizer steps between resumable checkpoints (needs resume_from); 0 = never
    gradient_checkpointing: bool = False
    distributed: str = "none"  # none | ddp | fsdp (several processes: see launch.py)
    nproc: int = 1  # processes per trainer worker when distributed != none
    # padded tokens per micro-batch: 0 = auto (batch_size x median example length), -1 = exactly
    # batch_size examples per micro-batch. An optimizer step always has batch_size * grad_accum * world examples.
    micro_batch_tokens: int = 0
    length_grouping: bool = False  # steps of similar-length examples (the older plan; see step_plan)
    # padding-free micro-batches (examples end to end in one row, per-example position ids):
    # auto = where the model family supports it (Qwen2/2.5-VL), on, off (padded batches)
    packing: str = "auto"
    max_pixels: int = 0  # images are scaled down to at most this many pixels (0: as the processor does)
    min_pixels: int = 0  # an over-long example's images shrink no further than this; then it is dropped
    loader_workers: int = 2  # DataLoader processes encoding micro-batches ahead (0: in this process)
    max_steps: int = 0  # stop after this many optimizer steps (0: all epochs; the schedule spans what runs)
    # transformers attention: "" = packed rows on CUDA use varlen.NAME (FlashAttention varlen) when it passes its
    # check, else transformers' default (sdpa); or any name transformers takes (eager, sdpa, selfjudge_varlen, ...)
    attn_implementation: str = ""
    # speed-ups (speed.py), off until bench/gpu_bench.py shows they pay on a card; not part of a run's identity
    vision_varlen: bool = False  # Qwen-VL vision windows in one varlen attention call per block (not one per window)
    compile: bool = False  # torch.compile of each decoder layer and vision block (regional, dynamic shapes); not with fsdp
    kernels: str = ""  # "" | "liger": Liger RMSNorm/SwiGLU + fused linear cross-entropy (the liger-kernel package, CUDA)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("method", self.method, METHODS),
            ("precision", self.precision, PRECISIONS),
            ("distributed", self.distributed, DISTRIBUTED),
            ("dtype", self.dtype, tuple(DTYPES)),
            ("packing", self.packing, ("auto", "on", "off")),
            ("kernels", self.kernels, KERNELS),
        ):
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, not {value!r}")
        if self.compile and self.distributed == "fsdp":
            raise ValueError("TrainConfig.compile is not supported with distributed=fsdp")
