"""The notifications tables (deploy/migrations/05xx): endpoints, notifications, the outbox.

`NotificationAdmin` is what the admin API needs (endpoints, test events, the delivery list)
and has a PostgreSQL and an in-memory implementation. `Outbox` is what the dispatcher needs
(prepare, claim, settle); it is PostgreSQL only, because what it promises (several replicas
claiming with `FOR UPDATE SKIP LOCKED`, a claim that expires when its replica dies) is the
database's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import asyncpg
import orjson

from libs.service.db import Connection
from services.reports.notifications.domain import (
    ADMIN_ROLES,
    TEST,
    Audience,
    Channel,
    EmailDraft,
    Person,
    Status,
    new_secret,
    new_webhook_id,
)

#: The dispatcher's name for the target of every email (one SMTP server).
EMAIL_TARGET: Final = "email"


@dataclass(frozen=True)
class Webhook:
    """A registered endpoint. Its secret is shown once, when it is added."""

    id: str
    url: str
    description: str
    created_at: datetime
    secret: str = field(repr=False)
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    #: Until when the secret before the last rotation still signs beside this one.
    previous_secret_until: datetime | None = None

    def view(self) -> dict[str, object]:
        """What the list shows: everything but the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "description": self.description,
            "created_at": self.created_at,
            "disabled_at": self.disabled_at,
            "disabled_reason": self.disabled_reason,
        }


@dataclass(frozen=True)
class Delivery:
    """One delivery as the admin API lists it."""

    id: uuid.UUID
    notification_id: uuid.UUID
    type: str
    channel: Channel
    webhook_id: str | None
    recipient: str | None
    audience: Audience
    user_id: str | None
    status: Status
    attempts: int
    last_error: str | None
    last_status: int | None
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None

    def view(self) -> dict[str, object]:
        """The contract's fields, and what else helps to find out what happened."""
        return {
            "id": f"msg_{self.id.hex}",
            "webhook_id": self.webhook_id,
            "type": self.type,
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "delivered_at": self.delivered_at,
            "channel": self.channel,
            "recipient": self.recipient,
            "audience": self.audience,
            "user_id": self.user_id,
            "notification_id": str(self.notification_id),
            "last_status": self.last_status,
            "last_attempt_at": self.last_attempt_at,
            "next_attempt_at": self.next_attempt_at if self.status == "pending" else None,
        }


@dataclass(frozen=True)
class PendingStats:
    """Pending deliveries of one channel: how many, and since when the oldest waits."""

    count: int = 0
    oldest_created_at: datetime | None = None


class NotificationAdmin(Protocol):
    """Endpoints, test events and the delivery list."""

    async def add_webhook(self, url: str, description: str) -> Webhook:
        """Register an endpoint with a new secret."""
        ...

    async def webhooks(self) -> list[Webhook]:
        """Every endpoint not deleted, oldest first."""
        ...

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Stop sending to an endpoint; its pending deliveries fail. False when unknown."""
        ...

    async def queue_trial(self, webhook_id: str, body: str) -> uuid.UUID | None:
        """Queue a test event for one endpoint; None when there is no such endpoint."""
        ...

    async def deliveries(
        self,
        *,
        status: Status | None,
        channel: Channel | None,
        user_id: str | None,
        limit: int,
    ) -> list[Delivery]:
        """The newest deliveries matching the filters."""
        ...

    async def pending(self) -> dict[Channel, PendingStats]:
        """Pending deliveries per channel."""
        ...

    async def retry_delivery(self, delivery_id: uuid.UUID, *, email: bool) -> RetryOutcome:
        """Make a failed delivery pending again, due now, with a new retry window (`email`:
        whether emails are delivered at all)."""
        ...

    async def rotate_secret(self, webhook_id: str, *, overlap_s: float) -> Webhook | None:
        """A new secret for an endpoint (returned once); the old one keeps signing beside it
        for `overlap_s`. None when there is no such endpoint."""
        ...

    async def enable_webhook(self, webhook_id: str) -> Webhook | None:
        """Send to an endpoint disabled by a 410 again (its failed deliveries stay failed);
        None when there is no such endpoint."""
        ...


#: What became of a request to send a delivery again.
RetryOutcome = Literal["queued", "unknown", "not_failed", "endpoint_gone", "email_off"]


# -- what the dispatcher reads and writes -----------------------------------------------------


@dataclass(frozen=True)
class Unprepared:
    """A recorded notification the notifier has not rendered yet."""

    id: uuid.UUID
    type: str
    user_id: str | None
    data: dict[str, object]
    created_at: datetime


@dataclass(frozen=True)
class Directory:
    """What the directory says about one notification's user, group and the admins."""

    user: Person | None
    group_name: str | None
    admins: Sequence[Person]


