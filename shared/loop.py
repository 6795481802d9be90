"""The self-improvement loop, in one place: what triggers each stage and what it waits for.

    start_run ──► evaluate(iteration 0 = base judge)            (in parallel)
              └─► start_iteration(1, judge = base)
    start_iteration(k) ─► synthesizer × shards
    synthesizer shard done ─► reasoner (same shard)
    reasoner shard done ─► filter (same shard)
    filter shard done ─► BARRIER: all filter shards of k done? ─► trainer(k)
    trainer done (checkpoint k) ─► evaluator(k)
    evaluator(k) done ─► start_iteration(k+1, judge = checkpoint k)   or the run is done

Stages call the `on_*` functions below after they have recorded their work; the
functions only read the database and publish the next messages on the bus.
"""

from __future__ import annotations

import io
import logging
import random

from sqlalchemy import func, select

from .context import Context
from .db import Checkpoint, Image, Iteration, Prompt, Run, Shard, utcnow
from .messages import EvalTask, ShardTask, TrainTask
from .records import HeldoutRecord, PromptRecord, write_records
from .shards import set_aside, shard_key
from .store import put_dir, put_image

log = logging.getLogger(__name__)


# --- run and iteration start -------------------------------------------------------------


def register_checkpoint(
    ctx: Context, run_id: int | None, iteration: int, model: str, parent_id: int | None = None, meta: dict | None = None
) -> int:
    """A local HF folder is uploaded to the store; a hub id is recorded as `hf:<id>`."""
    from pathlib import Path

    if Path(model).is_dir():
        prefix = f"runs/{run_id}/checkpoints/iter{iteration}"
        digest = put_dir(ctx.store, prefix, model)
        uri = f"store:{prefix}"
    else:
        import hashlib

        digest, uri = hashlib.sha256(model.encode()).hexdigest(), f"hf:{model}"
    with ctx.sessions.begin() as s:
        ckpt = Checkpoint(
            run_id=run_id, iteration=iteration, uri=uri, content_hash=digest, parent_id=parent_id, meta=meta or {}
        )
        s.add(ckpt)
        s.flush()
        return ckpt.id


def start_run(ctx: Context, base_model: str) -> int:
    settings = ctx.settings
    with ctx.sessions.begin() as s:
        run = Run(name=settings.run.name, config=settings.redacted(), iterations=settings.run.iterations)
        s.add(run)
        s.flush()
        run_id = run.id
    base_id = register_checkpoint(ctx, run_id, 0, base_model, meta={"base": base_model})
    write_heldout(ctx, run_id)
    with ctx.sessions.begin() as s:
        s.add(Iteration(run_id=run_id, number=0, judge_checkpoint_id=base_id, output_checkpoint_id=base_id))
    ctx.bus.send("evaluator", EvalTask(run_id=run_id, iteration=0, checkpoint_id=base_id))
    start_iteration(ctx, run_id, 1, base_id)
    return run_id


def heldout_key(run_id: int) -> str:
    return f"runs/{run_id}/heldout/pairs.jsonl"


def write_heldout(ctx: Context, run_id: int) -> None:
    """Generator-labelled pairs for evaluation only: a scene split never used for training."""
    from .sources.scenes.source import heldout_pairs

    cfg = ctx.settings
    records = []
    for pair in heldout_pairs(
        cfg.run.seed,
        cfg.run.heldout_pairs,
        image_size=cfg.source.image_size,
        max_objects=cfg.source.max_objects,
        object_scale=cfg.source.object_scale,
        layout=cfg.source.layout,
    ):
        _, image_key = put_image(ctx.store, _png(pair.image))
        records.append(
            HeldoutRecord(
                item_id=pair.pair_id,
                image_key=image_key,
                instruction=pair.instruction,
                preferred=pair.preferred,
                rejected=pair.rejected,
                category=pair.question_type,
                error_type=pair.error_type,
            )
        )
    write_records(ctx.store, heldout_key(run_id), records)


def _png(image) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_source(ctx: Context):  # noqa: ANN201 - a ScenesSource or a stream.RecordSource
    from pathlib import Path

    from .sources import files
    from .sources.scenes.source import ScenesSource
    from .sources.stream import Files

    src = ctx.settings.source
    if src.kind == "scenes":
        return ScenesSource(
            ctx.settings.run.seed,
            image_size=src.image_size,
            max_objects=src.max_objects,
            object_scale=src.object_scale,
            layout=src.layout,
        )
    fs = Files(ctx.settings.store)
    cache = Path(src.cache_dir or Path(ctx.settings.run.work_dir) / "cache" / "sources")
    if src.kind == "jsonl":
        return files.JsonlSource(src.path, files=fs, cache_dir=cache)
    if src.kind in ("llava_onevision", "hf_datasets"):
        from .sources.llava_onevision import LlavaOneVisionSource
        from .sources.tables import TableSource

        cls = LlavaOneVisionSource if src.kind == "llava_onevision" else TableSource
        return cls(src.path, subsets=src.llava_subsets, files=fs, cache_dir=cache)
    instructions = files.read_instructions(fs, src.instructions) if src.instructions else None
    return files.FolderSource(src.path, instructions=instructions, files=fs, cache_dir=cache)


