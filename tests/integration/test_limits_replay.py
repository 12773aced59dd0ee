"""Limits against the real broker and PostgreSQL: snapshots, replay and the stored configuration."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.events.codec import encode
from libs.events.models import ChatUsage, ChatUsageRecorded, DirectoryGroup, Envelope, GroupUpdated
from libs.service.consumer import Consumed, ConsumerLoop
from libs.service.kafka import ensure_topics, home_partition, make_producer
from services.limits.consumer import LimitsSink, SnapshotStatus, Snapshotter
from services.limits.domain import DAY, MONTH, WEEK, Ledger, Limiter
from services.limits.metrics import LimitsMetrics
from services.limits.snapshot import SNAPSHOT_FORMAT
from services.limits.storage import (
    ChatArchive,
    InMemorySnapshotStore,
    PostgresChatArchive,
    PostgresConfigStore,
    PostgresSnapshotStore,
    Snapshot,
    SnapshotStore,
)
from services.reports.projection import Projector
from tests.support import Infra, eventually, unique

pytestmark = pytest.mark.integration

WINDOW_MS = 48 * 3_600_000


def workload(seed: int, count: int, *, resend_from: Sequence[Envelope] = ()) -> list[Envelope]:
    """Chat usage across users, organisations and periods, resends, titles, unpriced usage and
    group changes."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    users = [unique("user") for _ in range(6)]
    groups = [unique("grp") for _ in range(2)]
    orgs = [None, "org-a", "org-b"]
    out: list[Envelope] = []
    for n in range(count):
        roll = rng.random()
        pool = [*resend_from, *out]
        if roll < 0.12 and pool:
            out.append(rng.choice(pool))
            continue
        if roll < 0.2:
            out.append(
                GroupUpdated(
                    id=unique("grp-evt"),
                    occurred_at=now - timedelta(seconds=rng.randint(0, 300)),
                    org_id=rng.choice(orgs),
                    data=DirectoryGroup(
                        group_id=rng.choice(groups),
                        name="g",
                        member_ids=tuple(rng.sample(users, rng.randint(0, 4))),
                    ),
                )
            )
            continue
        out.append(
            ChatUsageRecorded(
                id=f"{seed}-{n}-{uuid.uuid4().hex[:8]}",
                occurred_at=now - timedelta(days=rng.choice([0, 0, 0, 1, 2, 8, 35])),
                user_id=rng.choice(users),
                org_id=rng.choice(orgs),
                data=ChatUsage(
                    chat_id="c",
                    message_id=f"m{n}",
                    model=rng.choice(["sonnet", "haiku"]),
                    input_tokens=10,
                    output_tokens=5,
                    cost_micros=rng.choice([None, 0, 7, 1_000, 25_000]),
                    purpose="title" if rng.random() < 0.1 else "chat",
                ),
            )
        )
    return out


async def produce(infra: Infra, topic: str, events: Sequence[Envelope]) -> None:
    """Put events on the topic keyed as ingest keys them, waiting for every acknowledgement."""
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, encode(e), key=e.partition_key.encode()) for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Replica:
    """A limiter fed by a real consumer loop, with its sink and snapshotter."""

    limiter: Limiter
    loop: ConsumerLoop
    sink: LimitsSink
    snapshotter: Snapshotter

    def records_read(self) -> int:
        """Records consumed so far over every partition."""
        return sum(self.limiter.ledger.positions.values())

    def totals(self) -> dict[str, object]:
        """Everything a check can read, plus memberships, organisations and models used."""
        ledger = self.limiter.ledger
        current = self.limiter.current_periods(time.time())
        ledger.prune(current)
        return {
            "spend": [ledger.totals(i, current[i].key) for i in (DAY, WEEK, MONTH)],
            "groups": {u: sorted(g) for u, g in ledger.user_groups.items()},
            "models": ledger.models_used(),
            "orgs": dict(ledger.user_orgs),
            "group_orgs": dict(ledger.group_orgs),
            "positions": dict(ledger.positions),
        }


