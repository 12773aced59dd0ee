"""The one consumer loop of limits, reports and publisher, and the rules they all follow.

It fetches batches, decodes them, hands each batch to a `Sink` that applies it together with
the positions it reached, and tracks lag and whether it has caught up with the log as it
stood at start. Offsets live wherever the sink keeps its effects (PostgreSQL rows, a
snapshot), never in Kafka, so a crash between a write and a commit cannot count anything
twice. Every consumer follows the same three rules here:

- **Undecodable records** (bad JSON, an unknown type, a value outside the storable bounds of
  `libs.events.bounds`) go to the dead-letter topic with the reason and are skipped.
- **No poison pill.** When the sink refuses a batch for anything but an infrastructure fault
  (a database or broker that does not answer), the batch is halved until the refused event is
  alone; that event is dead-lettered once with the reason, counted in
  `tollgate_consumer_refused_total`, and the consumer moves on. Infrastructure faults are
  retried with backoff from the stored positions, and `tollgate_consumer_consecutive_failures`
  shows a consumer that keeps failing at the same place.
- **Placement.** An event counts only on its home partition: the one Kafka's default
  partitioner (murmur2 of the event's partition key, as aiokafka and the Java client use)
  gives it. A copy found elsewhere (a producer with another partitioner) is skipped, and the
  consumers with `forward_misplaced` produce it to its home partition, where every consumer
  reads it in the same order as the rest of its subject's events. So every copy of one event
  identity (`Envelope.identity`) meets every consumer on one partition, in one order, and the
  first copy counts everywhere whatever partitioner a producer used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.events.codec import DecodeError, decode, encode
from libs.events.models import Event
from libs.events.rejections import RejectReason
from libs.service.db import DATABASE_UNAVAILABLE, Connection
from libs.service.deadletter import DeadLetter, DeadLetterWriter
from libs.service.kafka import BrokerUnavailableError, bounded, home_partition

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Consumed:
    """One decoded event and where it sat in the log."""

    event: Event
    partition: int
    offset: int
    timestamp_ms: int
    #: The record's value as it was on the log (what a dead letter carries).
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a consumer is through the partitions it holds, as of its last fetch."""

    #: Partitions of the topic (0 until the consumer has its metadata).
    partitions: int
    #: Records between the position and the end, per assigned partition with a known end.
    behind: dict[int, int]

    @property
    def at_end(self) -> list[int]:
        """Assigned partitions read to their end."""
        return sorted(p for p, n in self.behind.items() if n == 0)


@dataclass(slots=True)
class Batch:
    """Decoded events of one fetch and the next offset of every partition they came from."""

    events: list[Consumed]
    positions: dict[int, int]
    dead_letters: int = 0


ApplyBatch = Callable[[Batch], Awaitable[None]]
Refuse = Callable[[Consumed, BaseException], Awaitable[None]]
Isolate = Callable[[ApplyBatch, Batch], Awaitable[None]]


class EarlierBatchFailedError(Exception):
    """A sink that commits in the background found that an earlier batch did not commit.

    Never blamed on the batch at hand: the loop re-reads from the stored positions.
    """


