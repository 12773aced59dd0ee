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
from libs.service.kafka import ensure_topics, make_producer
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
        assert records[0].value == b"\xff not json"
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
