"""The training loop: `sft` trains a checkpoint on examples and writes the result.

Each optimizer step is planned from the examples' lengths alone (`step_plan`), so every rank and a
resumed run cut the same micro-batches; the loss is a token-weighted mean over the whole step.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from ...config import TrainConfig
from . import data, speed, varlen
from .checkpoint import Checkpointer, fingerprint
from .data import EncodeSpec, SFTExample, collate, pack
from .model import AnswerLoss, core_model, export, load_trainable
from .runtime import Runtime

log = logging.getLogger(__name__)


MAX_GRAD_NORM = 1.0  # as HF Trainer / TRL default


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


# --- the step plan -------------------------------------------------------------------------


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


def split_step(
    step: list[int], lengths: list[int], batch_size: int, budget: int, packed: bool = False
) -> list[list[int]]:
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
        steps += [
            split_step(idx[g : g + per_step], lengths, cfg.batch_size, budget, packed)
            for g in range(0, len(idx), per_step)
        ]
    return steps[: cfg.max_steps] if cfg.max_steps > 0 else steps


# --- the training loop ----------------------------------------------------------------------


def _optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused (one kernel for all tensors, CPU and CUDA) unless the weights are FSDP DTensors: foreach then
    sharded = any(hasattr(p, "to_local") for p in decay + no_decay)
    fused = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, **fused)


def _measure_all(
    rt: Runtime, processor: Any, examples: Sequence[SFTExample], spec: EncodeSpec, cfg: TrainConfig
) -> data.Measured:
    """Every example's length, this rank measuring only its slice; the too-long and unreadable dropped."""
    mine = data.measure(examples, processor, spec, range(rt.rank, len(examples), rt.world), cfg.loader_workers)
    measured = data.merge(rt.gather(mine))
    for i, why in measured.dropped:
        log.warning("training example %s dropped: %s", i, why)
    if not measured.index:
        raise ValueError(f"no trainable examples ({len(measured.dropped)} of {len(examples)} dropped)")
    return measured


def _rank_batches(
    plan: list[list[list[int]]], start: int, rt: Runtime
) -> tuple[list[list[int]], list[float], list[int]]:
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
    out_dir: str | Path | None,
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    resume_from: str | Path | None = None,
    timer: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train and write `out_dir` (rank 0; None: nothing is written). `progress(step, total, loss)`
    after every optimizer step.

    `examples` is read one example at a time (a list, or any source with len() and [i]).
    Run under torchrun with cfg.distributed "ddp"/"fsdp", every rank calls this with the same
    arguments. With `resume_from` and cfg.save_every > 0, state is saved every save_every steps
    and a matching earlier save is resumed from.
    `timer(phase)` (bench/gpu_bench.py's step breakdown) is called as each phase ends: "step" as a
    step begins, "data" when a micro-batch has come from the loader, "compute" when its forward and
    backward are queued, "optimizer" after the step and the loss read back.
    """
    t0 = time.time()
    rt = Runtime.start(cfg)
    try:
        return _sft(rt, t0, model_path, examples, out_dir, cfg, progress, resume_from, timer or _no_timer)
    finally:
        rt.close()


def _no_timer(phase: str) -> None:
    pass


def _sft(rt, t0, model_path, examples, out_dir, cfg, progress, resume_from, mark) -> TrainResult:  # noqa: ANN001
    torch.manual_seed(cfg.seed)
    processor = data.load_processor(model_path, cfg.max_pixels, cfg.min_pixels)
    model = load_trainable(model_path, cfg, rt.weight_dtype)
    if cfg.gradient_checkpointing:
        core_model(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(rt.device).train()
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    packed = cfg.packing == "on" or (cfg.packing == "auto" and data.supports_packing(core_model(model)))
    rope = data.rope_index(core_model(model))
    make_batch = (lambda feats: pack(feats, rope)) if packed else (lambda feats: collate(feats, pad_id))
    if packed and not cfg.attn_implementation and varlen.usable(rt.device):  # CUDA: FlashAttention varlen
        core_model(model).set_attn_implementation(varlen.register())
    speedups = speed.apply(core_model(model), cfg)

    spec = EncodeSpec(cfg.max_length, cfg.max_pixels, cfg.min_pixels)
    measured = _measure_all(rt, processor, examples, spec, cfg)
    source_index, lengths, n_answer = measured.index, measured.length, measured.answer
    plan = step_plan(lengths, cfg, rt.world, packed)  # indices into the measured (kept) examples
    total = len(plan)

    wrapped = rt.wrap(AnswerLoss(model, speed.fused_loss(cfg)))
    opt = _optimizer(wrapped, cfg)
    sched = get_scheduler(
        cfg.lr_scheduler, opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * total), num_training_steps=total
    )

    state = {"step": 0, "losses": [], "answer_tokens": 0, "tokens": 0, "padded_tokens": 0}
    ckpt = None
    if resume_from is not None:
        ckpt = Checkpointer(resume_from, fingerprint(model_path, cfg, examples, rt.world), rt)
        found = ckpt.latest()
        if found is not None:
            state = {"padded_tokens": 0, **ckpt.restore(found, model, wrapped, opt, sched)}
    resumed_from = state["step"]

    batches, weights, rounds = _rank_batches(plan, resumed_from, rt)
    dl = data.loader(examples, processor, spec, [[source_index[i] for i in b] for b in batches], make_batch,
                         cfg.loader_workers, pin_memory=rt.device.type == "cuda")  # fmt: skip
    with torch.random.fork_rng(devices=[]):  # starting workers draws a seed: a resumed run's RNG (dropout) stays exact
        micro = iter(dl)
    k = 0  # this rank's micro-batches so far
    for step in range(resumed_from, total):
        mark("step")
        group = plan[step]
        n_tok = sum(n_answer[i] for b in group for i in b)
        local = torch.zeros((), device=rt.device)
        padded = 0
        for j in range(rounds[step - resumed_from]):
            weight, batch = weights[k], next(micro)
            k += 1
            mark("data")
            padded += batch["input_ids"].numel() if weight else 0
            batch = {key: v.to(rt.device, non_blocking=True) for key, v in batch.items()}
            with rt.grad_sync(wrapped, sync=j == rounds[step - resumed_from] - 1):
                with rt.autocast():
                    loss_sum = wrapped(batch)
                # DDP/FSDP average gradients over ranks: scale by world so the step sees sum / n_tok
                (loss_sum * (weight * rt.world / n_tok)).backward()
            local += weight * loss_sum.detach().float() / n_tok
            mark("compute")
        rt.drop_unused_grads(wrapped)
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), MAX_GRAD_NORM)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss = rt.sum(float(local))  # one device sync per step
        mark("optimizer")
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
        "config": cfg.as_dict(),
        "versions": _versions(),
    }
    if speedups:
        meta["speedups"] = speedups
    meta["train_seconds"] = time.time() - t0
    if out_dir is not None:
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


def _write_output(
    rt: Runtime, model: Any, processor: Any, out_dir: Any, cfg: TrainConfig, meta: dict, model_path: str
) -> None:
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
