"""What travels on the queues: small JSON messages that point at artifacts in the store.

One queue per stage; each message names the run, the iteration and the shard.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .config import BenchmarkConfig

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
    """evaluator: evaluate one checkpoint (iteration 0 = the base judge), as the loop asks."""

    run_id: int
    iteration: int
    checkpoint_id: int


class EvalPlan(EvalTask):
    """evaluator: evaluate one checkpoint, saying what on. The loop's EvalTask is one with the
    defaults (the held-out set and settings.eval.benchmarks); `selfjudge eval` names one benchmark."""

    heldout: bool = True
    benchmarks: list[BenchmarkConfig] | None = None  # None: settings.eval.benchmarks
    strict: bool = False  # a benchmark file that cannot be loaded: raise (else: skip it, set aside why)


class ProtocolSpec(Message):
    """Which judging protocol, with what settings (services/evaluator/protocols.make_protocol's arguments)."""

    benchmark: str  # "heldout", "vl-rewardbench", "mm-rewardbench"
    k: int | None = None  # official samples per item (None: the benchmark's own)
    parser: str = "official"
    max_new_tokens: int | None = None
    seed: int = 0


class EvalShard(Message):
    """evaluator -> evaluator: judge one shard of a planned evaluation (EvalItem records in the store)."""

    run_id: int
    iteration: int
    checkpoint_id: int
    index: int  # unique across the evaluation's benchmarks
    benchmark: str
    input_key: str
    protocol: ProtocolSpec


def task_name(stage: str) -> str:
    return f"selfjudge.{stage}"
