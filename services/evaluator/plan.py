"""Planning an evaluation: what to judge, cut into shards, before any judging.

Each benchmark file (and the run's held-out pairs) is loaded once per run into self-contained
shards of EvalItem records in the store (images copied in, bad records excluded with the reason):
its `Manifest`, reused by every iteration so each checkpoint is judged on the same items. The
evaluation's `StoredPlan` lists the manifests with their protocols and numbers their shards across
benchmarks; it is written once per (run, iteration), so a redelivered or resumed evaluation finds
the same plan. `plan` also makes the Shard rows and the set-aside rows of the excluded records,
and returns the shard messages still to judge.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from selfjudge.shared import loop, shards
from selfjudge.shared.config import BenchmarkConfig
from selfjudge.shared.context import Context
from selfjudge.shared.db import SetAside
from selfjudge.shared.messages import EvalPlan, EvalShard, ProtocolSpec
from selfjudge.shared.records import EvalItem, HeldoutRecord, read_records, write_records
from selfjudge.shared.store import Store

from .benchmarks import BenchItem, iter_benchmark
from .protocols import BENCHMARKS, HELDOUT, make_protocol

STAGE = "evaluator"
log = logging.getLogger(__name__)


class Manifest(BaseModel):
    """One benchmark's items as shards in the store (`runs/<r>/eval/<name>/manifest.json`)."""

    model_config = ConfigDict(extra="ignore")
    items: int  # items in the shards
    total: int  # records in the file
    excluded: list[tuple[str, str]]  # (record id, reason) of each record left out
    shards: list[str]  # store keys of the EvalItem shards
    uri: str  # where the items came from


class PlannedBenchmark(Manifest):
    """A manifest in a plan: judged under `protocol`, its shards numbered `shard_indexes`."""

    name: str
    protocol: ProtocolSpec
    shard_indexes: list[int]


class StoredPlan(BaseModel):
    """One checkpoint's evaluation (`runs/<r>/eval/plans/iter<k>.json`)."""

    model_config = ConfigDict(extra="ignore")
    run_id: int
    iteration: int
    checkpoint_id: int
    benchmarks: list[PlannedBenchmark]
    not_loaded: list[tuple[str, str]] = []  # (benchmark, why): skipped this time, tried again next iteration

    def shard_messages(self) -> list[EvalShard]:
        return [
            EvalShard(
                run_id=self.run_id,
                iteration=self.iteration,
                checkpoint_id=self.checkpoint_id,
                index=index,
                benchmark=b.name,
                input_key=key,
                protocol=b.protocol,
            )
            for b in self.benchmarks
            for index, key in zip(b.shard_indexes, b.shards)
        ]


def plan_key(run_id: int, iteration: int) -> str:
    return f"runs/{run_id}/eval/plans/iter{iteration}.json"


def manifest_key(run_id: int, name: str) -> str:
    return f"runs/{run_id}/eval/{name}/manifest.json"


def shard_file(run_id: int, name: str, index: int) -> str:
    return f"runs/{run_id}/eval/{name}/shards/{index:05d}.jsonl"


def load_plan(store: Store, run_id: int, iteration: int) -> StoredPlan:
    return StoredPlan.model_validate_json(store.get_bytes(plan_key(run_id, iteration)))


def plan(task: EvalPlan, ctx: Context) -> list[EvalShard]:
    """The evaluation's plan (made once), its Shard and set-aside rows; the shards not yet done."""
    key = plan_key(task.run_id, task.iteration)
    if ctx.store.exists(key):  # planned before (a redelivery or `resume`): re-send what is unfinished
        the_plan = load_plan(ctx.store, task.run_id, task.iteration)
    else:
        the_plan = make_plan(task, ctx)
        ctx.store.put_bytes(key, the_plan.model_dump_json().encode())
    messages = the_plan.shard_messages()
    with ctx.sessions.begin() as s:
        done = shards.plan_shards(s, STAGE, task.run_id, task.iteration, {m.index: m.input_key for m in messages})
        _set_aside_excluded(s, the_plan)
    log.info(
        "evaluator: run %s iter %s checkpoint %s: %s",
        task.run_id,
        task.iteration,
        task.checkpoint_id,
        ", ".join(
            f"{b.name} {b.items} items ({len(b.excluded)} excluded) in {len(b.shards)} shards"
            for b in the_plan.benchmarks
        )
        or "nothing to evaluate",
    )
    return [m for m in messages if m.index not in done]