@asynccontextmanager
async def replica(
    infra: Infra,
    topics: tuple[str, str],
    snapshots: SnapshotStore,
    *,
    epoch: str,
    archive: ChatArchive | None = None,
) -> AsyncIterator[Replica]:
    """Run a replica until the block ends."""
    registry = CollectorRegistry()
    metrics = LimitsMetrics.build(registry)
    status = SnapshotStatus()
    limiter = Limiter(Ledger(dedup_window_ms=WINDOW_MS))
    sink = LimitsSink(
        limiter,
        snapshots,
        topic=topics[0],
        epoch=epoch,
        dedup_window_ms=WINDOW_MS,
        metrics=metrics,
        status=status,
        archive=archive,
    )
    snapshotter = Snapshotter(
        limiter, snapshots, topic=topics[0], epoch=epoch, keep=3, metrics=metrics, status=status
    )
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    loop = ConsumerLoop(
        name="limits",
        bootstrap=infra.bootstrap,
        topic=topics[0],
        dlq_topic=topics[1],
        sink=sink,
        dlq_producer=producer,
        registry=registry,
    )
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(loop.caught_up.wait(), 20)
        yield Replica(limiter, loop, sink, snapshotter)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()


async def read_all(r: Replica, total: int) -> None:
    """Wait until the replica has read `total` records."""

    async def done() -> bool:
        return r.records_read() >= total

    await eventually(done, timeout_s=20)


