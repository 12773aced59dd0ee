"""The Kafka side: the `reports` consumer group feeding the projector through a PostgreSQL sink.

Rows are written in the same transaction as the offsets of the partitions they came from
(`PostgresSink`), and offsets are read back from PostgreSQL when partitions are assigned, so a
crash anywhere between fetching and committing re-reads events that the archive then
recognises by id.

The sink commits a batch in the background and returns, so the loop fetches and decodes the
next batch (Python) while PostgreSQL writes this one, split by partition over a few
connections (other cores). Batches still commit one after another, in log order: the next
`apply` first waits for the batch in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from libs.events.codec import encode
from libs.service.consumer import (
    Batch,
    Consumed,
    ConsumerLoop,
    PostgresSink,
    TransactionalHandler,
)
from libs.service.db import Connection
from libs.service.kafka import bounded
from services.reports.config import ReportsSettings
from services.reports.metrics import ReportsMetrics
from services.reports.projection import ProjectionOutcome, Projector

__all__ = ["ReportsSink", "build_consumer"]

log = structlog.get_logger(__name__)


class ReportsSink:
    """Commits batches through `PostgresSink` transactions, several partitions' at once.

    A batch is split by partition into `writers` groups, each committed in its own
    transaction on its own connection with its partitions' offsets: rows and offsets of a
    partition always land together, and groups never touch the same rollup rows because the
    log is keyed by the rows' subject. `apply` returns once the commits have started, so the
    loop fetches and decodes the next batch meanwhile; the next `apply` waits for them first,
    so batches still commit in log order.

    A group whose transaction fails is retried (with backoff) until it commits: nothing of it
    was kept, so retrying is what re-reading it from the log would do, without the re-read.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        consumer: str,
        topic: str,
        epoch: str,
        projector: Projector,
        metrics: ReportsMetrics,
        writers: int = 2,
        retry_delay_s: float = 0.5,
        dead_letter: Callable[[Consumed, str], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        self.dead_letter = dead_letter
        self.consumer = consumer
        self.topic = topic
        self.epoch = epoch
        self.projector = projector
        self.metrics = metrics
        self.writers = max(1, writers)
        self.retry_delay_s = retry_delay_s
        self._pending: asyncio.Task[None] | None = None

    async def load_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """Positions from PostgreSQL, once the batch in flight (if any) has committed."""
        await self.settle()
        return await self._sink(_no_events).load_positions(partitions)

    async def apply(self, batch: Batch) -> None:
        """Start committing `batch` once the previous batch has committed."""
        await self.settle()
        groups = [g for g in self.split(batch) if g.events or g.positions]
        self._pending = asyncio.create_task(self._commit_all(groups), name="reports-commit")

    def split(self, batch: Batch) -> list[Batch]:
        """The batch as `writers` batches of whole partitions."""
        groups = [Batch(events=[], positions={}) for _ in range(self.writers)]
        for item in batch.events:
            groups[item.partition % self.writers].events.append(item)
        for partition, position in batch.positions.items():
            groups[partition % self.writers].positions[partition] = position
        return groups

    @property
    def idle(self) -> bool:
        """Whether no batch is being committed."""
        return self._pending is None or self._pending.done()

    async def settle(self) -> None:
        """Wait until the batch in flight has committed."""
        task, self._pending = self._pending, None
        if task is not None:
            await task

    async def close(self) -> None:
        """Abandon the batch in flight: its transactions roll back and it is read again later."""
        task, self._pending = self._pending, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _sink(self, handler: TransactionalHandler) -> PostgresSink:
        return PostgresSink(
            self.pool, consumer=self.consumer, topic=self.topic, epoch=self.epoch, handler=handler
        )

    async def _commit_all(self, groups: list[Batch]) -> None:
        await asyncio.gather(*(self._commit(group) for group in groups))

    async def _commit(self, batch: Batch) -> None:
        attempt = 0
        while True:
            try:
                await self._commit_isolating(batch)
            except Exception as exc:
                attempt += 1
                log.warning(
                    "batch_commit_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    attempt=attempt,
                    events=len(batch.events),
                )
                await asyncio.sleep(min(self.retry_delay_s * attempt, 10.0))
                continue
            return

    async def _commit_isolating(self, batch: Batch) -> None:
        """Commit `batch`; if its data is refused, find and set aside the events PostgreSQL refuses.

        A data error (a sum beyond bigint, say) fails the same way on every retry, so the batch
        is halved until the refused event is alone; it goes to the dead-letter topic and its
        offset is committed, and every other event is projected exactly once as usual.
        """
        try:
            await self._transaction(batch)
        except asyncpg.DataError as exc:
            if len(batch.events) <= 1:
                for item in batch.events:
                    await self._set_aside(item, f"projection refused the event: {exc}")
                await self._transaction(Batch(events=[], positions=batch.positions))
                return
            first, second = halves(batch)
            await self._commit_isolating(first)
            await self._commit_isolating(second)

    async def _transaction(self, batch: Batch) -> None:
        outcome = ProjectionOutcome()

        async def project(conn: Connection, events: Sequence[Consumed]) -> None:
            nonlocal outcome
            outcome = await self.projector.project(conn, events)

        started = time.perf_counter()
        await self._sink(project).apply(batch)
        self.metrics.record(outcome, time.perf_counter() - started)

    async def _set_aside(self, item: Consumed, reason: str) -> None:
        log.error(
            "event_refused_by_projection",
            event_id=item.event.id,
            partition=item.partition,
            offset=item.offset,
            reason=reason,
        )
        self.metrics.refused.inc()
        if self.dead_letter is not None:
            await self.dead_letter(item, reason)


def halves(batch: Batch) -> tuple[Batch, Batch]:
    """Two batches that, committed in order, do what `batch` does: each with its own offsets."""
    middle = len(batch.events) // 2
    first = Batch(events=batch.events[:middle], positions={})
    for item in first.events:
        first.positions[item.partition] = item.offset + 1
    return first, Batch(events=batch.events[middle:], positions=dict(batch.positions))


async def _no_events(conn: Connection, events: Sequence[Consumed]) -> None:
    """Never called: the sink that only loads positions writes nothing."""


def build_consumer(
    settings: ReportsSettings,
    *,
    pool: asyncpg.Pool,
    dlq_producer: AIOKafkaProducer,
    registry: CollectorRegistry,
    metrics: ReportsMetrics,
) -> tuple[ConsumerLoop, ReportsSink]:
    """The consumer group member that keeps the reports' tables up to date, and its sink."""

    async def dead_letter(item: Consumed, reason: str) -> None:
        await bounded(
            dlq_producer.send_and_wait(
                settings.dlq_topic,
                value=encode(item.event),
                key=item.event.partition_key.encode(),
                headers=[
                    ("reason", reason.encode()[:1024]),
                    ("source_topic", settings.events_topic.encode()),
                    ("source_partition", str(item.partition).encode()),
                    ("source_offset", str(item.offset).encode()),
                    ("consumer", settings.consumer_group.encode()),
                ],
            ),
            max(settings.kafka_timeout_s, 10.0),
            "dead-letter produce",
        )

    sink = ReportsSink(
        pool,
        consumer=settings.consumer_group,
        topic=settings.events_topic,
        epoch=settings.broker_epoch,
        projector=Projector(max_session_hours=settings.max_session_hours),
        metrics=metrics,
        writers=settings.writers,
        dead_letter=dead_letter,
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
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        fetch_min_bytes=settings.fetch_min_bytes,
        timeout_s=max(settings.kafka_timeout_s, 10.0),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
    )
    metrics.caught_up = lambda: (
        loop.caught_up.is_set() and sink.idle and not any(loop.lag().values())
    )
    return loop, sink
