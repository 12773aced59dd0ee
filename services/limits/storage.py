"""Where limits keep what must outlive a process: the admin configuration and the snapshots.

Each store is a Protocol with a PostgreSQL implementation and an in-memory one for tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Final, Literal, Protocol

import asyncpg
import orjson

from libs.events.models import ChatUsageRecorded, identity_of
from libs.events.vocabulary import Period
from services.limits.crossings import Crossing, CrossingKey
from services.limits.domain import LimitsConfig

Subject = Literal["user", "group"]
#: `put_config`'s warning share when the request left it out: the stored one stays.
Keep = Literal["keep"]
KEEP: Final[Keep] = "keep"
DEFAULT_WARNING_PERCENT: Final = 85


@dataclass(frozen=True, slots=True)
class Override:
    """A limit set for one user or one group."""

    subject_id: str
    limit_micros: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredConfig:
    """The configuration as stored, with when it last changed and its change counter."""

    enabled: bool = False
    period: Period = "month"
    default_limit_micros: int | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: int = 0
    user_overrides: Sequence[Override] = ()
    group_overrides: Sequence[Override] = ()
    warning_threshold_percent: int | None = DEFAULT_WARNING_PERCENT

    def to_config(self) -> LimitsConfig:
        """The configuration the limiter reads on every check."""
        return LimitsConfig(
            enabled=self.enabled,
            period=self.period,
            default_limit_micros=self.default_limit_micros,
            user_overrides={o.subject_id: o.limit_micros for o in self.user_overrides},
            group_overrides={o.subject_id: o.limit_micros for o in self.group_overrides},
            warning_threshold_percent=self.warning_threshold_percent,
        )


class ConfigStore(Protocol):
    """Reads and changes the limits configuration and its overrides."""

    async def version(self) -> int:
        """A number that changes whenever anything in the configuration changes."""
        ...

    async def load(self) -> StoredConfig:
        """The configuration and every override, consistent with the version it reports."""
        ...

    async def put_config(
        self,
        *,
        enabled: bool,
        period: Period,
        default_limit_micros: int | None,
        warning_threshold_percent: int | Keep | None = KEEP,
    ) -> None:
        """Replace the switch, the period, the default and (unless `KEEP`) the warning share."""
        ...

    async def put_override(self, subject: Subject, subject_id: str, limit_micros: int) -> Override:
        """Set a user's or group's limit."""
        ...

    async def delete_override(self, subject: Subject, subject_id: str) -> bool:
        """Remove a user's or group's limit; False when there was none."""
        ...

    async def priced_models(self) -> frozenset[str]:
        """The models the price table (ingest's) gives an input or an output price now."""
        ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The ledger at one consistent point of one log, compressed."""

    topic: str
    epoch: str
    format: int
    positions: dict[int, int]
    events_applied: int
    state: bytes
    created_at: datetime | None = None
    id: int | None = None


class SnapshotStore(Protocol):
    """Keeps the newest few snapshots per topic."""

    async def latest(self, *, topic: str, epoch: str, format: int) -> Snapshot | None:  # noqa: A002  # the column's name
        """The snapshot of this log that got furthest, if any."""
        ...

    async def newest_of_another_epoch(
        self, *, topic: str, epoch: str, formats: Sequence[int]
    ) -> Snapshot | None:
        """The most recently taken snapshot of another log of this topic (a previous epoch)."""
        ...

    async def save(self, snapshot: Snapshot, *, keep: int) -> Snapshot:
        """Store a snapshot and drop all but the `keep` furthest of its log (and other logs')."""
        ...


@dataclass(frozen=True, slots=True)
class ArchivedChat:
    """A chat usage event as the reports archive kept it."""

    identity: str
    user_id: str
    model: str
    cost_micros: int | None
    occurred_at: datetime
    partition: int
    title: bool = False
    org_id: str | None = None


class ChatArchive(Protocol):
    """The reports archive, read back to recover what a lost log held (see `LimitsSink`)."""

    async def available(self) -> bool:
        """Whether this database holds the archive at all."""
        ...

    def chat_since(
        self, *, projected_from: datetime, occurred_from: datetime
    ) -> AsyncIterator[list[ArchivedChat]]:
        """Chat usage projected from `projected_from` that occurred from `occurred_from`."""
        ...


class CrossingStore(Protocol):
    """Where due notifications are recorded once, with their webhook deliveries (the outbox)."""

    async def record(
        self, crossings: Sequence[Crossing], *, seen: LogSeen | None = None
    ) -> list[RecordedCrossing]:
        """Record each crossing unless its key is recorded already, in one transaction.

        `seen` is where this replica stood in the log: the notifier waits for reports to have
        read that far before it renders them. Returns the ones this call recorded (with how
        many webhook deliveries each got); the others were recorded before, by this replica or
        another.
        """
        ...


@dataclass(frozen=True, slots=True)
class LogSeen:
    """How far into which log a limits replica had read: next offset per partition."""

    topic: str
    epoch: str
    positions: Mapping[int, int]

    def as_json(self) -> str:
        """What `notifications.log_seen` holds."""
        return orjson.dumps(
            {
                "topic": self.topic,
                "epoch": self.epoch,
                "positions": {str(p): o for p, o in sorted(self.positions.items())},
            }
        ).decode()


@dataclass(frozen=True, slots=True)
class RecordedCrossing:
    """A crossing this call was the first to record."""

    crossing: Crossing
    notification_id: uuid.UUID
    webhooks: int


# -- PostgreSQL ------------------------------------------------------------------------------

SELECT_VERSION = "SELECT version FROM limits_config"
SELECT_CONFIG = """
SELECT enabled, period, default_limit_micros, warning_threshold_percent, updated_at, version
FROM limits_config
"""
SELECT_USER_OVERRIDES = """
SELECT user_id AS subject_id, limit_micros, updated_at FROM limits_user_overrides ORDER BY user_id
"""
SELECT_GROUP_OVERRIDES = """
SELECT group_id AS subject_id, limit_micros, updated_at FROM limits_group_overrides
ORDER BY group_id
"""
UPDATE_CONFIG = """
UPDATE limits_config
SET enabled = $1, period = $2, default_limit_micros = $3, version = version + 1, updated_at = now()
"""
UPDATE_CONFIG_AND_WARNING = """
UPDATE limits_config
SET enabled = $1, period = $2, default_limit_micros = $3, warning_threshold_percent = $4,
    version = version + 1, updated_at = now()
"""
UPSERT_USER_OVERRIDE = """
INSERT INTO limits_user_overrides (user_id, limit_micros, updated_at) VALUES ($1, $2, now())
ON CONFLICT (user_id) DO UPDATE SET limit_micros = EXCLUDED.limit_micros, updated_at = now()
RETURNING updated_at
"""
UPSERT_GROUP_OVERRIDE = """
INSERT INTO limits_group_overrides (group_id, limit_micros, updated_at) VALUES ($1, $2, now())
ON CONFLICT (group_id) DO UPDATE SET limit_micros = EXCLUDED.limit_micros, updated_at = now()
RETURNING updated_at
"""
# Ingest's price table (deploy/migrations/01xx), read only. A model with neither an input nor an
# output price counts as without pricing, as in Coder's CountEnabledModelsWithoutPricing.
SELECT_PRICED_MODELS = """
SELECT model FROM model_prices
WHERE input_price_per_million IS NOT NULL OR output_price_per_million IS NOT NULL
"""
DELETE_USER_OVERRIDE = "DELETE FROM limits_user_overrides WHERE user_id = $1"
DELETE_GROUP_OVERRIDE = "DELETE FROM limits_group_overrides WHERE group_id = $1"
BUMP_VERSION = "UPDATE limits_config SET version = version + 1, updated_at = now()"

_UPSERT = {"user": UPSERT_USER_OVERRIDE, "group": UPSERT_GROUP_OVERRIDE}
_DELETE = {"user": DELETE_USER_OVERRIDE, "group": DELETE_GROUP_OVERRIDE}

SELECT_LATEST_SNAPSHOT = """
SELECT id, positions, events_applied, state, created_at FROM limits_snapshots
WHERE topic = $1 AND epoch = $2 AND format = $3
ORDER BY next_offsets_total DESC, id DESC
LIMIT 1
"""
SELECT_NEWEST_OTHER_EPOCH = """
SELECT id, epoch, format, positions, events_applied, state, created_at FROM limits_snapshots
WHERE topic = $1 AND epoch <> $2 AND format = ANY($3::int4[])
ORDER BY created_at DESC, id DESC
LIMIT 1
"""
INSERT_SNAPSHOT = """
INSERT INTO limits_snapshots
    (topic, epoch, format, positions, next_offsets_total, events_applied, state)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
RETURNING id, created_at
"""
# Snapshots of other epochs point into logs that no longer exist: they go too.
PRUNE_SNAPSHOTS = """
DELETE FROM limits_snapshots
WHERE topic = $1 AND id NOT IN (
    SELECT id FROM limits_snapshots
    WHERE topic = $1 AND epoch = $2 AND format = $3
    ORDER BY next_offsets_total DESC, id DESC
    LIMIT $4
)
"""


# The reports archive's table (deploy/migrations/03xx): read only, and only at a start in a new
# broker epoch.
SELECT_ARCHIVE_EXISTS = "SELECT to_regclass('reports_events') IS NOT NULL"
SELECT_ARCHIVED_CHAT = """
SELECT id, user_id, org_id, occurred_at, log_partition, data->>'model' AS model,
       (data->>'cost_micros')::bigint AS cost_micros, data->>'purpose' = 'title' AS title
FROM reports_events
WHERE type = 'chat.usage.v1' AND occurred_at >= $1 AND projected_at >= $2
"""


# The notification and its webhook deliveries in one statement (so one transaction): only a
# notification this statement inserted gets deliveries, so a conflict adds nothing anywhere.
# Rows go in in the given order, which puts a user's warning before their limit notice.
RECORD_CROSSINGS = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[], $7::jsonb[])
        WITH ORDINALITY AS t(id, type, user_id, org_scope, period, period_start, data, ord)
), inserted AS (
    INSERT INTO notifications
        (id, type, user_id, org_scope, period, period_start, data, log_seen)
    SELECT id, type, user_id, org_scope, period, period_start, data, $8::jsonb
    FROM input ORDER BY ord
    ON CONFLICT ON CONSTRAINT notifications_once DO NOTHING
    RETURNING id, seq, user_id
), outbox AS (
    INSERT INTO notification_deliveries
        (id, notification_id, notification_seq, channel, webhook_id, user_id)
    SELECT gen_random_uuid(), i.id, i.seq, 'webhook', w.id, i.user_id
    FROM inserted i CROSS JOIN notification_webhooks w
    WHERE w.deleted_at IS NULL AND w.disabled_at IS NULL
    RETURNING notification_id
)
SELECT i.id, (SELECT count(*) FROM outbox o WHERE o.notification_id = i.id) AS webhooks
FROM inserted i
"""


def _override(row: asyncpg.Record) -> Override:
    return Override(row["subject_id"], row["limit_micros"], row["updated_at"])


class PostgresConfigStore:
    """The configuration tables in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def version(self) -> int:
        """The change counter."""
        value: int = await self.pool.fetchval(SELECT_VERSION, timeout=2)
        return value

    async def load(self) -> StoredConfig:
        """Everything in one snapshot-isolated read, so the version matches the contents."""
        async with (
            self.pool.acquire(timeout=5) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(SELECT_CONFIG, timeout=5)
            users = await conn.fetch(SELECT_USER_OVERRIDES, timeout=5)
            groups = await conn.fetch(SELECT_GROUP_OVERRIDES, timeout=5)
        assert row is not None, "migration 0200 inserts the configuration row"
        return StoredConfig(
            enabled=row["enabled"],
            period=row["period"],
            default_limit_micros=row["default_limit_micros"],
            warning_threshold_percent=row["warning_threshold_percent"],
            updated_at=row["updated_at"],
            version=row["version"],
            user_overrides=tuple(_override(r) for r in users),
            group_overrides=tuple(_override(r) for r in groups),
        )

    async def put_config(
        self,
        *,
        enabled: bool,
        period: Period,
        default_limit_micros: int | None,
        warning_threshold_percent: int | Keep | None = KEEP,
    ) -> None:
        """Replace the row's settings and move the version."""
        if warning_threshold_percent == KEEP:
            await self.pool.execute(UPDATE_CONFIG, enabled, period, default_limit_micros, timeout=5)
            return
        await self.pool.execute(
            UPDATE_CONFIG_AND_WARNING,
            enabled,
            period,
            default_limit_micros,
            warning_threshold_percent,
            timeout=5,
        )

    async def put_override(self, subject: Subject, subject_id: str, limit_micros: int) -> Override:
        """Upsert and move the version in one transaction."""
        async with self.pool.acquire(timeout=5) as conn, conn.transaction():
            updated: datetime = await conn.fetchval(
                _UPSERT[subject], subject_id, limit_micros, timeout=5
            )
            await conn.execute(BUMP_VERSION, timeout=5)
        return Override(subject_id, limit_micros, updated)

    async def delete_override(self, subject: Subject, subject_id: str) -> bool:
        """Delete and, when something went, move the version in the same transaction."""
        async with self.pool.acquire(timeout=5) as conn, conn.transaction():
            status = await conn.execute(_DELETE[subject], subject_id, timeout=5)
            deleted = status.endswith(" 1")
            if deleted:
                await conn.execute(BUMP_VERSION, timeout=5)
        return deleted

    async def priced_models(self) -> frozenset[str]:
        """Read from the price table at this moment (it is small: one row per model)."""
        rows = await self.pool.fetch(SELECT_PRICED_MODELS, timeout=5)
        return frozenset(r["model"] for r in rows)


class PostgresSnapshotStore:
    """Snapshots in PostgreSQL, the newest few per topic."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 30.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s

    async def latest(self, *, topic: str, epoch: str, format: int) -> Snapshot | None:  # noqa: A002
        """The snapshot of this log that got furthest."""
        row = await self.pool.fetchrow(
            SELECT_LATEST_SNAPSHOT, topic, epoch, format, timeout=self.timeout_s
        )
        if row is None:
            return None
        return Snapshot(
            topic=topic,
            epoch=epoch,
            format=format,
            positions={int(p): int(o) for p, o in orjson.loads(row["positions"]).items()},
            events_applied=row["events_applied"],
            state=bytes(row["state"]),
            created_at=row["created_at"],
            id=row["id"],
        )

    async def newest_of_another_epoch(
        self, *, topic: str, epoch: str, formats: Sequence[int]
    ) -> Snapshot | None:
        """The most recently taken snapshot of another epoch's log."""
        row = await self.pool.fetchrow(
            SELECT_NEWEST_OTHER_EPOCH, topic, epoch, list(formats), timeout=self.timeout_s
        )
        if row is None:
            return None
        return Snapshot(
            topic=topic,
            epoch=row["epoch"],
            format=row["format"],
            positions={int(p): int(o) for p, o in orjson.loads(row["positions"]).items()},
            events_applied=row["events_applied"],
            state=bytes(row["state"]),
            created_at=row["created_at"],
            id=row["id"],
        )

    async def save(self, snapshot: Snapshot, *, keep: int) -> Snapshot:
        """Insert and prune in one transaction."""
        positions = orjson.dumps(snapshot.positions, option=orjson.OPT_NON_STR_KEYS).decode()
        async with self.pool.acquire(timeout=5) as conn, conn.transaction():
            row = await conn.fetchrow(
                INSERT_SNAPSHOT,
                snapshot.topic,
                snapshot.epoch,
                snapshot.format,
                positions,
                sum(snapshot.positions.values()),
                snapshot.events_applied,
                snapshot.state,
                timeout=self.timeout_s,
            )
            assert row is not None
            await conn.execute(
                PRUNE_SNAPSHOTS,
                snapshot.topic,
                snapshot.epoch,
                snapshot.format,
                keep,
                timeout=self.timeout_s,
            )
        return replace(snapshot, id=row["id"], created_at=row["created_at"])


class PostgresChatArchive:
    """The reports archive in the same PostgreSQL database, read in pages."""

    def __init__(self, pool: asyncpg.Pool, *, page: int = 5000, timeout_s: float = 30.0) -> None:
        self.pool = pool
        self.page = page
        self.timeout_s = timeout_s

    async def available(self) -> bool:
        """Whether the reports tables are in this database."""
        found: bool = await self.pool.fetchval(SELECT_ARCHIVE_EXISTS, timeout=self.timeout_s)
        return found

    async def chat_since(
        self, *, projected_from: datetime, occurred_from: datetime
    ) -> AsyncIterator[list[ArchivedChat]]:
        """Pages of archived chat messages, through a cursor (one transaction, read only)."""
        chat_type = ChatUsageRecorded.model_fields["type"].default
        async with self.pool.acquire(timeout=5) as conn, conn.transaction(readonly=True):
            page: list[ArchivedChat] = []
            async for row in conn.cursor(
                SELECT_ARCHIVED_CHAT, occurred_from, projected_from, prefetch=self.page
            ):
                page.append(
                    ArchivedChat(
                        identity=identity_of(chat_type, row["user_id"], row["id"]),
                        user_id=row["user_id"],
                        model=row["model"],
                        cost_micros=row["cost_micros"],
                        occurred_at=row["occurred_at"],
                        partition=row["log_partition"],
                        title=row["title"],
                        org_id=row["org_id"],
                    )
                )
                if len(page) >= self.page:
                    yield page
                    page = []
            if page:
                yield page


class PostgresCrossingStore:
    """Crossings and their outbox rows in the notifications tables (deploy/migrations/05xx)."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 10.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s

    async def record(
        self, crossings: Sequence[Crossing], *, seen: LogSeen | None = None
    ) -> list[RecordedCrossing]:
        """One statement: notifications that are new, and a delivery per webhook for each."""
        if not crossings:
            return []
        ids = {c.key: uuid.uuid4() for c in crossings}
        rows = await self.pool.fetch(
            RECORD_CROSSINGS,
            [ids[c.key] for c in crossings],
            [c.kind for c in crossings],
            [c.user_id for c in crossings],
            [c.org_id or "" for c in crossings],
            [c.period for c in crossings],
            [c.period_start for c in crossings],
            [orjson.dumps(c.facts()).decode() for c in crossings],
            seen.as_json() if seen is not None else None,
            timeout=self.timeout_s,
        )
        new = {row["id"]: int(row["webhooks"]) for row in rows}
        return [
            RecordedCrossing(c, ids[c.key], new[ids[c.key]]) for c in crossings if ids[c.key] in new
        ]


# -- in memory -------------------------------------------------------------------------------


class InMemoryConfigStore:
    """The configuration in a dataclass, for unit tests; can be told to fail."""

    def __init__(self, initial: StoredConfig | None = None) -> None:
        self.stored = initial or StoredConfig()
        self.down = False
        #: What the price table gives an input or output price (ingest's table, in tests).
        self.priced: set[str] = set()

    def _check(self) -> None:
        if self.down:
            raise OSError("the database does not answer")

    def _bump(self, **changes: object) -> None:
        self.stored = replace(
            self.stored,
            version=self.stored.version + 1,
            updated_at=datetime.now(UTC),
            **changes,  # type: ignore[arg-type]
        )

    async def version(self) -> int:
        """The change counter."""
        self._check()
        return self.stored.version

    async def load(self) -> StoredConfig:
        """The configuration."""
        self._check()
        return self.stored

    async def put_config(
        self,
        *,
        enabled: bool,
        period: Period,
        default_limit_micros: int | None,
        warning_threshold_percent: int | Keep | None = KEEP,
    ) -> None:
        """Replace the settings."""
        self._check()
        changes: dict[str, object] = {
            "enabled": enabled,
            "period": period,
            "default_limit_micros": default_limit_micros,
        }
        if warning_threshold_percent != KEEP:
            changes["warning_threshold_percent"] = warning_threshold_percent
        self._bump(**changes)

    async def put_override(self, subject: Subject, subject_id: str, limit_micros: int) -> Override:
        """Set an override."""
        self._check()
        override = Override(subject_id, limit_micros, datetime.now(UTC))
        key = f"{subject}_overrides"
        kept = [o for o in getattr(self.stored, key) if o.subject_id != subject_id]
        self._bump(**{key: tuple(sorted([*kept, override], key=lambda o: o.subject_id))})
        return override

    async def delete_override(self, subject: Subject, subject_id: str) -> bool:
        """Remove an override."""
        self._check()
        key = f"{subject}_overrides"
        current = getattr(self.stored, key)
        kept = tuple(o for o in current if o.subject_id != subject_id)
        if len(kept) == len(current):
            return False
        self._bump(**{key: kept})
        return True

    async def priced_models(self) -> frozenset[str]:
        """The models given a price."""
        self._check()
        return frozenset(self.priced)


class InMemorySnapshotStore:
    """Snapshots in a list, for unit tests."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self._next_id = 1

    async def latest(self, *, topic: str, epoch: str, format: int) -> Snapshot | None:  # noqa: A002
        """The furthest snapshot of this log."""
        mine = [s for s in self.snapshots if (s.topic, s.epoch, s.format) == (topic, epoch, format)]
        return max(mine, key=lambda s: (sum(s.positions.values()), s.id or 0), default=None)

    async def newest_of_another_epoch(
        self, *, topic: str, epoch: str, formats: Sequence[int]
    ) -> Snapshot | None:
        """The most recently taken snapshot of another epoch's log."""
        others = [
            s
            for s in self.snapshots
            if s.topic == topic and s.epoch != epoch and s.format in formats
        ]
        return max(
            others,
            key=lambda s: (s.created_at or datetime.min.replace(tzinfo=UTC), s.id or 0),
            default=None,
        )

    async def save(self, snapshot: Snapshot, *, keep: int) -> Snapshot:
        """Store and keep the furthest `keep` of this log."""
        saved = replace(snapshot, id=self._next_id, created_at=datetime.now(UTC))
        self._next_id += 1
        self.snapshots.append(saved)
        mine = sorted(
            (
                s
                for s in self.snapshots
                if (s.topic, s.epoch, s.format) == (saved.topic, saved.epoch, saved.format)
            ),
            key=lambda s: (sum(s.positions.values()), s.id or 0),
            reverse=True,
        )[:keep]
        self.snapshots = [s for s in self.snapshots if s.topic != saved.topic] + mine
        return saved


class InMemoryChatArchive:
    """Archived chat messages in a list, with the time each was projected, for unit tests."""

    def __init__(self, rows: Sequence[tuple[datetime, ArchivedChat]] = ()) -> None:
        self.rows = list(rows)

    async def available(self) -> bool:
        """Always there."""
        return True

    async def chat_since(
        self, *, projected_from: datetime, occurred_from: datetime
    ) -> AsyncIterator[list[ArchivedChat]]:
        """One page of the matching rows."""
        page = [
            row
            for projected_at, row in self.rows
            if projected_at >= projected_from and row.occurred_at >= occurred_from
        ]
        if page:
            yield page


class InMemoryCrossingStore:
    """Recorded crossings in a dict, for unit tests; can be told to fail."""

    def __init__(self, webhooks: int = 1) -> None:
        self.recorded: dict[CrossingKey, Crossing] = {}
        self.seen: dict[CrossingKey, LogSeen | None] = {}
        self.order: list[CrossingKey] = []
        self.webhooks = webhooks
        self.down = False
        self.calls = 0

    async def record(
        self, crossings: Sequence[Crossing], *, seen: LogSeen | None = None
    ) -> list[RecordedCrossing]:
        """Keep each crossing whose key is new (and where the log stood, per key)."""
        self.calls += 1
        if self.down:
            raise OSError("the database does not answer")
        new = []
        for crossing in crossings:
            if crossing.key in self.recorded:
                continue
            self.recorded[crossing.key] = crossing
            self.seen[crossing.key] = seen
            self.order.append(crossing.key)
            new.append(RecordedCrossing(crossing, uuid.uuid4(), self.webhooks))
        return new
