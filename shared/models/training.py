"""Supervised fine-tuning of a VLM checkpoint, with the loss on the assistant answer tokens only.

`sft(model_path, examples, out_dir, cfg)` trains and writes a Hugging Face folder (or, for LoRA
with `lora_merge=False`, a PEFT adapter folder) plus `selfjudge_training.json`. What it does:

- full fine-tuning or LoRA on the language model only (`method`, `lora_*`; vision towers reuse
  the text layers' names, so the target is a regex anchored on `language_model|text_model`);
- answer-only loss: labels are -100 except the answer and the token that closes the assistant
  turn, and the LM head runs only at those positions;
- the data is read one example at a time (`sft_data`): a length pass over each rank's slice, then
  a DataLoader whose workers fetch and encode this rank's micro-batches ahead of the step, so
  memory does not grow with the data; an example over max_length gets smaller images
  (`max_pixels`/`min_pixels`) or is dropped and counted (`TrainResult.dropped`), never cut;
- random optimizer steps of batch_size * grad_accum * world examples, each cut into length-sorted
  micro-batches under a token budget; on Qwen2/2.5-VL the examples of a micro-batch are packed
  into one row without padding (per-example position ids, `packing`; on CUDA attention runs
  through torch's FlashAttention varlen kernel, `varlen.py`), elsewhere padded; the loss
  is a token-weighted mean over the whole step (the gradient does not depend on the cut);
  gradient clipping at 1.0, warmup + cosine/linear/constant schedule, fused AdamW;
- bf16 autocast over fp32 master weights on CUDA (`precision="auto"`);
- data parallel over several processes (`distributed="ddp"|"fsdp"`, launched by torchrun, see
  `distributed.py`): the global batch is `batch_size * grad_accum * world_size`, every rank cuts
  the same micro-batch plan and takes every world_size-th micro-batch of each optimizer step, so
  N processes take the same steps as one process with N times the accumulation;
- resumable: every `save_every` optimizer steps the trainable weights, optimizer, scheduler, RNG
  states, step and losses go into `<resume_from>/step-NNNNNN/`; a later call with the same
  `resume_from`, data and config continues from the newest complete one.

Qwen2-VL/2.5-VL, Mllama (Llama-3.2-Vision) and Idefics3 checkpoints are handled: their image
tensors differ (`collate`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import vision_compat

vision_compat.ensure_torchvision()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForImageTextToText, get_scheduler  # noqa: E402

from . import sft_data, varlen  # noqa: E402
from .backend import DTYPES  # noqa: E402
from .sft_data import (  # noqa: E402, F401  (re-exported: the training API)
    CONCAT_KEYS,
    IGNORE,
    SEQ_KEYS,
    TOKEN_GRID_KEYS,
    EncodeSpec,
    ExampleTooLong,
    SFTExample,
    collate,
    encode_example,
    pack,
    packed_positions,
)

log = logging.getLogger(__name__)
MAX_GRAD_NORM = 1.0  # as HF Trainer / TRL default
# LoRA on the language model's attention and MLP projections only (vision towers use the same names).
LORA_TARGET = r".*(language_model|text_model).*layers\.\d+\.(self_attn|cross_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"
META_FILE = "selfjudge_training.json"
# the vision encoder without its projector into the language model: Qwen2/2.5-VL `visual.*` less
# `visual.merger.*`; Mllama and Idefics3 `vision_model.*` (projectors: multi_modal_projector, connector)
VISION_ENCODER = re.compile(r"(^|\.)(visual|vision_model|vision_tower)\.(?!merger\.)")
METHODS, PRECISIONS, DISTRIBUTED = ("full", "lora"), ("auto", "fp32", "bf16-mixed", "bf16"), ("none", "ddp", "fsdp")


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
    distributed: str = "none"  # none | ddp | fsdp (several processes: see distributed.py)
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

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("method", self.method, METHODS),
            ("precision", self.precision, PRECISIONS),
            ("distributed", self.distributed, DISTRIBUTED),
            ("dtype", self.dtype, tuple(DTYPES)),
            ("packing", self.packing, ("auto", "on", "off")),
        ):
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, not {value!r}")


@dataclass
class TrainResult:
    steps: int  # optimizer steps
    losses: list[float]  # mean loss per answer token, one per optimizer step
    answer_tokens: int  # supervised tokens seen over the whole run (all epochs)
    seconds: float
    resumed_from: int = 0  # optimizer steps restored from a checkpoint (0: a fresh run)
    world_size: int = 1
    tokens: int = 0  # non-padding tokens (prompt + answer) run through the model, all ranks
    padded_tokens: int = 0  # tokens of the model's input tensors (real + padding), all ranks
    dropped: list = field(default_factory=list)  # [source index, reason] of examples left out (too long, unreadable)
    meta: dict = field(default_factory=dict)  # what was written to selfjudge_training.json


# --- encoding and batching ------------------------------------------------------------------


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within chunks of 8 batches, cut into batches, shuffle the batches."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 8
    batches = []
    for c in range(0, len(idx), chunk):
        part = sorted(idx[c : c + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def micro_budget(lengths: list[int], cfg: TrainConfig) -> int:
    """Padded tokens allowed per micro-batch: 0 = none (micro-batches of exactly batch_size)."""
    if cfg.micro_batch_tokens < 0:
        return 0
    if cfg.micro_batch_tokens > 0:
        return cfg.micro_batch_tokens
    return cfg.batch_size * sorted(lengths)[len(lengths) // 2]  # auto: batch_size median-length examples


def split_step(step: list[int], lengths: list[int], batch_size: int, budget: int, packed: bool = False) -> list[list[int]]:
    """Cut one optimizer step's examples into micro-batches, longest first.

    Without a budget: batch_size examples each. With one: as many examples as fit in `budget`
    tokens (always at least one): padded tokens (count x longest) for padded batches, the sum of
    the lengths for packed ones, so short examples share a micro-batch and long ones do not pad
    short ones. The step's gradient does not depend on the cut (the loss is a token mean over the
    whole step); only the padding and the micro-batch count do.
    """
    order = sorted(step, key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if budget and cur:
            full = (used + lengths[i] if packed else (len(cur) + 1) * lengths[cur[0]]) > budget
        else:
            full = len(cur) == batch_size
        if cur and full:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    return out + [cur]


def step_plan(lengths: list[int], cfg: TrainConfig, world: int = 1, packed: bool = False) -> list[list[list[int]]]:
    """Optimizer steps of all epochs, each a list of micro-batches (lists of example indices).

    Default: each epoch shuffles the examples and takes batch_size * grad_accum * world of them
    per optimizer step (random batches, as a random sampler gives), then cuts each step into
    length-sorted micro-batches (`split_step`). With cfg.length_grouping, micro-batches of
    similar lengths are formed across the epoch first (least padding, but each step then sees
    only short or only long examples, which slows down learning on mixed data).
    Depends only on the data lengths, the seed and the config, so every rank (and a resumed run)
    cuts the same plan, and N processes cut the plan of 1 process with N times the accumulation.
    """
    rng = random.Random(cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum * world
    budget = micro_budget(lengths, cfg)
    steps = []
    for _ in range(cfg.epochs):
        if cfg.length_grouping:
            batches = length_grouped_batches(lengths, cfg.batch_size, rng)
            n = cfg.grad_accum * world
            steps += [batches[g : g + n] for g in range(0, len(batches), n)]
            continue
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        steps += [split_step(idx[g : g + per_step], lengths, cfg.batch_size, budget, packed) for g in range(0, len(idx), per_step)]
    return steps[: cfg.max_steps] if cfg.max_steps > 0 else steps


# --- the loss -------------------------------------------------------------------------------


def core_model(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over answer tokens; the LM head runs only at those positions."""
    core = core_model(model)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = core.model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logits = core.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


