"""Evaluator: a judge checkpoint in, its accuracy on the held-out pairs and the configured benchmarks out.

In:    EvalTask (iteration 0 = the base judge; iteration k = judge k) from the loop, or from
       `selfjudge eval` (EvalPlan: which benchmarks, no held-out set); then EvalShard, one per
       shard, sent by the evaluator to itself.
Does:  plan (once per message): each benchmark file is loaded once per run into self-contained
         shards in the store (images copied, bad records set aside with the reason); one Shard row
         and one EvalShard message per shard.
       shard: judges each item not yet in eval_results (so a restarted evaluation does not redo
         finished items) and writes its rows item by item:
           held-out: both orders, greedy, the selfjudge prompt (generator labels, never trained on);
           benchmarks: the official protocol (protocols.py) under the benchmark's name, plus one
           greedy judgment in each order under "<name>:both".
       finish (the last shard): scores every benchmark from the database rows (scoring.py), writes
         eval_summaries and the Prometheus gauges; with filter.selection_holdout > 0 it judges the
         run's fixed selection set with the checkpoint (shared/selection.py, benchmark "selection");
         then hands on to the loop; a report is written when the run is done.
Out:   `eval_results` rows per item, order and sample; `eval_summaries` rows per benchmark, category
       and metric (accuracy with bootstrap CIs, macro, both_orders, position_bias, item counts);
       `set_aside` rows (stage "evaluator", "<benchmark>:<record id>") for excluded records.
Next:  loop.on_evaluated -> the next iteration, or the end of the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from selfjudge.shared import loop, shards
from selfjudge.shared.context import Context
from selfjudge.shared.db import Checkpoint, EvalResult, EvalSummary, Iteration, Run, SetAside, Shard
from selfjudge.shared.failpoints import failpoint
from selfjudge.shared.messages import EvalTask, Message
from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
from selfjudge.shared.store import get_image, get_jsonl, put_jsonl

from . import scoring
from .benchmarks import BenchItem, iter_benchmark
from .protocols import BENCHMARKS, HELDOUT, Protocol, correct_letter, make_protocol

STAGE = "evaluator"
BENCHMARK = HELDOUT
log = logging.getLogger(__name__)


class EvalPlan(Message):
    """Evaluate one checkpoint. The loop sends EvalTask's three fields (the rest default)."""

    run_id: int
    iteration: int
    checkpoint_id: int
    heldout: bool = True
    benchmarks: list[dict] | None = None  # None: settings.eval.benchmarks
    strict: bool = False  # a benchmark file that cannot be loaded: raise (else: skip it, set aside why)


class EvalShard(Message):
    run_id: int
    iteration: int
    checkpoint_id: int
    index: int
    benchmark: str
    input_key: str
    protocol: dict  # make_protocol keyword arguments


def summarize(results: list[dict]) -> list[tuple[str, str, float, int]]:
    """(category, metric, value, n) from held-out results {item_id, category, order, verdict, correct}:
    accuracy (over judgments), both_orders, position_bias, each with a bootstrap CI."""
    return scoring.summarize_heldout(results)


def both_name(benchmark: str) -> str:
    return f"{benchmark}:both"


def handle(payload: dict, ctx: Context) -> None:
    if "index" in payload:
        run_shard(EvalShard.model_validate(payload), ctx)
    else:
        plan(EvalPlan.model_validate(payload), ctx)


# --- plan ---------------------------------------------------------------------------------------


def plan_key(run_id: int, iteration: int) -> str:
    return f"runs/{run_id}/eval/plans/iter{iteration}.json"


def _specs(ctx: Context, task: EvalPlan) -> list[dict]:
    specs = task.benchmarks if task.benchmarks is not None else [b.model_dump() for b in ctx.settings.eval.benchmarks]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"each benchmark may be configured once, got {names}")
    for s in specs:
        if s["name"] not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {s['name']!r} (have: {', '.join(BENCHMARKS)})")
    return specs


def _finished(ctx: Context, run_id: int, iteration: int) -> bool:
    with ctx.sessions() as s:
        return (
            s.scalar(
                select(EvalSummary.id).where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration).limit(1)
            )
            is not None
        )