def _draw_prompts(ctx: Context, n: int, iteration: int) -> tuple[list, list[tuple[str, str]]]:
    """Iteration `iteration`'s prompts. Scenes are generated by index; every other source draws
    by a seeded permutation of its records (stream.draw) and reads only what it draws."""
    from .sources.stream import draw

    source = make_source(ctx)
    if ctx.settings.source.kind == "scenes":
        items = list(source.items(n, split="train", offset=(iteration - 1) * n))
    else:
        items = list(draw(source, n, ctx.settings.run.seed, iteration))
    return items, list(getattr(source, "rejected", []))


def start_iteration(ctx: Context, run_id: int, k: int, judge_id: int) -> None:
    """Draw this iteration's prompts, store images and prompt shards, and queue the synthesizer."""
    cfg = ctx.settings.run
    with ctx.sessions() as s:
        if s.scalar(select(Iteration.id).where(Iteration.run_id == run_id, Iteration.number == k)) is not None:
            return  # already started (a resumed run): the shards are queued already
    items, rejected = _draw_prompts(ctx, cfg.prompts_per_iteration, k)
    shards: list[list[PromptRecord]] = []
    with ctx.sessions.begin() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == k))
        if it is not None:  # already started (a resumed run): the shards are queued already
            return
        for record_id, reason in rejected:
            set_aside(s, (run_id, k), "source", record_id, reason)
        for i, item in enumerate(items):
            png = _png(item.image)
            digest, image_key = put_image(ctx.store, png)
            if s.get(Image, digest) is None:
                s.add(Image(id=digest, key=image_key, width=item.image.width, height=item.image.height))
                s.flush()
            index = i // cfg.shard_size
            prompt = Prompt(
                run_id=run_id,
                iteration=k,
                shard_index=index,
                source_id=item.prompt_id,
                source=item.source,
                image_id=digest,
                instruction=item.instruction,
                kind=item.kind,
                question_type=item.question_type,
                gold=item.gold,
            )
            s.add(prompt)
            s.flush()
            if index == len(shards):
                shards.append([])
            shards[index].append(
                PromptRecord(
                    prompt_id=prompt.id,
                    source_id=item.prompt_id,
                    image_key=image_key,
                    instruction=item.instruction,
                    kind=item.kind,
                    question_type=item.question_type,
                    options=item.options,
                )
            )
        for index, records in enumerate(shards):
            key = shard_key(run_id, k, "prompts", index)
            write_records(ctx.store, key, records)
            s.add(Shard(run_id=run_id, iteration=k, stage="synthesizer", index=index, input_key=key))
        s.add(Iteration(run_id=run_id, number=k, judge_checkpoint_id=judge_id, n_shards=len(shards)))
    ctx.metrics.iteration.labels(str(run_id)).set(k)
    log.info("run %s iteration %s: %s prompts in %s shards", run_id, k, len(items), len(shards))
    for index in range(len(shards)):
        ctx.bus.send(
            "synthesizer",
            ShardTask(
                run_id=run_id,
                iteration=k,
                index=index,
                input_key=shard_key(run_id, k, "prompts", index),
                judge_checkpoint_id=judge_id,
            ),
        )
    if not shards:  # nothing to do this iteration: go straight to the barrier
        _maybe_train(ctx, run_id, k, judge_id)


# --- hand-offs between stages ------------------------------------------------------------


def on_synthesized(ctx: Context, task: ShardTask, pairs_key: str) -> None:
    ctx.bus.send("reasoner", task.model_copy(update={"input_key": pairs_key}))


def on_reasoned(ctx: Context, task: ShardTask, judgments_key: str) -> None:
    ctx.bus.send("filter", task.model_copy(update={"input_key": judgments_key}))


def on_filtered(ctx: Context, task: ShardTask) -> None:
    _maybe_train(ctx, task.run_id, task.iteration, task.judge_checkpoint_id)


