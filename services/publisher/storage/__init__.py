"""The billing queue and the publisher's durable health, in PostgreSQL (and in memory, for tests).

Every row belongs to a queue (`TOLLGATE_PUBLISHER_QUEUE`, normally `default`), so two
publishers that share a database (a staging and a production deployment, or tests) never see
each other's events, seats or health. A replica claims due rows by pushing their
`next_attempt_at` past the claim timeout in one short transaction (`FOR UPDATE SKIP LOCKED`),
so other replicas skip them; if it crashes, the rows simply become due again.

Agent Time lives here too: each chat usage event's runtime (one row per event id, so a replay
adds nothing), how far every partition of the log has been read, and the hourly heartbeats.
Sealing an hour and storing a batch's runtime take one advisory lock (exclusive and shared),
so a runtime either lands before its hour is summed or is seen to arrive late, never neither.

- `protocol`: `BillingQueue` and the records it answers with.
- `sql`: the statements, as named constants.
- `postgres`: `PostgresQueue`, `enqueue_on` and `write_projection` (the consumer's transaction).
- `memory`: `InMemoryQueue`, the same queue in a dict, for unit tests.
"""

from services.publisher.storage.memory import InMemoryQueue
from services.publisher.storage.postgres import PostgresQueue, enqueue_on, write_projection
from services.publisher.storage.protocol import (
    AgentHourReport,
    BillingQueue,
    Claimed,
    Health,
    QueueStatus,
    ReceiptResult,
    Status,
)

__all__ = [
    "AgentHourReport",
    "BillingQueue",
    "Claimed",
    "Health",
    "InMemoryQueue",
    "PostgresQueue",
    "QueueStatus",
    "ReceiptResult",
    "Status",
    "enqueue_on",
    "write_projection",
]
