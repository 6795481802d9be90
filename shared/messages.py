"""What travels on the queues: small JSON messages that point at artifacts in the store.

One queue per stage; each message names the run, the iteration and the shard.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

STAGES = ("synthesizer", "reasoner", "filter", "trainer", "evaluator")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardTask(Message):
    """synthesizer, reasoner, filter: process one shard of an iteration."""

    run_id: int
    iteration: int
    index: int
    input_key: str  # the shard's input in the store (JSONL)
    judge_checkpoint_id: int  # the judge of this iteration (checkpoint k-1)


class TrainTask(Message):
    """trainer: all filtered shards of the iteration are done; train judge k."""

    run_id: int
    iteration: int
    judge_checkpoint_id: int


class EvalTask(Message):
    """evaluator: score one checkpoint on the held-out set."""

    run_id: int
    iteration: int
    checkpoint_id: int


MESSAGE_TYPES: dict[str, type[Message]] = {
    "synthesizer": ShardTask,
    "reasoner": ShardTask,
    "filter": ShardTask,
    "trainer": TrainTask,
    "evaluator": EvalTask,
}


def task_name(stage: str) -> str:
    return f"selfjudge.{stage}"
