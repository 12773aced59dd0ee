"""The billing queue and the publisher's durable health, in PostgreSQL (and in memory, for tests).

Every row belongs to a queue (`TOLLGATE_PUBLISHER_QUEUE`, normally `default`), so two
publishers that share a database (a staging and a production deployment, or tests) never see
each other's events, seats or health. A replica claims due rows by pushing their
`next_attempt_at` past the claim timeout in one short transaction (`FOR UPDATE SKIP LOCKED`),
so other replicas skip them; if it crashes, the rows simply become due again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal, Protocol

import asyncpg
import orjson

from libs.service.db import Connection
from services.publisher.domain import (
    HB_AI_SEATS,
    BillingEvent,
    Outcome,
    Projection,
    SeatState,
    heartbeat_bucket,
    heartbeat_id,
    month_of,
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

# Licensed, non-suspended users who used AI chat in the bucket's month. A chat user the
# directory never described counts with the directory's defaults (licensed, not suspended).
ENQUEUE_HEARTBEAT = """
INSERT INTO publisher_events (queue, id, event_type, event_data, created_at)
SELECT $1, $2, $3, jsonb_build_object('count', seats.n), $4
FROM (
    SELECT count(*) AS n
    FROM publisher_ai_chat_users c
    LEFT JOIN publisher_users u ON u.queue = c.queue AND u.user_id = c.user_id
    WHERE c.queue = $1 AND c.month = $5
      AND COALESCE(u.licensed, true) AND NOT COALESCE(u.suspended, false)
) AS seats
WHERE NOT EXISTS (SELECT 1 FROM publisher_events WHERE queue = $1 AND id = $2)
ON CONFLICT (queue, id) DO NOTHING
RETURNING (event_data ->> 'count')::bigint
"""

# Months before the previous one can no longer be reported.
PRUNE_CHAT_MONTHS = "DELETE FROM publisher_ai_chat_users WHERE queue = $1 AND month < $2"

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

INSERT_CHAT_USERS = """
INSERT INTO publisher_ai_chat_users (queue, month, user_id, first_used_at)
SELECT $1, r.month, r.user_id, r.first_used_at
FROM unnest($2::date[], $3::text[], $4::timestamptz[]) AS r(month, user_id, first_used_at)
ON CONFLICT (queue, month, user_id) DO UPDATE
SET first_used_at = LEAST(publisher_ai_chat_users.first_used_at, EXCLUDED.first_used_at)
WHERE EXCLUDED.first_used_at < publisher_ai_chat_users.first_used_at
"""

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
        month = month_of(bucket)
        async with self.pool.acquire() as conn, conn.transaction():
            count: int | None = await conn.fetchval(
                ENQUEUE_HEARTBEAT, self.queue, heartbeat_id(bucket), HB_AI_SEATS, bucket, month
            )
            if count is not None:
                await conn.execute(PRUNE_CHAT_MONTHS, self.queue, _previous_month(month))
        return count

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


def _previous_month(month: date) -> date:
    return (month - timedelta(days=1)).replace(day=1)


async def enqueue_on(conn: Connection, queue: str, events: Sequence[BillingEvent]) -> int:
    """Insert billing events on the caller's connection (the consumer's transaction)."""
    if not events:
        return 0
    status = await conn.execute(
        ENQUEUE,
        queue,
        [e.id for e in events],
        [e.event_type for e in events],
        [orjson.dumps({"count": e.count}).decode() for e in events],
        [e.created_at for e in events],
    )
    return int(status.rsplit(" ", 1)[-1])


async def write_projection(conn: Connection, queue: str, projection: Projection) -> None:
    """A batch's billing rows and seat facts, inside the transaction that stores its offsets.

    Builds are remembered by billing id first; only those seen for the first time and
    agent-managed are queued, so a later copy of a build never changes what it was.
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
    if projection.chat_users:
        keys = list(projection.chat_users)
        await conn.execute(
            INSERT_CHAT_USERS,
            queue,
            [month for month, _ in keys],
            [user for _, user in keys],
            [projection.chat_users[k] for k in keys],
        )


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
        self.chat_users: dict[tuple[date, str], datetime] = {}
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
            out.append(Claimed(e.id, e.event_type, {"count": e.count}, e.created_at, row.attempts))
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
        hb_id = heartbeat_id(bucket)
        if hb_id in self.rows:
            return None
        month = month_of(bucket)
        count = 0
        for m, user in self.chat_users:
            seat = self.seats.get(user)
            if m == month and (seat is None or (seat.licensed and not seat.suspended)):
                count += 1
        await self.enqueue([BillingEvent(hb_id, HB_AI_SEATS, count, bucket)])
        return count

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

    def apply_projection(self, projection: Projection) -> None:
        """What `write_projection` does, for unit tests of the heartbeat."""
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
        for key, first in projection.chat_users.items():
            self.chat_users[key] = min(first, self.chat_users.get(key, first))
