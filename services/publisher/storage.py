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
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import asyncpg
import orjson

from libs.service.db import Connection
from services.publisher.domain import (
    HB_AGENT_RUNTIME,
    HB_AI_SEATS,
    AgentRuntime,
    BillingEvent,
    LateRuntime,
    Outcome,
    Projection,
    SeatState,
    agent_hour,
    agent_time_id,
    checked_runtime,
    event_data,
    heartbeat_bucket,
    heartbeat_id,
)

Status = Literal["pending", "published", "rejected", "expired"]
_STATUS_OF_KIND: dict[str, Status] = {
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


# -- SQL -----------------------------------------------------------------------------------

ENSURE_STATE = """
INSERT INTO publisher_state (queue, deployment_id) VALUES ($1, $2)
ON CONFLICT (queue) DO NOTHING
"""

SELECT_STATE = "SELECT * FROM publisher_state WHERE queue = $1"

ENQUEUE = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
SELECT $1, r.id, r.event_type, r.event_data::jsonb, r.created_at
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[])
     AS r(id, event_type, event_data, created_at)
ON CONFLICT (queue, id) DO NOTHING
"""

# Every build's first copy, by billing id (its identity): what it was decides for good.
REMEMBER_BUILDS = """
INSERT INTO publisher_builds (queue, billing_id, agent_managed, occurred_at)
SELECT $1, r.billing_id, r.agent_managed, r.occurred_at
FROM unnest($2::text[], $3::bool[], $4::timestamptz[]) AS r(billing_id, agent_managed, occurred_at)
ORDER BY r.billing_id
ON CONFLICT (queue, billing_id) DO NOTHING
RETURNING billing_id
"""

DB_NOW = "SELECT now()"

CLAIM = """
WITH due AS (
    SELECT id FROM publisher_events
    WHERE queue = $1 AND status = 'pending' AND next_attempt_at <= $2
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE publisher_events e
SET claimed_by = $4,
    claimed_until = now() + $5::interval,
    next_attempt_at = now() + $5::interval,
    attempts = e.attempts + 1
FROM due
WHERE e.queue = $1 AND e.id = due.id
RETURNING e.id, e.event_type, e.event_data::text AS event_data, e.created_at, e.attempts
"""

# Final outcomes are facts and land whoever holds the claim; a retry only releases a claim
# that is still this replica's, so it never makes due a row another replica is sending.
APPLY_OUTCOMES = """
UPDATE publisher_events e
SET status = r.status,
    next_attempt_at = CASE WHEN r.status = 'pending'
                           THEN now() + r.delay_s * interval '1 second'
                           ELSE e.next_attempt_at END,
    last_error = CASE WHEN r.status = 'published' THEN e.last_error ELSE r.message END,
    finished_at = CASE WHEN r.status = 'pending' THEN NULL ELSE now() END,
    claimed_by = NULL,
    claimed_until = NULL
FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[]) AS r(id, status, message, delay_s)
WHERE e.queue = $1 AND e.id = r.id AND e.status = 'pending'
  AND (r.status <> 'pending' OR e.claimed_by = $6)
RETURNING r.status
"""

RECORD_SUCCESS = """
UPDATE publisher_state s
SET consecutive_failures = 0,
    failing_since = NULL,
    last_success_at = now(),
    last_attempt_at = now(),
    published_total = s.published_total + $2,
    rejected_total = s.rejected_total + $3,
    updated_at = now()
FROM (SELECT consecutive_failures FROM publisher_state WHERE queue = $1 FOR UPDATE) AS before
WHERE s.queue = $1
RETURNING before.consecutive_failures
"""

RECORD_FAILURE = """
UPDATE publisher_state
SET consecutive_failures = consecutive_failures + 1,
    failing_since = COALESCE(failing_since, now()),
    last_error = $2,
    last_error_cause = $3,
    last_error_at = now(),
    last_attempt_at = now(),
    updated_at = now()
WHERE queue = $1
RETURNING consecutive_failures
"""

ADD_TOTALS = """
UPDATE publisher_state
SET published_total = published_total + $2,
    rejected_total = rejected_total + $3,
    expired_total = expired_total + $4,
    updated_at = now()