class AnswerLoss(torch.nn.Module):
    """The model with the answer-only loss as its forward: what DDP/FSDP wrap, so their hooks fire."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.touch: list[str] = []  # FSDP: parameters every micro-batch must give a gradient to

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = answer_loss_sum(self.model, batch)
        if self.touch:  # 0 * w: a text-only micro-batch still "uses" the vision tower, as its peers do
            loss = loss + 0.0 * sum(self.get_parameter(n).reshape(-1)[0].float() for n in self.touch)
        return loss


# --- loading and writing checkpoints --------------------------------------------------------


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def adapter_base(path: str | Path) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_target,
        bias="none",
    )  # fmt: skip


def load_trainable(model_path: str, cfg: TrainConfig, dtype: torch.dtype) -> Any:
    """The model to train: a full checkpoint, or for LoRA a PEFT model over it.

    An adapter folder (a LoRA judge written with lora_merge=False) is loaded over its base: LoRA
    continues training that adapter (so the result is again an adapter of the same base); full
    fine-tuning merges it first.
    """
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.attn_implementation == varlen.NAME:
        varlen.register()
    if is_adapter(model_path):
        from peft import PeftModel

        base = AutoModelForImageTextToText.from_pretrained(adapter_base(model_path), dtype=dtype, use_safetensors=True, **attn)
        if cfg.method == "lora":
            return PeftModel.from_pretrained(base, model_path, is_trainable=True)
        model = PeftModel.from_pretrained(base, model_path).merge_and_unload().requires_grad_(True)  # PEFT froze them
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype, use_safetensors=True, **attn)
        if cfg.method == "lora":
            from peft import get_peft_model

            return get_peft_model(model, lora_config(cfg))
    if cfg.freeze_vision:       # full fine-tuning only: LoRA leaves the vision encoder alone anyway
        freeze_vision_encoder(model)
    return model


def freeze_vision_encoder(model: Any) -> int:
    """Stop training the vision encoder's weights (`VISION_ENCODER`); returns how many were frozen."""
    frozen = 0
    for name, p in model.named_parameters():
        if VISION_ENCODER.search(name):
            p.requires_grad_(False)
            frozen += p.numel()
    if frozen == 0:
        raise ValueError(f"freeze_vision: no vision encoder weights ({VISION_ENCODER.pattern}) in {type(model).__name__}")
    return frozen


