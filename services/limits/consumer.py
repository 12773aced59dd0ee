"""The log side of limits: folding batches into the ledger, and snapshotting it.

The consumer loop reads every partition (no consumer group) into `LimitsSink`. The sink
keeps its positions in the ledger itself: a new replica restores the newest snapshot of
this log and the loop resumes from the positions stored with it, so only the tail is
replayed. Snapshots go to PostgreSQL periodically and at shutdown.

Restarts of the embedded broker start a new, empty log (a new epoch). Spend must survive
that, so a replica that finds no snapshot of its own log carries the newest snapshot of the
previous one forward: its totals, groups and remembered event identities become the base,
and the new log is read from its start on top (a resend of an event the base counted is
recognised by identity). What the previous log held after that snapshot is recovered from
the reports archive when it is in the same database (`TOLLGATE_LIMITS_ARCHIVE_CATCHUP`):
every chat message projected since then is counted unless the base already has it.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Protocol

import structlog

from libs.events.models import ChatUsageRecorded
from libs.service.consumer import Batch, Consumed
from services.limits.domain import Ledger, Limiter
from services.limits.metrics import LimitsMetrics
from services.limits.snapshot import (
    READABLE_SNAPSHOT_FORMATS,
    SNAPSHOT_FORMAT,
    LedgerImage,
    decode,
    image,
)
from services.limits.storage import ChatArchive, Snapshot, SnapshotStore

log = structlog.get_logger(__name__)

# Level 3 compresses the spend maps about as well as 6 at a third of the time.
_ZLIB_LEVEL = 3
#: Events folded in between turns of the event loop. Folding one in takes a few µs; a batch
#: of a hundred folded in one go kept the checks that came meanwhile waiting half a
#: millisecond.
APPLY_CHUNK = 32


class Feed(Protocol):
    """What reads the log into the sink: the real `ConsumerLoop`, or a test's fake."""

    caught_up: asyncio.Event

    async def run(self) -> None:
        """Consume until cancelled."""
        ...

    async def drain(self, timeout_s: float = ...) -> bool:
        """Before a clean stop: read the log to its end (or give up after `timeout_s`)."""
        ...


@dataclass
class SnapshotStatus:
    """When the newest snapshot this replica knows of (wrote or loaded) was taken."""

    started_at: float = field(default_factory=time.time)
    newest_at: float | None = None
    newest_positions: dict[int, int] | None = None

    def age(self, now_s: float) -> float:
        """Seconds since the newest snapshot, or since start when there is none."""
        return max(0.0, now_s - (self.newest_at if self.newest_at is not None else self.started_at))