def make_plan(task: EvalPlan, ctx: Context) -> StoredPlan:
    """The held-out set (if asked) and each benchmark, each loaded into its manifest; a benchmark
    file that cannot be loaded is left out with the reason (or raises, with `task.strict`)."""
    seed = ctx.settings.run.seed
    entries: list[tuple[str, ProtocolSpec, Manifest]] = []
    not_loaded: list[tuple[str, str]] = []
    if task.heldout:
        protocol = ProtocolSpec(benchmark=HELDOUT, seed=seed, max_new_tokens=ctx.settings.eval.max_new_tokens)
        entries.append((HELDOUT, protocol, heldout_manifest(ctx, task.run_id)))
    for spec in _specs(ctx, task):
        protocol = ProtocolSpec(
            benchmark=spec.name, k=spec.k, parser=spec.parser, max_new_tokens=spec.max_new_tokens, seed=seed
        )
        make_protocol(**protocol.model_dump())  # fail here, not in every shard, on a bad k / parser
        try:
            entries.append((spec.name, protocol, benchmark_manifest(ctx, task.run_id, spec)))
        except (FileNotFoundError, ValueError) as exc:
            if task.strict:
                raise
            # the loop goes on without it (and tries again next iteration); the reason is kept
            log.error("evaluator: run %s iter %s: %s not evaluated: %s", task.run_id, task.iteration, spec.name, exc)
            not_loaded.append((spec.name, f"benchmark not loaded: {type(exc).__name__}: {exc}"))
    benchmarks, index = [], 0
    for name, protocol, manifest in entries:
        indexes = list(range(index, index + len(manifest.shards)))
        index += len(manifest.shards)
        benchmarks.append(
            PlannedBenchmark(**manifest.model_dump(), name=name, protocol=protocol, shard_indexes=indexes)
        )
    return StoredPlan(
        run_id=task.run_id,
        iteration=task.iteration,
        checkpoint_id=task.checkpoint_id,
        benchmarks=benchmarks,
        not_loaded=not_loaded,
    )


def _specs(ctx: Context, task: EvalPlan) -> list[BenchmarkConfig]:
    specs = task.benchmarks if task.benchmarks is not None else ctx.settings.eval.benchmarks
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"each benchmark may be configured once, got {names}")
    for name in names:
        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r} (have: {', '.join(BENCHMARKS)})")
    return list(specs)


def _set_aside_excluded(s: Session, the_plan: StoredPlan) -> None:
    """A set-aside row ("<benchmark>:<record id>") per excluded record and per benchmark not loaded
    ("<benchmark>:*"), each once."""
    run_id, iteration = the_plan.run_id, the_plan.iteration
    aside = set(
        s.scalars(
            select(SetAside.record_id).where(
                SetAside.run_id == run_id, SetAside.iteration == iteration, SetAside.stage == STAGE
            )
        )
    )
    excluded = [(f"{b.name}:{record_id}", reason) for b in the_plan.benchmarks for record_id, reason in b.excluded]
    excluded += [(f"{name}:*", reason) for name, reason in the_plan.not_loaded]
    for record_id, reason in excluded:
        if record_id[:300] not in aside:
            aside.add(record_id[:300])
            shards.set_aside(s, (run_id, iteration), STAGE, record_id, reason)


# --- manifests -------------------------------------------------------------------------------------