def plan(task: EvalPlan, ctx: Context) -> None:
    if _finished(ctx, task.run_id, task.iteration):  # redelivered after the end
        loop.on_evaluated(ctx, EvalTask(run_id=task.run_id, iteration=task.iteration, checkpoint_id=task.checkpoint_id))
        return
    key = plan_key(task.run_id, task.iteration)
    if ctx.store.exists(key):  # planned before (a redelivery or `resume`): re-send what is unfinished
        the_plan = json.loads(ctx.store.get_bytes(key))
    else:
        entries, failed = [], []
        seed = ctx.settings.run.seed
        if task.heldout:
            entries.append(
                {
                    "name": HELDOUT,
                    "protocol": {
                        "benchmark": HELDOUT,
                        "seed": seed,
                        "max_new_tokens": ctx.settings.eval.max_new_tokens,
                    },
                    **_heldout_manifest(ctx, task.run_id),
                }
            )
        for spec in _specs(ctx, task):
            protocol = {
                "benchmark": spec["name"],
                "k": spec.get("k"),
                "parser": spec.get("parser") or "official",
                "max_new_tokens": spec.get("max_new_tokens"),
                "seed": seed,
            }
            make_protocol(**protocol)  # fail here, not in every shard, on a bad k / parser
            try:
                manifest = _benchmark_manifest(ctx, task.run_id, spec)
            except (FileNotFoundError, ValueError) as exc:
                if task.strict:
                    raise
                # the loop goes on without it (and tries again next iteration); the reason is kept
                log.error(
                    "evaluator: run %s iter %s: %s not evaluated: %s", task.run_id, task.iteration, spec["name"], exc
                )
                failed.append((spec["name"], f"benchmark not loaded: {type(exc).__name__}: {exc}"))
                continue
            entries.append({"name": spec["name"], "protocol": protocol, "spec": spec, **manifest})
        index = 0
        for entry in entries:
            entry["shard_indexes"] = list(range(index, index + len(entry["shards"])))
            index += len(entry["shards"])
        the_plan = {
            "run_id": task.run_id,
            "iteration": task.iteration,
            "checkpoint_id": task.checkpoint_id,
            "benchmarks": entries,
            "not_loaded": failed,
        }
        ctx.store.put_bytes(key, json.dumps(the_plan).encode())
    shards = [
        (entry, i, shard_key)
        for entry in the_plan["benchmarks"]
        for i, shard_key in zip(entry["shard_indexes"], entry["shards"])
    ]
    with ctx.sessions.begin() as s:
        rows = {
            r.index: r
            for r in s.scalars(
                select(Shard).where(
                    Shard.run_id == task.run_id, Shard.iteration == task.iteration, Shard.stage == STAGE
                )
            )
        }
        for entry, index, shard_key in shards:
            row = rows.get(index)
            if row is None:
                s.add(
                    Shard(
                        run_id=task.run_id,
                        iteration=task.iteration,
                        stage=STAGE,
                        index=index,
                        input_key=shard_key,
                        state="pending",
                        attempts=0,
                    )
                )
            elif row.input_key != shard_key:  # a row made for a failure report before the plan existed
                row.input_key = shard_key
        planned = {index for _, index, _ in shards}
        for index, row in list(rows.items()):
            if index not in planned:  # likewise, with no shard of that index in the plan
                s.delete(row)
                del rows[index]
        aside = {
            r
            for r in s.scalars(
                select(SetAside.record_id).where(
                    SetAside.run_id == task.run_id, SetAside.iteration == task.iteration, SetAside.stage == STAGE
                )
            )
        }
        excluded = [
            (f"{e['name']}:{record_id}", reason) for e in the_plan["benchmarks"] for record_id, reason in e["excluded"]
        ]
        for name, reason in the_plan.get("not_loaded", []):
            excluded.append((f"{name}:*", reason))
        for rid, reason in excluded:
            if rid[:300] not in aside:
                aside.add(rid[:300])
                s.add(
                    SetAside(
                        run_id=task.run_id,
                        iteration=task.iteration,
                        stage=STAGE,
                        record_id=rid[:300],
                        reason=reason[:300],
                    )
                )
        done = {r.index for r in rows.values() if r.state == "done"}
    todo = [(entry, index, shard_key) for entry, index, shard_key in shards if index not in done]
    for entry, index, shard_key in todo:
        ctx.bus.send(
            STAGE,
            EvalShard(
                run_id=task.run_id,
                iteration=task.iteration,
                checkpoint_id=task.checkpoint_id,
                index=index,
                benchmark=entry["name"],
                input_key=shard_key,
                protocol=entry["protocol"],
            ),
        )
    log.info(
        "evaluator: run %s iter %s checkpoint %s: %s",
        task.run_id,
        task.iteration,
        task.checkpoint_id,
        ", ".join(
            f"{e['name']} {e['items']} items ({len(e['excluded'])} excluded) in {len(e['shards'])} shards"
            for e in the_plan["benchmarks"]
        )
        or "nothing to evaluate",
    )
    if not todo:
        _maybe_finish(ctx, task.run_id, task.iteration, task.checkpoint_id)


