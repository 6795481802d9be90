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
        from .models.backend import load_backend

        start = time.perf_counter()
        self._backend = None   # free the old model before loading the new one
        path = self.local_path(checkpoint_id)
        with self.sessions() as s:
            identity = s.get(Checkpoint, checkpoint_id).content_hash
        m = self.settings.model
        self._backend = load_backend(m.backend, path, model_id=identity, device=m.device, dtype=m.dtype,
                                     batch_size=m.batch_size, trust_remote_code=m.trust_remote_code,
                                     endpoints=m.endpoints, served_model_name=m.served_model_name,
                                     api_key=m.api_key, concurrency=m.concurrency,
                                     request_timeout=m.request_timeout)
        self._loaded_id = checkpoint_id
        seconds = time.perf_counter() - start
        self.metrics.model_load_seconds.labels(self.stage).observe(seconds)
        log.info("%s: loaded checkpoint %s (%s) in %.1fs", self.stage, checkpoint_id, identity[:12], seconds)
        return self._backend

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


def make_context(settings: Settings, stage: str, bus: Bus, metrics: Metrics | None = None,
                 sessions: sessionmaker | None = None, store: Store | None = None) -> Context:
    return Context(settings=settings, stage=stage,
                   sessions=sessions or make_sessionmaker(settings.database_url()),
                   store=store or open_store(settings.store, settings.run.work_dir),
                   bus=bus, metrics=metrics or Metrics())