def heldout_manifest(ctx: Context, run_id: int) -> Manifest:
    """The run's held-out pairs (loop.write_heldout) as eval items, the preferred response first."""
    key = manifest_key(run_id, HELDOUT)
    if ctx.store.exists(key):
        return Manifest.model_validate_json(ctx.store.get_bytes(key))
    source = loop.heldout_key(run_id)
    pairs = list(read_records(ctx.store, source, HeldoutRecord)) if ctx.store.exists(source) else []
    items = [
        EvalItem(
            item_id=p.item_id,
            category=p.category,
            source=p.error_type,
            query=p.instruction,
            responses=[p.preferred, p.rejected],
            better=0,
            image_key=p.image_key,
        )
        for p in pairs
    ]
    size, keys = ctx.settings.run.shard_size, []
    for i in range(0, len(items), size):
        keys.append(shard_file(run_id, HELDOUT, len(keys)))
        write_records(ctx.store, keys[-1], items[i : i + size])
    manifest = Manifest(items=len(items), total=len(items), excluded=[], shards=keys, uri=source)
    ctx.store.put_bytes(key, manifest.model_dump_json().encode())
    return manifest


def put_image(store: Store, data: bytes) -> str:
    """Content-addressed, in the file's own format (checked to decode by the loader)."""
    from PIL import Image

    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        ext = {"jpeg": "jpg"}.get((im.format or "img").lower(), (im.format or "img").lower())
    key = f"images/{digest[:2]}/{digest}.{ext}"
    if not store.exists(key):
        store.put_bytes(key, data)
    return key


def benchmark_manifest(ctx: Context, run_id: int, spec: BenchmarkConfig) -> Manifest:
    """The benchmark's items as shards in the store, built on first use and reused by every
    iteration of the run (the same items for every checkpoint). Streams the file: one shard of
    items in memory at a time."""
    key = manifest_key(run_id, spec.name)
    if ctx.store.exists(key):
        return Manifest.model_validate_json(ctx.store.get_bytes(key))
    start, size = time.perf_counter(), ctx.settings.run.shard_size
    keys: list[str] = []
    batch: list[EvalItem] = []
    excluded: list[tuple[str, str]] = []
    items = total = 0
    for rec in iter_benchmark(spec.name, spec.path, spec.images, ctx.settings.store, spec.limit):
        total += 1
        if not isinstance(rec, BenchItem):
            excluded.append((rec.record_id, rec.reason))
            ctx.metrics.items_rejected.labels(STAGE, rec.kind).inc()
            continue
        batch.append(_eval_item(ctx.store, rec))
        items += 1
        if len(batch) == size:
            keys.append(_write_shard(ctx.store, run_id, spec.name, len(keys), batch))
            batch = []
    if batch:
        keys.append(_write_shard(ctx.store, run_id, spec.name, len(keys), batch))
    manifest = Manifest(items=items, total=total, excluded=excluded, shards=keys, uri=spec.path)
    ctx.store.put_bytes(key, manifest.model_dump_json().encode())
    log.info(
        "evaluator: %s from %s: %s records, %s items, %s excluded (%.1fs)",
        spec.name,
        spec.path,
        total,
        items,
        len(excluded),
        time.perf_counter() - start,
    )
    for record_id, reason in excluded[:20]:
        log.warning("evaluator: %s record %s excluded: %s", spec.name, record_id, reason)
    return manifest


def _eval_item(store: Store, rec: BenchItem) -> EvalItem:
    return EvalItem(
        item_id=rec.item_id,
        category=rec.category,
        source=rec.source,
        query=rec.query,
        responses=list(rec.responses),
        better=rec.better,
        image_key=put_image(store, rec.image),
    )


def _write_shard(store: Store, run_id: int, name: str, index: int, items: list[EvalItem]) -> str:
    key = shard_file(run_id, name, index)
    write_records(store, key, items)
    return key
