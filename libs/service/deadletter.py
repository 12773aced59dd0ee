"""Setting a record aside on the dead-letter topic: the one writer every consumer uses.

A record goes there unchanged (value and key), with headers that say why (`reason`, the
message; `reason_code`, a `RejectReason`) and where it came from (`source_topic`,
`source_partition`, `source_offset`, `consumer`), so that it can be read, fixed and replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from libs.events.rejections import RejectReason
from libs.service.kafka import bounded

#: Bytes of the `reason` header kept: a validation message can name many fields.
MAX_REASON_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record set aside, and why."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    reason: str
    code: RejectReason

    def headers(self, *, source_topic: str, consumer: str) -> list[tuple[str, bytes]]:
        """The headers the dead-letter record carries."""
        return [
            ("reason", self.reason.encode()[:MAX_REASON_BYTES]),
            ("reason_code", self.code.encode()),
            ("source_topic", source_topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
            ("consumer", consumer.encode()),
        ]


class DeadLetterWriter:
    """Produces dead letters of one consumer of one topic, and counts them by reason code."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        topic: str,
        source_topic: str,
        consumer: str,
        counter: Counter,
        timeout_s: float,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.source_topic = source_topic
        self.consumer = consumer
        self.counter = counter
        self.timeout_s = timeout_s

    async def write(self, letter: DeadLetter) -> None:
        """Produce `letter` (acknowledged, within the timeout), then count it."""
        await bounded(
            self.producer.send_and_wait(
                self.topic,
                value=letter.value,
                key=letter.key,
                headers=letter.headers(source_topic=self.source_topic, consumer=self.consumer),
            ),
            self.timeout_s,
            "dead-letter produce",
        )
        self.counter.labels(self.consumer, letter.code).inc()