def export(model: Any, processor: Any, out_dir: str | Path, cfg: TrainConfig, meta: dict | None = None) -> Path:
    """Write the trained model: a full HF folder, or the adapter (LoRA, lora_merge=False); plus META_FILE.

    The model is cast to cfg.dtype on the way out (a merged LoRA is merged before the cast).
    `model` is changed (merged / cast): call this last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora = hasattr(model, "get_base_model")
    if lora and cfg.lora_merge:
        model = model.merge_and_unload()
        lora = False
    model = model.to(DTYPES[cfg.dtype])
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    info = meta if meta is not None else {}  # filled in place: the caller sees format / base_model
    info |= {"format": "peft_adapter" if lora else "full", "method": cfg.method}
    if lora:
        info["base_model"] = adapter_base(out)
    (out / META_FILE).write_text(json.dumps(info, indent=1, default=str))
    return out


# --- processes, devices, precision ----------------------------------------------------------


def resolve_precision(precision: str, device_type: str, dtype: str) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the weights being trained, autocast dtype or None)."""
    if precision == "auto":
        precision = "bf16-mixed" if device_type == "cuda" else "checkpoint"
    if precision == "bf16-mixed":  # fp32 master weights and optimizer state, bf16 matmuls
        return torch.float32, torch.bfloat16
    if precision == "bf16":  # everything bf16: half the memory, but lr ~1e-5 updates mostly round away
        return torch.bfloat16, None
    if precision == "fp32":
        return torch.float32, None
    return DTYPES[dtype], None  # auto off CUDA: the configured checkpoint dtype, as before


