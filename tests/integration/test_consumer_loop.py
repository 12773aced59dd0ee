"""The shared consumer loop against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from prometheus_client import CollectorRegistry

from libs.events.codec import encode
from libs.events.models import ApiUsage, ApiUsageRecorded
from libs.service.consumer import (
    METADATA_RETRY_S,
    Consumed,
    ConsumerLoop,
    PostgresSink,
    load_offsets,
)
from libs.service.db import Connection
from libs.service.kafka import ensure_topics, home_partition, make_producer
from tests.support import Infra, eventually, unique

pytestmark = pytest.mark.integration


def _event(user: str, n: int) -> ApiUsageRecorded:
    return ApiUsageRecorded(
        id=unique("evt"),
        occurred_at=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
        user_id=user,
        data=ApiUsage(client="sdk", count=n),
    )


async def _run_loop(
    infra: Infra,
    db: asyncpg.Pool,
    topics: tuple[str, str],
    consumer: str,
    seen: list[Consumed],
    *,
    epoch: str | None = None,
) -> tuple[ConsumerLoop, asyncio.Task[None]]:
    async def handler(conn: Connection, events: Sequence[Consumed]) -> None:
        await conn.execute("SELECT 1")
        seen.extend(events)

    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    sink = PostgresSink(
        db, consumer=consumer, topic=topics[0], epoch=epoch or infra.epoch, handler=handler
    )
    loop = ConsumerLoop(
        name=consumer,
        bootstrap=infra.bootstrap,
        topic=topics[0],
        dlq_topic=topics[1],
        sink=sink,
        dlq_producer=producer,
        registry=CollectorRegistry(),
    )
    task = asyncio.create_task(loop.run())
    task.add_done_callback(lambda _: asyncio.ensure_future(producer.stop()))
    return loop, task


async def test_consumer_applies_events_stores_offsets_and_dead_letters_garbage(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """Valid events reach the handler once, garbage goes to the DLQ with a reason, offsets land in PostgreSQL."""
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    events = [_event(f"u{i % 3}", i + 1) for i in range(20)]
    for e in events:
        await producer.send_and_wait(topics[0], encode(e), key=e.partition_key.encode())
    await producer.send_and_wait(topics[0], b"\xff not json", key=b"bad")
    await producer.stop()

    seen: list[Consumed] = []
    consumer = unique("c")
    loop, task = await _run_loop(infra, db, topics, consumer, seen)
    try:
        await asyncio.wait_for(loop.caught_up.wait(), 20)
        assert sorted(c.event.id for c in seen) == sorted(e.id for e in events)
        stored = await load_offsets(db, consumer=consumer, topic=topics[0], epoch=infra.epoch)
        assert sum(stored.values()) == 21
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    dlq = AIOKafkaConsumer(
        topics[1], bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest"
    )
    await dlq.start()
    try:
        batch = await dlq.getmany(timeout_ms=5000)
        records = [r for rs in batch.values() for r in rs]
        assert len(records) == 1
        headers = dict(records[0].headers)
        assert headers["reason"].startswith(b"invalid UTF-8")
        assert headers["reason_code"] == b"invalid_utf8"
        assert records[0].value == b"\xff not json"
        [metric] = loop.metrics.dlq.collect()
        counted = {s.labels["reason"]: s.value for s in metric.samples if s.name.endswith("_total")}
        assert counted == {"invalid_utf8": 1}
    finally:
        await dlq.stop()

    # A restart resumes from PostgreSQL and sees nothing again.
    again: list[Consumed] = []
    loop2, task2 = await _run_loop(infra, db, topics, consumer, again)
    try:
        await asyncio.wait_for(loop2.caught_up.wait(), 20)
        assert again == []
    finally:
        task2.cancel()
        await asyncio.gather(task2, return_exceptions=True)

    # Offsets from another broker epoch point into a log that no longer exists: read from 0.
    fresh: list[Consumed] = []
    loop3, task3 = await _run_loop(infra, db, topics, consumer, fresh, epoch="another-epoch")
    try:
        await eventually(lambda: _ready(loop3))
        assert len(fresh) == 20
    finally:
        task3.cancel()
        await asyncio.gather(task3, return_exceptions=True)


async def _ready(loop: ConsumerLoop) -> bool:
    return loop.caught_up.is_set()


async def test_a_missing_topic_is_waited_for_without_asking_the_broker_nonstop(
    infra: Infra, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the topic exists the loop asks for metadata a few times a second, then reads it."""
    asked = 0
    original = AIOKafkaClient.force_metadata_update

    def counting(self: AIOKafkaClient) -> Any:  # aiokafka hands back a future to await
        nonlocal asked
        asked += 1
        return original(self)

    monkeypatch.setattr(AIOKafkaClient, "force_metadata_update", counting)
    suffix = unique("late")
    events_topic, dlq_topic = f"t.{suffix}.events", f"t.{suffix}.dlq"
    seen: list[Consumed] = []
    loop, task = await _run_loop(infra, db, (events_topic, dlq_topic), unique("c"), seen)
    try:
        await asyncio.sleep(2.0)
        assert not loop.caught_up.is_set()
        assert 1 <= asked <= 2.0 / METADATA_RETRY_S + 4, asked
        await ensure_topics(infra.bootstrap, events_topic=events_topic, dlq_topic=dlq_topic)
        await asyncio.wait_for(loop.caught_up.wait(), 20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a topic, read until it has been quiet for a second."""
    reader = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100
    )
    await reader.start()
    try:
        records: list[Any] = []
        while True:
            batch = await reader.getmany(timeout_ms=1000)
            if not batch:
                return records
            records += [r for rs in batch.values() for r in rs]
    finally:
        await reader.stop()


def _loop_with(
    infra: Infra,
    db: asyncpg.Pool,
    topics: tuple[str, str],
    handler: Any,
    *,
    producer: Any,
    registry: CollectorRegistry,
    name: str,
    forward: bool = False,
) -> ConsumerLoop:
    sink = PostgresSink(db, consumer=name, topic=topics[0], epoch=infra.epoch, handler=handler)
    return ConsumerLoop(
        name=name,
        bootstrap=infra.bootstrap,
        topic=topics[0],
        dlq_topic=topics[1],
        sink=sink,
        dlq_producer=producer,
        registry=registry,
        retry_delay_s=0.01,
        forward_misplaced=forward,
    )


async def _consume_all(
    infra: Infra,
    db: asyncpg.Pool,
    topics: tuple[str, str],
    handler: Any,
    events: Sequence[ApiUsageRecorded],
    *,
    registry: CollectorRegistry,
    name: str,
) -> None:
    """Produce `events` keyed as ingest keys them, then run a loop until it has read them all."""
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(topics[0], encode(e), key=e.partition_key.encode())
        loop = _loop_with(
            infra, db, topics, handler, producer=producer, registry=registry, name=name
        )
        task = asyncio.create_task(loop.run())
        try:
            await asyncio.wait_for(loop.caught_up.wait(), 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await producer.stop()


async def test_an_event_the_sink_refuses_is_dead_lettered_once_and_the_rest_applied_once(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """PostgreSQL refusing one event of a batch isolates it: one dead letter with the reason, every other event committed once, the position moved past it."""
    table = f"seen_{unique('t').replace('-', '_')}"
    await db.execute(f"CREATE TABLE {table} (id text NOT NULL)")
    events = [_event("u-refuse", n) for n in range(1, 21)]
    poison = events[12]

    async def handler(conn: Connection, batch: Sequence[Consumed]) -> None:
        await conn.executemany(
            f"INSERT INTO {table} (id) VALUES ($1)", [(c.event.id,) for c in batch]
        )
        if any(c.event.id == poison.id for c in batch):
            await conn.execute("SELECT 1 / 0")

    registry = CollectorRegistry()
    name = unique("refusing")
    await _consume_all(infra, db, topics, handler, events, registry=registry, name=name)
    rows = await db.fetch(f"SELECT id, count(*) AS n FROM {table} GROUP BY id")
    assert {r["id"]: r["n"] for r in rows} == {e.id: 1 for e in events if e is not poison}
    stored = await load_offsets(db, consumer=name, topic=topics[0], epoch=infra.epoch)
    assert sum(stored.values()) == len(events)
    assert registry.get_sample_value("tollgate_consumer_refused_total", {"consumer": name}) == 1
    dlq = await _read_topic(infra.bootstrap, topics[1])
    assert len(dlq) == 1
    headers = {k: v.decode() for k, v in dlq[0].headers}
    assert headers["consumer"] == name
    assert headers["reason"].startswith(f"refused by {name}: DivisionByZeroError")
    assert headers["reason_code"] == "refused"
    labels = {"consumer": name, "reason": "refused"}
    assert registry.get_sample_value("tollgate_consumer_dlq_total", labels) == 1
    assert dlq[0].value == encode(poison)


async def test_infrastructure_faults_are_retried_and_shown_as_consecutive_failures(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """A sink that cannot reach its database is retried from the stored positions with the failure streak in a gauge, and nothing is dead-lettered."""
    events = [_event("u-flaky", n) for n in range(1, 6)]
    seen: list[str] = []
    streaks: list[float] = []
    registry = CollectorRegistry()
    name = unique("flaky")

    async def handler(conn: Connection, batch: Sequence[Consumed]) -> None:
        streak = registry.get_sample_value(
            "tollgate_consumer_consecutive_failures", {"consumer": name}
        )
        streaks.append(streak or 0.0)
        if len(streaks) <= 3:
            raise ConnectionResetError("the database went away")
        seen.extend(c.event.id for c in batch)

    await _consume_all(infra, db, topics, handler, events, registry=registry, name=name)
    assert streaks[:4] == [0.0, 1.0, 2.0, 3.0]
    assert (
        registry.get_sample_value("tollgate_consumer_consecutive_failures", {"consumer": name}) == 0
    )
    assert sorted(seen) == sorted(e.id for e in events)
    assert (
        registry.get_sample_value("tollgate_consumer_refused_total", {"consumer": name}) or 0
    ) == 0
    assert await _read_topic(infra.bootstrap, topics[1]) == []


async def test_an_event_off_its_home_partition_counts_once_there_for_every_consumer(
    infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]
) -> None:
    """A copy produced to another partition (another partitioner) is skipped where it landed, forwarded home once, and read there by every consumer, the second copy a duplicate on the same partition."""
    event = _event("u-misplaced", 7)
    home = home_partition(event.partition_key, 12)
    elsewhere = (home + 5) % 12
    seen: dict[str, list[tuple[str, int]]] = {"forwarder": [], "reader": []}

    def recorder(who: str) -> Any:
        async def handler(conn: Connection, batch: Sequence[Consumed]) -> None:
            seen[who].extend((c.event.identity, c.partition) for c in batch)

        return handler

    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    registries = {"forwarder": CollectorRegistry(), "reader": CollectorRegistry()}
    names = {who: unique(who) for who in seen}
    try:
        # Once where a murmur2 producer puts it, once where another partitioner did.
        await producer.send_and_wait(topics[0], encode(event), key=b"k", partition=home)
        await producer.send_and_wait(topics[0], encode(event), key=b"k", partition=elsewhere)
        loops = {
            who: _loop_with(
                infra, db, topics, recorder(who), producer=producer, registry=registries[who],
                name=names[who], forward=who == "forwarder",
            )
            for who in seen
        }  # fmt: skip
        tasks = [asyncio.create_task(loop.run()) for loop in loops.values()]
        try:

            async def both_read_the_forwarded_copy() -> bool:
                return all(len(s) == 2 for s in seen.values())

            await eventually(both_read_the_forwarded_copy, timeout_s=20)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await producer.stop()
    for who, read in seen.items():
        assert read == [(event.identity, home), (event.identity, home)], who
        misplaced = registries[who].get_sample_value(
            "tollgate_consumer_misplaced_total", {"consumer": names[who]}
        )
        assert misplaced == 1, who
    on_topic = await _read_topic(infra.bootstrap, topics[0])
    forwarded = [r for r in on_topic if dict(r.headers).get("forwarded_from")]
    assert len(forwarded) == 1
    assert forwarded[0].partition == home
    assert dict(forwarded[0].headers)["forwarded_from"] == f"{elsewhere}:0".encode()
