"""Kafka plumbing shared by the services: topics, the producer, and timeouts on every await."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import lru_cache
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from libs.events.topics import USAGE_EVENTS_PARTITIONS

log = structlog.get_logger(__name__)

T = TypeVar("T")

DLQ_PARTITIONS = 1


class BrokerUnavailableError(Exception):
    """The broker did not answer in time or refused the request."""


@lru_cache(maxsize=65_536)
def home_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key`: murmur2, as Java and aiokafka do.

    Ingest produces with it, and consumers count an event only on this partition (see
    `libs.service.consumer`). Cached: one user's events arrive over and over, and murmur2 in
    Python takes a few microseconds; the cache is bounded, not a per-user cost.
    """
    digest: int = murmur2(key.encode())
    return (digest & 0x7FFFFFFF) % partitions


async def bounded(awaitable: Awaitable[T], timeout_s: float, what: str) -> T:
    """Await with a deadline: some broker failures hang instead of raising."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError as exc:
        raise BrokerUnavailableError(f"{what}: no answer from the broker in {timeout_s}s") from exc


async def ensure_topics(
    bootstrap: str,
    *,
    events_topic: str,
    dlq_topic: str,
    partitions: int = USAGE_EVENTS_PARTITIONS,
    replication_factor: int = 1,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the event topic and its DLQ when missing, with the partition counts we mean.

    Topics must exist before any client asks for their metadata: the embedded broker
    auto-creates unknown topics with 4 partitions.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await bounded(admin.start(), timeout_s, "admin start")
    try:
        existing = set(await bounded(admin.list_topics(), timeout_s, "list topics"))
        wanted = [
            NewTopic(
                events_topic, num_partitions=partitions, replication_factor=replication_factor
            ),
            NewTopic(
                dlq_topic, num_partitions=DLQ_PARTITIONS, replication_factor=replication_factor
            ),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            await bounded(admin.create_topics(missing), timeout_s, "create topics")
            log.info("topics_created", topics=[t.name for t in missing])
        return [t.name for t in missing]
    finally:
        await admin.close()


def make_producer(
    bootstrap: str, *, idempotent: bool, request_timeout_s: float = 5.0, linger_ms: int = 2
) -> AIOKafkaProducer:
    """An `acks=all` producer; idempotence only where the broker supports it (setting)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=linger_ms,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        request_timeout_ms=int(request_timeout_s * 1000),
    )
