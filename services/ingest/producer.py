"""Putting accepted events on the log: a Protocol, the Kafka producer, and a fake for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from libs.service.kafka import BrokerUnavailableError


class EventLog(Protocol):
    """Where accepted events go; `append` returns only once the broker has them all."""

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Append `(key, value)` records; raise `BrokerUnavailableError` when not acknowledged."""
        ...

    async def ping(self) -> bool:
        """Whether the broker answers right now."""
        ...


class KafkaEventLog:
    """An `acks=all` producer on the events topic."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, timeout_s: float) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Send every record, then wait for every acknowledgement under one deadline."""

        async def send_all() -> None:
            futures = [
                await self.producer.send(self.topic, value=value, key=key) for key, value in records
            ]
            await asyncio.gather(*futures)

        try:
            await asyncio.wait_for(send_all(), self.timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"the broker did not acknowledge within {self.timeout_s}s"
            ) from exc
        except KafkaError as exc:
            raise BrokerUnavailableError(f"the broker refused the batch: {exc}") from exc

    async def ping(self) -> bool:
        """A metadata round trip with a short deadline (a paused broker fails it)."""
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 2.0)
        except (TimeoutError, KafkaError, OSError):
            return False
        return True


class InMemoryEventLog:
    """Keeps records in a list; can be told to fail, for unit tests."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.down = False

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Store, or fail like a broker that does not answer."""
        if self.down:
            raise BrokerUnavailableError("the broker did not acknowledge")
        self.records.extend(records)

    async def ping(self) -> bool:
        """Up unless told otherwise."""
        return not self.down
