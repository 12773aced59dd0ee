"""Where ingest appends accepted events (`EventLog`): the list and the real broker alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from libs.service.kafka import make_producer
from services.ingest.producer import EventLog, InMemoryEventLog, KafkaEventLog
from tests.reliability.checks import read_records
from tests.support import Infra, unique

from .conftest import MEMORY

BROKER = "broker"


@dataclass
class Log:
    """An event log and what a reader of its topic finds there, by key in log order."""

    log: EventLog
    read: Callable[[], Awaitable[list[tuple[bytes | None, bytes | None]]]]


@pytest.fixture(params=[MEMORY, pytest.param(BROKER, marks=pytest.mark.integration)])
def broker(request: pytest.FixtureRequest) -> tuple[str, str] | None:
    """None for the in-memory log, else the session broker and an event topic of this test's own."""
    if request.param == MEMORY:
        return None
    infra: Infra = request.getfixturevalue("infra")
    topics: tuple[str, str] = request.getfixturevalue("topics")
    return infra.bootstrap, topics[0]


@pytest.fixture
async def log(broker: tuple[str, str] | None) -> AsyncIterator[Log]:
    """The in-memory log, or the Kafka one on the test's topic."""
    if broker is None:
        memory = InMemoryEventLog()

        async def records() -> list[tuple[bytes | None, bytes | None]]:
            return list(memory.records)

        yield Log(memory, records)
        return
    bootstrap, topic = broker
    producer = make_producer(bootstrap, idempotent=False)
    await producer.start()
    try:

        async def on_the_log() -> list[tuple[bytes | None, bytes | None]]:
            return await read_records(bootstrap, topic)

        yield Log(KafkaEventLog(producer, topic, timeout_s=10), on_the_log)
    finally:
        await producer.stop()


def by_key(records: list[tuple[bytes | None, bytes | None]]) -> dict[bytes | None, list[bytes]]:
    """Each key's values in the order the log holds them."""
    found: dict[bytes | None, list[bytes]] = {}
    for key, value in records:
        assert value is not None
        found.setdefault(key, []).append(value)
    return found


async def test_appended_records_are_on_the_log_in_order_per_key(log: Log) -> None:
    """Every record appended is there once, and each key's records keep their order."""
    first, second = unique("k").encode(), unique("k").encode()
    batch = [(first, b"1"), (second, b"a"), (first, b"2"), (first, b"3"), (second, b"b")]
    await log.log.append(batch[:2])
    await log.log.append(batch[2:])
    await log.log.append([])
    assert by_key(await log.read()) == {first: [b"1", b"2", b"3"], second: [b"a", b"b"]}
    assert await log.log.ping() is True