def _manifest_key(run_id: int, name: str) -> str:
    return f"runs/{run_id}/eval/{name}/manifest.json"


def _shard_file(run_id: int, name: str, index: int) -> str:
    return f"runs/{run_id}/eval/{name}/shards/{index:05d}.jsonl"


def _heldout_manifest(ctx: Context, run_id: int) -> dict:
    key = _manifest_key(run_id, HELDOUT)
    if ctx.store.exists(key):
        return json.loads(ctx.store.get_bytes(key))
    size = ctx.settings.run.shard_size
    items = (
        [
            {
                "item_id": r["item_id"],
                "category": r["category"],
                "source": r.get("error_type") or "",
                "query": r["instruction"],
                "responses": [r["preferred"], r["rejected"]],
                "better": 0,
                "image_key": r["image_key"],
            }
            for r in get_jsonl(ctx.store, loop.heldout_key(run_id))
        ]
        if ctx.store.exists(loop.heldout_key(run_id))
        else []
    )
    shards = []
    for i in range(0, len(items), size):
        shards.append(_shard_file(run_id, HELDOUT, len(shards)))
        put_jsonl(ctx.store, shards[-1], items[i : i + size])
    manifest = {
        "items": len(items),
        "total": len(items),
        "excluded": [],
        "shards": shards,
        "uri": loop.heldout_key(run_id),
    }
    ctx.store.put_bytes(key, json.dumps(manifest).encode())
    return manifest


def _put_image(store, data: bytes) -> str:  # noqa: ANN001
    """Content-addressed, in the file's own format (checked to decode by the loader)."""
    from PIL import Image

    digest = hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as im:
        ext = {"jpeg": "jpg"}.get((im.format or "img").lower(), (im.format or "img").lower())
    key = f"images/{digest[:2]}/{digest}.{ext}"
    if not store.exists(key):
        store.put_bytes(key, data)
    return key


def _benchmark_manifest(ctx: Context, run_id: int, spec: dict) -> dict:
    """The benchmark's items as shards in the store, built on first use and reused by every
    iteration of the run (the same items for every checkpoint)."""
    name = spec["name"]
    key = _manifest_key(run_id, name)
    if ctx.store.exists(key):
        return json.loads(ctx.store.get_bytes(key))
    start, size = time.perf_counter(), ctx.settings.run.shard_size
    shards, batch, excluded, items, total = [], [], [], 0, 0

    def flush() -> None:
        shards.append(_shard_file(run_id, name, len(shards)))
        put_jsonl(ctx.store, shards[-1], batch)
        batch.clear()

    for rec in iter_benchmark(name, spec["path"], spec.get("images") or "", ctx.settings.store, spec.get("limit") or 0):
        total += 1
        if not isinstance(rec, BenchItem):
            excluded.append((rec.record_id, rec.reason))
            ctx.metrics.items_rejected.labels(STAGE, rec.kind).inc()
            continue
        batch.append(
            {
                "item_id": rec.item_id,
                "category": rec.category,
                "source": rec.source,
                "query": rec.query,
                "responses": list(rec.responses),
                "better": rec.better,
                "image_key": _put_image(ctx.store, rec.image),
            }
        )
        items += 1
        if len(batch) == size:
            flush()
    if batch:
        flush()
    manifest = {"items": items, "total": total, "excluded": excluded, "shards": shards, "uri": spec["path"]}
    ctx.store.put_bytes(key, json.dumps(manifest).encode())
    log.info(
        "evaluator: %s from %s: %s records, %s items, %s excluded (%.1fs)",
        name,
        spec["path"],
        total,
        items,
        len(excluded),
        time.perf_counter() - start,
    )
    for record_id, reason in excluded[:20]:
        log.warning("evaluator: %s record %s excluded: %s", name, record_id, reason)
    return manifest


