"""Where this process trains: its rank among the torchrun processes, its device, the precision of
its weights and matmuls, and the DDP/FSDP wrap of the model with the collectives they need."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ...config import TrainConfig
from ..dtypes import DTYPES


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
                raise RuntimeError(
                    f"TrainConfig.device is {cfg.device!r}, but torch {torch.__version__} sees no CUDA "
                    "device (a CPU build, or no GPU visible): set train/model device to cpu"
                )
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