@dataclass(frozen=True)
class Prepared:
    """A notification rendered: its webhook body and its emails."""

    payload: str
    emails: Sequence[EmailDraft] = ()


Preparer = Callable[[Unprepared, Directory], Prepared]


@dataclass(frozen=True)
class PreparedCount:
    """What one prepare pass did, per channel (for the `due` counter)."""

    notifications: int = 0
    webhooks: int = 0
    emails: int = 0


@dataclass(frozen=True)
class Claimed:
    """A delivery this replica holds until `claim_s` passes or it settles it."""

    id: uuid.UUID
    channel: Channel
    attempts: int
    created_at: datetime
    webhook_id: str | None = None
    url: str | None = None
    secret: str | None = field(default=None, repr=False)
    #: The endpoint's secret before its last rotation, while it still signs too.
    previous_secret: str | None = field(default=None, repr=False)
    payload: str | None = None
    recipient: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Settlement:
    """How an attempt ended."""

    delivered: bool
    error: str | None = None
    http_status: int | None = None
    #: Never retried (a permanent SMTP refusal, a 410).
    final: bool = False
    #: Seconds before the next attempt when it is retried.
    retry_in_s: float = 0.0


class Outbox(Protocol):
    """The dispatcher's side of the tables."""

    async def prepare(
        self, *, limit: int, directory_wait_s: float, admins_wanted: bool, preparer: Preparer
    ) -> PreparedCount:
        """Render up to `limit` new notifications and queue their emails, one transaction."""
        ...

    async def due_targets(self) -> list[str]:
        """Targets (endpoint ids, `EMAIL_TARGET`) with deliveries due now."""
        ...

    async def claim(
        self, target: str, *, limit: int, claimant: str, claim_s: float
    ) -> list[Claimed]:
        """Claim up to `limit` due deliveries of one target (the earliest of each user first)."""
        ...

    async def settle(
        self, claimed: Claimed, settlement: Settlement, *, claimant: str, retry_for_s: float
    ) -> Status | None:
        """Record an attempt; the delivery's new status (None when the claim was lost)."""
        ...

    async def disable_webhook(
        self, webhook_id: str, reason: str, *, sparing: uuid.UUID | None = None
    ) -> int:
        """Stop sending to an endpoint that asked so; fails its pending deliveries but `sparing`."""
        ...

    async def pending(self) -> dict[Channel, PendingStats]:
        """Pending deliveries per channel."""
        ...

    async def prune(self, *, older_than_s: float, limit: int) -> int:
        """Forget up to `limit` notifications older than `older_than_s` with nothing pending,
        with their deliveries (and deleted endpoints nothing refers to any more); returns how
        many notifications went."""
        ...


# -- PostgreSQL --------------------------------------------------------------------------------