# --- shards -------------------------------------------------------------------------------------


def judge_items(
    backend,
    protocol: Protocol,
    records: list[dict],
    images: dict,
    metrics=None,  # noqa: ANN001
    progress=None,
) -> dict[str, list[dict]]:
    """Every judgment of these items under the protocol: item_id -> rows {benchmark, item_id, category,
    order, sample, output, verdict, correct}. Official samples at the protocol's temperature; the
    both-orders pass (and a greedy official pass) share one greedy generation per (item, order)."""
    name = protocol.benchmark
    sampled, greedy, plan_rows = [], {}, []
    for rec in records:
        preferred, rejected = rec["responses"][rec["better"]], rec["responses"][1 - rec["better"]]

        def request(order: str, key: str) -> ChatRequest:
            text, system = protocol.prompt(rec["query"], preferred, rejected, order)
            return ChatRequest(text=text, images=[images[rec["image_key"]]], system=system, key=key)

        official_name = name if name != HELDOUT else None
        for sample, order in enumerate(protocol.official_orders(rec["item_id"], rec["better"])):
            if protocol.temperature > 0:
                sampled.append(request(order, f"{rec['item_id']}:{sample}"))
                plan_rows.append((rec, official_name, order, sample, ("sampled", len(sampled) - 1)))
            else:
                greedy.setdefault((rec["item_id"], order), request(order, f"{rec['item_id']}:{order}"))
                plan_rows.append((rec, official_name, order, sample, ("greedy", (rec["item_id"], order))))
        if protocol.both_orders:
            for order in ("AB", "BA"):
                greedy.setdefault((rec["item_id"], order), request(order, f"{rec['item_id']}:{order}"))
                plan_rows.append(
                    (
                        rec,
                        both_name(name) if name != HELDOUT else HELDOUT,
                        order,
                        0,
                        ("greedy", (rec["item_id"], order)),
                    )
                )
    max_new = protocol.max_new_tokens or 128
    start = time.perf_counter()
    out_sampled = (
        backend.generate(
            sampled,
            SamplingParams(
                n=1, temperature=protocol.temperature, top_p=protocol.top_p, max_new_tokens=max_new, seed=protocol.seed
            ),
            progress=progress,
        )
        if sampled
        else []
    )
    greedy_keys = list(greedy)
    out_greedy = (
        backend.generate(
            [greedy[k] for k in greedy_keys],
            SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new),
            progress=progress,
        )
        if greedy_keys
        else []
    )
    gens = {("sampled", i): g for i, g in enumerate(out_sampled)}
    gens.update({("greedy", k): g for k, g in zip(greedy_keys, out_greedy)})
    if metrics is not None:
        metrics.generation_seconds.labels(STAGE).inc(time.perf_counter() - start)
        metrics.generated_tokens.labels(STAGE).inc(sum(sum(g.token_counts) for g in gens.values()))
        metrics.samples.labels(STAGE).inc(len(gens))
    results: dict[str, list[dict]] = {rec["item_id"]: [] for rec in records}
    for rec, bench, order, sample, gen_key in plan_rows:
        text = gens[gen_key].texts[0]
        parsed = protocol.parse(text)
        if parsed.choice is None and metrics is not None:
            metrics.parse_failures.labels(STAGE, parsed.reason).inc()
        results[rec["item_id"]].append(
            {
                "benchmark": bench,
                "item_id": rec["item_id"],
                "category": rec["category"],
                "order": order,
                "sample": sample,
                "output": text,
                "verdict": parsed.choice,
                "correct": parsed.choice == correct_letter(order),
            }
        )
    return results


