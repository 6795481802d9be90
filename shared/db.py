"""Postgres (or SQLite in embedded mode) schema: metadata and lineage.

Lineage: training_examples -> judgments -> pairs -> prompts -> images, and every
generated text names the checkpoint that wrote it. Artifacts themselves (shards,
images, checkpoints) live in the store; rows hold their keys.
Natural unique keys make every write idempotent: a redelivered shard finds its
rows already there (written in one transaction with the shard's `done` state).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | done | failed
    config: Mapped[dict] = mapped_column(JSON)  # redacted settings
    iterations: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Iteration(Base):
    """Iteration 0 evaluates the base model; iteration k >= 1 trains judge k from judge k-1."""

    __tablename__ = "iterations"
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | trained | done
    judge_checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))  # judge used
    output_checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))  # judge made
    n_shards: Mapped[int] = mapped_column(Integer, default=0)
    train_enqueued: Mapped[bool] = mapped_column(Boolean, default=False)  # the barrier's latch
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Shard(Base):
    __tablename__ = "shards"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "stage", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(20))
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending | done | failed
    input_key: Mapped[str] = mapped_column(String(500))
    output_key: Mapped[str | None] = mapped_column(String(500))
    items_in: Mapped[int] = mapped_column(Integer, default=0)
    items_out: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the stored PNG
    key: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "source_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    shard_index: Mapped[int] = mapped_column(Integer)
    source_id: Mapped[str] = mapped_column(String(300))  # e.g. scenes:train:42:count
    source: Mapped[str] = mapped_column(String(50))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    instruction: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(10))  # open | closed | auto (decided by the synthesizer)
    kind_reason: Mapped[str | None] = mapped_column(String(200))  # why it was classed open/closed
    question_type: Mapped[str] = mapped_column(String(40))
    gold: Mapped[str | None] = mapped_column(Text)  # kept for analysis only; never a label


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)  # 0 = base
    uri: Mapped[str] = mapped_column(String(500))  # store:<prefix> | hf:<id> | file:<path>
    content_hash: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    meta: Mapped[dict] = mapped_column(JSON, default=dict)  # training metadata
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pair(Base):
    __tablename__ = "pairs"
    __table_args__ = (UniqueConstraint("prompt_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    shard_index: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    preferred: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(30))  # majority_vote | rule_perturb | ...
    errors: Mapped[list] = mapped_column(JSON, default=list)  # injected error types
    vote_count: Mapped[int | None] = mapped_column(Integer)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))  # who wrote the texts
    meta: Mapped[dict | None] = mapped_column(JSON)  # method details (votes, injection prompt, ...)


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("pair_id", "order", "sample"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    shard_index: Mapped[int] = mapped_column(Integer)
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))
    order: Mapped[str] = mapped_column(String(2))  # "AB": preferred shown as A; "BA": as B
    sample: Mapped[int] = mapped_column(Integer)
    prompt_text: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str | None] = mapped_column(String(1))
    parse_reason: Mapped[str] = mapped_column(String(30))
    correct: Mapped[bool] = mapped_column(Boolean)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))


class TrainingExample(Base):
    __tablename__ = "training_examples"
    __table_args__ = (UniqueConstraint("judgment_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    shard_index: Mapped[int] = mapped_column(Integer)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("pairs.id"))
    label: Mapped[str] = mapped_column(String(1))  # the verdict it teaches


class EvalResult(Base):
    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "benchmark", "item_id", "order", "sample"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    benchmark: Mapped[str] = mapped_column(String(40))
    item_id: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(80))
    order: Mapped[str] = mapped_column(String(2))
    sample: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[str] = mapped_column(Text)
    verdict: Mapped[str | None] = mapped_column(String(1))
    correct: Mapped[bool] = mapped_column(Boolean)


class EvalSummary(Base):
    __tablename__ = "eval_summaries"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "benchmark", "category", "metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    benchmark: Mapped[str] = mapped_column(String(40))
    category: Mapped[str] = mapped_column(String(80))  # "overall" or a category
    metric: Mapped[str] = mapped_column(String(40))  # accuracy | both_orders | position_bias
    value: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)


class SetAside(Base):
    """Bad input or unusable output, kept with the reason instead of stopping a run."""

    __tablename__ = "set_aside"
    __table_args__ = (UniqueConstraint("run_id", "iteration", "stage", "record_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    iteration: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(20))
    record_id: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(String(300))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # noqa: ANN001
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA journal_mode=WAL")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def make_sessionmaker(url: str) -> sessionmaker:
    return sessionmaker(make_engine(url), expire_on_commit=False)


# One key for "a selfjudge schema migration is running" (any 64-bit number unlikely to collide).
MIGRATION_LOCK_KEY = 0x5E1F_1D6E


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision.

    Safe when many processes start at once (compose starts every worker and the launcher together):
    migrations are serialised, on Postgres by a transaction-level advisory lock taken in the same
    transaction as the upgrade, on SQLite by a lock file beside the database. The first process
    upgrades; the others wait, then find the schema at head and do nothing."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if url.startswith("sqlite"):
        from filelock import FileLock

        db_file = Path(url.split("///", 1)[1])
        db_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(db_file) + ".migrate.lock"):
            command.upgrade(cfg, "head")
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:  # the lock is released when this transaction commits
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            cfg.attributes["connection"] = conn  # migrations/env.py runs in this transaction
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()
