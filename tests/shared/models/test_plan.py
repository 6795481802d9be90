"""The optimizer-step plan: random steps of the global batch, cut into length-sorted micro-batches."""

from __future__ import annotations

import random

from selfjudge.shared.models.sft.config import TrainConfig
from selfjudge.shared.models.sft.loop import micro_budget, split_step, step_plan

LENGTHS = [random.Random(i).choice([50, 60, 70, 140, 290]) for i in range(37)]


def test_every_example_once_per_epoch_in_steps_of_the_global_batch() -> None:
    cfg = TrainConfig(batch_size=4, grad_accum=2, epochs=3, seed=1)
    plan = step_plan(LENGTHS, cfg)
    per_epoch = -(-len(LENGTHS) // 8)
    assert len(plan) == 3 * per_epoch
    for e in range(3):
        steps = plan[e * per_epoch : (e + 1) * per_epoch]
        seen = [i for s in steps for mb in s for i in mb]
        assert sorted(seen) == list(range(len(LENGTHS)))
        assert [sum(len(mb) for mb in s) for s in steps] == [8] * (per_epoch - 1) + [len(LENGTHS) - 8 * (per_epoch - 1)]
    assert plan != step_plan(LENGTHS, TrainConfig(batch_size=4, grad_accum=2, epochs=3, seed=2))  # seeded shuffle


def test_n_processes_cut_the_plan_of_one_process_with_n_times_the_accumulation() -> None:
    one = step_plan(LENGTHS, TrainConfig(batch_size=2, grad_accum=4, epochs=2), world=1)
    two = step_plan(LENGTHS, TrainConfig(batch_size=2, grad_accum=2, epochs=2), world=2)
    four = step_plan(LENGTHS, TrainConfig(batch_size=2, grad_accum=1, epochs=2), world=4)
    assert one == two == four


def test_micro_batches_are_length_sorted_and_within_the_token_budget() -> None:
    cfg = TrainConfig(batch_size=4, epochs=1)
    budget = micro_budget(LENGTHS, cfg)
    assert budget == 4 * sorted(LENGTHS)[len(LENGTHS) // 2]
    for step in step_plan(LENGTHS, cfg):
        flat = [i for mb in step for i in mb]
        assert [LENGTHS[i] for i in flat] == sorted((LENGTHS[i] for i in flat), reverse=True)
        for mb in step:
            assert len(mb) == 1 or len(mb) * max(LENGTHS[i] for i in mb) <= budget
    # -1: exactly batch_size per micro-batch; a fixed budget packs many short examples together
    assert split_step([0, 1, 2, 3, 4], [10] * 5, 2, 0) == [[0, 1], [2, 3], [4]]
    assert split_step([0, 1, 2, 3, 4], [10, 10, 10, 10, 100], 2, 100) == [[4], [0, 1, 2, 3]]
    assert micro_budget(LENGTHS, TrainConfig(micro_batch_tokens=-1)) == 0


def test_length_grouping_keeps_the_older_plan() -> None:
    cfg = TrainConfig(batch_size=4, grad_accum=1, epochs=1, length_grouping=True)
    plan = step_plan(LENGTHS, cfg)
    assert all(len(s) == 1 for s in plan) and sorted(i for s in plan for i in s[0]) == list(range(len(LENGTHS)))
