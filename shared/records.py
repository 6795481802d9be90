"""The records that travel between the stages, one model per kind, and typed store readers/writers.

Every shard in the store is JSON Lines: one record per line, one JSON object per record, written
with `json.dumps(..., ensure_ascii=False)` in the field order below (the order of the models'
fields), so a shard reads the same with or without this module. What each stage reads and writes:

    loop.start_iteration --PromptRecord--> synthesizer --PairRecord--> reasoner
        --JudgmentRecord--> filter --ExampleRecord--> trainer (reads each as a TrainTrace)
    loop.write_heldout --HeldoutRecord--> evaluator --EvalItem (its own shards)-->
        EvalJudgment (written as eval_results rows)
    the evaluator's selection pass (shared/selection.py) --SelectionJudgment--> the store (for reading back)

Keys (`runs/<run>/iter<k>/<what>/<shard>.jsonl`) come from `shards.shard_key`; image fields hold
content-addressed store keys (`images/ab/ab....png`), never pixels.

Reading is tolerant, writing is strict. A model forbids unknown fields, so a writer cannot add an
ad-hoc key; `read_records` drops the keys its model does not know before validating (a shard written
by a newer version still reads), and validates the rest strictly (no "3" for 3, no 1 for true).
A line that is not a valid record raises `RecordError`, or, when the reader is given `invalid=`,
is handed to that callback and skipped: the stages set it aside (`bad_record: <why>`) and go on,
as they do with any other bad input. The error names the shard, the line, the record kind, the
record's id when it has one, and each field that failed and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .store import Store, put_jsonl

Order = Literal["AB", "BA"]
Choice = Literal["A", "B"]


class Record(BaseModel):
    """Base of every shard record: strict types, no unknown fields, one JSON object per line."""

    model_config = ConfigDict(extra="forbid", strict=True)
    record_kind: ClassVar[str] = "record"  # the name used in error messages
    id_field: ClassVar[str | None] = None  # the field that names a record in errors


# --- the loop's iteration -> synthesizer ---------------------------------------------------------


class PromptRecord(Record):
    """One prompt of an iteration, as drawn from the source (`runs/<r>/iter<k>/prompts/<i>.jsonl`,
    written by loop.start_iteration). The gold answer and the source's name stay in the `prompts`
    table (the synthesizer reads them from there), so a shard holds no label.

    `kind` is the source's word: "open" / "closed", or "auto" to let the synthesizer decide.
    `options` are the texts of a multiple-choice question's options when the source gave them."""

    record_kind: ClassVar[str] = "prompt"
    id_field: ClassVar[str] = "source_id"
    prompt_id: int  # prompts.id
    source_id: str  # the source's id of the record ("scenes:train:3:count", "jsonl:a17")
    image_key: str
    instruction: str
    kind: Literal["auto", "open", "closed"]
    question_type: str
    options: list[str] | None = None


# --- synthesizer -> reasoner ---------------------------------------------------------------------


class PairRecord(Record):
    """A preference pair over one prompt (`runs/<r>/iter<k>/pairs/<i>.jsonl`, written by the
    synthesizer; one `pairs` row each, `pair_id`). The first fields repeat the prompt (with the kind
    the synthesizer decided and the options it used), then where it came from and the pair itself.

    closed: `preferred` is the majority answer of `n_samples` samples (`vote_count` of them agree)
    or the gold answer (method "gold_label"), `rejected` a sample that disagrees;
    errors ["wrong_answer"].  open: `preferred` is the greedy response, `rejected` the same with
    injected errors (`errors`: the kinds changed: colour, count, position, ...); vote_count None.
    `meta` records every decision (votes, thresholds, injection variant and attempts), as in
    Pair.meta; `holdout`: the prompt is in the checkpoint-selection holdout, never trained on."""

    record_kind: ClassVar[str] = "pair"
    id_field: ClassVar[str] = "pair_id"
    prompt_id: int
    source_id: str
    image_key: str
    instruction: str
    kind: Literal["open", "closed"]
    question_type: str
    options: list[str] | None
    source: str  # the source's name (prompts.source): "scenes", "jsonl", ...
    holdout: bool
    kind_reason: str  # why open or closed (prompts.kind_reason)
    preferred: str
    rejected: str
    method: str  # majority_vote | gold_label | model_detail | model_style_mimic | rule_perturb
    errors: list[str]
    vote_count: int | None
    n_samples: int
    meta: dict[str, Any]
    pair_id: int  # pairs.id


# --- reasoner -> filter ----------------------------------------------------------------------------


class JudgmentRecord(Record):
    """One judge trace: the judge's reasoning and verdict on a pair in one order
    (`runs/<r>/iter<k>/judgments/<i>.jsonl`, written by the reasoner; one `judgments` row each).

    `order` "AB" shows the preferred response as A, "BA" as B; `sample` numbers the samples of one
    order. `output` is the judge's text, `verdict` the parsed choice (None when unparseable, with
    `parse_reason`), `correct` whether it picked the pair's preferred response. The last fields
    repeat the pair's for the filter and the reports."""

    record_kind: ClassVar[str] = "judgment"
    id_field: ClassVar[str] = "judgment_id"
    judgment_id: int
    pair_id: int
    order: Order
    sample: int
    image_key: str
    prompt_text: str  # the judge prompt, as given to the judge
    output: str
    verdict: Choice | None
    parse_reason: str  # ok | empty | no_verdict | conflicting | too_long
    correct: bool
    question_type: str
    errors: list[str]
    method: str
    source: str
    prompt_id: int
    holdout: bool


# --- filter -> trainer -----------------------------------------------------------------------------