def _maybe_train(ctx: Context, run_id: int, k: int, judge_id: int) -> None:
    """The barrier: training starts once, when every filter shard of iteration k is done."""
    with ctx.sessions.begin() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == run_id, Iteration.number == k).with_for_update())
        done = s.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.run_id == run_id, Shard.iteration == k, Shard.stage == "filter", Shard.state == "done")
        )
        if it.train_enqueued or done < it.n_shards:
            return
        it.train_enqueued = True
    log.info("run %s iteration %s: all %s shards filtered, training", run_id, k, done)
    ctx.bus.send("trainer", TrainTask(run_id=run_id, iteration=k, judge_checkpoint_id=judge_id))


def on_trained(ctx: Context, task: TrainTask, checkpoint_id: int) -> None:
    with ctx.sessions.begin() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == task.run_id, Iteration.number == task.iteration))
        it.output_checkpoint_id, it.status = checkpoint_id, "trained"
    ctx.bus.send("evaluator", EvalTask(run_id=task.run_id, iteration=task.iteration, checkpoint_id=checkpoint_id))


def on_evaluated(ctx: Context, task: EvalTask) -> None:
    """Iteration k is finished; hand its checkpoint to iteration k+1, or finish the run."""
    with ctx.sessions.begin() as s:
        run = s.scalar(select(Run).where(Run.id == task.run_id).with_for_update())
        it = s.scalar(select(Iteration).where(Iteration.run_id == task.run_id, Iteration.number == task.iteration))
        it.status, it.finished_at = "done", utcnow()
        s.flush()
        finished = s.scalar(
            select(func.count())
            .select_from(Iteration)
            .where(Iteration.run_id == task.run_id, Iteration.status == "done")
        )
        if finished == run.iterations + 1:
            run.status, run.finished_at = "done", utcnow()
        last = run.iterations
    if 1 <= task.iteration < last:
        start_iteration(ctx, task.run_id, task.iteration + 1, task.checkpoint_id)
    elif finished == last + 1:
        log.info("run %s: done", task.run_id)


def rng_for(run_seed: int, *parts: object) -> random.Random:
    """A deterministic RNG per (run seed, stage, iteration, shard...) so redelivery repeats itself."""
    return random.Random(f"{run_seed}:" + ":".join(map(str, parts)))


# --- recovery ----------------------------------------------------------------------------


def resume(ctx: Context, run_id: int) -> int:
    """Re-publish whatever the database says is unfinished; returns how many messages were sent.

    Safe at any time: every stage skips a shard already recorded `done`, so a message that
    was still queued and is now sent again costs a lookup, not a second result.
    """
    with ctx.sessions() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise LookupError(f"no run {run_id}")
        if run.status == "done":
            return 0
        iterations = list(s.scalars(select(Iteration).where(Iteration.run_id == run_id).order_by(Iteration.number)))
        rows = {(sh.iteration, sh.stage, sh.index): sh for sh in s.scalars(select(Shard).where(Shard.run_id == run_id))}
        last = run.iterations
    sent = 0
    for it in iterations:
        k = it.number
        if it.status == "done":
            continue
        if k == 0 or it.output_checkpoint_id is not None:
            ctx.bus.send("evaluator", EvalTask(run_id=run_id, iteration=k, checkpoint_id=it.output_checkpoint_id))
            sent += 1
            continue
        if it.train_enqueued:
            ctx.bus.send("trainer", TrainTask(run_id=run_id, iteration=k, judge_checkpoint_id=it.judge_checkpoint_id))
            sent += 1
            continue
        for index in range(it.n_shards):
            done = {stage: rows.get((k, stage, index)) for stage in ("synthesizer", "reasoner", "filter")}
            task = ShardTask(
                run_id=run_id,
                iteration=k,
                index=index,
                input_key=shard_key(run_id, k, "prompts", index),
                judge_checkpoint_id=it.judge_checkpoint_id,
            )
            if done["filter"] is not None and done["filter"].state == "done":
                continue
            if done["reasoner"] is not None and done["reasoner"].state == "done":
                ctx.bus.send("filter", task.model_copy(update={"input_key": done["reasoner"].output_key}))
            elif done["synthesizer"] is not None and done["synthesizer"].state == "done":
                ctx.bus.send("reasoner", task.model_copy(update={"input_key": done["synthesizer"].output_key}))
            else:
                ctx.bus.send("synthesizer", task)
            sent += 1
        _maybe_train(ctx, run_id, k, it.judge_checkpoint_id)
    # the last finished iteration may not have started its successor before the stop
    finished = [it for it in iterations if it.status == "done" and it.number >= 1]
    if finished and finished[-1].number == iterations[-1].number and finished[-1].number < last:
        start_iteration(ctx, run_id, finished[-1].number + 1, finished[-1].output_checkpoint_id)
        sent += 1
    return sent
