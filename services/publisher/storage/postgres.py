"""`PostgresQueue`, and writing a consumed batch's projection in the consumer's transaction."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from libs.service.db import Connection
from services.publisher.domain import (
    HB_AGENT_RUNTIME,
    HB_AI_SEATS,
    BillingEvent,
    LateRuntime,
    Outcome,
    Projection,
    agent_hour,
    agent_time_id,
    checked_runtime,
    event_data,
    heartbeat_bucket,
    heartbeat_id,
)
from services.publisher.storage.protocol import (
    MAX_ERROR_CHARS,
    STATUS_OF_KIND,
    AgentHourReport,
    Claimed,
    Health,
    QueueStatus,
    ReceiptResult,
)
from services.publisher.storage.sql import (
    ADD_TOTALS,
    AGENT_HOUR_QUEUED,
    AGENT_TIME_REPORT,
    APPLY_OUTCOMES,
    CLAIM,
    DB_NOW,
    ENQUEUE,
    ENQUEUE_HEARTBEAT,
    ENSURE_STATE,
    EXPIRE,
    EXPORT_PENDING,
    INSERT_AGENT_HOUR,
    INSERT_AI_SEATS,
    INSERT_RUNTIME,
    KNOWN_IDS,
    LOCK_RUNTIME_EXCLUSIVE,
    LOCK_RUNTIME_SHARED,
    PRUNE_RUNTIME,
    PURGE,
    RECEIPT_PUBLISHED,
    RECEIPT_REJECTED,
    RECORD_FAILURE,
    RECORD_PROGRESS,
    RECORD_SUCCESS,
    REMEMBER_BUILDS,
    RETRY_NOW,
    SELECT_AGENT_HOURS,
    SELECT_PROGRESS,
    SELECT_STATE,
    STATUS,
    SUM_AGENT_HOUR,
    UPSERT_SEATS,
)


def _health(row: asyncpg.Record | None, fallback_id: str) -> Health:
    if row is None:
        return Health(deployment_id=fallback_id)
    return Health(
        deployment_id=row["deployment_id"],
        consecutive_failures=row["consecutive_failures"],
        failing_since=row["failing_since"],
        last_error=row["last_error"],
        last_error_cause=row["last_error_cause"],
        last_error_at=row["last_error_at"],
        last_success_at=row["last_success_at"],
        last_attempt_at=row["last_attempt_at"],
        published_total=row["published_total"],
        rejected_total=row["rejected_total"],
        expired_total=row["expired_total"],
    )


def _outcome_arrays(
    outcomes: Sequence[Outcome],
) -> tuple[list[str], list[str], list[str | None], list[float]]:
    return (
        [o.id for o in outcomes],
        [STATUS_OF_KIND[o.kind] for o in outcomes],
        [o.message for o in outcomes],
        [o.delay.total_seconds() for o in outcomes],
    )


class PostgresQueue:
    """The billing queue in PostgreSQL; safe to share between any number of replicas."""

    def __init__(self, pool: asyncpg.Pool, queue: str = "default") -> None:
        self.pool = pool
        self.queue = queue

    async def open(self) -> Health:
        """Create the health row with a generated deployment id the first time."""
        async with self.pool.acquire() as conn:
            await conn.execute(ENSURE_STATE, self.queue, str(uuid.uuid4()))
            row = await conn.fetchrow(SELECT_STATE, self.queue)
        return _health(row, "")

    async def enqueue(self, events: Sequence[BillingEvent]) -> int:
        """Insert with `ON CONFLICT DO NOTHING`: a replayed id is never queued twice."""
        if not events:
            return 0
        async with self.pool.acquire() as conn:
            return await enqueue_on(conn, self.queue, events)

    async def now(self) -> datetime:
        """The database's clock, which every replica shares."""
        value: datetime = await self.pool.fetchval(DB_NOW)
        return value

    async def claim(
        self, *, due_by: datetime, limit: int, claimant: str, hold: timedelta
    ) -> list[Claimed]:
        """One statement: pick due rows nobody holds, and hold them."""
        rows = await self.pool.fetch(CLAIM, self.queue, due_by, limit, claimant, hold)
        claimed = [
            Claimed(
                id=r["id"],
                event_type=r["event_type"],
                event_data=orjson.loads(r["event_data"]),
                created_at=r["created_at"],
                attempts=r["attempts"],
            )
            for r in rows
        ]
        claimed.sort(key=lambda c: (c.created_at, c.id))
        return claimed

    async def _apply(
        self, conn: Connection, outcomes: Sequence[Outcome], claimant: str
    ) -> Counter[str]:
        if not outcomes:
            return Counter()
        rows = await conn.fetch(APPLY_OUTCOMES, self.queue, *_outcome_arrays(outcomes), claimant)
        return Counter(r["status"] for r in rows)

    async def settle(self, outcomes: Sequence[Outcome], *, claimant: str) -> int:
        """Rows and health in one transaction; a success ends any failure streak."""
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await self._apply(conn, outcomes, claimant)
            before = await conn.fetchval(
                RECORD_SUCCESS, self.queue, changed["published"], changed["rejected"]
            )
        return int(before or 0)

    async def fail(
        self, outcomes: Sequence[Outcome], *, claimant: str, cause: str, error: str
    ) -> int:
        """Rows back with their backoff, and one more failure in the streak."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._apply(conn, outcomes, claimant)
            streak = await conn.fetchval(RECORD_FAILURE, self.queue, error[:MAX_ERROR_CHARS], cause)
        return int(streak or 0)

    async def discard(self, outcomes: Sequence[Outcome], *, claimant: str) -> None:
        """Final outcomes decided locally; health is not touched."""
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await self._apply(conn, outcomes, claimant)
            await conn.execute(ADD_TOTALS, self.queue, changed["published"], changed["rejected"], 0)

    async def expire(self, max_age: timedelta) -> dict[str, int]:
        """Expire and count in one transaction, so the durable total matches the rows."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(EXPIRE, self.queue, max_age)
            counts = {r["event_type"]: int(r["n"]) for r in rows}
            if counts:
                await conn.execute(ADD_TOTALS, self.queue, 0, 0, sum(counts.values()))
        return counts

    async def purge(self, retention: timedelta) -> int:
        """Bounded delete of old final rows (retention outlives the maximum age)."""
        status = await self.pool.execute(PURGE, self.queue, retention)
        return int(status.rsplit(" ", 1)[-1])

    async def enqueue_heartbeat(self, moment: datetime) -> int | None:
        """Count seats and queue the bucket's heartbeat unless a replica already did."""
        bucket = heartbeat_bucket(moment)
        count: int | None = await self.pool.fetchval(
            ENQUEUE_HEARTBEAT, self.queue, heartbeat_id(bucket), HB_AI_SEATS, bucket
        )
        return count

    async def record_progress(
        self, topic: str, partitions: int, caught_up: Sequence[int], at: datetime
    ) -> None:
        """Upsert one row per partition; a time never moves back."""
        if caught_up:
            await self.pool.execute(
                RECORD_PROGRESS, self.queue, topic, list(caught_up), partitions, at
            )

    async def log_progress(self, topic: str) -> list[tuple[int, int, datetime]]:
        """Every partition's row."""
        rows = await self.pool.fetch(SELECT_PROGRESS, self.queue, topic)
        return [(r["partition"], r["partitions"], r["caught_up_at"]) for r in rows]

    async def agent_hours(self, since: datetime) -> list[datetime]:
        """From the unique index of heartbeats."""
        rows = await self.pool.fetch(SELECT_AGENT_HOURS, self.queue, HB_AGENT_RUNTIME, since)
        return [r["created_at"] for r in rows]

    async def enqueue_agent_hour(self, hour: datetime) -> int | None:
        """Under the exclusive lock: sum what the hour holds and queue it, in one transaction."""
        hour = agent_hour(hour)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_RUNTIME_EXCLUSIVE, self.queue)
            if await conn.fetchval(AGENT_HOUR_QUEUED, self.queue, HB_AGENT_RUNTIME, hour):
                return None
            total = checked_runtime(
                hour, int(await conn.fetchval(SUM_AGENT_HOUR, self.queue, hour))
            )
            data = orjson.dumps(event_data(HB_AGENT_RUNTIME, total)).decode()
            inserted = await conn.fetchval(
                INSERT_AGENT_HOUR, self.queue, agent_time_id(hour), HB_AGENT_RUNTIME, data, hour
            )
        return total if inserted else None

    async def prune_agent_runtime(self, before: datetime) -> int:
        """Bounded delete by hour."""
        status = await self.pool.execute(PRUNE_RUNTIME, self.queue, before)
        return int(status.rsplit(" ", 1)[-1])

    async def agent_time_report(self, since: datetime) -> list[AgentHourReport]:
        """Reported heartbeats beside the runtime counted per hour now."""
        rows = await self.pool.fetch(AGENT_TIME_REPORT, self.queue, since)
        return [
            AgentHourReport(
                hour=r["hour"],
                id=r["id"] or agent_time_id(r["hour"]),
                status=r["status"],
                reported_ms=r["reported"],
                counted_ms=int(r["counted"]),
            )
            for r in rows
        ]

    async def status(self) -> QueueStatus:
        """Counts from the partial index of pending rows, and the health row."""
        async with self.pool.acquire() as conn:
            counts = await conn.fetchrow(STATUS, self.queue)
            state = await conn.fetchrow(SELECT_STATE, self.queue)
        assert counts is not None
        return QueueStatus(
            pending=counts["pending"],
            due=counts["due"],
            oldest_pending_created_at=counts["oldest"],
            now=counts["now"],
            health=_health(state, ""),
        )

    # -- operator tools --------------------------------------------------------------------

    async def export_pending(self, since: datetime) -> AsyncIterator[dict[str, object]]:
        """Pending rows created at or after `since`, oldest first, streamed with a cursor."""
        async with self.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(EXPORT_PENDING, self.queue, since, prefetch=1000):
                yield {
                    "id": row["id"],
                    "event_type": row["event_type"],
                    "event_data": orjson.loads(row["event_data"]),
                    "created_at": row["created_at"],
                }

    async def import_receipts(
        self, accepted: Sequence[str], rejected: dict[str, str]
    ) -> ReceiptResult:
        """Mark ids the billing server confirmed published, and permanent rejections rejected."""
        accepted = list(dict.fromkeys(accepted))
        async with self.pool.acquire() as conn, conn.transaction():
            published = await conn.fetch(RECEIPT_PUBLISHED, self.queue, accepted)
            refused = await conn.fetch(
                RECEIPT_REJECTED, self.queue, list(rejected), list(rejected.values())
            )
            everything = [*accepted, *rejected]
            known = await conn.fetch(KNOWN_IDS, self.queue, everything)
            await conn.execute(ADD_TOTALS, self.queue, len(published), len(refused), 0)
        changed = len(published) + len(refused)
        return ReceiptResult(
            published=len(published),
            rejected=len(refused),
            already_final=len(known) - changed,
            unknown=len(set(everything)) - len(known),
        )

    async def retry_now(self) -> int:
        """Make every backed-off pending row due at once (after fixing an outage's cause)."""
        status = await self.pool.execute(RETRY_NOW, self.queue)
        return int(status.rsplit(" ", 1)[-1])