class LimitsSink:
    """Applies batches to the in-memory ledger; its positions live in the ledger and snapshots."""

    def __init__(
        self,
        limiter: Limiter,
        snapshots: SnapshotStore,
        *,
        topic: str,
        epoch: str,
        dedup_window_ms: int,
        metrics: LimitsMetrics,
        status: SnapshotStatus,
        clock: Callable[[], float] = time.time,
        archive: ChatArchive | None = None,
        on_spend: Callable[[set[tuple[str, str | None]]], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.snapshots = snapshots
        self.topic = topic
        self.epoch = epoch
        self.dedup_window_ms = dedup_window_ms
        self.metrics = metrics
        self.status = status
        self.clock = clock
        self.archive = archive
        #: Told which users' spend a chunk of events raised (budget notifications).
        self.on_spend = on_spend
        self.restored = False
        #: The previous epoch's snapshot this replica started from, if it did.
        self.carried: Snapshot | None = None
        self._log = log.bind(topic=topic, epoch=epoch)

    async def load_positions(self, partitions: Sequence[int]) -> dict[int, int]:
        """On the first call, restore the newest snapshot; then resume where memory stands.

        Later calls (the loop reconnecting, or re-reading after a failed batch) keep the
        ledger: events it already holds are skipped by id on the way past again.
        """
        if not self.restored:
            await self._restore()
            self.restored = True
        positions = self.limiter.ledger.positions
        return {p: positions[p] for p in partitions if p in positions}

    async def _restore(self) -> None:
        snapshot = None
        for fmt in sorted(READABLE_SNAPSHOT_FORMATS, reverse=True):
            snapshot = await self.snapshots.latest(topic=self.topic, epoch=self.epoch, format=fmt)
            if snapshot is not None:
                break
        if snapshot is not None:
            await self._load(snapshot, carried=False)
            return
        previous = await self.snapshots.newest_of_another_epoch(
            topic=self.topic, epoch=self.epoch, formats=READABLE_SNAPSHOT_FORMATS
        )
        if previous is None:
            self._log.info("limits_snapshot_none", action="replaying the log from the start")
            return
        if await self._load(previous, carried=True):
            self.carried = previous
            await self._catch_up(previous)

    async def _load(self, snapshot: Snapshot, *, carried: bool) -> bool:
        """Put a snapshot's ledger in force; one of another epoch keeps no positions."""
        try:
            raw = await asyncio.to_thread(zlib.decompress, snapshot.state)
            ledger = decode(raw, dedup_window_ms=self.dedup_window_ms)
        except (zlib.error, ValueError, KeyError, TypeError) as exc:
            self._log.warning(
                "limits_snapshot_unreadable",
                snapshot_id=snapshot.id,
                error=f"{type(exc).__name__}: {exc}",
                action="replaying the log from the start",
            )
            return False
        ledger.prune(self.limiter.current_periods(self.clock()))
        created = snapshot.created_at.timestamp() if snapshot.created_at else self.clock()
        if carried:
            # Its offsets point into a log that no longer exists: the new one is read from 0.
            ledger.positions = {}
        else:
            self.status.newest_at = created
            self.status.newest_positions = dict(ledger.positions)
        self.limiter.ledger = ledger
        self._log.info(
            "limits_snapshot_carried" if carried else "limits_snapshot_loaded",
            snapshot_id=snapshot.id,
            snapshot_epoch=snapshot.epoch,
            age_s=round(self.clock() - created, 3),
            compressed_bytes=len(snapshot.state),
            events_applied=ledger.applied,
            next_offsets_total=sum(ledger.positions.values()),
        )
        return True

    async def _catch_up(self, snapshot: Snapshot) -> None:
        """Count what the reports archive took in after `snapshot`, unless the ledger has it.

        Rows from the whole dedup window before the snapshot are read too: whatever the
        ledger already counted is still among the identities it remembers, so nothing is
        counted twice, and nothing limits had not yet applied when the snapshot was taken is
        missed.
        """
        archive = self.archive
        if archive is None or snapshot.created_at is None:
            return
        try:
            if not await archive.available():
                self._log.info("limits_archive_catchup_skipped", reason="no reports archive here")
                return
            window = timedelta(milliseconds=self.dedup_window_ms) - timedelta(hours=1)
            current = self.limiter.current_periods(self.clock())
            occurred_from = min(period.start for period in current)
            ledger = self.limiter.ledger
            # The new log's records carry about this time: remembered identities are kept
            # for the window from here, as if the rows had just been read from the log.
            now_ms = int(self.clock() * 1000)
            rows = counted = 0
            async for page in archive.chat_since(
                projected_from=snapshot.created_at - max(window, timedelta(0)),
                occurred_from=occurred_from,
            ):
                for row in page:
                    outcome = ledger.count_usage(
                        identity=row.identity,
                        user_id=row.user_id,
                        model=row.model,
                        cost_micros=row.cost_micros,
                        occurred_at=row.occurred_at.astimezone(UTC),
                        partition=row.partition,
                        log_ms=now_ms,
                        title=row.title,
                        org_id=row.org_id,
                    )
                    rows += 1
                    counted += outcome != "duplicate"
                await asyncio.sleep(0)
        except Exception as exc:
            self._log.warning(
                "limits_archive_catchup_failed",
                error=f"{type(exc).__name__}: {exc}",
                action="the previous log's tail after the snapshot is not counted",
            )
            return
        self._log.info(
            "limits_archive_catchup",
            snapshot_taken_at=snapshot.created_at.astimezone(UTC).isoformat(),
            rows_read=rows,
            counted=counted,
        )

    async def apply(self, batch: Batch) -> None:
        """Fold the batch in a chunk at a time, moving the positions with the events.

        Checks are answered between chunks and see the log up to the last event folded in;
        the ledger's positions always match what it holds, so a snapshot taken between two
        chunks resumes right after it.
        """
        ledger = self.limiter.ledger
        events = batch.events
        for start in range(0, len(events), APPLY_CHUNK):
            if start:
                await asyncio.sleep(0)
            self._fold(ledger, events[start : start + APPLY_CHUNK])
        # Records that were dead-lettered instead of folded in move the positions too.
        ledger.positions.update(batch.positions)
        ledger.prune(self.limiter.current_periods(self.clock()))

    def _fold(self, ledger: Ledger, chunk: Sequence[Consumed]) -> None:
        metrics = self.metrics
        positions = ledger.positions
        applied = duplicates = 0
        spend: dict[str, int] = {}
        spenders: set[tuple[str, str | None]] = set()
        for item in chunk:
            event = item.event
            outcome = ledger.apply(
                event, partition=item.partition, offset=item.offset, log_ms=item.timestamp_ms
            )
            positions[item.partition] = item.offset + 1
            if outcome == "spend":
                applied += 1
                assert isinstance(event, ChatUsageRecorded)
                model = event.data.model
                spend[model] = spend.get(model, 0) + (event.data.cost_micros or 0)
                spenders.add((event.user_id, event.org_id))
            elif outcome in ("unpriced", "free", "group"):
                applied += 1
            elif outcome == "duplicate":
                duplicates += 1
        for model, micros in spend.items():
            metrics.spend_micros.labels(model).inc(micros)
        if applied:
            metrics.events_applied.inc(applied)
        if duplicates:
            metrics.duplicates.inc(duplicates)
        if spenders and self.on_spend is not None:
            self.on_spend(spenders)


def _encode(image: LedgerImage) -> tuple[bytes, bytes]:
    raw = image.encode()
    return raw, zlib.compress(raw, _ZLIB_LEVEL)


class Snapshotter:
    """Writes the ledger with its positions to the snapshot store."""

    def __init__(
        self,
        limiter: Limiter,
        store: SnapshotStore,
        *,
        topic: str,
        epoch: str,
        keep: int,
        metrics: LimitsMetrics,
        status: SnapshotStatus,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.store = store
        self.topic = topic
        self.epoch = epoch
        self.keep = keep
        self.metrics = metrics
        self.status = status
        self.clock = clock
        self._log = log.bind(topic=topic, epoch=epoch)

    async def take(self) -> Snapshot | None:
        """Store a snapshot unless nothing moved since the newest one; returns what was stored."""
        ledger = self.limiter.ledger
        if not ledger.positions or ledger.positions == self.status.newest_positions:
            return None
        started = time.perf_counter()
        ledger.prune(self.limiter.current_periods(self.clock()))
        # Copied without awaiting, so the state and its positions are one instant; the
        # encoding and compression then run in a thread while checks go on.
        taken = image(ledger)
        taken_at = self.clock()
        paused_ms = (time.perf_counter() - started) * 1000
        raw, state = await asyncio.to_thread(_encode, taken)
        saved = await self.store.save(
            Snapshot(
                topic=self.topic,
                epoch=self.epoch,
                format=SNAPSHOT_FORMAT,
                positions=taken.positions,
                events_applied=taken.applied,
                state=state,
            ),
            keep=self.keep,
        )
        positions = taken.positions
        elapsed = time.perf_counter() - started
        self.status.newest_at = taken_at
        self.status.newest_positions = positions
        self.metrics.snapshot_seconds.observe(elapsed)
        self.metrics.snapshot_bytes.set(len(state))
        self._log.info(
            "limits_snapshot_written",
            snapshot_id=saved.id,
            raw_bytes=len(raw),
            compressed_bytes=len(state),
            next_offsets_total=sum(positions.values()),
            seconds=round(elapsed, 3),
            loop_paused_ms=round(paused_ms, 2),
        )
        return saved

    async def run_forever(self, interval_s: float, ready: Callable[[], bool]) -> None:
        """Snapshot every `interval_s` once caught up; failures are logged and retried."""
        while True:
            await asyncio.sleep(interval_s)
            if not ready():
                continue
            try:
                await self.take()
            except Exception as exc:
                self._log.warning("limits_snapshot_failed", error=f"{type(exc).__name__}: {exc}")