WHERE queue = $1
"""

# A row still held by a live claim is left for its answer; an expired claim is fair game.
EXPIRE = """
WITH expired AS (
    UPDATE publisher_events
    SET status = 'expired', finished_at = now(), claimed_by = NULL, claimed_until = NULL
    WHERE queue = $1 AND status = 'pending' AND created_at < now() - $2::interval
      AND (claimed_until IS NULL OR claimed_until < now())
    RETURNING event_type
)
SELECT event_type, count(*) AS n FROM expired GROUP BY event_type
"""

PURGE = """
DELETE FROM publisher_events
WHERE ctid IN (
    SELECT ctid FROM publisher_events
    WHERE queue = $1 AND status <> 'pending' AND finished_at < now() - $2::interval
    LIMIT 10000
)
"""

# Seats as Coder's GetActiveAISeatCount counts them: every user who ever used AI chat and is
# active now (licensed and not suspended, per the directory). A chat user the directory never
# described counts with the directory's defaults (licensed, not suspended). At most one
# heartbeat per bucket: its start is the row's created_at, whatever form its id has.
ENQUEUE_HEARTBEAT = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
SELECT $1, $2, $3, jsonb_build_object('count', seats.n), $4
FROM (
    SELECT count(*) AS n
    FROM publisher_ai_seats s
    LEFT JOIN publisher_users u ON u.queue = s.queue AND u.user_id = s.user_id
    WHERE s.queue = $1
      AND COALESCE(u.licensed, true) AND NOT COALESCE(u.suspended, false)
) AS seats
WHERE NOT EXISTS (
    SELECT 1 FROM publisher_events WHERE queue = $1 AND event_type = $3 AND created_at = $4
)
ON CONFLICT DO NOTHING
RETURNING (event_data ->> 'count')::bigint
"""

STATUS = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE next_attempt_at <= now()) AS due,
       min(created_at) AS oldest,
       now() AS now
FROM publisher_events
WHERE queue = $1 AND status = 'pending'
"""

UPSERT_SEATS = """
INSERT INTO publisher_users (queue, user_id, licensed, suspended, as_of)
SELECT $1, r.user_id, r.licensed, r.suspended, r.as_of
FROM unnest($2::text[], $3::bool[], $4::bool[], $5::timestamptz[])
     AS r(user_id, licensed, suspended, as_of)
ON CONFLICT (queue, user_id) DO UPDATE
SET licensed = EXCLUDED.licensed, suspended = EXCLUDED.suspended, as_of = EXCLUDED.as_of
WHERE publisher_users.as_of <= EXCLUDED.as_of
"""

INSERT_AI_SEATS = """
INSERT INTO publisher_ai_seats (queue, user_id, first_used_at)
SELECT $1, r.user_id, r.first_used_at
FROM unnest($2::text[], $3::timestamptz[]) AS r(user_id, first_used_at)
ON CONFLICT (queue, user_id) DO UPDATE
SET first_used_at = EXCLUDED.first_used_at
WHERE EXCLUDED.first_used_at < publisher_ai_seats.first_used_at
"""

# -- Agent Time ----------------------------------------------------------------------------

# Storing runtime takes the lock shared (batches never wait for each other); sealing an hour
# takes it exclusively. Whichever comes second sees what the first committed.
LOCK_RUNTIME_SHARED = (
    "SELECT pg_advisory_xact_lock_shared(hashtext('tollgate.agent_time'), hashtext($1))"
)
LOCK_RUNTIME_EXCLUSIVE = (
    "SELECT pg_advisory_xact_lock(hashtext('tollgate.agent_time'), hashtext($1))"
)

# New runtime rows (an id already stored adds nothing); the ones whose hour was already
# reported come back, summed per hour: they arrived late and are not sent.
INSERT_RUNTIME = f"""
WITH fresh AS (
    INSERT INTO publisher_agent_runtime (queue, event_id, hour, runtime_ms)
    SELECT $1, r.event_id, r.hour, r.runtime_ms
    FROM unnest($2::text[], $3::timestamptz[], $4::bigint[]) AS r(event_id, hour, runtime_ms)
    WHERE r.hour >= $5
    ON CONFLICT (queue, event_id) DO NOTHING
    RETURNING hour, runtime_ms
)
SELECT f.hour, count(*) AS events, sum(f.runtime_ms)::bigint AS runtime_ms
FROM fresh f
WHERE EXISTS (
    SELECT 1 FROM publisher_events e
    WHERE e.queue = $1 AND e.event_type = '{HB_AGENT_RUNTIME}' AND e.created_at = f.hour
)
GROUP BY f.hour
ORDER BY f.hour
"""  # noqa: S608  # composed from constants only

RECORD_PROGRESS = """
INSERT INTO publisher_log_progress AS t (queue, topic, partition, partitions, caught_up_at)
SELECT $1, $2, p, $4, $5 FROM unnest($3::int[]) AS p
ON CONFLICT (queue, topic, partition) DO UPDATE
SET partitions = EXCLUDED.partitions,
    caught_up_at = GREATEST(t.caught_up_at, EXCLUDED.caught_up_at)