class ExampleRecord(Record):
    """A kept trace: a training example (`runs/<r>/iter<k>/examples/<i>.jsonl`, written by the
    filter; one `training_examples` row each). In the chat-SFT format of TRL's conversational
    datasets: the user turn is `prompt_text` with the image at `image_key`, the assistant turn is
    `answer` (the judge's reasoning and verdict), `label` its verdict."""

    record_kind: ClassVar[str] = "example"
    id_field: ClassVar[str] = "example_id"
    example_id: int
    judgment_id: int
    pair_id: int
    image_key: str
    prompt_text: str
    answer: str
    label: Choice


class TrainTrace(Record):
    """What the trainer reads of an ExampleRecord (the other fields are dropped on read), and the
    line of its local spill file. A hand-made trace file (a benchmark, a test) needs only these;
    without `example_id` a dropped trace is reported as "trace:<index>"."""

    record_kind: ClassVar[str] = "trace"
    id_field: ClassVar[str] = "example_id"
    example_id: int | None = None
    image_key: str
    prompt_text: str
    answer: str


# --- evaluator ---------------------------------------------------------------------------------


class HeldoutRecord(Record):
    """A generator-labelled pair for evaluation only (`runs/<r>/heldout/pairs.jsonl`, written once
    per run by loop.write_heldout from a scene split never trained on): `preferred` is right about
    the image, `rejected` has `error_type` injected ("count", "colour+position", ...)."""

    record_kind: ClassVar[str] = "heldout pair"
    id_field: ClassVar[str] = "item_id"
    item_id: str
    image_key: str
    instruction: str
    preferred: str
    rejected: str
    category: str  # the question type
    error_type: str


class EvalItem(Record):
    """One item of an evaluator shard (`runs/<r>/eval/<benchmark>/shards/<i>.jsonl`): a query, two
    responses and which one is better (the held-out pairs: always 0; a benchmark: its label)."""

    record_kind: ClassVar[str] = "eval item"
    id_field: ClassVar[str] = "item_id"
    item_id: str
    category: str
    source: str  # the benchmark's sub-source, or the held-out pair's error type
    query: str
    responses: list[str] = Field(min_length=2, max_length=2)
    better: Literal[0, 1]
    image_key: str


class EvalJudgment(Record):
    """One judgment of an eval item (an `eval_results` row; not stored as a shard): the item's
    verdict in one order and sample under `benchmark` ("heldout", "<name>", "<name>:both")."""

    record_kind: ClassVar[str] = "eval judgment"
    id_field: ClassVar[str] = "item_id"
    benchmark: str
    item_id: str
    category: str
    order: Order
    sample: int
    output: str
    verdict: Choice | None
    correct: bool


class SelectionJudgment(Record):
    """One verdict of a checkpoint on the selection set (`runs/<r>/selection/iter<k>.jsonl`)."""

    record_kind: ClassVar[str] = "selection judgment"
    id_field: ClassVar[str] = "pair_id"
    pair_id: int
    order: Order
    verdict: Choice | None


# --- set aside -------------------------------------------------------------------------------------


class SetAsideRecord(Record):
    """A record a stage did not use, and why (a `set_aside` row). `code` is what `selfjudge status`
    counts it under ("duplicate", "closed_no_majority", "bad_record", ...), `detail` the particulars."""

    record_kind: ClassVar[str] = "set-aside"
    id_field: ClassVar[str] = "record_id"
    record_id: str
    code: str
    detail: str = ""

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


# --- readers and writers -----------------------------------------------------------------------------

R = TypeVar("R", bound=Record)


class RecordError(ValueError):
    """A shard line that is not a valid record of its kind."""

    def __init__(self, key: str, line: int, model: type[Record], record_id: str, why: str) -> None:
        self.key, self.line, self.model, self.record_id, self.why = key, line, model, record_id, why
        name = f" {record_id}" if record_id else ""
        super().__init__(f"invalid {model.record_kind} record{name} ({key} line {line}): {why}")

    def set_aside(self) -> SetAsideRecord:
        """As a set-aside record: under the record's id, or "<key>:<line>" when it has none."""
        return SetAsideRecord(
            record_id=self.record_id or f"{self.key}:{self.line}", code="bad_record", detail=str(self)
        )


def _why(exc: ValidationError) -> str:
    """'field: message' for each failed field ('preferred: Field required; sample: Input should be ...')."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())


def parse_record(model: type[R], text: str, key: str = "", line: int = 0) -> R:
    """One JSONL line as a `model`; unknown keys are dropped; RecordError if it is not valid."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(key, line, model, "", f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(key, line, model, "", f"not a JSON object: {type(data).__name__}")
    rid = data.get(model.id_field) if model.id_field else None
    try:
        return model.model_validate({k: v for k, v in data.items() if k in model.model_fields})
    except ValidationError as exc:
        raise RecordError(key, line, model, "" if rid is None else str(rid)[:200], _why(exc)) from None


def read_records(
    store: Store, key: str, model: type[R], invalid: Callable[[RecordError], None] | None = None
) -> Iterator[R]:
    """The records of one shard, in order. A line that is not a valid `model` raises RecordError,
    or with `invalid` is passed to it and skipped. Blank lines are skipped."""
    for n, text in enumerate(store.get_bytes(key).decode().splitlines(), 1):
        if not text.strip():
            continue
        try:
            yield parse_record(model, text, key, n)
        except RecordError as exc:
            if invalid is None:
                raise
            invalid(exc)


def record_line(record: Record) -> str:
    """One record as its JSONL line (without the newline): the fields in the model's order."""
    return json.dumps(record.model_dump(), ensure_ascii=False)


def write_records(store: Store, key: str, records: Iterable[Record]) -> int:
    """Write a shard (replacing any earlier one); returns how many records it holds."""
    return put_jsonl(store, key, (r.model_dump() for r in records))