def run_shard(task: EvalShard, ctx: Context) -> None:
    start, m = time.perf_counter(), ctx.metrics
    with ctx.sessions.begin() as s:
        row = shards.shard_row(s, STAGE, task)
        if row.state == "done":
            done = True
        else:
            done, row.attempts = False, (row.attempts or 0) + 1
    if done:
        _maybe_finish(ctx, task.run_id, task.iteration, task.checkpoint_id)
        return
    protocol = make_protocol(**task.protocol)
    records = list(get_jsonl(ctx.store, task.input_key))
    names = [task.benchmark, both_name(task.benchmark)]
    with ctx.sessions() as s:
        finished = set(
            s.scalars(
                select(EvalResult.item_id)
                .distinct()
                .where(
                    EvalResult.run_id == task.run_id,
                    EvalResult.iteration == task.iteration,
                    EvalResult.benchmark.in_(names),
                    EvalResult.item_id.in_([r["item_id"] for r in records]),
                )
            )
        )
    todo = [r for r in records if r["item_id"] not in finished]
    m.items_in.labels(STAGE).inc(len(records))
    if todo:
        backend = ctx.models.backend(task.checkpoint_id)
        chunk = max(1, ctx.settings.model.batch_size)
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            images = {r["image_key"]: get_image(ctx.store, r["image_key"]) for r in part}
            results = judge_items(backend, protocol, part, images, metrics=m)
            _write_items(ctx, task, results)
    failpoint("evaluator.before_commit")  # fault tests: die after the items, before the shard is recorded
    with ctx.sessions.begin() as s:
        row = shards.shard_row(s, STAGE, task)
        row.state, row.items_in, row.items_out, row.error = "done", len(records), len(todo), None
        row.seconds, row.output_key = time.perf_counter() - start, None
    m.items_out.labels(STAGE).inc(len(todo))
    m.shards.labels(STAGE, "done").inc()
    m.shard_seconds.labels(STAGE).observe(time.perf_counter() - start)
    log.info(
        "evaluator: run %s iter %s %s shard %s: %s items judged, %s already done (%.1fs)",
        task.run_id,
        task.iteration,
        task.benchmark,
        task.index,
        len(todo),
        len(records) - len(todo),
        time.perf_counter() - start,
    )
    _maybe_finish(ctx, task.run_id, task.iteration, task.checkpoint_id)


def _write_items(ctx: Context, task: EvalShard, results: dict[str, list[dict]]) -> None:
    """One transaction per item: an item is in the database with all its rows or not at all."""
    for item_id, rows in results.items():
        try:
            with ctx.sessions.begin() as s:
                for r in rows:
                    s.add(
                        EvalResult(
                            run_id=task.run_id,
                            iteration=task.iteration,
                            checkpoint_id=task.checkpoint_id,
                            benchmark=r["benchmark"],
                            item_id=item_id[:200],
                            category=r["category"][:80],
                            order=r["order"],
                            sample=r["sample"],
                            output=r["output"],
                            verdict=r["verdict"],
                            correct=r["correct"],
                        )
                    )
        except IntegrityError:  # the same item written by a redelivered copy of this shard
            log.info("evaluator: item %s of run %s iter %s already recorded", item_id, task.run_id, task.iteration)


# --- finish -------------------------------------------------------------------------------------