async def enqueue_on(conn: Connection, queue: str, events: Sequence[BillingEvent]) -> int:
    """Insert billing events on the caller's connection (the consumer's transaction)."""
    if not events:
        return 0
    status = await conn.execute(
        ENQUEUE,
        queue,
        [e.id for e in events],
        [e.event_type for e in events],
        [orjson.dumps(e.data).decode() for e in events],
        [e.created_at for e in events],
    )
    return int(status.rsplit(" ", 1)[-1])


async def write_projection(
    conn: Connection,
    queue: str,
    projection: Projection,
    *,
    runtime_since: datetime | None = None,
) -> list[LateRuntime]:
    """A batch's rows, seat facts and runtime, inside the transaction that stores its offsets.

    Builds are remembered by billing id first; only those seen for the first time and
    agent-managed are queued, so a later copy of a build never changes what it was. Runtime
    of hours before `runtime_since` is not kept (those hours are never reported any more).
    Returns the runtime that arrived for hours already reported.
    """
    billing = projection.billing
    if projection.builds:
        ids = list(projection.builds)
        fresh = {
            row["billing_id"]
            for row in await conn.fetch(
                REMEMBER_BUILDS,
                queue,
                ids,
                [projection.builds[i][0] for i in ids],
                [projection.builds[i][1] for i in ids],
            )
        }
        billing = [b for b in billing if b.id in fresh]
    await enqueue_on(conn, queue, billing)
    if projection.seats:
        seats = list(projection.seats.values())
        await conn.execute(
            UPSERT_SEATS,
            queue,
            [s.user_id for s in seats],
            [s.licensed for s in seats],
            [s.suspended for s in seats],
            [s.as_of for s in seats],
        )
    if projection.ai_users:
        users = list(projection.ai_users)
        await conn.execute(INSERT_AI_SEATS, queue, users, [projection.ai_users[u] for u in users])
    if not projection.runtime:
        return []
    ids = list(projection.runtime)
    await conn.execute(LOCK_RUNTIME_SHARED, queue)
    rows = await conn.fetch(
        INSERT_RUNTIME,
        queue,
        ids,
        [projection.runtime[i].hour for i in ids],
        [projection.runtime[i].runtime_ms for i in ids],
        runtime_since or datetime.min.replace(tzinfo=UTC),
    )
    return [LateRuntime(r["hour"], r["events"], r["runtime_ms"]) for r in rows]