"""

SELECT_PROGRESS = """
SELECT partition, partitions, caught_up_at FROM publisher_log_progress
WHERE queue = $1 AND topic = $2
"""

SELECT_AGENT_HOURS = """
SELECT created_at FROM publisher_events
WHERE queue = $1 AND event_type = $2 AND created_at >= $3
"""

AGENT_HOUR_QUEUED = """
SELECT EXISTS (
    SELECT 1 FROM publisher_events WHERE queue = $1 AND event_type = $2 AND created_at = $3
)
"""

SUM_AGENT_HOUR = """
SELECT COALESCE(sum(runtime_ms), 0) FROM publisher_agent_runtime WHERE queue = $1 AND hour = $2
"""

INSERT_AGENT_HOUR = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT DO NOTHING
RETURNING true
"""

PRUNE_RUNTIME = """
DELETE FROM publisher_agent_runtime
WHERE ctid IN (
    SELECT ctid FROM publisher_agent_runtime WHERE queue = $1 AND hour < $2 LIMIT 10000
)
"""

AGENT_TIME_REPORT = f"""
WITH counted AS (
    SELECT hour, sum(runtime_ms) AS runtime_ms
    FROM publisher_agent_runtime
    WHERE queue = $1 AND hour >= $2
    GROUP BY hour
), reported AS (
    SELECT created_at AS hour, id, status, (event_data ->> 'runtime_ms')::bigint AS runtime_ms
    FROM publisher_events
    WHERE queue = $1 AND event_type = '{HB_AGENT_RUNTIME}' AND created_at >= $2
)
SELECT COALESCE(r.hour, c.hour) AS hour, r.id, r.status, r.runtime_ms AS reported,
       COALESCE(c.runtime_ms, 0) AS counted
FROM reported r
FULL JOIN counted c ON c.hour = r.hour
ORDER BY 1
"""  # noqa: S608  # composed from constants only

EXPORT_PENDING = """
SELECT id, event_type, event_data::text AS event_data, created_at
FROM publisher_events
WHERE queue = $1 AND status = 'pending' AND created_at >= $2
ORDER BY created_at, id
"""

# Receipts may arrive for rows this publisher expired meanwhile: the server has them, so
# they are published after all.
RECEIPT_PUBLISHED = """
UPDATE publisher_events
SET status = 'published', finished_at = now(), claimed_by = NULL, claimed_until = NULL
WHERE queue = $1 AND id = ANY($2::text[]) AND status IN ('pending', 'expired')
RETURNING id
"""

RECEIPT_REJECTED = """
UPDATE publisher_events e
SET status = 'rejected', finished_at = now(), last_error = r.message,
    claimed_by = NULL, claimed_until = NULL
FROM unnest($2::text[], $3::text[]) AS r(id, message)
WHERE e.queue = $1 AND e.id = r.id AND e.status IN ('pending', 'expired')
RETURNING e.id
"""

KNOWN_IDS = "SELECT id FROM publisher_events WHERE queue = $1 AND id = ANY($2::text[])"

RETRY_NOW = """
UPDATE publisher_events SET next_attempt_at = now()
WHERE queue = $1 AND status = 'pending' AND next_attempt_at > now()
  AND (claimed_until IS NULL OR claimed_until < now())
"""


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
        [_STATUS_OF_KIND[o.kind] for o in outcomes],
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
            streak = await conn.fetchval(RECORD_FAILURE, self.queue, error[:2000], cause)
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


# -- in memory -----------------------------------------------------------------------------


@dataclass
class _Row:
    event: BillingEvent
    status: Status = "pending"
    attempts: int = 0
    next_attempt_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


