"""What a stage handler is given: config, database, store, bus, metrics and its model.

A worker process builds one Context at start and keeps it (the model stays loaded
across tasks and is swapped only when the run moves to a new judge checkpoint).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from .config import Settings
from .db import Checkpoint, make_sessionmaker
from .metrics import Metrics
from .queue import Bus
from .store import Store, get_dir, open_store

log = logging.getLogger(__name__)


@dataclass
class ModelCache:
    """Resolves checkpoint ids to local folders and keeps one generation backend loaded."""

    settings: Settings
    sessions: sessionmaker
    store: Store
    metrics: Metrics
    stage: str
    _loaded_id: int | None = None
    _backend: object | None = None

    def local_path(self, checkpoint_id: int) -> str:
        with self.sessions() as s:
            ckpt = s.get(Checkpoint, checkpoint_id)
            if ckpt is None:
                raise LookupError(f"checkpoint {checkpoint_id} is not in the database")
            uri, digest = ckpt.uri, ckpt.content_hash
        scheme, _, rest = uri.partition(":")
        if scheme == "store":
            folder = Path(self.settings.run.work_dir).resolve() / "checkpoints" / digest
            if not (folder / ".complete").exists():
                tmp = folder.with_name(folder.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                get_dir(self.store, rest, tmp)
                shutil.rmtree(folder, ignore_errors=True)
                tmp.rename(folder)
                (folder / ".complete").touch()
            return str(folder)
        if scheme in ("file", "hf"):
            return rest
        raise ValueError(f"checkpoint {checkpoint_id} has an unknown uri scheme: {uri}")

    def backend(self, checkpoint_id: int):  # noqa: ANN201 - GenerationBackend
        """The generation backend for this checkpoint, loading or swapping if needed."""
        if self._loaded_id == checkpoint_id and self._backend is not None:
            return self._backend
        from .models.generation.load import load_backend

        start = time.perf_counter()
        self.release()  # the old model is shut down and its memory freed before the new one loads
        with self.sessions() as s:
            ckpt = s.get(Checkpoint, checkpoint_id)
            if ckpt is None:
                raise LookupError(f"checkpoint {checkpoint_id} is not in the database")
            identity, iteration = ckpt.content_hash, ckpt.iteration
        m = self.settings.model
        if m.backend == "openai":
            self._backend = self._served(checkpoint_id, identity, iteration)
        else:
            self._backend = load_backend(
                m.backend,
                self.local_path(checkpoint_id),
                model_id=identity,
                device=m.device,
                dtype=m.dtype,
                batch_size=m.batch_size,
                trust_remote_code=m.trust_remote_code,
                decode=m.hf_decode,
                vllm=m.vllm.backend_kwargs(),
            )
        self._loaded_id = checkpoint_id
        seconds = time.perf_counter() - start
        self.metrics.model_load_seconds.labels(self.stage).observe(seconds)
        log.info("%s: loaded checkpoint %s (%s) in %.1fs", self.stage, checkpoint_id, identity[:12], seconds)
        return self._backend

    def release(self) -> None:
        """Shut the loaded backend down now (engine processes, GPU memory), not at garbage collection."""
        from .models.generation.backend import close_backend

        old, self._backend, self._loaded_id = self._backend, None, None
        if old is not None:
            close_backend(old)

    def _served(self, checkpoint_id: int, identity: str, iteration: int):  # noqa: ANN202 - OpenAIBackend
        """model.backend openai: the base is what the servers serve; a trained judge (a LoRA adapter
        folder) is loaded into them by name. Anything else is refused: never a silent mismatch."""
        from .models.generation.load import load_backend
        from .models.generation.openai_backend import adapter_name

        m = self.settings.model
        backend = load_backend(
            "openai",
            "",
            model_id=identity,
            endpoints=m.endpoints,
            served_model_name=m.served_model_name,
            api_key=m.api_key,
            concurrency=m.concurrency,
            request_timeout=m.request_timeout,
        )
        if iteration == 0:
            return backend
        path = self.local_path(checkpoint_id)
        if not (Path(path) / "adapter_config.json").is_file():
            backend.close()
            raise ValueError(
                f"checkpoint {checkpoint_id} (iteration {iteration}) is a full model folder: the "
                "openai backend can only bring LoRA adapters to its servers (train.method lora, "
                "train.lora_merge false), or use model.backend transformers or vllm"
            )
        backend.load_adapter(adapter_name(identity), self._adapter_path(path, identity))
        return backend

    def _adapter_path(self, path: str, identity: str) -> str:
        """The adapter folder as the servers see it: copied into model.adapter_dir when set."""
        if not self.settings.model.adapter_dir:
            return path
        dest = Path(self.settings.model.adapter_dir) / identity
        if not dest.is_dir():
            tmp = dest.with_name(f"{identity}.partial-{id(self)}")
            shutil.copytree(path, tmp, dirs_exist_ok=True)
            try:
                tmp.rename(dest)
            except OSError:  # another worker put it there first
                shutil.rmtree(tmp, ignore_errors=True)
        return str(dest)

    @property
    def loaded_id(self) -> int | None:
        return self._loaded_id


@dataclass
class Context:
    settings: Settings
    stage: str
    sessions: sessionmaker
    store: Store
    bus: Bus
    metrics: Metrics
    models: ModelCache = field(init=False)

    def __post_init__(self) -> None:
        self.models = ModelCache(self.settings, self.sessions, self.store, self.metrics, self.stage)


def make_context(
    settings: Settings,
    stage: str,
    bus: Bus,
    metrics: Metrics | None = None,
    sessions: sessionmaker | None = None,
    store: Store | None = None,
) -> Context:
    return Context(
        settings=settings,
        stage=stage,
        sessions=sessions or make_sessionmaker(settings.database_url()),
        store=store or open_store(settings.store, settings.run.work_dir),
        bus=bus,
        metrics=metrics or Metrics(),
    )
