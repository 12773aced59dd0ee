"""Records no consumer can decode, produced straight onto the topic, end in the DLQ."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.events.codec import encode
from libs.events.models import ChatUsage, ChatUsageRecorded
from libs.service.kafka import DLQ_PARTITIONS, make_producer
from tests.reliability.stack import CONSUMERS, existing_services, missing_reason
from tests.security.conftest import Secured
from tests.security.operations import ADMIN
from tests.support import eventually

pytestmark = pytest.mark.e2e


def _poison(marker: str) -> list[bytes | None]:
    data: dict[str, object] = {"chat_id": "c", "message_id": "m", "model": "m", "input_tokens": 1}
    valid: dict[str, object] = {
        "id": f"{marker}-shape",
        "type": "chat.usage.v1",
        "occurred_at": "2026-11-02T10:15:00Z",
        "user_id": f"{marker}-user",
        "data": data,
    }
    return [
        f"{marker} not json at all".encode(),
        b"\xff\xfe" + marker.encode() + b"\xc3\x28",
        orjson.dumps([marker]),
        orjson.dumps({**valid, "type": "chat.usage.v9"}),
        orjson.dumps({**valid, "data": {**data, "output_tokens": -5}}),
        # Beyond 64 bits, which orjson will not write; the standard library will.
        json.dumps({**valid, "data": {**data, "output_tokens": 2**64}}).encode(),
        orjson.dumps({**valid, "occurred_at": "yesterday"}),
        orjson.dumps({**valid, "data": {**data, "output_tokens": 1}, "extra": marker}),
        b"[" * 50_000 + marker.encode() + b"]" * 50_000,
        None,
    ]


async def _dead_letters(bootstrap: str, topic: str) -> list[tuple[dict[str, str], bytes | None]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(DLQ_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for r in records:
                    headers = {k: v.decode(errors="replace") for k, v in r.headers}
                    out.append((headers, r.value))
                quiet_since = time.monotonic()
        return out
    finally:
        await consumer.stop()


async def test_poison_records_reach_the_dlq_from_every_consumer(secured: Secured) -> None:
    """Each consumer dead-letters every poison record with a reason, then keeps consuming."""
    consumers = [c for c in CONSUMERS if c in existing_services()]
    if not consumers:
        pytest.skip(missing_reason("limits"))
    stack = secured.stack
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    producer = make_producer(stack.infra.bootstrap, idempotent=False)
    await producer.start()
    positions: set[tuple[int, int]] = set()
    try:
        for n, value in enumerate(_poison(marker)):
            meta = await producer.send_and_wait(
                stack.events_topic, value=value, key=f"{marker}-{n}".encode()
            )
            positions.add((meta.partition, meta.offset))
        # A good event after the poison: consumers that went on will count it.
        after = ChatUsageRecorded(
            id=f"{marker}-after",
            occurred_at=datetime.now(UTC),
            user_id=f"{marker}-after-user",
            data=ChatUsage(
                chat_id="c",
                message_id="m",
                model="m",
                input_tokens=1,
                output_tokens=1,
                cost_micros=777,
            ),
        )
        await producer.send_and_wait(stack.events_topic, value=encode(after), key=b"k")
    finally:
        await producer.stop()

    async def all_dead_lettered() -> dict[str, set[tuple[int, int]]]:
        got: dict[str, set[tuple[int, int]]] = {c: set() for c in consumers}
        for headers, _ in await _dead_letters(stack.infra.bootstrap, stack.dlq_topic):
            position = (int(headers["source_partition"]), int(headers["source_offset"]))
            if position in positions and headers.get("consumer") in got:
                assert headers.get("reason"), f"a dead letter without a reason: {headers}"
                got[headers["consumer"]].add(position)
        return got if all(got[c] == positions for c in consumers) else {}

    await eventually(all_dead_lettered, timeout_s=30, interval_s=0.5)
    if "limits" in consumers:

        async def limits_counted_the_next_event() -> bool:
            url = f"{stack.url('limits')}/api/v1/limits/status/{after.user_id}"
            async with aiohttp.ClientSession() as http, http.get(url, headers=ADMIN) as r:
                return r.status == 200 and (await r.json())["spent_micros"] == 777

        await eventually(limits_counted_the_next_event, timeout_s=15)
    for name in consumers:
        stack.assert_alive(name)
