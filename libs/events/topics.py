"""Kafka topic names and sizes shared by every producer and consumer."""

from typing import Final

__all__ = ["USAGE_EVENTS", "USAGE_EVENTS_DLQ", "USAGE_EVENTS_PARTITIONS"]

# Every event type travels on this one topic so a consumer sees each
# subject's events in the order they were produced.
USAGE_EVENTS: Final = "usage.events"
# Records no consumer could decode, with the reason, so a bad record never stops a consumer.
USAGE_EVENTS_DLQ: Final = "usage.events.dlq"
# Fixed because the partition of a key must not move once events are on the log.
USAGE_EVENTS_PARTITIONS: Final = 12
