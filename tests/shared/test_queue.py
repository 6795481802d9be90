"""Which errors are outages (waited out) and which are failures (counted, then dead-lettered),
checked on real errors from real clients: Postgres, the S3 store, RabbitMQ."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from selfjudge.shared.config import StoreConfig
from selfjudge.shared.failpoints import FailpointError
from selfjudge.shared.queue import is_outage
from selfjudge.shared.store import S3Store, StoreError

from ..conftest import free_port


def raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_a_database_that_cannot_be_reached_is_an_outage():
    engine = sa.create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", connect_args={"connect_timeout": 2}
    )
    exc = raised(lambda: engine.connect())
    assert isinstance(exc, sa.exc.OperationalError) and is_outage(exc)


def test_a_database_error_in_the_query_is_a_failure(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        exc = raised(lambda: conn.execute(sa.text("select * from no_such_table")))
    engine.dispose()
    assert isinstance(exc, sa.exc.ProgrammingError) and not is_outage(exc)


def test_a_store_that_cannot_be_reached_is_an_outage():
    cfg = StoreConfig(
        kind="s3", endpoint=f"127.0.0.1:{free_port()}", bucket="selfjudge", access_key="k", secret_key="s"
    )
    exc = raised(lambda: S3Store(cfg, retries=0))
    assert isinstance(exc, StoreError) and is_outage(exc)


def test_a_missing_artifact_is_a_failure(s3_server):
    store = S3Store(StoreConfig(**dict(s3_server.config, bucket="selfjudge-queue-test")))
    exc = raised(lambda: store.get_bytes("runs/1/nothing-here.jsonl"))
    assert isinstance(exc, StoreError) and "no artifact" in str(exc) and not is_outage(exc)


def test_a_broker_that_cannot_be_reached_is_an_outage():
    from kombu import Connection

    with Connection(f"amqp://guest:guest@127.0.0.1:{free_port()}//", connect_timeout=2) as conn:
        exc = raised(lambda: conn.ensure_connection(max_retries=1))
    assert is_outage(exc)


def test_the_cause_decides_and_a_suppressed_cause_does_not_count():
    def wrapped(suppress: bool) -> BaseException:
        try:
            try:
                raise ConnectionRefusedError("refused")
            except ConnectionRefusedError as inner:
                if suppress:
                    raise ValueError("bad record") from None
                raise ValueError("while writing") from inner
        except ValueError as exc:
            return exc

    assert is_outage(wrapped(suppress=False))
    assert not is_outage(wrapped(suppress=True))
    assert not is_outage(FailpointError("reasoner.before_commit"))
    assert not is_outage(ValueError("unparseable verdict"))