INSERT_WEBHOOK = """
INSERT INTO notification_webhooks (id, url, description, secret) VALUES ($1, $2, $3, $4)
RETURNING created_at
"""
SELECT_WEBHOOKS = """
SELECT id, url, description, secret, created_at, disabled_at, disabled_reason,
    previous_secret_until
FROM notification_webhooks WHERE deleted_at IS NULL ORDER BY created_at, id
"""
DELETE_WEBHOOK = """
UPDATE notification_webhooks SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL
"""
FAIL_PENDING_OF_WEBHOOK = """
UPDATE notification_deliveries
SET status = 'failed', last_error = $2, claimed_until = NULL, claimed_by = NULL
WHERE webhook_id = $1 AND status = 'pending' AND id IS DISTINCT FROM $3
"""
DISABLE_WEBHOOK = """
UPDATE notification_webhooks SET disabled_at = now(), disabled_reason = $2
WHERE id = $1 AND disabled_at IS NULL AND deleted_at IS NULL
"""
RETRY_DELIVERY = """
UPDATE notification_deliveries d
SET status = 'pending', next_attempt_at = now(), retry_from = now(),
    claimed_until = NULL, claimed_by = NULL
WHERE d.id = $1 AND d.status = 'failed'
  AND ((d.channel = 'email' AND $2)
       OR (d.channel = 'webhook' AND EXISTS (
           SELECT 1 FROM notification_webhooks w
           WHERE w.id = d.webhook_id AND w.deleted_at IS NULL AND w.disabled_at IS NULL)))
RETURNING d.id
"""
SELECT_DELIVERY_STATE = """
SELECT d.status, d.channel, w.deleted_at, w.disabled_at
FROM notification_deliveries d LEFT JOIN notification_webhooks w ON w.id = d.webhook_id
WHERE d.id = $1
"""
ROTATE_SIGNER = """
UPDATE notification_webhooks
SET previous_secret = secret, previous_secret_until = now() + make_interval(secs => $3),
    secret = $2
WHERE id = $1 AND deleted_at IS NULL
RETURNING id, url, description, secret, created_at, disabled_at, disabled_reason,
    previous_secret_until
"""
ENABLE_WEBHOOK = """
UPDATE notification_webhooks SET disabled_at = NULL, disabled_reason = NULL
WHERE id = $1 AND deleted_at IS NULL
RETURNING id, url, description, secret, created_at, disabled_at, disabled_reason,
    previous_secret_until
"""
SELECT_ACTIVE_WEBHOOK = """
SELECT 1 FROM notification_webhooks WHERE id = $1 AND deleted_at IS NULL AND disabled_at IS NULL
"""
INSERT_TRIAL = """
INSERT INTO notifications (id, type, data, payload, prepared_at) VALUES ($1, $2, '{}', $3, now())
RETURNING seq
"""
INSERT_WEBHOOK_DELIVERY = """
INSERT INTO notification_deliveries (id, notification_id, notification_seq, channel, webhook_id)
VALUES ($1, $2, $3, 'webhook', $4)
"""
SELECT_DELIVERIES = """
SELECT d.id, d.notification_id, n.type, d.channel, d.webhook_id, d.recipient, d.audience,
       d.user_id, d.status, d.attempts, d.last_error, d.last_status, d.created_at,
       d.last_attempt_at, d.next_attempt_at, d.delivered_at
FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE ($1::text IS NULL OR d.status = $1) AND ($2::text IS NULL OR d.channel = $2)
  AND ($3::text IS NULL OR d.user_id = $3)
ORDER BY d.created_at DESC, d.notification_seq DESC, d.id
LIMIT $4
"""
SELECT_PENDING = """
SELECT channel, count(*) AS pending, min(created_at) AS oldest
FROM notification_deliveries WHERE status = 'pending' GROUP BY channel
"""
SELECT_UNPREPARED = """
SELECT id, type, user_id, data, created_at, log_seen, now() AS db_now FROM notifications
WHERE prepared_at IS NULL ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# How far reports' projection has read a log (libs/service/consumer.py keeps it there).
SELECT_PROJECTED = """
SELECT partition, next_offset FROM consumer_offsets
WHERE consumer = $1 AND topic = $2 AND epoch = $3
"""
# Reports' own directory projection (deploy/migrations/03xx).
SELECT_USERS = """
SELECT user_id, username, name, email, suspended FROM reports_users WHERE user_id = ANY($1::text[])
"""
SELECT_GROUP_NAMES = """
SELECT group_id, name FROM reports_groups WHERE group_id = ANY($1::text[])
"""
SELECT_ADMINS = """
SELECT user_id, username, name, email FROM reports_users
WHERE roles && $1::text[] AND NOT suspended ORDER BY user_id
"""
COUNT_WEBHOOK_DELIVERIES = """
SELECT count(*) FROM notification_deliveries
WHERE notification_id = ANY($1::uuid[]) AND channel = 'webhook'
"""
MARK_PREPARED = """
UPDATE notifications SET payload = $2, prepared_at = now() WHERE id = $1
"""
INSERT_EMAILS = """
INSERT INTO notification_deliveries
    (id, notification_id, notification_seq, channel, recipient, audience, user_id, message)
SELECT e.id, n.id, n.seq, 'email', e.recipient, e.audience, n.user_id, e.message
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[])
    AS e(id, recipient, audience, message)
