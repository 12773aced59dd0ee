"""What the sender, heartbeats and Agent Time ask of the billing queue (`BillingQueue`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

from services.publisher.domain import (
    BillingEvent,
    Outcome,
)

Status = Literal["pending", "published", "rejected", "expired"]
#: How much of a failure's error text the health row keeps.
MAX_ERROR_CHARS: Final = 2000
STATUS_OF_KIND: dict[str, Status] = {
    "accepted": "published",
    "rejected": "rejected",
    "retry": "pending",
}


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row this replica holds until its claim runs out."""

    id: str
    event_type: str
    event_data: object
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class Health:
    """The publisher's durable health: it survives restarts and is shared by replicas."""

    deployment_id: str
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    last_error: str | None = None
    last_error_cause: str | None = None
    last_error_at: datetime | None = None
    last_success_at: datetime | None = None
    last_attempt_at: datetime | None = None
    published_total: int = 0
    rejected_total: int = 0
    expired_total: int = 0


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """Counts of the queue and the health row, as of `now` (the database's clock)."""

    pending: int
    due: int
    oldest_pending_created_at: datetime | None
    now: datetime
    health: Health

    @property
    def oldest_pending_age_s(self) -> float | None:
        """Seconds since the oldest pending event happened."""
        if self.oldest_pending_created_at is None:
            return None
        return max(0.0, (self.now - self.oldest_pending_created_at).total_seconds())


@dataclass(frozen=True, slots=True)
class AgentHourReport:
    """One hour of Agent Time: what was reported, and what the log holds for it now."""

    hour: datetime
    id: str
    status: Status | None
    reported_ms: int | None
    counted_ms: int

    @property
    def late_ms(self) -> int:
        """Runtime that arrived after the hour was reported, and so was never sent."""
        if self.reported_ms is None:
            return 0
        return max(0, self.counted_ms - self.reported_ms)


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    """What importing receipts changed."""

    published: int
    rejected: int
    already_final: int
    unknown: int


class BillingQueue(Protocol):
    """The durable queue between the consumer and the sender, with the sender's health."""

    queue: str

    async def open(self) -> Health:
        """Make sure the queue's health row exists; returns it (with the deployment id)."""
        ...

    async def enqueue(self, events: Sequence[BillingEvent]) -> int:
        """Add events; ids already queued are left alone. Returns how many were new."""
        ...

    async def now(self) -> datetime:
        """The queue's clock: a cycle claims only rows due by the time it started."""
        ...

    async def claim(
        self, *, due_by: datetime, limit: int, claimant: str, hold: timedelta
    ) -> list[Claimed]:
        """Take up to `limit` due rows for `hold`; other replicas skip them meanwhile."""
        ...

    async def settle(self, outcomes: Sequence[Outcome], *, claimant: str) -> int:
        """Record the answer to a request that succeeded; returns the failure streak it ended."""
        ...

    async def fail(
        self, outcomes: Sequence[Outcome], *, claimant: str, cause: str, error: str
    ) -> int:
        """Record a request that failed as a whole; returns the failure streak now."""
        ...

    async def discard(self, outcomes: Sequence[Outcome], *, claimant: str) -> None:
        """Record outcomes decided without a request (rows that must not be sent)."""
        ...

    async def expire(self, max_age: timedelta) -> dict[str, int]:
        """Mark pending rows older than `max_age` expired; counts by event type."""
        ...

    async def purge(self, retention: timedelta) -> int:
        """Delete final rows older than `retention`; returns how many."""
        ...

    async def enqueue_heartbeat(self, moment: datetime) -> int | None:
        """Queue the AI seats heartbeat of `moment`'s bucket once; its count, or None if there."""
        ...

    async def record_progress(
        self, topic: str, partitions: int, caught_up: Sequence[int], at: datetime
    ) -> None:
        """Note that these partitions of `topic` were read to their end at `at`."""
        ...

    async def log_progress(self, topic: str) -> list[tuple[int, int, datetime]]:
        """(partition, partitions of the topic, read to its end at) of every partition seen."""
        ...

    async def agent_hours(self, since: datetime) -> list[datetime]:
        """Hours from `since` on whose Agent Time heartbeat is queued (whatever its status)."""
        ...

    async def enqueue_agent_hour(self, hour: datetime) -> int | None:
        """Sum the hour and queue its heartbeat once; the runtime, or None if it was there.

        Raises `BadAgentHourError` when the sum cannot be sent.
        """
        ...

    async def prune_agent_runtime(self, before: datetime) -> int:
        """Forget the runtime of hours before `before` (they can no longer be reported)."""
        ...

    async def agent_time_report(self, since: datetime) -> list[AgentHourReport]:
        """Every hour from `since` on with runtime or a heartbeat: reported and counted now."""
        ...

    async def status(self) -> QueueStatus:
        """Pending counts and health."""
        ...
