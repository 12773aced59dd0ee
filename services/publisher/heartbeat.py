"""The AI seats heartbeat: one `hb_ai_seats_v1` per 4-hour UTC bucket, whoever queues it.

Every replica checks every `TOLLGATE_PUBLISHER_HEARTBEAT_CHECK` (30 s by default). Once its
consumer has caught up with the log, the first check inside a bucket counts the seats as
Coder's `GetActiveAISeatCount` does: every user who has ever used AI chat (title generation
aside) and is active now, meaning licensed and not suspended in the directory. It queues
`hb_ai_seats_v1:<bucket start>` (`hb_ai_seats_v1:2026-11-02_08:00:00`, Coder's form) with
`created_at` = the bucket start. The insert is `ON CONFLICT DO NOTHING` behind a unique index
per type and bucket (and skips the count when the bucket has its row), so any number of
replicas queue exactly one heartbeat per bucket, and a restart never changes a count that
was already queued. A bucket during which no replica ran is not filled in afterwards (nor is
it in Coder): a heartbeat reports the state at its time, and the next one carries it on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from services.publisher.domain import heartbeat_bucket, heartbeat_id, rfc3339
from services.publisher.metrics import PublisherMetrics
from services.publisher.storage import BillingQueue

log = structlog.get_logger(__name__)


class SeatHeartbeat:
    """Queues the current bucket's heartbeat once the consumer has caught up."""

    def __init__(
        self,
        queue: BillingQueue,
        metrics: PublisherMetrics,
        *,
        ready: Callable[[], bool],
        check_every: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.ready = ready
        self.check_every = check_every
        self.clock = clock
        self._done: datetime | None = None

    async def tick(self) -> int | None:
        """Queue this bucket's heartbeat if no replica has; its count, or None."""
        bucket = heartbeat_bucket(self.clock())
        if bucket == self._done or not self.ready():
            return None
        count = await self.queue.enqueue_heartbeat(bucket)
        self._done = bucket
        if count is not None:
            self.metrics.heartbeat_seats.set(count)
            log.info(
                "ai_seats_heartbeat_queued",
                id=heartbeat_id(bucket),
                bucket_start=rfc3339(bucket),
                count=count,
            )
        return count

    async def run_forever(self) -> None:
        """Check on a timer until cancelled; a failed check is retried at the next one."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ai_seats_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            # Until the bucket is done (consumer still catching up, a failed check), look again
            # within a second instead of a whole check period.
            waiting = self._done != heartbeat_bucket(self.clock())
            pause = self.check_every.total_seconds()
            await asyncio.sleep(min(pause, 1.0) if waiting else pause)