@dataclass
class Runtime:
    """Where this process trains: rank/world (1 process unless launched by torchrun), device, dtypes."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    weight_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    mode: str = "none"
    owns_group: bool = False

    @classmethod
    def start(cls, cfg: TrainConfig) -> Runtime:
        rt = cls(mode=cfg.distributed)
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.distributed != "none" and (env_world > 1 or dist.is_initialized()):
            if not dist.is_initialized():
                backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
                dist.init_process_group(backend)
                rt.owns_group = True
            rt.world, rt.rank = dist.get_world_size(), dist.get_rank()
            rt.local_rank = int(os.environ.get("LOCAL_RANK", rt.rank))
        else:
            rt.mode = "none"
        if cfg.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(f"TrainConfig.device is {cfg.device!r}, but torch {torch.__version__} sees no CUDA "
                                   "device (a CPU build, or no GPU visible): set train/model device to cpu")
            index = rt.local_rank if rt.world > 1 and ":" not in cfg.device else torch.device(cfg.device).index
            rt.device = torch.device("cuda", index or 0)
            torch.cuda.set_device(rt.device)
        else:
            rt.device = torch.device(cfg.device)
        rt.weight_dtype, rt.autocast_dtype = resolve_precision(cfg.precision, rt.device.type, cfg.dtype)
        return rt

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (a list of one without a process group)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t[0])

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: a text-only micro-batch leaves the vision tower without grads
            return DDP(module, device_ids=ids, find_unused_parameters=True)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # fp32 shards gathered as fp32; bf16 compute comes from autocast, as without FSDP (bf16
        # gathers would halve the traffic, but cast every module input: left for when it is measured)
        mp = MixedPrecisionPolicy()
        # Every rank must run the same collectives in the same order. The text decoder layers run
        # for every batch: one FSDP unit each. Vision blocks (and Mllama's cross-attention layers)
        # are skipped by a text-only batch, so they stay in the root unit, gathered on every forward,
        # and each micro-batch touches their weights (AnswerLoss.touch) so every rank reduces the
        # same gradients.
        units = [
            sub
            for name, sub in module.named_modules()
            if re.search(r"(language_model|text_model)\.layers\.\d+$", name) and "Cross" not in type(sub).__name__
        ]
        for sub in units:
            fully_shard(sub, mp_policy=mp)
        fully_shard(module, mp_policy=mp)
        in_units = {id(p) for sub in units for p in sub.parameters()}
        module.touch = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in in_units]
        return module

    @contextlib.contextmanager
    def grad_sync(self, wrapped: torch.nn.Module, sync: bool) -> Iterator[None]:
        """Reduce gradients across ranks only on the last micro-batch of an optimizer step."""
        if self.world == 1 or sync:
            if self.mode == "fsdp" and self.world > 1:
                wrapped.set_requires_gradient_sync(True)
            yield
        elif self.mode == "ddp":
            with wrapped.no_sync():
                yield
        else:
            wrapped.set_requires_gradient_sync(False)
            yield

    def drop_unused_grads(self, wrapped: torch.nn.Module) -> None:
        """FSDP: touched weights no micro-batch of any rank used have all-zero gradients; make them
        None, as they are in one process, so AdamW skips them (a zero gradient would still move
        them by their momentum)."""
        names = getattr(wrapped, "touch", None)
        if not names or self.world == 1:
            return
        params = [wrapped.get_parameter(n) for n in names]
        local = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params]
        used = torch.stack([g.abs().sum() > 0 if g is not None and g.numel() else torch.tensor(False) for g in local])
        used = used.to(torch.int32).to(self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(used)  # used on some rank's shard
        for p, u in zip(params, used.tolist()):
            if not u:
                p.grad = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# --- resumable checkpoints ------------------------------------------------------------------


def fingerprint(model_path: str, cfg: TrainConfig, examples: Sequence[SFTExample], world: int) -> str:
    """Identity of a training run: a resume checkpoint is used only by the run that wrote it.

    The process count may change (same global batch: the plan is the same), the sharding may
    not (FSDP saves its optimizer state by parameter name, the others by position). A source with
    `identity(i)` names its examples without reading their images.
    """
    h = hashlib.sha256()
    skip = ("device", "save_every", "nproc", "distributed", "loader_workers")
    keep = {k: v for k, v in asdict(cfg).items() if k not in skip}
    keep["global_accum"] = cfg.grad_accum * world
    keep["fsdp"] = cfg.distributed == "fsdp" and world > 1
    h.update(json.dumps([str(model_path), keep], sort_keys=True, default=str).encode())
    if hasattr(examples, "identity"):
        for i in range(len(examples)):
            h.update(examples.identity(i).encode())
        return h.hexdigest()
    seen: dict[int, str] = {}
    for ex in examples:
        h.update(json.dumps([ex.text, ex.answer, ex.system]).encode())
        for im in ex.images:
            if id(im) not in seen:
                seen[id(im)] = hashlib.sha256(im.mode.encode() + str(im.size).encode() + im.tobytes()).hexdigest()
            h.update(seen[id(im)].encode())
    return h.hexdigest()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """`<root>/step-NNNNNN/`: trainable weights, optimizer, scheduler, per-rank RNG, step, losses.

    Written into `step-NNNNNN.tmp` and renamed when complete (a crash mid-save leaves the previous
    one); older ones are deleted after. Under FSDP the shards are gathered into full tensors
    (rank 0 writes), so a run can resume with another world size only if the global batch is equal.
    """

    def __init__(self, root: str | Path, print_: str, rt: Runtime):
        self.root, self.print, self.rt = Path(root), print_, rt

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        for d in sorted(self.root.glob("step-*[0-9]"), reverse=True):
            meta = d / "meta.json"
            if meta.exists() and json.loads(meta.read_text()).get("fingerprint") == self.print:
                return d
            if meta.exists():
                log.warning("resume checkpoint %s belongs to another run (data or config changed): ignored", d)
        return None

    def _trainable_names(self, model: Any) -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def save(self, model: Any, wrapped: Any, opt: Any, sched: Any, state: dict) -> None:
        rt = self.rt
        fsdp = rt.mode == "fsdp" and rt.world > 1
        names = set(self._trainable_names(model))
        if fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = {k: v for k, v in get_model_state_dict(model, options=opts).items() if k in names}
            optim = get_optimizer_state_dict(wrapped, opt, options=opts)
        elif rt.main:  # DDP ranks hold the same weights: rank 0 writes them
            weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if n in names}
            optim = opt.state_dict()
        step = state["step"]
        final, tmp = self.root / f"step-{step:06d}", self.root / f"step-{step:06d}.tmp"
        if rt.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        rt.barrier()
        torch.save(_rng_state(), tmp / f"rng-{rt.rank}.pt")
        if rt.main:
            torch.save(weights, tmp / "weights.pt")
            torch.save({"optimizer": optim, "scheduler": sched.state_dict()}, tmp / "optim.pt")
            (tmp / "meta.json").write_text(json.dumps({"fingerprint": self.print, "world": rt.world, **state}))
        rt.barrier()
        if rt.main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.root.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        rt.barrier()

    def restore(self, d: Path, model: Any, wrapped: Any, opt: Any, sched: Any) -> dict:
        rt = self.rt
        weights = torch.load(d / "weights.pt", map_location="cpu", weights_only=False)
        optim = torch.load(d / "optim.pt", map_location="cpu", weights_only=False)
        if rt.mode == "fsdp" and rt.world > 1:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(model, weights, options=opts)
            set_optimizer_state_dict(wrapped, opt, optim["optimizer"], options=opts)
        else:
            params = dict(model.named_parameters())
            missing = set(self._trainable_names(model)) - set(weights)
            if missing:
                raise ValueError(f"resume checkpoint {d} lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
            with torch.no_grad():
                for n, v in weights.items():
                    params[n].copy_(v)
            opt.load_state_dict(optim["optimizer"])
        sched.load_state_dict(optim["scheduler"])
        rng = d / f"rng-{rt.rank}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))
        state = json.loads((d / "meta.json").read_text())
        log.info("resumed from %s (step %s)", d, state["step"])
        return state


# --- the training loop ----------------------------------------------------------------------


def _optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused (one kernel for all tensors, CPU and CUDA) unless the weights are FSDP DTensors: foreach then
    sharded = any(hasattr(p, "to_local") for p in decay + no_decay)
    fused = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, **fused)


def _measure_all(rt: Runtime, processor: Any, examples: Sequence[SFTExample], spec: EncodeSpec, cfg: TrainConfig) -> sft_data.Measured:
    """Every example's length, this rank measuring only its slice; the too-long and unreadable dropped."""
    mine = sft_data.measure(examples, processor, spec, range(rt.rank, len(examples), rt.world), cfg.loader_workers)
    measured = sft_data.merge(rt.gather(mine))
    for i, why in measured.dropped:
        log.warning("training example %s dropped: %s", i, why)
    if not measured.index:
        raise ValueError(f"no trainable examples ({len(measured.dropped)} of {len(examples)} dropped)")
    return measured


