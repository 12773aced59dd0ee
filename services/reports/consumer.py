"""The Kafka side: the `reports` consumer group feeding the projector through a PostgreSQL sink.

Each batch's rows and the group's offsets are written in one transaction (`PostgresSink`), and
the offsets are read back from PostgreSQL on start, so a crash anywhere between fetching and
committing re-reads events that the archive then recognises by id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from libs.service.consumer import Batch, Consumed, ConsumerLoop, PostgresSink
from libs.service.db import Connection
from services.reports.config import ReportsSettings
from services.reports.metrics import ReportsMetrics
from services.reports.projection import ProjectionOutcome, Projector

__all__ = ["ReportsSink", "build_consumer"]


class ReportsSink(PostgresSink):
    """A `PostgresSink` whose handler is the projector, counting each batch once it committed."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        consumer: str,
        topic: str,
        epoch: str,
        projector: Projector,
        metrics: ReportsMetrics,
    ) -> None:
        super().__init__(pool, consumer=consumer, topic=topic, epoch=epoch, handler=self._project)
        self.projector = projector
        self.metrics = metrics
        self._outcome: ProjectionOutcome | None = None

    async def _project(self, conn: Connection, events: Sequence[Consumed]) -> None:
        self._outcome = await self.projector.project(conn, events)

    async def apply(self, batch: Batch) -> None:
        """Rows and offsets in one transaction; metrics only for what was committed."""
        self._outcome = None
        started = time.perf_counter()
        await super().apply(batch)
        self.metrics.record(self._outcome or ProjectionOutcome(), time.perf_counter() - started)


def build_consumer(
    settings: ReportsSettings,
    *,
    pool: asyncpg.Pool,
    dlq_producer: AIOKafkaProducer,
    registry: CollectorRegistry,
    metrics: ReportsMetrics,
) -> ConsumerLoop:
    """The consumer group member that keeps the reports' tables up to date."""
    sink = ReportsSink(
        pool,
        consumer=settings.consumer_group,
        topic=settings.events_topic,
        epoch=settings.broker_epoch,
        projector=Projector(max_session_hours=settings.max_session_hours),
        metrics=metrics,
    )
    loop = ConsumerLoop(
        name="reports",
        bootstrap=settings.kafka_bootstrap_servers,
        topic=settings.events_topic,
        dlq_topic=settings.dlq_topic,
        sink=sink,
        dlq_producer=dlq_producer,
        registry=registry,
        group_id=settings.consumer_group,
        max_records=settings.batch_max_events,
        timeout_s=max(settings.kafka_timeout_s, 10.0),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    metrics.caught_up = lambda: bool(loop.caught_up.is_set()) and not any(loop.lag().values())
    return loop
