"""Limits across a broker epoch change: the previous snapshot carried forward, its tail recovered."""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from libs.events.models import ChatUsage, ChatUsageRecorded
from services.limits.consumer import LimitsSink, SnapshotStatus
from services.limits.domain import MONTH, Ledger, Limiter, period_key
from services.limits.metrics import LimitsMetrics
from services.limits.snapshot import SNAPSHOT_FORMAT, image
from services.limits.storage import (
    ArchivedChat,
    InMemoryChatArchive,
    InMemorySnapshotStore,
    Snapshot,
)

WINDOW_MS = 48 * 3_600_000
NOW = datetime.now(UTC)


def chat(event_id: str, user: str, cost: int, *, at: datetime = NOW) -> ChatUsageRecorded:
    """A chat message at `at`."""
    return ChatUsageRecorded(
        id=event_id,
        occurred_at=at,
        user_id=user,
        data=ChatUsage(
            chat_id="c", message_id=event_id, model="m", input_tokens=1, output_tokens=1,
            cost_micros=cost,
        ),
    )  # fmt: skip


def archived(event: ChatUsageRecorded, partition: int) -> ArchivedChat:
    """The archive's row for `event`."""
    return ArchivedChat(
        identity=event.identity,
        user_id=event.user_id,
        model=event.data.model,
        cost_micros=event.data.cost_micros,
        occurred_at=event.occurred_at,
        partition=partition,
    )


def sink_for(
    epoch: str, store: InMemorySnapshotStore, archive: InMemoryChatArchive | None
) -> LimitsSink:
    """A limits sink of `epoch` on the given stores."""
    return LimitsSink(
        Limiter(Ledger(dedup_window_ms=WINDOW_MS)),
        store,
        topic="t",
        epoch=epoch,
        dedup_window_ms=WINDOW_MS,
        metrics=LimitsMetrics.build(CollectorRegistry()),
        status=SnapshotStatus(),
        archive=archive,
    )


async def previous_epoch(store: InMemorySnapshotStore, *events: ChatUsageRecorded) -> Snapshot:
    """The last snapshot of epoch `old`, holding `events` (all read from partition 3)."""
    ledger = Ledger(dedup_window_ms=WINDOW_MS)
    now_ms = int(time.time() * 1000)
    for offset, event in enumerate(events):
        ledger.apply(event, partition=3, offset=offset, log_ms=now_ms)
        ledger.positions[3] = offset + 1
    taken = image(ledger)
    return await store.save(
        Snapshot(
            topic="t",
            epoch="old",
            format=SNAPSHOT_FORMAT,
            positions=taken.positions,
            events_applied=taken.applied,
            state=zlib.compress(taken.encode()),
        ),
        keep=3,
    )


def month_spend(sink: LimitsSink, user: str) -> int:
    """`user`'s spend this month in the sink's ledger."""
    return sink.limiter.ledger.spent(MONTH, period_key("month", NOW), user)


async def test_a_new_epoch_starts_from_the_previous_snapshot_and_reads_its_log_from_zero() -> None:
    """The carried ledger keeps every user's spend; its offsets are dropped; a resend is a duplicate."""
    store = InMemorySnapshotStore()
    first = chat("e1", "ann", 600)
    await previous_epoch(store, first, chat("e2", "bob", 40))
    sink = sink_for("new", store, archive=None)
    assert await sink.load_positions(range(12)) == {}
    assert (month_spend(sink, "ann"), month_spend(sink, "bob")) == (600, 40)
    assert sink.carried is not None
    assert sink.status.newest_positions is None
    outcome = sink.limiter.ledger.apply(
        first, partition=3, offset=0, log_ms=int(time.time() * 1000)
    )
    assert outcome == "duplicate"
    assert month_spend(sink, "ann") == 600


async def test_the_previous_logs_tail_is_recovered_from_the_archive_once() -> None:
    """Archived usage after the snapshot counts once; what the snapshot has, or older months, does not."""
    store = InMemorySnapshotStore()
    counted_before = chat("a1", "ann", 100)
    snapshot = await previous_epoch(store, counted_before)
    assert snapshot.created_at is not None
    taken = snapshot.created_at
    last_month = (NOW.replace(day=1) - timedelta(days=3)).replace(tzinfo=UTC)
    tail = [chat("a2", "ann", 20), chat("b1", "bob", 7)]
    archive = InMemoryChatArchive(
        [
            (taken - timedelta(seconds=5), archived(counted_before, 3)),
            (taken + timedelta(seconds=1), archived(tail[0], 3)),
            (taken + timedelta(seconds=2), archived(tail[1], 5)),
            (taken + timedelta(seconds=3), archived(chat("old", "ann", 5_000, at=last_month), 3)),
        ]
    )
    sink = sink_for("new", store, archive)
    await sink.load_positions(range(12))
    assert (month_spend(sink, "ann"), month_spend(sink, "bob")) == (120, 7)
    # The same events arriving again on the new log are recognised.
    ledger = sink.limiter.ledger
    now_ms = int(time.time() * 1000)
    assert ledger.apply(tail[1], partition=5, offset=0, log_ms=now_ms) == "duplicate"
    assert ledger.apply(tail[0], partition=3, offset=0, log_ms=now_ms) == "duplicate"


async def test_the_same_epochs_snapshot_wins_over_an_older_epoch() -> None:
    """A snapshot of the current log is resumed with its positions; nothing is carried."""
    store = InMemorySnapshotStore()
    ledger = Ledger(dedup_window_ms=WINDOW_MS)
    ledger.apply(chat("n1", "ann", 9), partition=0, offset=0, log_ms=int(time.time() * 1000))
    ledger.positions[0] = 1
    taken = image(ledger)
    await store.save(
        Snapshot(
            topic="t", epoch="new", format=SNAPSHOT_FORMAT, positions=taken.positions,
            events_applied=taken.applied, state=zlib.compress(taken.encode()),
        ),
        keep=3,
    )  # fmt: skip
    # Saving prunes other epochs' snapshots; put an older epoch's back beside it.
    elsewhere = InMemorySnapshotStore()
    store.snapshots.append(await previous_epoch(elsewhere, chat("e1", "ann", 600)))
    sink = sink_for("new", store, archive=InMemoryChatArchive())
    assert await sink.load_positions(range(12)) == {0: 1}
    assert sink.carried is None
    assert month_spend(sink, "ann") == 9
