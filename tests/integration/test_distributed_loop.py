"""Two iterations through five separate worker processes over real RabbitMQ, Postgres and S3."""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select

from selfjudge.shared.db import (
    Checkpoint,
    EvalResult,
    EvalSummary,
    Image,
    Iteration,
    Judgment,
    Pair,
    Prompt,
    Run,
    Shard,
    TrainingExample,
)

from ..conftest import TINY_LOOP

PROMPTS, SHARD = TINY_LOOP["run"]["prompts_per_iteration"], TINY_LOOP["run"]["shard_size"]  # every cluster run's


def test_run_completes_and_counts_add_up(distributed_run):
    sessions = distributed_run["sessions"]
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == "it-distributed"))
        assert run.status == "done"
        iterations = {it.number: it for it in s.scalars(select(Iteration).where(Iteration.run_id == run.id))}
        assert sorted(iterations) == [0, 1, 2]
        for k in (1, 2):

            def count(model, *w, k=k):
                return s.scalar(
                    select(func.count()).select_from(model).where(model.run_id == run.id, model.iteration == k, *w)
                )

            prompts, pairs = count(Prompt), count(Pair)
            judged, examples = count(Judgment), count(TrainingExample)
            kept_pairs = s.scalar(
                select(func.count(func.distinct(TrainingExample.pair_id))).where(
                    TrainingExample.run_id == run.id, TrainingExample.iteration == k
                )
            )
            assert prompts == PROMPTS
            assert 0 < pairs <= prompts
            assert judged == 2 * pairs  # both orders, one sample each
            assert examples == 2 * kept_pairs  # every kept pair gives its two traces
            assert kept_pairs <= pairs and examples <= judged
            correct_both = s.scalar(
                select(func.count()).select_from(
                    select(Judgment.pair_id)
                    .where(Judgment.run_id == run.id, Judgment.iteration == k)
                    .group_by(Judgment.pair_id)
                    .having(func.bool_and(Judgment.correct))
                    .subquery()
                )
            )
            assert kept_pairs == correct_both  # the filter kept exactly the pairs right in both orders
            shards = s.execute(
                select(Shard.stage, Shard.state, func.count())
                .where(
                    Shard.run_id == run.id, Shard.iteration == k, Shard.stage.in_(("synthesizer", "reasoner", "filter"))
                )
                .group_by(Shard.stage, Shard.state)
            ).all()
            assert (
                s.scalar(select(func.count()).select_from(Shard).where(Shard.run_id == run.id, Shard.state != "done"))
                == 0
            )
            assert sorted(shards) == sorted(
                (st, "done", PROMPTS // SHARD) for st in ("synthesizer", "reasoner", "filter")
            )
        for k in (0, 1, 2):
            n_eval = s.scalar(
                select(func.count())
                .select_from(EvalResult)
                .where(EvalResult.run_id == run.id, EvalResult.iteration == k)
            )
            assert n_eval == 2 * 8
            acc = s.scalar(
                select(EvalSummary.value).where(
                    EvalSummary.run_id == run.id,
                    EvalSummary.iteration == k,
                    EvalSummary.category == "overall",
                    EvalSummary.metric == "accuracy",
                )
            )
            assert 0.0 <= acc <= 1.0


def test_store_holds_every_artifact(distributed_run):
    sessions, store = distributed_run["sessions"], distributed_run["store"]
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == "it-distributed"))
        for shard in s.scalars(
            select(Shard).where(Shard.run_id == run.id, Shard.stage.in_(("synthesizer", "reasoner", "filter")))
        ):
            assert store.exists(shard.input_key) and store.exists(shard.output_key)
        for image in s.scalars(select(Image)):
            assert store.exists(image.key)
        for ckpt in s.scalars(select(Checkpoint).where(Checkpoint.run_id == run.id)):
            prefix = ckpt.uri.removeprefix("store:")
            files = store.list(prefix + "/")
            assert any(f.endswith(".safetensors") for f in files) and any(f.endswith("config.json") for f in files)


def test_lineage_of_a_training_example(distributed_run):
    sessions = distributed_run["sessions"]
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == "it-distributed"))
        ex = s.scalar(select(TrainingExample).where(TrainingExample.run_id == run.id).limit(1))
        assert ex is not None, "no example was kept: the test settings should keep some"
        judgment = s.get(Judgment, ex.judgment_id)
        pair = s.get(Pair, judgment.pair_id)
        prompt = s.get(Prompt, pair.prompt_id)
        image = s.get(Image, prompt.image_id)
        assert judgment.correct and ex.label == judgment.verdict
        assert s.get(Checkpoint, pair.checkpoint_id).iteration == 0  # the base model wrote the texts
        assert s.get(Checkpoint, judgment.checkpoint_id) is not None
        assert image.key.endswith(prompt.image_id + ".png")


def test_iteration_two_judge_is_iteration_one_checkpoint(distributed_run):
    """By identity: the weights the reasoner used in iteration 2 are the ones the trainer made in iteration 1."""
    sessions, root = distributed_run["sessions"], distributed_run["root"]
    with sessions() as s:
        run = s.scalar(select(Run).where(Run.name == "it-distributed"))
        it1 = s.scalar(select(Iteration).where(Iteration.run_id == run.id, Iteration.number == 1))
        it2 = s.scalar(select(Iteration).where(Iteration.run_id == run.id, Iteration.number == 2))
        ckpt1 = s.get(Checkpoint, it1.output_checkpoint_id)
        base = s.scalar(select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.iteration == 0))
        assert it2.judge_checkpoint_id == ckpt1.id and ckpt1.parent_id == base.id
        assert ckpt1.content_hash != base.content_hash  # training changed the weights
        used = {
            j.checkpoint_id
            for j in s.scalars(select(Judgment).where(Judgment.run_id == run.id, Judgment.iteration == 2))
        }
        assert used == {ckpt1.id}
    # the reasoner's own download of that checkpoint hashes to the trainer's upload
    folder = root / "reasoner" / "checkpoints" / ckpt1.content_hash
    assert (folder / ".complete").exists()
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".complete"):
        data = path.read_bytes()
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    assert digest.hexdigest() == ckpt1.content_hash
    log = (root / "reasoner.log").read_text()
    assert f"({ckpt1.content_hash[:12]})" in log and f"({base.content_hash[:12]})" in log  # swapped, no restart
