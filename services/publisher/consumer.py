"""The publisher's consumer group: billable events into the queue, with the offsets.

The group (`TOLLGATE_PUBLISHER_GROUP`, default `publisher`) shares the partitions among the
replicas. Each batch's billing rows, seat facts and Agent Time runtime are written in the
transaction that also stores the batch's offsets, so a crash can neither lose a build nor
queue it twice, and a replay of the log derives the same billing ids and runtime rows
(`ON CONFLICT DO NOTHING`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from libs.service.consumer import Consumed, ConsumerLoop, PostgresSink, TransactionalHandler
from libs.service.db import Connection
from services.publisher.config import PublisherSettings
from services.publisher.domain import LateRuntime, project
from services.publisher.storage import write_projection


def make_handler(
    queue: str,
    *,
    runtime_since: Callable[[], datetime] | None = None,
    on_late: Callable[[list[LateRuntime]], None] | None = None,
) -> TransactionalHandler:
    """The sink's handler: project the batch and write it on the sink's connection.

    `runtime_since` is the oldest hour whose runtime is still kept; `on_late` hears of
    runtime whose hour was already reported.
    """

    async def handle(conn: Connection, events: Sequence[Consumed]) -> None:
        projection = project(c.event for c in events)
        if projection:
            since = runtime_since() if runtime_since is not None else None
            late = await write_projection(conn, queue, projection, runtime_since=since)
            if late and on_late is not None:
                on_late(late)

    return handle


def make_consumer(
    settings: PublisherSettings,
    pool: asyncpg.Pool,
    *,
    dlq_producer: AIOKafkaProducer,
    registry: CollectorRegistry,
    runtime_since: Callable[[], datetime] | None = None,
    on_late: Callable[[list[LateRuntime]], None] | None = None,
) -> ConsumerLoop:
    """The group member of this replica; offsets are kept per group and topic."""
    sink = PostgresSink(
        pool,
        consumer=settings.group,
        topic=settings.events_topic,
        epoch=settings.broker_epoch,
        handler=make_handler(settings.queue, runtime_since=runtime_since, on_late=on_late),
    )
    session_ms = int(settings.session_timeout.total_seconds() * 1000)
    return ConsumerLoop(
        name=settings.group,
        bootstrap=settings.kafka_bootstrap_servers,
        topic=settings.events_topic,
        dlq_topic=settings.dlq_topic,
        sink=sink,
        dlq_producer=dlq_producer,
        registry=registry,
        group_id=settings.group,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
        timeout_s=settings.kafka_timeout_s,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(100, session_ms // 5),
        forward_misplaced=True,
    )
