"""How messages move: Celery over RabbitMQ, or an in-process queue (embedded mode).

Both buses deliver to the same handler functions (`services/<stage>/stage.py:handle`).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Protocol

from celery import Celery
from kombu import Exchange, Queue

from .config import Settings
from .messages import MESSAGE_TYPES, STAGES, Message, task_name

log = logging.getLogger(__name__)


class Bus(Protocol):
    def send(self, stage: str, message: Message) -> None: ...


def make_celery(settings: Settings) -> Celery:
    app = Celery("selfjudge", broker=settings.broker.url)
    exchange = Exchange("selfjudge", type="direct", durable=True)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],          # pickle is refused on the wire
        task_ignore_result=True,
        task_acks_late=True,              # a message is acked only after its shard is recorded
        task_reject_on_worker_lost=True,  # ... and redelivered if the worker dies mid-shard
        worker_prefetch_multiplier=1,     # model stages take one shard at a time
        task_queues=[Queue(stage, exchange, routing_key=stage, durable=True) for stage in STAGES],
        task_routes={task_name(stage): {"queue": stage, "routing_key": stage} for stage in STAGES},
        task_default_exchange="selfjudge",
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
    )
    return app


class CeleryBus:
    def __init__(self, app: Celery):
        self.app = app

    def send(self, stage: str, message: Message) -> None:
        self.app.send_task(task_name(stage), args=[message.model_dump(mode="json")],
                           queue=stage, routing_key=stage, exchange="selfjudge")


class LocalBus:
    """Embedded mode: a FIFO drained in this process by the same handlers."""

    def __init__(self) -> None:
        self.pending: deque[tuple[str, dict]] = deque()

    def send(self, stage: str, message: Message) -> None:
        self.pending.append((stage, message.model_dump(mode="json")))

    def drain(self, handlers: dict[str, Callable[[dict], None]]) -> int:
        done = 0
        while self.pending:
            stage, payload = self.pending.popleft()
            handlers[stage](payload)
            done += 1
        return done


def parse_message(stage: str, payload: dict) -> Message:
    return MESSAGE_TYPES[stage].model_validate(payload)