def result_rows(s, run_id: int, iteration: int, benchmark: str) -> list[dict]:  # noqa: ANN001
    """The scoring columns only (not the outputs) of one benchmark's rows."""
    cols = (
        EvalResult.item_id,
        EvalResult.category,
        EvalResult.order,
        EvalResult.sample,
        EvalResult.verdict,
        EvalResult.correct,
    )
    return [
        dict(zip(("item_id", "category", "order", "sample", "verdict", "correct"), r))
        for r in s.execute(
            select(*cols)
            .where(EvalResult.run_id == run_id, EvalResult.iteration == iteration, EvalResult.benchmark == benchmark)
            .order_by(EvalResult.id)
        )
    ]


def _maybe_finish(ctx: Context, run_id: int, iteration: int, checkpoint_id: int) -> None:
    """The barrier: once every evaluator shard of the iteration is done, score and hand on (once)."""
    summaries: dict[str, list[tuple]] = {}
    with ctx.sessions.begin() as s:
        s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == iteration).with_for_update())
        pending = s.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.run_id == run_id, Shard.iteration == iteration, Shard.stage == STAGE, Shard.state != "done")
        )
        if (
            pending
            or s.scalar(
                select(EvalSummary.id).where(EvalSummary.run_id == run_id, EvalSummary.iteration == iteration).limit(1)
            )
            is not None
        ):
            return
        the_plan = json.loads(ctx.store.get_bytes(plan_key(run_id, iteration)))
        for entry in the_plan["benchmarks"]:
            name, total, n_excluded = entry["name"], entry["total"], len(entry["excluded"])
            if name == HELDOUT:
                rows = scoring.summarize_heldout(result_rows(s, run_id, iteration, HELDOUT))
                rows.append(("overall", "items_total", float(total), total))
            else:
                k = make_protocol(**entry["protocol"]).k
                rows = scoring.summarize_benchmark(
                    name,
                    result_rows(s, run_id, iteration, name),
                    result_rows(s, run_id, iteration, both_name(name)),
                    k,
                    total,
                    n_excluded,
                )
            summaries[name] = rows
            for category, metric, value, n in rows:
                s.add(
                    EvalSummary(
                        run_id=run_id,
                        iteration=iteration,
                        checkpoint_id=checkpoint_id,
                        benchmark=name,
                        category=category[:80],
                        metric=metric,
                        value=value,
                        n=n,
                    )
                )
    for name, rows in summaries.items():
        values = {(c, metric): (v, n) for c, metric, v, n in rows}
        for (category, metric), (value, _) in values.items():
            if metric == "accuracy":
                ctx.metrics.eval_accuracy.labels(str(run_id), str(iteration), name, category).set(value)
        get = lambda c, metric: values.get((c, metric), (float("nan"), 0))  # noqa: E731
        if name == HELDOUT:
            log.info(
                "evaluator: run %s iter %s checkpoint %s: accuracy %.3f, both orders %.3f, position bias %.3f",
                run_id,
                iteration,
                checkpoint_id,
                get("overall", "accuracy")[0],
                get("overall", "both_orders")[0],
                get("overall", "position_bias")[0],
            )
        else:
            log.info(
                "evaluator: run %s iter %s checkpoint %s: %s overall %.3f (n=%s), macro %.3f, both orders %.3f, "
                "position bias %.3f; %s of %s records excluded",
                run_id,
                iteration,
                checkpoint_id,
                name,
                get("overall", "accuracy")[0],
                get("overall", "accuracy")[1],
                get("macro", "accuracy")[0],
                get("overall", "both_orders")[0],
                get("overall", "position_bias")[0],
                int(get("overall", "items_excluded")[0]),
                int(get("overall", "items_total")[0]),
            )
    if iteration >= 1 and ctx.settings.filter.selection_holdout > 0:  # the label-free selection set
        from selfjudge.shared.selection import judge_selection

        try:  # after the summaries are written: a failure here must not stop the hand-off below
            judge_selection(ctx, run_id, iteration, checkpoint_id)
        except Exception:
            log.exception(
                "evaluator: run %s iter %s: the selection set could not be judged; `selfjudge select` "
                "will choose among the other checkpoints",
                run_id,
                iteration,
            )
    loop.on_evaluated(ctx, EvalTask(run_id=run_id, iteration=iteration, checkpoint_id=checkpoint_id))
    _report_if_done(ctx, run_id)


