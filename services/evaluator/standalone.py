"""Outside the loop: `selfjudge eval`, one checkpoint on one benchmark file through this service.

The evaluation runs in this process on an in-process queue, through the same plan, shards and
scoring as in the loop. Its results go to the configured database (a run named
"eval:<benchmark>" with iteration 0) and store; an unfinished evaluation of the same model on the
same file with the same settings is resumed, not started again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from selfjudge.shared.config import BenchmarkConfig, Settings
from selfjudge.shared.context import make_context
from selfjudge.shared.db import Checkpoint, Iteration, Run, make_sessionmaker, migrate
from selfjudge.shared.messages import EvalPlan
from selfjudge.shared.metrics import Metrics
from selfjudge.shared.queue import LocalBus
from selfjudge.shared.store import open_store

from .protocols import BENCHMARKS, Protocol, make_protocol
from .report import benchmark_result
from .stage import STAGE, handle

log = logging.getLogger(__name__)


def checkpoint_identity(model: str) -> tuple[str, str]:
    """(uri, content hash) for a local folder (hashed by file names, sizes and times, not contents)
    or a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        digest = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            st = p.stat()
            digest.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return f"file:{path.resolve()}", digest.hexdigest()
    return f"hf:{model}", hashlib.sha256(model.encode()).hexdigest()


def evaluate_standalone(
    settings: Settings,
    benchmark: str,
    data: str,
    model: str,
    k: int | None = None,
    images: str = "",
    parser: str = "official",
    limit: int = 0,
    max_new_tokens: int | None = None,
    metrics: Metrics | None = None,
    resume: bool = True,
) -> dict:
    """`model` evaluated on the benchmark file `data`: what `selfjudge eval --json` prints."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r} (have: {', '.join(BENCHMARKS)})")
    protocol = make_protocol(benchmark, k, parser, max_new_tokens)  # bad k / parser: fail before any work
    spec = BenchmarkConfig(
        name=benchmark, path=data, k=k, images=images, parser=parser, max_new_tokens=max_new_tokens, limit=limit
    )
    migrate(settings.database_url())
    sessions = make_sessionmaker(settings.database_url())
    store = open_store(settings.store, settings.run.work_dir)
    bus = LocalBus()
    ctx = make_context(settings, STAGE, bus, metrics=metrics or Metrics(), sessions=sessions, store=store)
    uri, digest = checkpoint_identity(model)
    wanted = {
        **spec.model_dump(),
        "checkpoint": digest,
        "seed": settings.run.seed,
        "shard_size": settings.run.shard_size,
    }
    found = _unfinished(sessions, benchmark, wanted) if resume else None
    if found is None:
        run_id, ckpt_id = _new_run(sessions, settings, benchmark, wanted, model, uri, digest)
    else:
        run_id, ckpt_id = found
        log.info("evaluator: resuming evaluation run %s", run_id)
    bus.send(
        STAGE,
        EvalPlan(run_id=run_id, iteration=0, checkpoint_id=ckpt_id, heldout=False, benchmarks=[spec], strict=True),
    )
    bus.drain({STAGE: lambda payload: handle(payload, ctx)})
    with sessions() as s:
        result = benchmark_result(s, run_id, 0, benchmark)
    return {**result, "model": model, "data": data, "protocol": {**spec.model_dump(), **_protocol_info(protocol)}}


def _unfinished(sessions: sessionmaker, benchmark: str, wanted: dict) -> tuple[int, int] | None:
    """(run, checkpoint) of the latest running evaluation with exactly these settings."""
    with sessions() as s:
        query = select(Run).where(Run.name == f"eval:{benchmark}", Run.status == "running").order_by(Run.id.desc())
        for run in s.scalars(query):
            if (run.config or {}).get("evaluation") == wanted:
                ckpt_id = s.scalar(
                    select(Iteration.output_checkpoint_id).where(Iteration.run_id == run.id, Iteration.number == 0)
                )
                return run.id, ckpt_id
    return None


def _new_run(
    sessions: sessionmaker, settings: Settings, benchmark: str, wanted: dict, model: str, uri: str, digest: str
) -> tuple[int, int]:
    """A run of no training iterations whose iteration 0 is the model to evaluate."""
    with sessions.begin() as s:
        run = Run(name=f"eval:{benchmark}", config={**settings.redacted(), "evaluation": wanted}, iterations=0)
        s.add(run)
        s.flush()
        ckpt = Checkpoint(run_id=run.id, iteration=0, uri=uri, content_hash=digest, meta={"model": model})
        s.add(ckpt)
        s.flush()
        s.add(Iteration(run_id=run.id, number=0, judge_checkpoint_id=ckpt.id, output_checkpoint_id=ckpt.id))
        return run.id, ckpt.id


def _protocol_info(p: Protocol) -> dict:
    return {"k": p.k, "temperature": p.temperature, "top_p": p.top_p, "parser": p.parser, "both_orders": p.both_orders}