# Faults of the infrastructure rather than of an event: retrying the same batch later can
# succeed, so they are never blamed on an event. Anything else a sink raises is.
_TRANSIENT: tuple[type[BaseException], ...] = (
    *DATABASE_UNAVAILABLE,
    EarlierBatchFailedError,
    BrokerUnavailableError,
    KafkaError,
    # A serialization failure or a deadlock: the same batch succeeds when tried again.
    asyncpg.TransactionRollbackError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is an infrastructure fault (retry the batch) rather than a refused event."""
    return isinstance(exc, _TRANSIENT)


def halves(batch: Batch) -> tuple[Batch, Batch]:
    """Two batches that, applied in order, do what `batch` does: each with its own positions."""
    middle = len(batch.events) // 2
    first = Batch(events=batch.events[:middle], positions={})
    for item in first.events:
        first.positions[item.partition] = item.offset + 1
    return first, Batch(events=batch.events[middle:], positions=dict(batch.positions))


async def apply_isolating(apply: ApplyBatch, batch: Batch, refuse: Refuse) -> None:
    """Apply `batch`; when it is refused, set the refused events aside and apply the rest.

    A refusal (any error but an infrastructure fault) fails the same way on every retry, so
    the batch is halved until the refused event is alone: `refuse` gets it with the error,
    its position is applied without it, and every other event is applied exactly as it would
    have been. Infrastructure faults propagate, for the caller to retry later.
    """
    try:
        await apply(batch)
    except Exception as exc:
        if is_transient(exc) or not batch.events:
            raise
        if len(batch.events) == 1:
            await refuse(batch.events[0], exc)
            await apply(Batch(events=[], positions=batch.positions))
            return
        first, second = halves(batch)
        await apply_isolating(apply, first, refuse)
        await apply_isolating(apply, second, refuse)


class Sink(Protocol):
    """Where a consumer's effects and positions are kept, together."""

    async def load_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """Next offset to read per partition; partitions missing start from the beginning."""
        ...

    async def apply(self, batch: Batch) -> None:
        """Apply the events and keep `batch.positions` atomically with them."""
        ...


class TransactionalHandler(Protocol):
    """Writes one batch's rows inside the transaction the sink opened."""

    async def __call__(self, conn: Connection, events: Sequence[Consumed]) -> None: ...


LOAD_OFFSETS = """
SELECT partition, next_offset FROM consumer_offsets
WHERE consumer = $1 AND topic = $2 AND epoch = $3
"""

SAVE_OFFSETS = """
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, epoch, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (consumer, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, epoch = EXCLUDED.epoch, updated_at = now()
"""


async def load_offsets(
    conn: Connection | asyncpg.Pool, *, consumer: str, topic: str, epoch: str
) -> dict[int, int]:
    """Stored positions of `consumer` that belong to this broker epoch."""
    rows = await conn.fetch(LOAD_OFFSETS, consumer, topic, epoch)
    return {r["partition"]: r["next_offset"] for r in rows}


async def save_offsets(
    conn: Connection, *, consumer: str, topic: str, epoch: str, positions: dict[int, int]
) -> None:
    """Store positions in the caller's transaction."""
    if positions:
        await conn.executemany(
            SAVE_OFFSETS, [(consumer, topic, p, o, epoch) for p, o in positions.items()]
        )


class PostgresSink:
    """A sink whose handler writes rows and whose offsets go in the same transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        consumer: str,
        topic: str,
        epoch: str,
        handler: TransactionalHandler,
    ) -> None:
        self.pool = pool
        self.consumer = consumer
        self.topic = topic
        self.epoch = epoch
        self.handler = handler

    async def load_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """Positions from PostgreSQL; another epoch's offsets mean the new log starts at 0."""
        stored = await load_offsets(
            self.pool, consumer=self.consumer, topic=self.topic, epoch=self.epoch
        )
        return {p: stored[p] for p in partitions if p in stored}

    async def apply(self, batch: Batch) -> None:
        """Rows and offsets in one transaction: both land or neither does."""
        async with self.pool.acquire() as conn, conn.transaction():
            if batch.events:
                await self.handler(conn, batch.events)
            await save_offsets(
                conn,
                consumer=self.consumer,
                topic=self.topic,
                epoch=self.epoch,
                positions=batch.positions,
            )


@dataclass
class _Metrics:
    events: Counter
    dlq: Counter
    refused: Counter
    misplaced: Counter
    failures: Gauge
    lag: Gauge
    position: Gauge
    caught_up: Gauge
    batch_seconds: Histogram

    @classmethod
    def build(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            events=Counter(
                "tollgate_consumer_events_total",
                "Events consumed and applied, by type",
                ["consumer", "type"],
                registry=registry,
            ),
            dlq=Counter(
                "tollgate_consumer_dlq_total",
                "Records sent to the dead-letter topic, by reason",
                ["consumer", "reason"],
                registry=registry,
            ),
            refused=Counter(
                "tollgate_consumer_refused_total",
                "Decoded events the consumer's sink refused: each was dead-lettered once and "
                "skipped, so it counts nowhere in this consumer",
                ["consumer"],
                registry=registry,
            ),
            misplaced=Counter(
                "tollgate_consumer_misplaced_total",
                "Events found on another partition than their key's home partition (a "
                "producer with another partitioner); skipped there, counted once forwarded home",
                ["consumer"],
                registry=registry,
            ),
            failures=Gauge(
                "tollgate_consumer_consecutive_failures",
                "Attempts in a row that failed to apply the batch at the consumer's position "
                "(0 after a success)",
                ["consumer"],
                registry=registry,
            ),
            lag=Gauge(
                "tollgate_consumer_lag",
                "Records between the consumer's position and the partition's end",
                ["consumer", "partition"],
                registry=registry,
            ),
            position=Gauge(
                "tollgate_consumer_position",
                "Next offset the consumer reads in the partition: what it applied moves it, so "
                "a lag that stays while this stands still is a consumer making no progress",
                ["consumer", "partition"],
                registry=registry,
            ),
            caught_up=Gauge(
                "tollgate_consumer_caught_up",
                "1 once the consumer has read the log as it stood at start",
                ["consumer"],
                registry=registry,
            ),
            batch_seconds=Histogram(
                "tollgate_consumer_batch_seconds",
                "Time to apply one batch (decode excluded)",
                ["consumer"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            ),
        )


@dataclass
class _State:
    positions: dict[int, int] = field(default_factory=dict)
    targets: dict[int, int] = field(default_factory=dict)


#: Pause between metadata requests while the topic is not known to the broker yet.
METADATA_RETRY_S = 0.25
#: The longest pause between two attempts at a batch that keeps failing.
MAX_RETRY_DELAY_S = 30.0
#: How long a clean stop keeps consuming to read the log to its end.
DRAIN_S = 5.0


class ConsumerLoop:
    """Consume `topic` into a sink, as a group member (`group_id`) or over every partition."""

    def __init__(
        self,
        *,
        name: str,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        sink: Sink,
        dlq_producer: AIOKafkaProducer,
        registry: CollectorRegistry,
        group_id: str | None = None,
        forward_misplaced: bool = False,
        max_records: int = 5000,
        fetch_max_wait_ms: int = 20,
        fetch_min_bytes: int = 1,
        timeout_s: float = 10.0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        retry_delay_s: float = 1.0,
        yield_every: int = 0,
    ) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.topic = topic
        self.sink = sink
        # Also produces misplaced events to their home partition when `forward_misplaced`.
        self.dlq_producer = dlq_producer
        self.group_id = group_id
        self.forward_misplaced = forward_misplaced
        self.max_records = max_records
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.fetch_min_bytes = fetch_min_bytes
        self.timeout_s = timeout_s
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.retry_delay_s = retry_delay_s
        # Decoding is synchronous work on the event loop; with `yield_every` > 0 the loop gets
        # a turn (an HTTP request is answered) after every that many records.
        self.yield_every = yield_every
        self.metrics = _Metrics.build(registry)
        self.metrics.failures.labels(name).set(0)
        self.dead_letters = DeadLetterWriter(
            dlq_producer,
            topic=dlq_topic,
            source_topic=topic,
            consumer=name,
            counter=self.metrics.dlq,
            timeout_s=timeout_s,
        )
        self.caught_up = asyncio.Event()
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self._fetches = 0
        self._state = _State()
        # Records already dead-lettered or forwarded by this process, until the positions
        # stored move past them: a batch that is read again never sends them twice.
        self._handled: set[tuple[int, int]] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._log = log.bind(consumer=name, topic=topic)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled, reconnecting after broker trouble."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning("consumer_restarting", error=self.last_error)
                await asyncio.sleep(self.retry_delay_s)

    async def drain(self, timeout_s: float = DRAIN_S) -> bool:
        """Before a clean stop: keep consuming until the log is read to its end, or time is up.

        The end is the one the broker reports to fetches made after this call began, so an
        event acknowledged just before the stop is still applied. With the embedded broker,
        whose log is gone once it stops, this is what keeps a clean stop from losing events;
        True when drained.
        """
        started = self._fetches
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            consumer = self._consumer
            if consumer is None:
                return False
            if self._fetches >= started + 2 and self._read_to_end(consumer):
                return True
            await asyncio.sleep(0.02)
        self._log.warning("consumer_drain_incomplete", lag=sum(self.lag().values()))
        return False

    def _read_to_end(self, consumer: AIOKafkaConsumer) -> bool:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and self._state.positions.get(tp.partition, 0) < highwater:
                return False
        return True

    def lag(self) -> dict[int, int]:
        """Records behind the end of each assigned partition, as last measured."""
        return {
            p: max(0, self._state.targets.get(p, 0) - pos)
            for p, pos in self._state.positions.items()
        }

    def progress(self) -> Progress:
        """Where each assigned partition stands against its end as last fetched."""
        consumer = self._consumer
        if consumer is None:
            return Progress(0, {})
        behind: dict[int, int] = {}
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                behind[tp.partition] = max(
                    0, highwater - self._state.positions.get(tp.partition, 0)
                )
        return Progress(len(consumer.partitions_for_topic(self.topic) or ()), behind)

    async def _run_once(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            fetch_min_bytes=self.fetch_min_bytes,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            request_timeout_ms=int(self.timeout_s * 1000) + 30_000,
        )
        await bounded(consumer.start(), self.timeout_s, "consumer start")
        self._consumer = consumer
        try:
            if self.group_id is None:
                await self._assign_all(consumer)
            else:
                consumer.subscribe([self.topic], listener=_Rebalance(self))
            await self._poll_forever(consumer)
        finally:
            self._consumer = None
            with suppress(Exception):
                await asyncio.wait_for(consumer.stop(), self.timeout_s)

    async def _assign_all(self, consumer: AIOKafkaConsumer) -> None:
        deadline = time.monotonic() + self.timeout_s
        partitions = consumer.partitions_for_topic(self.topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"no metadata for topic {self.topic}")
            await bounded(consumer._client.force_metadata_update(), self.timeout_s, "metadata")  # noqa: SLF001  # aiokafka has no public metadata refresh for manual assignment
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                # A missing topic is answered at once: asking again straight away would keep
                # this process and the broker busy until the deadline.
                await asyncio.sleep(METADATA_RETRY_S)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await self._seek_to_stored(consumer, tps)

    async def _seek_to_stored(
        self, consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]
    ) -> None:
        stored = await self.sink.load_positions([tp.partition for tp in tps])
        for tp in tps:
            start = stored.get(tp.partition, 0)
            consumer.seek(tp, start)
            self._state.positions[tp.partition] = start
        self._log.info(
            "consumer_positions_loaded",
            partitions=len(tps),
            stored=len(stored),
            total_offset=sum(stored.values()),
        )

    async def _on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self._state.positions.pop(tp.partition, None)
            self._state.targets.pop(tp.partition, None)
            with suppress(KeyError):
                self.metrics.lag.remove(self.name, str(tp.partition))
            with suppress(KeyError):
                self.metrics.position.remove(self.name, str(tp.partition))

    async def _on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if self._consumer is not None and assigned:
            await self._seek_to_stored(self._consumer, assigned)

    # -- the loop --------------------------------------------------------------------------

    async def _poll_forever(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=self.max_records)
            self._fetches += 1
            batch = await self._decode(fetched, self._partition_count(consumer))
            if batch.events or batch.positions:
                started = time.perf_counter()
                try:
                    await self.isolate(self.sink.apply, batch)
                except Exception as exc:
                    # Nothing of the batch counts: re-read from what the sink really kept.
                    await self._failed(exc)
                    await self._seek_to_stored(consumer, list(consumer.assignment()))
                    continue
                self.metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
                self._succeeded(batch.positions)
                by_type: dict[str, int] = {}
                for item in batch.events:
                    by_type[item.event.type] = by_type.get(item.event.type, 0) + 1
                for event_type, count in by_type.items():
                    self.metrics.events.labels(self.name, event_type).inc(count)
            self._measure(consumer)
            if fetched:
                # `getmany` hands over records already fetched without ever suspending, so a
                # backlog would be worked through in one go while nothing else runs.
                await asyncio.sleep(0)

    async def isolate(self, apply: ApplyBatch, batch: Batch) -> None:
        """`apply_isolating` with this consumer's dead letters: the one rule for refused events.

        Sinks that commit in the background (reports) call it themselves for what they commit.
        """
        await apply_isolating(apply, batch, self.refuse)

    async def refuse(self, item: Consumed, exc: BaseException) -> None:
        """Dead-letter an event the sink refused (once per process), count it, and go on."""
        position = (item.partition, item.offset)
        if position in self._handled:
            # Refused and dead-lettered already; the batch is being read again after a fault.
            return
        reason = f"refused by {self.name}: {type(exc).__name__}: {exc}"
        self.metrics.refused.labels(self.name).inc()
        self._log.error(
            "event_refused",
            event_id=item.event.id,
            type=item.event.type,
            partition=item.partition,
            offset=item.offset,
            reason=reason,
        )
        value = item.raw if item.raw is not None else encode(item.event)
        await self.dead_letters.write(
            DeadLetter(
                item.partition,
                item.offset,
                value,
                item.event.partition_key.encode(),
                reason,
                RejectReason.REFUSED,
            )
        )
        self._handled.add(position)

    async def _failed(self, exc: Exception) -> None:
        self.consecutive_failures += 1
        self.metrics.failures.labels(self.name).set(self.consecutive_failures)
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._log.warning(
            "batch_apply_failed",
            error=self.last_error,
            consecutive_failures=self.consecutive_failures,
        )
        delay = self.retry_delay_s * 2 ** min(self.consecutive_failures - 1, 16)
        await asyncio.sleep(min(delay, max(self.retry_delay_s, MAX_RETRY_DELAY_S)))

    def _succeeded(self, positions: dict[int, int]) -> None:
        if self.consecutive_failures:
            self._log.info("batch_apply_recovered", after_failures=self.consecutive_failures)
            self.consecutive_failures = 0
            self.metrics.failures.labels(self.name).set(0)
        self.last_error = None
        self._state.positions.update(positions)
        if self._handled:
            stored = self._state.positions
            self._handled = {(p, o) for p, o in self._handled if o >= stored.get(p, 0)}

    def _partition_count(self, consumer: AIOKafkaConsumer) -> int:
        partitions = consumer.partitions_for_topic(self.topic)
        return len(partitions) if partitions else 0

    async def _decode(
        self, fetched: dict[TopicPartition, list[object]], partition_count: int
    ) -> Batch:
        events: list[Consumed] = []
        positions: dict[int, int] = {}
        dead = 0
        every = self.yield_every
        seen = 0
        for tp, records in fetched.items():
            for record in records:
                seen += 1
                if every and seen % every == 0:
                    await asyncio.sleep(0)
                raw: bytes = record.value  # type: ignore[attr-defined]
                try:
                    event = decode(raw)
                except DecodeError as exc:
                    await self._dead_letter(tp, record, exc.reason, exc.code)
                    dead += 1
                    continue
                offset: int = record.offset  # type: ignore[attr-defined]
                home = (
                    home_partition(event.partition_key, partition_count)
                    if partition_count
                    else tp.partition
                )
                if home != tp.partition:
                    await self._misplaced(tp, offset, raw, event, home)
                    continue
                events.append(
                    Consumed(event, tp.partition, offset, record.timestamp, raw)  # type: ignore[attr-defined]
                )
            if records:
                positions[tp.partition] = records[-1].offset + 1  # type: ignore[attr-defined]
        return Batch(events=events, positions=positions, dead_letters=dead)

    async def _misplaced(
        self, tp: TopicPartition, offset: int, raw: bytes, event: Event, home: int
    ) -> None:
        """Skip an event found off its home partition; forward it home if this consumer does."""
        self.metrics.misplaced.labels(self.name).inc()
        position = (tp.partition, offset)
        if not self.forward_misplaced or position in self._handled:
            return
        await bounded(
            self.dlq_producer.send_and_wait(
                self.topic,
                value=raw,
                key=event.partition_key.encode(),
                partition=home,
                headers=[("forwarded_from", f"{tp.partition}:{offset}".encode())],
            ),
            self.timeout_s,
            "forward to the home partition",
        )
        self._handled.add(position)
        self._log.info(
            "event_forwarded_home",
            event_id=event.id,
            partition=tp.partition,
            offset=offset,
            home=home,
        )

    async def _dead_letter(
        self, tp: TopicPartition, record: object, reason: str, code: RejectReason
    ) -> None:
        offset: int = record.offset  # type: ignore[attr-defined]
        self._log.warning(
            "event_dead_lettered", partition=tp.partition, offset=offset, reason=reason
        )
        if (tp.partition, offset) in self._handled:
            return
        await self.dead_letters.write(
            DeadLetter(
                tp.partition,
                offset,
                record.value,  # type: ignore[attr-defined]
                record.key,  # type: ignore[attr-defined]
                reason,
                code,
            )
        )
        self._handled.add((tp.partition, offset))

    def _measure(self, consumer: AIOKafkaConsumer) -> None:
        state = self._state
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            # The first end seen after start is the log "as it stood" that readiness waits for.
            state.targets.setdefault(tp.partition, highwater)
            pos = state.positions.get(tp.partition, 0)
            self.metrics.lag.labels(self.name, str(tp.partition)).set(max(0, highwater - pos))
            self.metrics.position.labels(self.name, str(tp.partition)).set(pos)
        if not self.caught_up.is_set():
            assigned = {tp.partition for tp in consumer.assignment()}
            if assigned and all(
                p in state.targets and state.positions.get(p, 0) >= state.targets[p]
                for p in assigned
            ):
                self.caught_up.set()
                self.metrics.caught_up.labels(self.name).set(1)
                self._log.info("consumer_caught_up", partitions=len(assigned))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.loop._on_revoked(revoked)  # noqa: SLF001

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.loop._on_assigned(assigned)  # noqa: SLF001