def _report_if_done(ctx: Context, run_id: int) -> None:
    with ctx.sessions() as s:
        run = s.get(Run, run_id)
        if run is None or run.status != "done":
            return
    try:
        from .report import publish_report

        key = publish_report(ctx.sessions, run_id, ctx.store)
        log.info("evaluator: run %s report in the store at %s", run_id, key)
    except Exception:  # a report is a convenience: never fail the evaluation for it
        log.exception("evaluator: run %s: the report could not be written", run_id)


# --- outside the loop: `selfjudge eval` ----------------------------------------------------------


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
    settings,
    benchmark: str,
    data: str,
    model: str,
    k: int | None = None,
    images: str = "",
    parser: str = "official",
    limit: int = 0,
    max_new_tokens: int | None = None,
    metrics=None,
    resume: bool = True,
) -> dict:
    """One evaluation of `model` on one benchmark file, through this service, with an in-process
    queue. Results go to the configured database (a run named "eval:<benchmark>" with iteration 0)
    and store. An unfinished evaluation of the same model on the same file is resumed."""
    from selfjudge.shared.context import make_context
    from selfjudge.shared.db import make_sessionmaker, migrate
    from selfjudge.shared.metrics import Metrics
    from selfjudge.shared.queue import LocalBus
    from selfjudge.shared.store import open_store

    from .report import benchmark_result

    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r} (have: {', '.join(BENCHMARKS)})")
    make_protocol(benchmark, k, parser, max_new_tokens)  # bad k / parser: fail before any work
    migrate(settings.database_url())
    sessions = make_sessionmaker(settings.database_url())
    store = open_store(settings.store, settings.run.work_dir)
    bus = LocalBus()
    ctx = make_context(settings, STAGE, bus, metrics=metrics or Metrics(), sessions=sessions, store=store)
    uri, digest = checkpoint_identity(model)
    spec = {
        "name": benchmark,
        "path": data,
        "k": k,
        "images": images,
        "parser": parser,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
    }
    wanted = {**spec, "checkpoint": digest, "seed": settings.run.seed, "shard_size": settings.run.shard_size}
    run_id = ckpt_id = None
    with sessions() as s:
        if resume:
            for run in s.scalars(
                select(Run).where(Run.name == f"eval:{benchmark}", Run.status == "running").order_by(Run.id.desc())
            ):
                if (run.config or {}).get("evaluation") == wanted:
                    run_id = run.id
                    ckpt_id = s.scalar(
                        select(Iteration.output_checkpoint_id).where(Iteration.run_id == run.id, Iteration.number == 0)
                    )
                    break
    if run_id is None:
        with sessions.begin() as s:
            run = Run(name=f"eval:{benchmark}", config={**settings.redacted(), "evaluation": wanted}, iterations=0)
            s.add(run)
            s.flush()
            ckpt = Checkpoint(run_id=run.id, iteration=0, uri=uri, content_hash=digest, meta={"model": model})
            s.add(ckpt)
            s.flush()
            s.add(Iteration(run_id=run.id, number=0, judge_checkpoint_id=ckpt.id, output_checkpoint_id=ckpt.id))
            run_id, ckpt_id = run.id, ckpt.id
    else:
        log.info("evaluator: resuming evaluation run %s", run_id)
    bus.send(
        STAGE,
        EvalPlan(run_id=run_id, iteration=0, checkpoint_id=ckpt_id, heldout=False, benchmarks=[spec], strict=True),
    )
    bus.drain({STAGE: lambda payload: handle(payload, ctx)})
    with sessions() as s:
        result = benchmark_result(s, run_id, 0, benchmark)
    return {
        **result,
        "model": model,
        "data": data,
        "protocol": {**spec, **_protocol_info(make_protocol(benchmark, k, parser, max_new_tokens))},
    }


def _protocol_info(p: Protocol) -> dict:
    return {"k": p.k, "temperature": p.temperature, "top_p": p.top_p, "parser": p.parser, "both_orders": p.both_orders}