def _rank_batches(plan: list[list[list[int]]], start: int, rt: Runtime) -> tuple[list[list[int]], list[float], list[int]]:
    """This rank's micro-batches from step `start` on (plan indices), their weights, and per-step counts.

    Every rank runs as many micro-batches per step (DDP/FSDP collectives): a rank short of one runs
    a stand-in (the step's first) with weight 0, which gives no gradient.
    """
    batches, weights, rounds = [], [], []
    for group in plan[start:]:
        mine = group[rt.rank :: rt.world]
        n = math.ceil(len(group) / rt.world)
        rounds.append(n)
        for j in range(n):
            batches.append(mine[j] if j < len(mine) else group[0])
            weights.append(1.0 if j < len(mine) else 0.0)
    return batches, weights, rounds


def sft(
    model_path: str,
    examples: Sequence[SFTExample],
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train and write `out_dir` (rank 0). `progress(step, total, loss)` after every optimizer step.

    `examples` is read one example at a time (a list, or any source with len() and [i]).
    Run under torchrun with cfg.distributed "ddp"/"fsdp", every rank calls this with the same
    arguments. With `resume_from` and cfg.save_every > 0, state is saved every save_every steps
    and a matching earlier save is resumed from.
    """
    t0 = time.time()
    rt = Runtime.start(cfg)
    try:
        return _sft(rt, t0, model_path, examples, out_dir, cfg, progress, resume_from)
    finally:
        rt.close()


def _sft(rt, t0, model_path, examples, out_dir, cfg, progress, resume_from) -> TrainResult:  # noqa: ANN001
    torch.manual_seed(cfg.seed)
    processor = sft_data.load_processor(model_path, cfg.max_pixels, cfg.min_pixels)
    model = load_trainable(model_path, cfg, rt.weight_dtype)
    if cfg.gradient_checkpointing:
        core_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(rt.device).train()
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed = cfg.packing == "on" or (cfg.packing == "auto" and sft_data.supports_packing(core_model(model)))
    rope = sft_data.rope_index(core_model(model))
    make_batch = (lambda feats: pack(feats, rope)) if packed else (lambda feats: collate(feats, pad_id))
    if packed and not cfg.attn_implementation and varlen.usable(rt.device):  # CUDA: FlashAttention varlen
        core_model(model).set_attn_implementation(varlen.register())

    spec = EncodeSpec(cfg.max_length, cfg.max_pixels, cfg.min_pixels)
    measured = _measure_all(rt, processor, examples, spec, cfg)
    source_index, lengths, n_answer = measured.index, measured.length, measured.answer
    plan = step_plan(lengths, cfg, rt.world, packed)  # indices into the measured (kept) examples
    total = len(plan)

    wrapped = rt.wrap(AnswerLoss(model))
    opt = _optimizer(wrapped, cfg)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * total), num_training_steps=total)

    state = {"step": 0, "losses": [], "answer_tokens": 0, "tokens": 0, "padded_tokens": 0}
    ckpt = None
    if resume_from is not None:
        ckpt = Checkpointer(resume_from, fingerprint(model_path, cfg, examples, rt.world), rt)
        found = ckpt.latest()
        if found is not None:
            state = {"padded_tokens": 0, **ckpt.restore(found, model, wrapped, opt, sched)}
    resumed_from = state["step"]

    batches, weights, rounds = _rank_batches(plan, resumed_from, rt)
    dl = sft_data.loader(examples, processor, spec, [[source_index[i] for i in b] for b in batches], make_batch,
                         cfg.loader_workers, pin_memory=rt.device.type == "cuda")  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # starting workers draws a seed: a resumed run's RNG (dropout) stays exact
        micro = iter(dl)
    k = 0  # this rank's micro-batches so far
    for step in range(resumed_from, total):
        group = plan[step]
        n_tok = sum(n_answer[i] for b in group for i in b)
        local = torch.zeros((), device=rt.device)
        padded = 0
        for j in range(rounds[step - resumed_from]):
            weight, batch = weights[k], next(micro)
            k += 1
            padded += batch["input_ids"].numel() if weight else 0
            batch = {key: v.to(rt.device, non_blocking=True) for key, v in batch.items()}
            with rt.grad_sync(wrapped, sync=j == rounds[step - resumed_from] - 1):
                with rt.autocast():
                    loss_sum = wrapped(batch)
                # DDP/FSDP average gradients over ranks: scale by world so the step sees sum / n_tok
                (loss_sum * (weight * rt.world / n_tok)).backward()
            local += weight * loss_sum.detach().float() / n_tok
        rt.drop_unused_grads(wrapped)
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), MAX_GRAD_NORM)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = rt.sum(float(local))  # one device sync per step
        state["step"] = step + 1
        state["losses"].append(loss)
        state["answer_tokens"] += n_tok
        state["tokens"] += sum(lengths[i] for b in group for i in b)  # all ranks' micro-batches
        state["padded_tokens"] += int(rt.sum(float(padded)))
        if ckpt is not None and cfg.save_every > 0 and state["step"] % cfg.save_every == 0 and state["step"] < total:
            ckpt.save(model, wrapped, opt, sched, state)
        if progress is not None:
            progress(state["step"], total, loss)

    tokens = state["tokens"]
    losses = state["losses"]
    dropped = [[i, why] for i, why in measured.dropped]
    meta = {
        "parent": str(model_path),
        "examples": len(source_index),
        "dropped": len(dropped),
        "dropped_reasons": _reason_counts(dropped),
        "steps": len(losses),
        "epochs": cfg.epochs,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "answer_tokens": state["answer_tokens"],
        "tokens": tokens,
        "padded_tokens": state["padded_tokens"],
        "packed": packed,
        "attention": core_model(model).config._attn_implementation,
        "resumed_from_step": resumed_from,
        "world_size": rt.world,
        "precision": cfg.precision,
        "weight_dtype": str(rt.weight_dtype).removeprefix("torch."),
        "config": asdict(cfg),
        "versions": _versions(),
    }
    meta["train_seconds"] = time.time() - t0
    _write_output(rt, model, processor, out_dir, cfg, meta, model_path)
    return TrainResult(
        steps=len(losses), losses=losses, answer_tokens=state["answer_tokens"], seconds=time.time() - t0,
        resumed_from=resumed_from, world_size=rt.world, tokens=tokens, meta=meta,
        padded_tokens=state["padded_tokens"], dropped=dropped,
    )  # fmt: skip


def _reason_counts(dropped: list[list]) -> dict[str, int]:
    """Dropped examples by the kind of reason (the text before its first ':')."""
    out: dict[str, int] = {}
    for _, why in dropped:
        kind = why.split(":")[0].strip()
        out[kind] = out.get(kind, 0) + 1
    return out


def _write_output(rt: Runtime, model: Any, processor: Any, out_dir: Any, cfg: TrainConfig, meta: dict, model_path: str) -> None:
    if rt.mode == "fsdp" and rt.world > 1:  # gather the shards; rank 0 rebuilds the model on CPU and writes it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rt.main:
            model = load_trainable(model_path, cfg, torch.float32)
            model.load_state_dict(full)
    if rt.main:
        export(model, processor, out_dir, cfg, meta)
    rt.barrier()


def _versions() -> dict:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import peft

        out["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
