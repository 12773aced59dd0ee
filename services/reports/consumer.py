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
from collections.abc import Sequence
from contextlib import suppress

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from libs.service.consumer import (
    ApplyBatch,
    Batch,
    Consumed,
    ConsumerLoop,
    EarlierBatchFailedError,
    Isolate,
    PostgresSink,
    TransactionalHandler,
)
from libs.service.db import Connection
from services.reports.config import ReportsSettings
from services.reports.metrics import ReportsMetrics
from services.reports.projection import ProjectionOutcome, Projector

__all__ = ["ReportsSink", "build_consumer"]

log = structlog.get_logger(__name__)

#: How long a clean stop waits for the batch in flight to commit.
CLOSE_WAIT_S = 10.0


class ReportsSink:
    """Commits batches through `PostgresSink` transactions, several partitions' at once.

    A batch is split by partition into `writers` groups, each committed in its own
    transaction on its own connection with its partitions' offsets: rows and offsets of a
    partition always land together, and groups never touch the same rollup rows because the
    log is keyed by the rows' subject. `apply` returns once the commits have started, so the
    loop fetches and decodes the next batch meanwhile; the next `apply` waits for them first,
    so batches still commit in log order.

    Each group is committed through `isolate` (the consumer loop's one rule for events a sink
    refuses: the refused event is dead-lettered and the rest committed). An infrastructure
    fault surfaces from the next `apply` or `settle`, and the loop then re-reads from the
    positions PostgreSQL kept, with backoff, like every other consumer.
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
        isolate: Isolate | None = None,
    ) -> None:
        self.pool = pool
        self.consumer = consumer
        self.topic = topic
        self.epoch = epoch
        self.projector = projector
        self.metrics = metrics
        self.writers = max(1, writers)
        self.isolate: Isolate = isolate or _apply_plainly
        self._pending: asyncio.Task[None] | None = None

    async def load_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """Positions from PostgreSQL, once the batch in flight (if any) is over."""
        with suppress(Exception):
            # A failed commit was reported already; the positions say what it left.
            await self.settle()
        return await self._sink(_no_events).load_positions(partitions)

    async def apply(self, batch: Batch) -> None:
        """Start committing `batch` once the previous batch has committed."""
        try:
            await self.settle()
        except Exception as exc:
            raise EarlierBatchFailedError(
                f"the previous batch did not commit: {type(exc).__name__}: {exc}"
            ) from exc
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
        """Wait until the batch in flight is over; raise what made its commit fail."""
        task, self._pending = self._pending, None
        if task is not None:
            await task

    async def close(self) -> None:
        """Let the batch in flight commit (briefly), so a clean stop keeps what was read."""
        task, self._pending = self._pending, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_WAIT_S)
        except Exception as exc:
            log.warning("batch_commit_abandoned", error=f"{type(exc).__name__}: {exc}")
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task

    def _sink(self, handler: TransactionalHandler) -> PostgresSink:
        return PostgresSink(
            self.pool, consumer=self.consumer, topic=self.topic, epoch=self.epoch, handler=handler
        )

    async def _commit_all(self, groups: list[Batch]) -> None:
        results = await asyncio.gather(
            *(self.isolate(self._transaction, group) for group in groups), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _transaction(self, batch: Batch) -> None:
        outcome = ProjectionOutcome()

        async def project(conn: Connection, events: Sequence[Consumed]) -> None:
            nonlocal outcome
            outcome = await self.projector.project(conn, events)

        started = time.perf_counter()
        await self._sink(project).apply(batch)
        self.metrics.record(outcome, time.perf_counter() - started)


async def _apply_plainly(apply: ApplyBatch, batch: Batch) -> None:
    """Without a consumer loop (tests, benchmarks): a refusal fails the batch."""
    await apply(batch)


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

    sink = ReportsSink(
        pool,
        consumer=settings.consumer_group,
        topic=settings.events_topic,
        epoch=settings.broker_epoch,
        projector=Projector(max_session_hours=settings.max_session_hours),
        metrics=metrics,
        writers=settings.writers,
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
        forward_misplaced=True,
    )
    sink.isolate = loop.isolate
    metrics.caught_up = lambda: (
        loop.caught_up.is_set() and sink.idle and not any(loop.lag().values())
    )
    return loop, sink
