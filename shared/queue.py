"""How messages move: Celery over RabbitMQ, or an in-process queue (embedded mode).

Both buses deliver to the same handler functions (`services/<stage>/stage.py:handle`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

from celery import Celery
from kombu import Exchange, Queue

from .config import Settings
from .messages import STAGES, Message, task_name

log = logging.getLogger(__name__)


class Bus(Protocol):
    def send(self, stage: str, message: Message) -> None: ...


DEAD_EXCHANGE = Exchange("selfjudge.dead", type="fanout", durable=True)
DEAD_QUEUE = Queue("selfjudge.dead", DEAD_EXCHANGE, durable=True)  # tasks that failed for good


def stage_queue(stage: str, exchange: Exchange) -> Queue:
    return Queue(stage, exchange, routing_key=stage, durable=True)


def make_celery(settings: Settings) -> Celery:
    app = Celery("selfjudge", broker=settings.broker.url)
    exchange = Exchange("selfjudge", type="direct", durable=True)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # pickle is refused on the wire
        task_ignore_result=True,
        task_acks_late=True,  # a message is acked only after its shard is recorded
        task_reject_on_worker_lost=True,  # ... and redelivered if the worker dies mid-shard
        worker_prefetch_multiplier=1,  # model stages take one shard at a time
        task_queues=[stage_queue(stage, exchange) for stage in STAGES],
        task_routes={task_name(stage): {"queue": stage, "routing_key": stage} for stage in STAGES},
        task_default_exchange="selfjudge",
        # A solo worker busy with a long model call cannot answer AMQP heartbeats, and the broker
        # would drop it mid-shard; a dead worker is still noticed at once (its socket closes).
        broker_heartbeat=0,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a restarted broker is waited for, not fatal
        task_publish_retry=True,
        # Publisher confirms: a publish returns only once the broker has the message, so a message
        # sent while the broker shuts down raises (and is sent again) instead of vanishing.
        broker_transport_options={"confirm_publish": True},
        task_publish_retry_policy={"max_retries": 30, "interval_start": 0.5, "interval_step": 1.0, "interval_max": 5.0},
        worker_hijack_root_logger=False,
    )
    return app


def is_outage(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says a server could not be reached: the database, the
    store or the broker is down or restarting. Such a task is waited out, not counted as failed."""
    import amqp.exceptions
    import httpx
    import kombu.exceptions
    import psycopg
    import sqlalchemy.exc
    import urllib3.exceptions
    from minio.error import S3Error, ServerError

    from .store import PERMANENT_S3_CODES

    outage_types = (
        ConnectionError,
        TimeoutError,
        psycopg.OperationalError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.DisconnectionError,
        urllib3.exceptions.HTTPError,
        ServerError,
        kombu.exceptions.OperationalError,
        amqp.exceptions.ConnectionError,
        amqp.exceptions.RecoverableConnectionError,
        httpx.TransportError,
    )  # an OpenAI-compatible endpoint down or restarting
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, outage_types):
            return True
        if isinstance(exc, S3Error) and exc.code not in PERMANENT_S3_CODES:  # 5xx: SlowDown, InternalError...
            return True
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return False


def declare_dead_letters(app: Celery) -> None:
    with app.connection_for_write() as conn:
        DEAD_QUEUE.bind(conn.default_channel).declare()


def send_dead_letter(app: Celery, stage: str, payload: dict, error: str) -> None:
    """Park a task that failed for good, with its error, where `selfjudge status/retry` find it."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            {"stage": stage, "payload": payload, "error": error},
            exchange=DEAD_EXCHANGE,
            declare=[DEAD_QUEUE],
            serializer="json",
            delivery_mode=2,
            retry=True,
        )


def dead_letters(app: Celery, take: Callable[[dict], bool] | None = None) -> list[dict]:
    """Every dead letter {stage, payload, error}; those `take(letter)` accepts are removed."""
    out, held = [], []
    with app.connection_for_write() as conn:
        queue = DEAD_QUEUE.bind(conn.default_channel)
        queue.declare()
        while (message := queue.get(no_ack=False, accept=["json"])) is not None:
            letter = message.decode()
            out.append(letter)
            held.append((message, take is not None and take(letter)))
        for message, taken in held:  # nothing is acked before all were read, so none is seen twice
            message.ack() if taken else message.requeue()
    return out


def queue_depths(app: Celery) -> dict[str, dict[str, int]]:
    """Per stage queue: messages waiting and consumers attached (a passive declare asks the broker)."""
    depths = {}
    with app.connection_for_write() as conn:
        for stage in STAGES:
            try:
                _, messages, consumers = conn.default_channel.queue_declare(stage, passive=True)
                depths[stage] = {"messages": messages, "consumers": consumers}
            except Exception:  # noqa: BLE001 - not declared yet: no worker of that stage ever started
                conn.close()
                conn.connect()
                depths[stage] = {"messages": 0, "consumers": 0}
    return depths


class CeleryBus:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, stage: str, message: Message) -> None:
        self.app.send_task(
            task_name(stage),
            args=[message.model_dump(mode="json")],
            queue=stage,
            routing_key=stage,
            exchange="selfjudge",
        )


class LocalBus:
    """Embedded mode: a FIFO drained in this process by the same handlers."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, dict]] = deque()

    def send(self, stage: str, message: Message) -> None:
        self.pending.append((stage, message.model_dump(mode="json")))

    def drain(
        self,
        handlers: dict[str, Callable[[dict], None]],
        on_error: Callable[[str, dict, Exception], None] | None = None,
    ) -> int:
        """Run every pending message; one that fails is reported to on_error and the rest go on."""
        done = 0
        while self.pending:
            stage, payload = self.pending.popleft()
            try:
                handlers[stage](payload)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(stage, payload, exc)
            done += 1
        return done