JOIN notifications n ON n.id = $1
ON CONFLICT DO NOTHING
"""
_DUE = """
d.status = 'pending' AND d.next_attempt_at <= now()
AND (d.claimed_until IS NULL OR d.claimed_until < now())
AND n.prepared_at IS NOT NULL
"""
SELECT_DUE_TARGETS = f"""
SELECT DISTINCT coalesce(d.webhook_id, '{EMAIL_TARGET}') AS target
FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
WHERE {_DUE}
"""  # noqa: S608  # composed from constants only
# A user's deliveries to one target go out in order: a later one waits while an earlier one is
# pending (test events have no user and wait for nothing).
CLAIM_WEBHOOK = f"""
WITH due AS (
    SELECT d.id FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
    WHERE {_DUE} AND d.channel = 'webhook' AND d.webhook_id = $1
      AND EXISTS (
          SELECT 1 FROM notification_webhooks w
          WHERE w.id = d.webhook_id AND w.deleted_at IS NULL AND w.disabled_at IS NULL)
      AND NOT EXISTS (
          SELECT 1 FROM notification_deliveries e
          WHERE e.status = 'pending' AND e.channel = 'webhook' AND e.webhook_id = d.webhook_id
            AND e.user_id = d.user_id AND e.notification_seq < d.notification_seq)
    ORDER BY d.notification_seq
    LIMIT $2
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE notification_deliveries d
SET claimed_until = now() + make_interval(secs => $3), claimed_by = $4
FROM due, notifications n, notification_webhooks w
WHERE d.id = due.id AND n.id = d.notification_id AND w.id = d.webhook_id
RETURNING d.id, d.attempts, d.created_at, d.webhook_id, w.url, w.secret, n.payload,
    CASE WHEN w.previous_secret_until > now() THEN w.previous_secret END AS previous_secret
"""  # noqa: S608  # composed from constants only
CLAIM_EMAIL = f"""
WITH due AS (
    SELECT d.id FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
    WHERE {_DUE} AND d.channel = 'email'
      AND NOT EXISTS (
          SELECT 1 FROM notification_deliveries e
          WHERE e.status = 'pending' AND e.channel = 'email' AND e.recipient = d.recipient
            AND e.user_id = d.user_id AND e.notification_seq < d.notification_seq)
    ORDER BY d.notification_seq
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE notification_deliveries d
SET claimed_until = now() + make_interval(secs => $2), claimed_by = $3
FROM due WHERE d.id = due.id
RETURNING d.id, d.attempts, d.created_at, d.recipient, d.message
"""  # noqa: S608  # composed from constants only
# Given up once the delivery is `retry_for` old: it was tried for at least that long.
SETTLE = """
UPDATE notification_deliveries
SET status = CASE
        WHEN $2 THEN 'delivered'
        WHEN $3 OR now() - coalesce(retry_from, created_at) >= make_interval(secs => $6)
            THEN 'failed'
        ELSE 'pending' END,
    attempts = attempts + 1,
    last_error = $4,
    last_status = $5,
    last_attempt_at = now(),
    delivered_at = CASE WHEN $2 THEN now() END,
    next_attempt_at = now() + make_interval(secs => $7),
    claimed_until = NULL,
    claimed_by = NULL
WHERE id = $1 AND claimed_by = $8 AND status = 'pending'
RETURNING status
"""

# Old notifications whose deliveries are all settled, oldest first; rows another replica is
# pruning are skipped.
SELECT_PRUNABLE = """
SELECT n.id FROM notifications n
WHERE n.created_at < now() - make_interval(secs => $1) AND n.prepared_at IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM notification_deliveries d
      WHERE d.notification_id = n.id AND d.status = 'pending')
ORDER BY n.created_at, n.seq
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
DELETE_DELIVERIES_OF = "DELETE FROM notification_deliveries WHERE notification_id = ANY($1::uuid[])"
DELETE_NOTIFICATIONS = "DELETE FROM notifications WHERE id = ANY($1::uuid[])"
DELETE_FORGOTTEN_WEBHOOKS = """
DELETE FROM notification_webhooks w
WHERE w.deleted_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.webhook_id = w.id)
"""

_TIMEOUT_S: Final = 10.0


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        notification_id=row["notification_id"],
        type=row["type"],
        channel=row["channel"],
        webhook_id=row["webhook_id"],
        recipient=row["recipient"],
        audience=row["audience"],
        user_id=row["user_id"],
        status=row["status"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        last_status=row["last_status"],
        created_at=row["created_at"],
        last_attempt_at=row["last_attempt_at"],
        next_attempt_at=row["next_attempt_at"],
        delivered_at=row["delivered_at"],
    )


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        secret=row["secret"],
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
        disabled_reason=row["disabled_reason"],
        previous_secret_until=row["previous_secret_until"],
    )