class InMemoryQueue:
    """The same queue in a dict, on an injectable clock, for unit tests of the sender."""

    def __init__(
        self,
        queue: str = "default",
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        deployment_id: str = "in-memory-deployment",
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.health = Health(deployment_id=deployment_id)
        self.seats: dict[str, SeatState] = {}
        self.ai_users: dict[str, datetime] = {}
        self.runtime: dict[str, AgentRuntime] = {}
        self.progress: dict[tuple[str, int], tuple[int, datetime]] = {}
        self.builds: dict[str, bool] = {}

    async def open(self) -> Health:
        """Nothing to create."""
        return self.health

    async def enqueue(self, events: Sequence[BillingEvent]) -> int:
        """Keep the first row per id."""
        added = 0
        for event in events:
            if event.id not in self.rows:
                self.rows[event.id] = _Row(event, next_attempt_at=self.clock())
                added += 1
        return added

    async def now(self) -> datetime:
        """The injected clock."""
        return self.clock()

    async def claim(
        self, *, due_by: datetime, limit: int, claimant: str, hold: timedelta
    ) -> list[Claimed]:
        """Same rule as the SQL: pending, due by the cutoff, earliest first."""
        now = self.clock()
        due = sorted(
            (
                r
                for r in self.rows.values()
                if r.status == "pending" and r.next_attempt_at <= due_by
            ),
            key=lambda r: r.next_attempt_at,
        )[:limit]
        out = []
        for row in due:
            row.claimed_by, row.claimed_until = claimant, now + hold
            row.next_attempt_at = now + hold
            row.attempts += 1
            e = row.event
            out.append(Claimed(e.id, e.event_type, e.data, e.created_at, row.attempts))
        out.sort(key=lambda c: (c.created_at, c.id))
        return out

    def _apply(self, outcomes: Sequence[Outcome], claimant: str) -> Counter[str]:
        now = self.clock()
        changed: Counter[str] = Counter()
        for o in outcomes:
            row = self.rows.get(o.id)
            status = _STATUS_OF_KIND[o.kind]
            if row is None or row.status != "pending":
                continue
            if status == "pending" and row.claimed_by != claimant:
                continue
            row.status = status
            if status == "pending":
                row.next_attempt_at = now + o.delay
                row.finished_at = None
            else:
                row.finished_at = now
            if status != "published":
                row.last_error = o.message
            row.claimed_by = row.claimed_until = None
            changed[status] += 1
        return changed

    async def settle(self, outcomes: Sequence[Outcome], *, claimant: str) -> int:
        """Apply, reset the streak, and return the streak that ended."""
        changed = self._apply(outcomes, claimant)
        before = self.health.consecutive_failures
        now = self.clock()
        self.health = replace(
            self.health,
            consecutive_failures=0,
            failing_since=None,
            last_success_at=now,
            last_attempt_at=now,
            published_total=self.health.published_total + changed["published"],
            rejected_total=self.health.rejected_total + changed["rejected"],
        )
        return before

    async def fail(
        self, outcomes: Sequence[Outcome], *, claimant: str, cause: str, error: str
    ) -> int:
        """Apply the retries and extend the streak."""
        self._apply(outcomes, claimant)
        now = self.clock()
        self.health = replace(
            self.health,
            consecutive_failures=self.health.consecutive_failures + 1,
            failing_since=self.health.failing_since or now,
            last_error=error,
            last_error_cause=cause,
            last_error_at=now,
            last_attempt_at=now,
        )
        return self.health.consecutive_failures

    async def discard(self, outcomes: Sequence[Outcome], *, claimant: str) -> None:
        """Apply without touching the streak."""
        changed = self._apply(outcomes, claimant)
        self.health = replace(
            self.health,
            published_total=self.health.published_total + changed["published"],
            rejected_total=self.health.rejected_total + changed["rejected"],
        )

    async def expire(self, max_age: timedelta) -> dict[str, int]:
        """Same rule as the SQL."""
        now = self.clock()
        counts: Counter[str] = Counter()
        for row in self.rows.values():
            held = row.claimed_until is not None and row.claimed_until >= now
            if row.status == "pending" and row.event.created_at < now - max_age and not held:
                row.status, row.finished_at = "expired", now
                row.claimed_by = row.claimed_until = None
                counts[row.event.event_type] += 1
        self.health = replace(
            self.health, expired_total=self.health.expired_total + sum(counts.values())
        )
        return dict(counts)

    async def purge(self, retention: timedelta) -> int:
        """Drop old final rows."""
        cutoff = self.clock() - retention
        old = [
            k
            for k, r in self.rows.items()
            if r.status != "pending" and r.finished_at is not None and r.finished_at < cutoff
        ]
        for k in old:
            del self.rows[k]
        return len(old)

    async def enqueue_heartbeat(self, moment: datetime) -> int | None:
        """Same count as the SQL, over the in-memory seat facts."""
        bucket = heartbeat_bucket(moment)
        if self._heartbeat_of(HB_AI_SEATS, bucket) is not None:
            return None
        count = 0
        for user in self.ai_users:
            seat = self.seats.get(user)
            if seat is None or (seat.licensed and not seat.suspended):
                count += 1
        await self.enqueue([BillingEvent(heartbeat_id(bucket), HB_AI_SEATS, count, bucket)])
        return count

    def _heartbeat_of(self, event_type: str, start: datetime) -> _Row | None:
        for row in self.rows.values():
            if row.event.event_type == event_type and row.event.created_at == start:
                return row
        return None

    async def record_progress(
        self, topic: str, partitions: int, caught_up: Sequence[int], at: datetime
    ) -> None:
        """Same rule as the SQL: a time never moves back."""
        for p in caught_up:
            _, before = self.progress.get((topic, p), (partitions, at))
            self.progress[(topic, p)] = (partitions, max(before, at))

    async def log_progress(self, topic: str) -> list[tuple[int, int, datetime]]:
        """The rows of `topic`."""
        return [(p, n, at) for (t, p), (n, at) in self.progress.items() if t == topic]

    async def agent_hours(self, since: datetime) -> list[datetime]:
        """Queued Agent Time heartbeats from `since`."""
        return [
            r.event.created_at
            for r in self.rows.values()
            if r.event.event_type == HB_AGENT_RUNTIME and r.event.created_at >= since
        ]

    def _counted(self, hour: datetime) -> int:
        return sum(r.runtime_ms for r in self.runtime.values() if r.hour == hour)

    async def enqueue_agent_hour(self, hour: datetime) -> int | None:
        """Same rule as the SQL."""
        hour = agent_hour(hour)
        if self._heartbeat_of(HB_AGENT_RUNTIME, hour) is not None:
            return None
        total = checked_runtime(hour, self._counted(hour))
        await self.enqueue([BillingEvent(agent_time_id(hour), HB_AGENT_RUNTIME, total, hour)])
        return total

    async def prune_agent_runtime(self, before: datetime) -> int:
        """Drop runtime of hours before `before`."""
        old = [k for k, r in self.runtime.items() if r.hour < before]
        for k in old:
            del self.runtime[k]
        return len(old)

    async def agent_time_report(self, since: datetime) -> list[AgentHourReport]:
        """Same join as the SQL."""
        hours = {r.hour for r in self.runtime.values() if r.hour >= since}
        hours |= set(await self.agent_hours(since))
        out = []
        for hour in sorted(hours):
            row = self._heartbeat_of(HB_AGENT_RUNTIME, hour)
            out.append(
                AgentHourReport(
                    hour=hour,
                    id=row.event.id if row else agent_time_id(hour),
                    status=row.status if row else None,
                    reported_ms=row.event.value if row else None,
                    counted_ms=self._counted(hour),
                )
            )
        return out

    async def status(self) -> QueueStatus:
        """Counts over the dict."""
        now = self.clock()
        pending = [r for r in self.rows.values() if r.status == "pending"]
        return QueueStatus(
            pending=len(pending),
            due=sum(1 for r in pending if r.next_attempt_at <= now),
            oldest_pending_created_at=min((r.event.created_at for r in pending), default=None),
            now=now,
            health=self.health,
        )

    def apply_projection(
        self, projection: Projection, *, runtime_since: datetime | None = None
    ) -> list[LateRuntime]:
        """What `write_projection` does, for unit tests of the heartbeats."""
        fresh = {i for i in projection.builds if i not in self.builds}
        self.builds.update({i: projection.builds[i][0] for i in fresh})
        self.rows.update(
            {
                b.id: _Row(b, next_attempt_at=self.clock())
                for b in projection.billing
                if b.id not in self.rows and (b.id in fresh or b.id not in projection.builds)
            }
        )
        for seat in projection.seats.values():
            current = self.seats.get(seat.user_id)
            if current is None or current.as_of <= seat.as_of:
                self.seats[seat.user_id] = seat
        for user, first in projection.ai_users.items():
            self.ai_users[user] = min(first, self.ai_users.get(user, first))
        late: dict[datetime, list[int]] = {}
        for event_id, runtime in projection.runtime.items():
            if event_id in self.runtime or (
                runtime_since is not None and runtime.hour < runtime_since
            ):
                continue
            self.runtime[event_id] = runtime
            if self._heartbeat_of(HB_AGENT_RUNTIME, runtime.hour) is not None:
                late.setdefault(runtime.hour, []).append(runtime.runtime_ms)
        return [LateRuntime(h, len(ms), sum(ms)) for h, ms in sorted(late.items())]