async def test_replay_from_an_older_snapshot_gives_the_same_totals(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """Restoring an older snapshot and replaying the tail (resends included) matches the live totals."""
    store = PostgresSnapshotStore(db)
    first = workload(1, 250)
    await produce(infra, topics[0], first)
    async with replica(infra, topics, store, epoch=infra.epoch) as live:
        assert live.records_read() == len(first)
        older = await live.snapshotter.take()
        assert older is not None
        second = workload(2, 250, resend_from=first)
        await produce(infra, topics[0], second)
        await read_all(live, len(first) + len(second))
        newer = await live.snapshotter.take()
        assert newer is not None
        expected = live.totals()
        spend = expected["spend"]
        assert isinstance(spend, list)
        assert all(spend), "every period has spend"
        assert expected["groups"], "some users are in groups"
        # Record timestamps drive the dedup window: they must be the producer's clock.
        watermarks = [r.watermark_ms for r in live.limiter.ledger.recent.values()]
        assert all(abs(w / 1000 - time.time()) < 120 for w in watermarks)
    assert sum(older.positions.values()) < sum(newer.positions.values())

    only_older = InMemorySnapshotStore()
    await only_older.save(older, keep=1)
    async with replica(infra, topics, only_older, epoch=infra.epoch) as resumed:
        assert resumed.sink.status.newest_positions == older.positions
        assert resumed.totals() == expected

    async with replica(infra, topics, store, epoch=infra.epoch) as latest:
        assert latest.sink.status.newest_positions == newer.positions
        assert latest.totals() == expected

    # In another epoch the snapshot is carried forward as a base and that epoch's log read
    # from 0 on top: here the "new" log holds the very same events, so every one of them must
    # be recognised as already counted.
    async with replica(infra, topics, store, epoch=f"other-{uuid.uuid4()}") as fresh:
        assert fresh.sink.status.newest_positions is None
        assert fresh.sink.carried is not None
        assert fresh.totals() == expected


async def test_snapshot_store_keeps_the_furthest_few_of_the_current_log(db: asyncpg.Pool) -> None:
    """Saving keeps the `keep` furthest snapshots of this epoch and drops other epochs' ones."""
    store = PostgresSnapshotStore(db)
    topic = unique("topic")

    def snap(epoch: str, offset: int, fmt: int = SNAPSHOT_FORMAT) -> Snapshot:
        return Snapshot(
            topic=topic,
            epoch=epoch,
            format=fmt,
            positions={0: offset, 1: 1},
            events_applied=offset,
            state=b"x" * offset,
        )

    await store.save(snap("old-epoch", 900), keep=3)
    assert (await store.latest(topic=topic, epoch="old-epoch", format=SNAPSHOT_FORMAT)) is not None
    for offset in (10, 30, 20, 40, 5):
        await store.save(snap("e1", offset), keep=3)
    latest = await store.latest(topic=topic, epoch="e1", format=SNAPSHOT_FORMAT)
    assert latest is not None
    assert (latest.positions, latest.state, latest.events_applied) == ({0: 40, 1: 1}, b"x" * 40, 40)
    rows = await db.fetch(
        "SELECT epoch, next_offsets_total FROM limits_snapshots WHERE topic = $1 ORDER BY 2", topic
    )
    assert [(r["epoch"], r["next_offsets_total"]) for r in rows] == [
        ("e1", 21),
        ("e1", 31),
        ("e1", 41),
    ]
    assert await store.latest(topic=topic, epoch="e1", format=SNAPSHOT_FORMAT + 1) is None


async def test_config_store_round_trip_moves_the_version(db: asyncpg.Pool) -> None:
    """Every change moves the version; overrides upsert, list and delete; a miss changes nothing."""
    store = PostgresConfigStore(db)
    user, grp = unique("user"), unique("grp")
    start = await store.version()
    await store.put_config(enabled=True, period="week", default_limit_micros=123)
    await store.put_override("user", user, 5)
    await store.put_override("user", user, 6)
    override = await store.put_override("group", grp, 7)
    assert (override.subject_id, override.limit_micros) == (grp, 7)
    loaded = await store.load()
    assert loaded.version == await store.version() >= start + 4
    assert (loaded.enabled, loaded.period, loaded.default_limit_micros) == (True, "week", 123)
    config = loaded.to_config()
    assert config.user_overrides[user] == 6
    assert config.group_overrides[grp] == 7
    before = await store.version()
    assert await store.delete_override("user", user)
    assert not await store.delete_override("user", user)
    assert await store.version() == before + 1
    assert user not in (await store.load()).to_config().user_overrides
    await store.put_config(enabled=False, period="month", default_limit_micros=None)
    with pytest.raises(asyncpg.CheckViolationError):
        await store.put_override("group", grp, 0)


async def test_a_new_epoch_recovers_the_previous_logs_tail_from_the_reports_archive(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """Spend limits had not snapshotted before the log was lost is read back from the archive reports projected, once."""
    store = PostgresSnapshotStore(db)
    old_epoch = f"old-{uuid.uuid4()}"
    user = unique("user")

    def message(n: int, cost: int, org: str) -> ChatUsageRecorded:
        return ChatUsageRecorded(
            id=unique(f"m{n}"),
            occurred_at=datetime.now(UTC),
            user_id=user,
            org_id=org,
            data=ChatUsage(chat_id="c", message_id=f"m{n}", model="sonnet", input_tokens=1,
                           output_tokens=1, cost_micros=cost),
        )  # fmt: skip

    snapshotted = [message(n, 1_000, "org-a") for n in range(3)]
    tail = [message(n, 10, "org-b") for n in range(3, 7)]
    partition = home_partition(user, 12)
    # The old epoch: limits counted and snapshotted the first three; reports archived all seven.
    async with replica(infra, topics, store, epoch=old_epoch) as old:
        now_ms = int(time.time() * 1000)
        for offset, event in enumerate(snapshotted):
            old.limiter.ledger.apply(event, partition=partition, offset=offset, log_ms=now_ms)
        old.limiter.ledger.positions[partition] = len(snapshotted)
        assert await old.snapshotter.take() is not None
    projector = Projector()
    async with db.acquire() as conn, conn.transaction():
        items = [Consumed(e, partition, n, 0) for n, e in enumerate([*snapshotted, *tail])]
        await projector.project(conn, items)

    new_topics = (f"{topics[0]}.new", f"{topics[1]}.new")
    await ensure_topics(infra.bootstrap, events_topic=new_topics[0], dlq_topic=new_topics[1])
    # Same topic name in the snapshot table: the new epoch's log is a fresh topic here.
    await db.execute(
        "UPDATE limits_snapshots SET topic = $1 WHERE topic = $2", new_topics[0], topics[0]
    )
    async with replica(
        infra, new_topics, store, epoch=f"new-{uuid.uuid4()}", archive=PostgresChatArchive(db)
    ) as fresh:
        assert fresh.sink.carried is not None
        spend = fresh.totals()["spend"]
        assert isinstance(spend, list)
        assert spend[MONTH][user] == 3 * 1_000 + 4 * 10
        # The archive keeps each message's organisation, so the recovered tail keeps it too.
        ledger, month = fresh.limiter.ledger, fresh.limiter.current_periods(time.time())[MONTH]
        assert ledger.spent_in_org(MONTH, month.key, user, "org-a") == 3 * 1_000
        assert ledger.spent_in_org(MONTH, month.key, user, "org-b") == 4 * 10
        # A client resending one of the tail's events on the new log changes nothing.
        await produce(infra, new_topics[0], [tail[0], snapshotted[0]])
        await read_all(fresh, 2)
        assert fresh.totals()["spend"] == spend