def _person(row: asyncpg.Record) -> Person:
    return Person(row["user_id"], row["username"], row["name"], row["email"])


class PostgresNotificationStore:
    """Both sides (admin API and dispatcher) over one pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        timeout_s: float = _TIMEOUT_S,
        projection: str | None = None,
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        #: The consumer whose positions tell how far reports' directory has read the log;
        #: None renders without waiting for it.
        self.projection = projection

    # -- admin ---------------------------------------------------------------------------------

    async def add_webhook(self, url: str, description: str) -> Webhook:
        """Insert an endpoint with a new id and secret."""
        webhook_id, secret = new_webhook_id(), new_secret()
        created: datetime = await self.pool.fetchval(
            INSERT_WEBHOOK, webhook_id, url, description, secret, timeout=self.timeout_s
        )
        return Webhook(webhook_id, url, description, created, secret)

    async def webhooks(self) -> list[Webhook]:
        """Endpoints not deleted."""
        rows = await self.pool.fetch(SELECT_WEBHOOKS, timeout=self.timeout_s)
        return [_webhook(r) for r in rows]

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Mark deleted and fail its pending deliveries, in one transaction."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            status = await conn.execute(DELETE_WEBHOOK, webhook_id, timeout=self.timeout_s)
            if not status.endswith(" 1"):
                return False
            await conn.execute(
                FAIL_PENDING_OF_WEBHOOK,
                webhook_id,
                "the endpoint was deleted before delivery",
                None,
                timeout=self.timeout_s,
            )
        return True

    async def queue_trial(self, webhook_id: str, body: str) -> uuid.UUID | None:
        """A test notification, already rendered, with one delivery to this endpoint."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            if (
                await conn.fetchval(SELECT_ACTIVE_WEBHOOK, webhook_id, timeout=self.timeout_s)
                is None
            ):
                return None
            notification_id, delivery_id = uuid.uuid4(), uuid.uuid4()
            seq = await conn.fetchval(
                INSERT_TRIAL, notification_id, TEST, body, timeout=self.timeout_s
            )
            await conn.execute(
                INSERT_WEBHOOK_DELIVERY,
                delivery_id,
                notification_id,
                seq,
                webhook_id,
                timeout=self.timeout_s,
            )
        return delivery_id

    async def deliveries(
        self,
        *,
        status: Status | None,
        channel: Channel | None,
        user_id: str | None,
        limit: int,
    ) -> list[Delivery]:
        """Newest first."""
        rows = await self.pool.fetch(
            SELECT_DELIVERIES, status, channel, user_id, limit, timeout=self.timeout_s
        )
        return [_delivery(r) for r in rows]

    async def pending(self) -> dict[Channel, PendingStats]:
        """Count and oldest creation time of pending deliveries per channel."""
        rows = await self.pool.fetch(SELECT_PENDING, timeout=self.timeout_s)
        return {r["channel"]: PendingStats(r["pending"], r["oldest"]) for r in rows}

    async def retry_delivery(self, delivery_id: uuid.UUID, *, email: bool) -> RetryOutcome:
        """Pending again, due now, its retry window restarting; or why not."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            if await conn.fetchval(RETRY_DELIVERY, delivery_id, email, timeout=self.timeout_s):
                return "queued"
            row = await conn.fetchrow(SELECT_DELIVERY_STATE, delivery_id, timeout=self.timeout_s)
        if row is None:
            return "unknown"
        return _not_retried(row["status"], row["channel"], email=email)

    async def rotate_secret(self, webhook_id: str, *, overlap_s: float) -> Webhook | None:
        """Swap in a new secret; the old one signs beside it for `overlap_s`."""
        row = await self.pool.fetchrow(
            ROTATE_SIGNER, webhook_id, new_secret(), overlap_s, timeout=self.timeout_s
        )
        return _webhook(row) if row is not None else None

    async def enable_webhook(self, webhook_id: str) -> Webhook | None:
        """Clear the endpoint's disabled mark."""
        row = await self.pool.fetchrow(ENABLE_WEBHOOK, webhook_id, timeout=self.timeout_s)
        return _webhook(row) if row is not None else None

    # -- dispatcher ----------------------------------------------------------------------------

    async def prepare(
        self, *, limit: int, directory_wait_s: float, admins_wanted: bool, preparer: Preparer
    ) -> PreparedCount:
        """Render what is new; a user the directory does not know yet waits a little."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            rows = await conn.fetch(SELECT_UNPREPARED, limit, timeout=self.timeout_s)
            if not rows:
                return PreparedCount()
            user_ids = sorted({r["user_id"] for r in rows if r["user_id"] is not None})
            users = {
                r["user_id"]: r
                for r in await conn.fetch(SELECT_USERS, user_ids, timeout=self.timeout_s)
            }
            notes = [_unprepared(r) for r in rows]
            behind = await self._behind(conn, rows)
            group_ids = sorted({str(n.data["group_id"]) for n in notes if n.data.get("group_id")})
            groups = {
                r["group_id"]: r["name"]
                for r in await conn.fetch(SELECT_GROUP_NAMES, group_ids, timeout=self.timeout_s)
            }
            admins: list[Person] = []
            if admins_wanted:
                admin_rows = await conn.fetch(
                    SELECT_ADMINS, sorted(ADMIN_ROLES), timeout=self.timeout_s
                )
                admins = [_person(r) for r in admin_rows]
            db_now: datetime = rows[0]["db_now"]
            done: list[uuid.UUID] = []
            emails = 0
            for note in notes:
                row = users.get(note.user_id) if note.user_id is not None else None
                waiting = (note.user_id is not None and row is None) or note.id in behind
                if waiting and db_now - note.created_at < timedelta(seconds=directory_wait_s):
                    continue
                user = _person(row) if row is not None else None
                if row is not None and row["suspended"]:
                    # A suspended user gets no email; the admins and the webhooks still do.
                    user = replace(user, email="") if user is not None else None
                group_id = note.data.get("group_id")
                prepared = preparer(
                    note,
                    Directory(user, groups.get(str(group_id)) if group_id else None, admins),
                )
                await conn.execute(MARK_PREPARED, note.id, prepared.payload, timeout=self.timeout_s)
                if prepared.emails:
                    await conn.execute(
                        INSERT_EMAILS,
                        note.id,
                        [e.delivery_id for e in prepared.emails],
                        [e.recipient for e in prepared.emails],
                        [e.audience for e in prepared.emails],
                        [e.message for e in prepared.emails],
                        timeout=self.timeout_s,
                    )
                    emails += len(prepared.emails)
                done.append(note.id)
            webhooks = 0
            if done:
                webhooks = await conn.fetchval(
                    COUNT_WEBHOOK_DELIVERIES, done, timeout=self.timeout_s
                )
        return PreparedCount(len(done), int(webhooks), emails)

    async def _behind(self, conn: Connection, rows: Sequence[asyncpg.Record]) -> set[uuid.UUID]:
        """Notifications recorded at a point of the log reports' projection has not reached."""
        if self.projection is None:
            return set()
        seen = {r["id"]: _log_seen(r) for r in rows}
        projected: dict[tuple[str, str], dict[int, int]] = {}
        behind = set()
        for note_id, where in seen.items():
            if where is None:
                continue
            topic, epoch, positions = where
            if (topic, epoch) not in projected:
                found = await conn.fetch(
                    SELECT_PROJECTED, self.projection, topic, epoch, timeout=self.timeout_s
                )
                projected[topic, epoch] = {r["partition"]: r["next_offset"] for r in found}
            read = projected[topic, epoch]
            if any(read.get(p, 0) < offset for p, offset in positions.items()):
                behind.add(note_id)
        return behind

    async def due_targets(self) -> list[str]:
        """Distinct targets with something due."""
        rows = await self.pool.fetch(SELECT_DUE_TARGETS, timeout=self.timeout_s)
        return sorted(r["target"] for r in rows)

    async def claim(
        self, target: str, *, limit: int, claimant: str, claim_s: float
    ) -> list[Claimed]:
        """Claim due deliveries of one endpoint (or the emails) for `claim_s` seconds."""
        if target == EMAIL_TARGET:
            rows = await self.pool.fetch(
                CLAIM_EMAIL, limit, claim_s, claimant, timeout=self.timeout_s
            )
            return [
                Claimed(
                    id=r["id"],
                    channel="email",
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    recipient=r["recipient"],
                    message=r["message"],
                )
                for r in rows
            ]
        rows = await self.pool.fetch(
            CLAIM_WEBHOOK, target, limit, claim_s, claimant, timeout=self.timeout_s
        )
        return [
            Claimed(
                id=r["id"],
                channel="webhook",
                attempts=r["attempts"],
                created_at=r["created_at"],
                webhook_id=r["webhook_id"],
                url=r["url"],
                secret=r["secret"],
                previous_secret=r["previous_secret"],
                payload=r["payload"],
            )
            for r in rows
        ]

    async def settle(
        self, claimed: Claimed, settlement: Settlement, *, claimant: str, retry_for_s: float
    ) -> Status | None:
        """Write the attempt's outcome unless another replica took the claim over meanwhile."""
        status: Status | None = await self.pool.fetchval(
            SETTLE,
            claimed.id,
            settlement.delivered,
            settlement.final,
            settlement.error,
            settlement.http_status,
            retry_for_s,
            settlement.retry_in_s,
            claimant,
            timeout=self.timeout_s,
        )
        return status

    async def disable_webhook(
        self, webhook_id: str, reason: str, *, sparing: uuid.UUID | None = None
    ) -> int:
        """Disable an endpoint and fail what was pending for it (but `sparing`)."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            await conn.execute(DISABLE_WEBHOOK, webhook_id, reason, timeout=self.timeout_s)
            status = await conn.execute(
                FAIL_PENDING_OF_WEBHOOK, webhook_id, reason, sparing, timeout=self.timeout_s
            )
        return int(status.rsplit(" ", 1)[-1])

    async def prune(self, *, older_than_s: float, limit: int) -> int:
        """Delete old settled notifications and their deliveries, one transaction."""
        async with self.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
            ids = [
                r["id"]
                for r in await conn.fetch(
                    SELECT_PRUNABLE, older_than_s, limit, timeout=self.timeout_s
                )
            ]
            if ids:
                await conn.execute(DELETE_DELIVERIES_OF, ids, timeout=self.timeout_s)
                await conn.execute(DELETE_NOTIFICATIONS, ids, timeout=self.timeout_s)
            await conn.execute(DELETE_FORGOTTEN_WEBHOOKS, older_than_s, timeout=self.timeout_s)
        return len(ids)


def _not_retried(status: Status, channel: Channel, *, email: bool) -> RetryOutcome:
    """Why a delivery that exists was not sent again."""
    if status != "failed":
        return "not_failed"
    if channel == "email" and not email:
        return "email_off"
    return "endpoint_gone"


def _log_seen(row: asyncpg.Record) -> tuple[str, str, dict[int, int]] | None:
    """The log position limits recorded a notification at: topic, epoch, positions."""
    raw = row["log_seen"]
    if raw is None:
        return None
    seen = orjson.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
    positions = {int(p): int(o) for p, o in seen["positions"].items()}
    return str(seen["topic"]), str(seen["epoch"]), positions


def _unprepared(row: asyncpg.Record) -> Unprepared:
    data = row["data"]
    parsed = orjson.loads(data) if isinstance(data, str | bytes) else dict(data)
    return Unprepared(
        id=row["id"],
        type=row["type"],
        user_id=row["user_id"],
        data=parsed,
        created_at=row["created_at"],
    )


# -- in memory ---------------------------------------------------------------------------------


class InMemoryNotificationAdmin:
    """Endpoints and deliveries in lists, for the API's unit tests; can be told to fail."""

    def __init__(self) -> None:
        self.hooks: dict[str, Webhook] = {}
        self.deleted: set[str] = set()
        self.items: list[Delivery] = []
        self.bodies: dict[uuid.UUID, str] = {}
        #: Per endpoint, the secret before its last rotation.
        self.previous: dict[str, str] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise OSError("the database does not answer")

    async def add_webhook(self, url: str, description: str) -> Webhook:
        """Keep a new endpoint."""
        self._check()
        hook = Webhook(new_webhook_id(), url, description, datetime.now(UTC), new_secret())
        self.hooks[hook.id] = hook
        return hook

    async def webhooks(self) -> list[Webhook]:
        """Endpoints not deleted."""
        self._check()
        return [h for h in self.hooks.values() if h.id not in self.deleted]

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Forget an endpoint; fail its pending deliveries."""
        self._check()
        if webhook_id not in self.hooks or webhook_id in self.deleted:
            return False
        self.deleted.add(webhook_id)
        self.items = [
            replace(d, status="failed", last_error="the endpoint was deleted before delivery")
            if d.webhook_id == webhook_id and d.status == "pending"
            else d
            for d in self.items
        ]
        return True

    async def queue_trial(self, webhook_id: str, body: str) -> uuid.UUID | None:
        """A pending test delivery."""
        self._check()
        if webhook_id not in self.hooks or webhook_id in self.deleted:
            return None
        delivery = Delivery(
            id=uuid.uuid4(),
            notification_id=uuid.uuid4(),
            type=TEST,
            channel="webhook",
            webhook_id=webhook_id,
            recipient=None,
            audience="user",
            user_id=None,
            status="pending",
            attempts=0,
            last_error=None,
            last_status=None,
            created_at=datetime.now(UTC),
            last_attempt_at=None,
            next_attempt_at=datetime.now(UTC),
            delivered_at=None,
        )
        self.items.append(delivery)
        self.bodies[delivery.id] = body
        return delivery.id

    async def deliveries(
        self,
        *,
        status: Status | None,
        channel: Channel | None,
        user_id: str | None,
        limit: int,
    ) -> list[Delivery]:
        """Newest first, filtered."""
        self._check()
        found = [
            d
            for d in reversed(self.items)
            if (status is None or d.status == status)
            and (channel is None or d.channel == channel)
            and (user_id is None or d.user_id == user_id)
        ]
        return found[:limit]

    async def retry_delivery(self, delivery_id: uuid.UUID, *, email: bool) -> RetryOutcome:
        """Pending again, due now, when it failed and can go anywhere."""
        self._check()
        for index, d in enumerate(self.items):
            if d.id != delivery_id:
                continue
            hook = self.hooks.get(d.webhook_id) if d.webhook_id is not None else None
            open_hook = (
                hook is not None and hook.id not in self.deleted and hook.disabled_at is None
            )
            if d.status == "failed" and (open_hook if d.channel == "webhook" else email):
                now = datetime.now(UTC)
                self.items[index] = replace(d, status="pending", next_attempt_at=now)
                return "queued"
            return _not_retried(d.status, d.channel, email=email)
        return "unknown"

    async def rotate_secret(self, webhook_id: str, *, overlap_s: float) -> Webhook | None:
        """A new secret; the old one is remembered with when it stops signing."""
        self._check()
        hook = self.hooks.get(webhook_id)
        if hook is None or webhook_id in self.deleted:
            return None
        self.previous[webhook_id] = hook.secret
        until = datetime.now(UTC) + timedelta(seconds=overlap_s)
        rotated = replace(hook, secret=new_secret(), previous_secret_until=until)
        self.hooks[webhook_id] = rotated
        return rotated

    async def enable_webhook(self, webhook_id: str) -> Webhook | None:
        """Clear the disabled mark."""
        self._check()
        hook = self.hooks.get(webhook_id)
        if hook is None or webhook_id in self.deleted:
            return None
        enabled = replace(hook, disabled_at=None, disabled_reason=None)
        self.hooks[webhook_id] = enabled
        return enabled

    async def pending(self) -> dict[Channel, PendingStats]:
        """Pending per channel."""
        self._check()
        out: dict[Channel, PendingStats] = {}
        for d in self.items:
            if d.status != "pending":
                continue
            seen = out.get(d.channel, PendingStats())
            oldest = seen.oldest_created_at
            out[d.channel] = PendingStats(
                seen.count + 1,
                d.created_at if oldest is None or d.created_at < oldest else oldest,
            )
        return out


def json_data(data: Mapping[str, object]) -> str:
    """A notification's data as the JSON text its column holds."""
    return orjson.dumps(data).decode()
