"""Resumable training: the state every `save_every` optimizer steps (`Checkpointer`), and the run's
fingerprint, so that a checkpoint is resumed only by the run that wrote it."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...config import TrainConfig
from .data import SFTExample
from .runtime import Runtime

log = logging.getLogger(__name__)


def fingerprint(model_path: str, cfg: TrainConfig, examples: Sequence[SFTExample], world: int) -> str:
    """Identity of a training run: a resume checkpoint is used only by the run that wrote it.

    The process count may change (same global batch: the plan is the same), the sharding may
    not (FSDP saves its optimizer state by parameter name, the others by position). A source with
    `identity(i)` names its examples without reading their images.
    """
    h = hashlib.sha256()
    # how a run is executed, not what it trains (the speed-ups change rounding at most)
    skip = ("device", "save_every", "nproc", "distributed", "loader_workers", "vision_varlen", "compile", "kernels")
    keep = {k: v for k, v in cfg.as_dict().items() if k not in skip}
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

    def __init__(self, root: str | Path, print_: str, rt: Runtime) -> None:
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
                raise ValueError(
                    f"resume checkpoint {d} lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}"
                )
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
