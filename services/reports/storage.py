"""The read side: a Protocol, its PostgreSQL implementation over the rollups, and an in-memory one.

The PostgreSQL store never scans raw events: a query range is covered by rollup periods
(`domain.cover`) and only those rows are read. The in-memory store keeps the events themselves
and computes every figure from them directly; it backs the unit tests and states, in plain
Python, what each figure means.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import asyncpg

from libs.events.bounds import MAX_TOTAL
from libs.events.models import (
    ActivitySessionRecorded,
    ApiUsageRecorded,
    ChatUsageRecorded,
    Envelope,
    GroupUpdated,
    ProjectUpdated,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuilt,
)
from libs.service.consumer import Consumed
from services.reports.domain import (
    ACTIVITY_GRAINS,
    ALL_CATEGORIES_KEY,
    COST_DETAIL_GRAINS,
    COST_TOTAL_GRAINS,
    Bucket,
    BucketActivity,
    ChargebackData,
    ChatCost,
    ChatFigures,
    CostSummary,
    CostUserRow,
    CostUsersPage,
    GroupInfo,
    ModelCost,
    ProfilePage,
    ProjectState,
    Span,
    TeamState,
    UsageMonth,
    UserProfile,
    Window,
    activity_body,
    activity_body_of_json,
    cost_order_key,
    cover,
    floor_day,
    month_start,
    sort_chats,
    sort_models,
)

__all__ = ["InMemoryReportStore", "PostgresReportStore", "ReportStore", "like_pattern"]


class ReportStore(Protocol):
    """Answers the reports' questions."""

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def activity(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> list[BucketActivity]:
        """Per bucket, each active user's overlap and session count (`category` '*' = any)."""
        ...

    async def activity_report(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> dict[str, object]:
        """The Activity response body (`domain.activity_body`'s shape) for these buckets."""
        ...

    async def profiles(self, user_ids: Collection[str]) -> dict[str, UserProfile]:
        """Directory entries of the users that have one."""
        ...

    async def cost_users(
        self,
        window: Window,
        *,
        search: str | None,
        limit: int | None,
        offset: int,
        ascending: bool = False,
    ) -> CostUsersPage:
        """Per-user chat spend in the window, cost descending (or ascending), filtered by name
        or username."""
        ...

    async def directory_users(self, *, search: str | None, limit: int, offset: int) -> ProfilePage:
        """Directory users by username, filtered by a substring of name or username, or an id."""
        ...

    async def directory_groups(self) -> list[GroupInfo]:
        """Every directory group with its member count, by name."""
        ...

    async def cost_user(self, window: Window, user_id: str) -> CostSummary | None:
        """One user's chat spend in the window; None for a user never seen."""
        ...

    async def chargeback(self, month: Window) -> ChargebackData:
        """Directory state and the month's usage for the chargeback report."""
        ...


def _split(spans: Sequence[Span]) -> tuple[list[object], list[object]]:
    """Rollup spans as (grains, los, his) arrays and exact spans as (los, his) arrays."""
    rollup = [s for s in spans if s.grain != "x"]
    exact = [s for s in spans if s.grain == "x"]
    return (
        [[s.grain for s in rollup], [s.lo for s in rollup], [s.hi for s in rollup]],
        [[s.lo for s in exact], [s.hi for s in exact]],
    )


@dataclass
class _ActivityPlan:
    """Every bucket's rollup spans and exact spans, as the arrays the activity queries unnest.

    The rollup spans of bucket i are the 1-based, inclusive slice `[first[i], last[i]]` of the
    span arrays (an empty slice has first > last); its exact spans (parts of days) are listed
    with their bucket's index, for `SELECT_ACTIVITY_EDGES`.
    """

    grains: list[str] = field(default_factory=list)
    los: list[datetime] = field(default_factory=list)
    his: list[datetime] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    x_index: list[int] = field(default_factory=list)
    x_days: list[datetime] = field(default_factory=list)
    x_los: list[datetime] = field(default_factory=list)
    x_his: list[datetime] = field(default_factory=list)
    # Whether a bucket is exactly one rollup period (a week from a Monday, a month from the
    # 1st, a day from midnight): then each of its users has one row per org.
    single: list[bool] = field(default_factory=list)

    @classmethod
    def of(cls, ranges: Iterable[tuple[datetime, datetime]]) -> _ActivityPlan:
        plan = cls()
        for i, (start, end) in enumerate(ranges):
            plan.first.append(len(plan.grains) + 1)
            spans = cover(start, end, ACTIVITY_GRAINS)
            for span in spans:
                if span.grain == "x":
                    plan.x_index.append(i)
                    plan.x_days.append(floor_day(span.lo))
                    plan.x_los.append(span.lo)
                    plan.x_his.append(span.hi)
                else:
                    plan.grains.append(span.grain)
                    plan.los.append(span.lo)
                    plan.his.append(span.hi)
            plan.last.append(len(plan.grains))
            plan.single.append(len(spans) == 1 and spans[0].grain != "x" and spans[0].periods == 1)
        return plan


@dataclass
class _Edges:
    """What the archive adds to each bucket (from `SELECT_ACTIVITY_EDGES`), sliced per bucket."""

    user_ids: list[str] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, rows: Sequence[asyncpg.Record], buckets: int) -> _Edges:
        edges = cls()
        by_bucket: list[list[asyncpg.Record]] = [[] for _ in range(buckets)]
        for row in rows:
            by_bucket[row["bucket"]].append(row)
        for found in by_bucket:
            edges.first.append(len(edges.user_ids) + 1)
            for row in found:
                edges.user_ids.append(row["user_id"])
                edges.durations.append(row["duration_us"])
                edges.counts.append(row["sessions"])
            edges.last.append(len(edges.user_ids))
        return edges


def _activity_args(plan: _ActivityPlan, edges: _Edges) -> tuple[list[Any], ...]:
    """`$1`–`$10` of `SELECT_ACTIVITY` and `SELECT_ACTIVITY_JSON`."""
    return (
        plan.grains, plan.los, plan.his, edges.user_ids, edges.durations, edges.counts,
        plan.first, plan.last, edges.first, edges.last,
    )  # fmt: skip


def like_pattern(search: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards taken literally."""
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# Activity is summed bucket by bucket, in two statements. The first reads what the rollups
# cannot give, the parts of days that bucket edges cut off, from the archive: the day's rollup
# rows say which users had a session there and how early the earliest began; their sessions
# are clipped exactly as the projection clips them ($5: the longest session counted, in ms).
# The second reads each bucket's rollup spans, adds the first one's rows for that bucket, sums
# per user (which also merges a user active in several orgs), and writes the result; no sort
# or hash spans more than one bucket. `OFFSET 0` keeps the planner from flattening a LATERAL
# into a join that it would answer with a sequential scan.
_SESSION_END = (
    "e.occurred_at + LEAST((e.data->>'duration_ms')::bigint, $5) * interval '1 millisecond'"
)
SELECT_ACTIVITY_EDGES: Final = f"""
SELECT r.bucket, e.user_id,
       LEAST(sum(GREATEST(0, extract(epoch FROM LEAST({_SESSION_END}, r.hi)
                                          - GREATEST(e.occurred_at, r.lo)) * 1000000)),
             {MAX_TOTAL})::bigint AS duration_us,
       LEAST(sum(CASE WHEN e.occurred_at >= r.lo THEN (e.data->>'count')::bigint ELSE 0 END),
             {MAX_TOTAL})::bigint AS sessions
FROM unnest($1::int4[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
     AS r (bucket, day, lo, hi)
CROSS JOIN LATERAL (
    SELECT h.user_id, h.org_id, h.first_start
    FROM reports_activity h
    WHERE h.grain = 'd' AND h.category = $6 AND h.period = r.day
      AND ($7::text IS NULL OR h.org_id = $7)
    OFFSET 0
) AS h
CROSS JOIN LATERAL (
    SELECT e.user_id, e.occurred_at, e.data
    FROM reports_events e
    WHERE e.type = 'activity.session.v1' AND e.user_id = h.user_id
      AND e.occurred_at >= h.first_start AND e.occurred_at < r.hi
      AND COALESCE(e.org_id, '') = h.org_id
      AND ($6 = '*' OR e.data->>'category' = $6)
    OFFSET 0
) AS e
WHERE e.occurred_at >= r.lo OR {_SESSION_END} > r.lo
GROUP BY r.bucket, e.user_id
"""  # noqa: S608  # composed from constants only

# $1-$3 rollup spans (grain, lo, hi) and $7-$8 each bucket's slice of them; $4-$6 the edges'
# (user, µs, sessions) and $9-$10 each bucket's slice of those; $11 category, $12 org or NULL.
_ACTIVITY_BUCKETS = "unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[]) WITH ORDINALITY"
_ROLLUP_ROWS = """
        SELECT a.user_id, a.duration_us, a.sessions
        FROM unnest(($1::text[])[b.first:b.last], ($2::timestamptz[])[b.first:b.last],
                    ($3::timestamptz[])[b.first:b.last]) AS r (grain, lo, hi)
        CROSS JOIN LATERAL (
            SELECT a.user_id, a.duration_us, a.sessions
            FROM reports_activity a
            WHERE a.grain = r.grain::"char" AND a.category = $11
              AND a.period >= r.lo AND a.period < r.hi
              AND ($12::text IS NULL OR a.org_id = $12)
            OFFSET 0
        ) AS a"""
_BUCKET_USERS: Final = f"""
    SELECT p.user_id, LEAST(sum(p.duration_us), {MAX_TOTAL})::bigint AS duration_us,
           LEAST(sum(p.sessions), {MAX_TOTAL})::bigint AS sessions
    FROM (
        {_ROLLUP_ROWS}
        UNION ALL
        SELECT x.user_id, x.duration_us, x.sessions
        FROM unnest(($4::text[])[b.x_first:b.x_last], ($5::int8[])[b.x_first:b.x_last],
                    ($6::int8[])[b.x_first:b.x_last]) AS x (user_id, duration_us, sessions)
    ) AS p
    GROUP BY p.user_id
"""  # noqa: S608  # composed from constants only

# Each bucket's users, longest first (then by id, byte-wise), as parallel columns.
SELECT_ACTIVITY: Final = f"""
SELECT (b.n - 1)::int4 AS bucket, f.user_ids, f.durations, f.counts
FROM {_ACTIVITY_BUCKETS} AS b (first, last, x_first, x_last, n)
CROSS JOIN LATERAL (
    SELECT array_agg(u.user_id ORDER BY u.duration_us DESC, u.user_id COLLATE "C") AS user_ids,
           array_agg(u.duration_us ORDER BY u.duration_us DESC, u.user_id COLLATE "C")
               AS durations,
           array_agg(u.sessions ORDER BY u.duration_us DESC, u.user_id COLLATE "C") AS counts
    FROM ({_BUCKET_USERS}) AS u
    WHERE u.duration_us <> 0 OR u.sessions <> 0
) AS f
WHERE f.user_ids IS NOT NULL
"""  # noqa: S608  # composed from constants only

# The Activity response's big parts, written by PostgreSQL as JSON text, exactly as
# `domain.activity_body` writes them from `SELECT_ACTIVITY` and the profiles: each bucket's
# `user_activity` items, and, in the row with bucket -1, the members of the `users` map. That
# row comes from the plan's extra last bucket, the whole range: a user's totals are the sums
# of their bucket figures (the rollups of every grain add up to the same microseconds), read
# from as few rollup rows as cover the range. So fifty thousand entries never become Python
# objects. Durations are never negative, so `/` is the floor division the body uses.
# A bucket that is one rollup period is read as it is stored, without summing per user, unless
# the range's months ($14-$15) hold activity of several orgs and no org was asked for ($13:
# which buckets are one period).
_ITEM = """concat('{"user_id":', to_json(u.user_id), ',"duration":', u.duration_us / 1000,
                      ',"count":', u.sessions, '}')"""
_ITEMS = f"""string_agg({_ITEM}, ',' ORDER BY u.duration_us DESC, u.user_id COLLATE "C")"""
SELECT_ACTIVITY_JSON: Final = f"""
WITH orgs AS (
    SELECT CASE WHEN $12::text IS NULL THEN (
               SELECT min(a.org_id) IS DISTINCT FROM max(a.org_id)
               FROM reports_activity a
               WHERE a.grain = 'm' AND a.category = $11 AND a.period >= $14 AND a.period < $15
           ) ELSE false END AS several
)
SELECT (b.n - 1)::int4 AS bucket, f.items
FROM unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[], $13::bool[]) WITH ORDINALITY
     AS b (first, last, x_first, x_last, single, n)
CROSS JOIN orgs AS o
CROSS JOIN LATERAL (
    SELECT CASE WHEN b.single AND NOT o.several
        THEN (SELECT {_ITEMS} FROM ({_ROLLUP_ROWS}) AS u
              WHERE u.duration_us <> 0 OR u.sessions <> 0)
        ELSE (SELECT {_ITEMS} FROM ({_BUCKET_USERS}) AS u
              WHERE u.duration_us <> 0 OR u.sessions <> 0)
    END AS items
    OFFSET 0
) AS f
WHERE b.n < cardinality($7::int4[]) AND f.items IS NOT NULL
UNION ALL
SELECT -1, f.items
FROM unnest($7::int4[], $8::int4[], $9::int4[], $10::int4[]) WITH ORDINALITY
     AS b (first, last, x_first, x_last, n)
CROSS JOIN LATERAL (
    SELECT string_agg(
               concat(to_json(u.user_id), ':{{"id":', to_json(u.user_id),
                      ',"name":', to_json(COALESCE(d.name, '')),
                      ',"username":', to_json(COALESCE(d.username, '')),
                      ',"roles":', COALESCE(to_json(d.roles)::text, '[]'),
                      ',"avatar_hash":', COALESCE(to_json(d.avatar_hash)::text, 'null'),
                      ',"total_count":', u.sessions,
                      ',"total_duration":', u.duration_us / 1000, '}}'),
               ',' ORDER BY u.user_id COLLATE "C") AS items
    FROM ({_BUCKET_USERS}) AS u
    LEFT JOIN reports_users d ON d.user_id = u.user_id
    WHERE u.duration_us <> 0 OR u.sessions <> 0
) AS f
WHERE b.n = cardinality($7::int4[]) AND f.items IS NOT NULL
"""  # noqa: S608  # composed from constants only

# Sorts and hashes of one bucket's users fit in memory with room to spare.
ACTIVITY_WORK_MEM: Final = "SET LOCAL work_mem = '64MB'"
# For the per-bucket statements: the rows of a rollup period lie on a few hundred heap pages,
# which a bitmap scan reads once each and in order (from disk, with read-ahead) where an index
# scan visits a page once per row; and the planner, which cannot know a bucket holds about
# one row per user, would sort each bucket by user to sum it rather than hash it. Measured on
# a year by week over 10 million events: 87 ms without these settings, 68 ms with them. The
# edges' statement runs before them: it looks up a few rows per user, where an index scan is
# the right tool.
ACTIVITY_PLANNER: Final = "SET LOCAL enable_indexscan = off; SET LOCAL enable_sort = off"

SELECT_PROFILES: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed
FROM reports_users u
WHERE u.user_id = ANY($1::text[])
"""

SELECT_ALL_PROFILES: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed
FROM reports_users u
"""

# Chat usage of what a range cuts off the rollups' finest periods, straight from the archive:
# every user's (parts of hours, for the cost list), or some users' (parts of days, $6).
_EXACT_CHAT = """
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS x (lo, hi)
    CROSS JOIN LATERAL (
        SELECT e.user_id, e.data
        FROM reports_events e
        WHERE e.type = 'chat.usage.v1' AND e.occurred_at >= x.lo AND e.occurred_at < x.hi
          AND e.data->>'purpose' = 'chat'
        OFFSET 0
    ) AS e"""

_EXACT_USERS_CHAT = """
    FROM unnest($4::timestamptz[], $5::timestamptz[]) AS x (lo, hi)
    CROSS JOIN unnest($6::text[]) AS u (user_id)
    CROSS JOIN LATERAL (
        SELECT e.user_id, e.data
        FROM reports_events e
        WHERE e.type = 'chat.usage.v1' AND e.user_id = u.user_id
          AND e.occurred_at >= x.lo AND e.occurred_at < x.hi
          AND e.data->>'purpose' = 'chat'
        OFFSET 0
    ) AS e"""

_EXACT_SUMS = """(e.data->>'cost_micros')::bigint, 1,
           (e.data->>'cost_micros' IS NOT NULL)::int, (e.data->>'input_tokens')::bigint,
           (e.data->>'output_tokens')::bigint, (e.data->>'cache_read_tokens')::bigint,
           (e.data->>'cache_write_tokens')::bigint,
           COALESCE((e.data->>'reasoning_tokens')::bigint, 0),
           COALESCE((e.data->>'runtime_ms')::bigint, 0)"""

_ROLLUP_SUMS = """t.cost_micros, t.messages, t.priced_messages, t.input_tokens,
           t.output_tokens, t.cache_read_tokens, t.cache_write_tokens, t.reasoning_tokens,
           t.runtime_ms"""

# Sums saturate at MAX_TOTAL like every total (see libs.events.bounds): never a bigint overflow.
_SUMS = f"""LEAST(COALESCE(sum(cost_micros), 0), {MAX_TOTAL})::bigint AS cost_micros,
       LEAST(sum(messages), {MAX_TOTAL})::bigint AS messages,
       LEAST(sum(priced_messages), {MAX_TOTAL})::bigint AS priced_messages,
       LEAST(sum(input_tokens), {MAX_TOTAL})::bigint AS input_tokens,
       LEAST(sum(output_tokens), {MAX_TOTAL})::bigint AS output_tokens,
       LEAST(sum(cache_read_tokens), {MAX_TOTAL})::bigint AS cache_read_tokens,
       LEAST(sum(cache_write_tokens), {MAX_TOTAL})::bigint AS cache_write_tokens,
       LEAST(sum(reasoning_tokens), {MAX_TOTAL})::bigint AS reasoning_tokens,
       LEAST(sum(runtime_ms), {MAX_TOTAL})::bigint AS runtime_ms"""

_TOTALS_SPANS = """
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r (grain, lo, hi)
    CROSS JOIN LATERAL (
        SELECT t.*
        FROM reports_chat_totals t
        WHERE t.grain = r.grain::"char" AND t.period >= r.lo AND t.period < r.hi
        OFFSET 0
    ) AS t"""

SELECT_COST_USERS: Final = f"""
WITH parts (user_id, cost_micros, messages, priced_messages, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, runtime_ms) AS (
    SELECT t.user_id, {_ROLLUP_SUMS}{_TOTALS_SPANS}
    UNION ALL
    SELECT e.user_id, {_EXACT_SUMS}{_EXACT_CHAT}
), totals AS (
    SELECT user_id, {_SUMS}
    FROM parts
    GROUP BY user_id
)
SELECT totals.*, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed, count(*) OVER () AS matched
FROM totals
LEFT JOIN reports_users u ON u.user_id = totals.user_id
WHERE $6::text IS NULL OR u.username ILIKE $6 OR u.name ILIKE $6 OR totals.user_id = $7
ORDER BY totals.cost_micros DESC, u.username ASC NULLS LAST, totals.user_id ASC
LIMIT $8 OFFSET $9
"""  # noqa: S608  # composed from constants only
SELECT_COST_USERS_ASCENDING: Final = SELECT_COST_USERS.replace(
    "ORDER BY totals.cost_micros DESC", "ORDER BY totals.cost_micros ASC"
)

SELECT_DIRECTORY_USERS: Final = """
SELECT u.user_id, u.username, u.name, u.email, u.roles, u.avatar_hash, u.created_at,
       u.suspended, u.licensed, count(*) OVER () AS matched
FROM reports_users u
WHERE $1::text IS NULL OR u.username ILIKE $1 OR u.name ILIKE $1 OR u.user_id = $2
ORDER BY u.username, u.user_id
LIMIT $3 OFFSET $4
"""

SELECT_DIRECTORY_GROUPS: Final = """
SELECT group_id, name, org_id,
       (SELECT count(DISTINCT m) FROM unnest(member_ids) AS m)::int AS members
FROM reports_groups
ORDER BY name, group_id
"""

_DETAIL_SPANS = """
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r (grain, lo, hi)
    CROSS JOIN unnest($6::text[]) AS u (user_id)
    CROSS JOIN LATERAL (
        SELECT t.*
        FROM reports_chat_detail t
        WHERE t.user_id = u.user_id AND t.grain = r.grain::"char"
          AND t.period >= r.lo AND t.period < r.hi
        OFFSET 0
    ) AS t"""

SELECT_CHAT_COUNTS: Final = f"""
SELECT user_id, count(DISTINCT root_chat_id) AS chats
FROM (
    SELECT t.user_id, t.root_chat_id{_DETAIL_SPANS}
    UNION ALL
    SELECT e.user_id, COALESCE(e.data->>'root_chat_id', e.data->>'chat_id'){_EXACT_USERS_CHAT}
) AS parts
GROUP BY user_id
"""  # noqa: S608  # composed from constants only

SELECT_COST_DETAIL: Final = f"""
WITH parts (model, provider, root_chat_id, cost_micros, messages, priced_messages,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            reasoning_tokens, runtime_ms) AS (
    SELECT t.model, t.provider, t.root_chat_id, {_ROLLUP_SUMS}{_DETAIL_SPANS}
    UNION ALL
    SELECT e.data->>'model', COALESCE(e.data->>'provider', ''),
           COALESCE(e.data->>'root_chat_id', e.data->>'chat_id'), {_EXACT_SUMS}{_EXACT_USERS_CHAT}
)
SELECT model, provider, root_chat_id, {_SUMS}
FROM parts
GROUP BY model, provider, root_chat_id
"""  # noqa: S608  # composed from constants only

SELECT_USER_KNOWN: Final = """
SELECT EXISTS (SELECT 1 FROM reports_users WHERE user_id = $1)
    OR EXISTS (SELECT 1 FROM reports_chat_detail WHERE user_id = $1)
"""

SELECT_TEAMS: Final = "SELECT team_id, name, member_ids FROM reports_teams"

SELECT_PROJECTS: Final = """
SELECT p.project_id, p.team_id, p.name, s.size_mb, s.experiment_count, s.user_id
FROM reports_projects p
LEFT JOIN reports_storage s ON s.project_id = p.project_id AND s.month = $1
"""

SELECT_MONTH_API_USAGE: Final = """
SELECT user_id, client, calls, last_at FROM reports_api_usage WHERE month = $1
"""

SELECT_MONTH_BUILDS: Final = """
SELECT user_id, builds, agent_builds FROM reports_builds WHERE month = $1
"""

SELECT_MONTH_COSTS: Final = """
SELECT user_id, cost_micros FROM reports_chat_totals WHERE grain = 'm' AND period = $1
"""


def _profile(row: asyncpg.Record, user_id: str) -> UserProfile | None:
    if row["username"] is None:
        return None
    return UserProfile(
        user_id=user_id,
        username=row["username"],
        name=row["name"],
        email=row["email"],
        roles=tuple(row["roles"]),
        avatar_hash=row["avatar_hash"],
        created_at=row["created_at"],
        suspended=row["suspended"],
        licensed=row["licensed"],
    )


def _figures(row: asyncpg.Record) -> ChatFigures:
    return ChatFigures(
        cost_micros=row["cost_micros"],
        messages=row["messages"],
        priced_messages=row["priced_messages"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        runtime_ms=row["runtime_ms"],
    )


class PostgresReportStore:
    """Reads the rollups that `projection.Projector` writes."""

    def __init__(
        self, pool: asyncpg.Pool, *, max_session_hours: int = 744, timeout_s: float = 10.0
    ) -> None:
        self.pool = pool
        self.max_session_ms = max_session_hours * 3_600_000
        self.timeout_s = timeout_s

    async def ping(self) -> bool:
        """One trivial query with a short deadline."""
        try:
            await self.pool.fetchval("SELECT 1", timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    async def _activity_rows(
        self,
        statement: str,
        ranges: Sequence[tuple[datetime, datetime]],
        *,
        category: str,
        org: str | None,
        json: bool = False,
    ) -> list[asyncpg.Record]:
        """Run an activity statement over these ranges (one bucket each), edges included.

        Both statements read one snapshot, so the edges and the rollups agree.
        """
        plan = _ActivityPlan.of(ranges)
        extra: tuple[object, ...] = ()
        if json:
            months = month_start(min(start for start, _ in ranges)), max(end for _, end in ranges)
            extra = (plan.single, *months)
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await conn.execute(ACTIVITY_WORK_MEM)
            found: list[asyncpg.Record] = []
            if plan.x_index:
                found = await conn.fetch(
                    SELECT_ACTIVITY_EDGES, plan.x_index, plan.x_days, plan.x_los, plan.x_his,
                    self.max_session_ms, category, org, timeout=self.timeout_s,
                )  # fmt: skip
            edges = _Edges.of(found, len(ranges))
            await conn.execute(ACTIVITY_PLANNER)
            return await conn.fetch(
                statement, *_activity_args(plan, edges), category, org, *extra,
                timeout=self.timeout_s,
            )  # fmt: skip

    async def activity(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> list[BucketActivity]:
        """Sum the rollup over each bucket's spans, and the archive over its parts of days."""
        result = [BucketActivity() for _ in buckets]
        rows = await self._activity_rows(
            SELECT_ACTIVITY, [(b.start, b.end) for b in buckets], category=category, org=org
        )
        for bucket_index, user_ids, durations, counts in rows:
            result[bucket_index] = BucketActivity(user_ids, durations, counts)
        return result

    async def activity_report(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> dict[str, object]:
        """The Activity body, its per-user parts written as JSON by PostgreSQL."""
        if not buckets:
            return activity_body(buckets, [], {})
        ranges = [*((b.start, b.end) for b in buckets), (buckets[0].start, buckets[-1].end)]
        rows = await self._activity_rows(
            SELECT_ACTIVITY_JSON, ranges, category=category, org=org, json=True
        )
        parts: dict[int, str] = {r["bucket"]: r["items"] for r in rows}
        return activity_body_of_json(buckets, parts, parts.get(-1))

    async def profiles(self, user_ids: Collection[str]) -> dict[str, UserProfile]:
        """Directory entries by user id."""
        if not user_ids:
            return {}
        rows = await self.pool.fetch(SELECT_PROFILES, list(user_ids), timeout=self.timeout_s)
        found = {r["user_id"]: _profile(r, r["user_id"]) for r in rows}
        return {k: v for k, v in found.items() if v is not None}

    async def cost_users(
        self,
        window: Window,
        *,
        search: str | None,
        limit: int | None,
        offset: int,
        ascending: bool = False,
    ) -> CostUsersPage:
        """A page of the per-user rollup, with the distinct chat count of the page's users."""
        rollup, exact = _split(cover(window.start, window.end, COST_TOTAL_GRAINS))
        pattern = like_pattern(search) if search else None
        statement = SELECT_COST_USERS_ASCENDING if ascending else SELECT_COST_USERS
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                statement, *rollup, *exact, pattern, search, limit, offset,
                timeout=self.timeout_s,
            )  # fmt: skip
            if not rows and offset > 0:
                # Past the end: still say how many matched.
                head = await conn.fetch(
                    statement, *rollup, *exact, pattern, search, 1, 0,
                    timeout=self.timeout_s,
                )  # fmt: skip
                return CostUsersPage(count=head[0]["matched"] if head else 0, rows=[])
            user_ids = [r["user_id"] for r in rows]
            chats: dict[str, int] = {}
            if user_ids:
                d_rollup, d_exact = _split(cover(window.start, window.end, COST_DETAIL_GRAINS))
                counted = await conn.fetch(
                    SELECT_CHAT_COUNTS, *d_rollup, *d_exact, user_ids, timeout=self.timeout_s
                )
                chats = {r["user_id"]: r["chats"] for r in counted}
        page = [
            CostUserRow(
                user_id=r["user_id"],
                profile=_profile(r, r["user_id"]),
                figures=_figures(r),
                chat_count=chats.get(r["user_id"], 0),
            )
            for r in rows
        ]
        return CostUsersPage(count=rows[0]["matched"] if rows else 0, rows=page)

    async def directory_users(self, *, search: str | None, limit: int, offset: int) -> ProfilePage:
        """A page of `reports_users` by username."""
        pattern = like_pattern(search) if search else None
        rows = await self.pool.fetch(
            SELECT_DIRECTORY_USERS, pattern, search, limit, offset, timeout=self.timeout_s
        )
        users = [p for r in rows if (p := _profile(r, r["user_id"])) is not None]
        return ProfilePage(count=rows[0]["matched"] if rows else 0, users=users)

    async def directory_groups(self) -> list[GroupInfo]:
        """Every group in `reports_groups`."""
        rows = await self.pool.fetch(SELECT_DIRECTORY_GROUPS, timeout=self.timeout_s)
        return [GroupInfo(r["group_id"], r["name"], r["org_id"], r["members"]) for r in rows]

    async def cost_user(self, window: Window, user_id: str) -> CostSummary | None:
        """Totals, by model and by root chat from the detail rollup (and the archive's edges)."""
        rollup, exact = _split(cover(window.start, window.end, COST_DETAIL_GRAINS))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                SELECT_COST_DETAIL, *rollup, *exact, [user_id], timeout=self.timeout_s
            )
            if not rows and not await conn.fetchval(SELECT_USER_KNOWN, user_id):
                return None
            profile_rows = await conn.fetch(SELECT_PROFILES, [user_id], timeout=self.timeout_s)
        by_model: dict[tuple[str, str], ChatFigures] = {}
        by_chat: dict[str, ChatFigures] = {}
        total = ChatFigures()
        for row in rows:
            figures = _figures(row)
            key = (row["model"], row["provider"])
            by_model[key] = by_model.get(key, ChatFigures()) + figures
            by_chat[row["root_chat_id"]] = by_chat.get(row["root_chat_id"], ChatFigures()) + figures
            total += figures
        return CostSummary(
            user_id=user_id,
            profile=_profile(profile_rows[0], user_id) if profile_rows else None,
            figures=total,
            by_model=sort_models(ModelCost(m, p, f) for (m, p), f in by_model.items()),
            by_chat=sort_chats(ChatCost(c, f) for c, f in by_chat.items()),
        )

    async def chargeback(self, month: Window) -> ChargebackData:
        """Teams, projects with the month's samples, users, and the month's usage rollups."""
        first = month.start

        async def fetch(sql: str, *args: object) -> list[asyncpg.Record]:
            return await self.pool.fetch(sql, *args, timeout=self.timeout_s)

        teams, projects, profiles, api_usage, builds, costs = await asyncio.gather(
            fetch(SELECT_TEAMS),
            fetch(SELECT_PROJECTS, first),
            fetch(SELECT_ALL_PROFILES),
            fetch(SELECT_MONTH_API_USAGE, first),
            fetch(SELECT_MONTH_BUILDS, first),
            fetch(SELECT_MONTH_COSTS, first),
        )
        data = ChargebackData(
            teams=[TeamState(r["team_id"], r["name"], tuple(r["member_ids"])) for r in teams],
            projects=[
                ProjectState(
                    project_id=r["project_id"],
                    team_id=r["team_id"],
                    name=r["name"],
                    size_mb=r["size_mb"] or 0.0,
                    experiments=r["experiment_count"] or 0,
                    owner_id=r["user_id"],
                )
                for r in projects
            ],
            profiles={
                r["user_id"]: p for r in profiles if (p := _profile(r, r["user_id"])) is not None
            },
        )
        for r in api_usage:
            usage = data.usage.setdefault(r["user_id"], UsageMonth())
            if r["client"] == "ui":
                usage.ui_calls, usage.ui_last = r["calls"], r["last_at"]
            else:
                usage.sdk_calls, usage.sdk_last = r["calls"], r["last_at"]
        for r in builds:
            usage = data.usage.setdefault(r["user_id"], UsageMonth())
            usage.builds, usage.agent_builds = r["builds"], r["agent_builds"]
        for r in costs:
            data.usage.setdefault(r["user_id"], UsageMonth()).cost_micros = r["cost_micros"]
        return data


# -- in memory --------------------------------------------------------------------------------

_US = timedelta(microseconds=1)


def _newer(a: Consumed, b: Consumed | None) -> bool:
    if b is None:
        return True
    return (a.event.occurred_at, a.partition, a.offset) > (
        b.event.occurred_at,
        b.partition,
        b.offset,
    )


class InMemoryReportStore:
    """Every figure computed directly from the events kept in a dict (first identity wins)."""

    def __init__(self, *, max_session_hours: int = 744) -> None:
        self.events: dict[str, Consumed] = {}
        self.max_session = timedelta(hours=max_session_hours)

    def add(self, events: Sequence[Consumed]) -> int:
        """Keep events whose identity (type, subject, id) is new; returns how many were."""
        added = 0
        for item in events:
            identity = item.event.identity
            if identity not in self.events:
                self.events[identity] = item
                added += 1
        return added

    def _of(self, kind: type[Envelope]) -> list[Consumed]:
        return [c for c in self.events.values() if isinstance(c.event, kind)]

    def _latest(self, kind: type[Envelope], key: str) -> dict[str, Consumed]:
        latest: dict[str, Consumed] = {}
        for item in self._of(kind):
            subject = str(getattr(item.event.data, key) if key else item.event.user_id)
            if _newer(item, latest.get(subject)):
                latest[subject] = item
        return latest

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def activity(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> list[BucketActivity]:
        """Overlap of every session with every bucket; the count goes where it started."""
        starts = [b.start for b in buckets]
        result: list[dict[str, list[int]]] = [{} for _ in buckets]
        for item in self._of(ActivitySessionRecorded):
            event = item.event
            assert isinstance(event, ActivitySessionRecorded)
            if category not in (ALL_CATEGORIES_KEY, event.data.category):
                continue
            if org is not None and (event.org_id or "") != org:
                continue
            began = event.occurred_at
            ended = began + min(timedelta(milliseconds=event.data.duration_ms), self.max_session)
            first = max(0, bisect.bisect_right(starts, began) - 1)
            for i in range(first, len(buckets)):
                bucket = buckets[i]
                if bucket.start >= ended and not bucket.start <= began < bucket.end:
                    break
                overlap = max(timedelta(0), min(ended, bucket.end) - max(began, bucket.start))
                started_here = bucket.start <= began < bucket.end
                if overlap > timedelta(0) or started_here:
                    figures = result[i].setdefault(event.user_id, [0, 0])
                    figures[0] += overlap // _US
                    figures[1] += event.data.count if started_here else 0
        return [BucketActivity.of({u: (d, c) for u, (d, c) in r.items()}) for r in result]

    async def activity_report(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> dict[str, object]:
        """The Activity body from the figures and the active users' directory entries."""
        figures = await self.activity(buckets, category=category, org=org)
        active = {user_id for bucket in figures for user_id in bucket.user_ids}
        return activity_body(buckets, figures, await self.profiles(active))

    def _profiles(self) -> dict[str, UserProfile]:
        profiles: dict[str, UserProfile] = {}
        for user_id, item in self._latest(UserUpdated, "").items():
            event = item.event
            assert isinstance(event, UserUpdated)
            d = event.data
            profiles[user_id] = UserProfile(
                user_id=user_id,
                username=d.username,
                name=d.name,
                email=d.email,
                roles=d.roles,
                avatar_hash=d.avatar_hash,
                created_at=d.created_at,
                suspended=d.suspended,
                licensed=d.licensed,
            )
        return profiles

    async def profiles(self, user_ids: Collection[str]) -> dict[str, UserProfile]:
        """Latest directory entry per user."""
        wanted = set(user_ids)
        return {k: v for k, v in self._profiles().items() if k in wanted}

    def _chat(self, window: Window) -> list[ChatUsageRecorded]:
        found = []
        for item in self._of(ChatUsageRecorded):
            event = item.event
            assert isinstance(event, ChatUsageRecorded)
            if event.data.purpose == "chat" and window.start <= event.occurred_at < window.end:
                found.append(event)
        return found

    @staticmethod
    def _figures(event: ChatUsageRecorded) -> ChatFigures:
        d = event.data
        return ChatFigures(
            cost_micros=d.cost_micros or 0,
            messages=1,
            priced_messages=int(d.cost_micros is not None),
            input_tokens=d.input_tokens,
            output_tokens=d.output_tokens,
            cache_read_tokens=d.cache_read_tokens,
            cache_write_tokens=d.cache_write_tokens,
            reasoning_tokens=d.reasoning_tokens or 0,
            runtime_ms=d.runtime_ms or 0,
        )

    async def cost_users(
        self,
        window: Window,
        *,
        search: str | None,
        limit: int | None,
        offset: int,
        ascending: bool = False,
    ) -> CostUsersPage:
        """Sum each user's messages in the window."""
        totals: dict[str, ChatFigures] = {}
        chats: dict[str, set[str]] = {}
        for event in self._chat(window):
            totals[event.user_id] = totals.get(event.user_id, ChatFigures()) + self._figures(event)
            root = event.data.root_chat_id or event.data.chat_id
            chats.setdefault(event.user_id, set()).add(root)
        profiles = self._profiles()
        rows = []
        for user_id, figures in totals.items():
            profile = profiles.get(user_id)
            if search and not (
                user_id == search
                or (
                    profile is not None
                    and (
                        search.lower() in profile.username.lower()
                        or search.lower() in profile.name.lower()
                    )
                )
            ):
                continue
            rows.append(CostUserRow(user_id, profile, figures, len(chats[user_id])))
        rows.sort(key=lambda row: cost_order_key(row, ascending=ascending))
        end = None if limit is None else offset + limit
        return CostUsersPage(count=len(rows), rows=rows[offset:end])

    async def directory_users(self, *, search: str | None, limit: int, offset: int) -> ProfilePage:
        """The latest directory entries, by username."""
        needle = (search or "").lower()
        found = sorted(
            (
                p
                for p in self._profiles().values()
                if not search
                or p.user_id == search
                or needle in p.username.lower()
                or needle in p.name.lower()
            ),
            key=lambda p: (p.username, p.user_id),
        )
        return ProfilePage(count=len(found), users=found[offset : offset + limit])

    async def directory_groups(self) -> list[GroupInfo]:
        """The latest state of every group."""
        groups = []
        for group_id, item in self._latest(GroupUpdated, "group_id").items():
            event = item.event
            assert isinstance(event, GroupUpdated)
            groups.append(
                GroupInfo(group_id, event.data.name, event.org_id, len(set(event.data.member_ids)))
            )
        return sorted(groups, key=lambda g: (g.name, g.group_id))

    async def cost_user(self, window: Window, user_id: str) -> CostSummary | None:
        """A user's messages in the window, by model and by root chat."""
        if not any(
            c.event.user_id == user_id
            and (
                isinstance(c.event, UserUpdated)
                or (isinstance(c.event, ChatUsageRecorded) and c.event.data.purpose == "chat")
            )
            for c in self.events.values()
        ):
            return None
        by_model: dict[tuple[str, str], ChatFigures] = {}
        by_chat: dict[str, ChatFigures] = {}
        total = ChatFigures()
        for event in self._chat(window):
            if event.user_id != user_id:
                continue
            figures = self._figures(event)
            key = (event.data.model, event.data.provider or "")
            by_model[key] = by_model.get(key, ChatFigures()) + figures
            root = event.data.root_chat_id or event.data.chat_id
            by_chat[root] = by_chat.get(root, ChatFigures()) + figures
            total += figures
        return CostSummary(
            user_id=user_id,
            profile=self._profiles().get(user_id),
            figures=total,
            by_model=sort_models(ModelCost(m, p, f) for (m, p), f in by_model.items()),
            by_chat=sort_chats(ChatCost(c, f) for c, f in by_chat.items()),
        )

    async def chargeback(self, month: Window) -> ChargebackData:
        """Directory state now, the month's latest storage samples, and the month's usage."""

        def in_month(e: Envelope) -> bool:
            return month.start <= e.occurred_at < month.end

        samples: dict[str, Consumed] = {}
        for item in self._of(StorageSampled):
            event = item.event
            assert isinstance(event, StorageSampled)
            if in_month(event) and _newer(item, samples.get(event.data.project_id)):
                samples[event.data.project_id] = item
        projects = []
        for project_id, item in self._latest(ProjectUpdated, "project_id").items():
            event = item.event
            assert isinstance(event, ProjectUpdated)
            sample = samples.get(project_id)
            state = ProjectState(project_id, event.data.team_id, event.data.name)
            if sample is not None:
                assert isinstance(sample.event, StorageSampled)
                state = ProjectState(
                    project_id,
                    event.data.team_id,
                    event.data.name,
                    sample.event.data.size_mb,
                    sample.event.data.experiment_count,
                    sample.event.user_id,
                )
            projects.append(state)
        teams = []
        for team_id, item in self._latest(TeamUpdated, "team_id").items():
            event = item.event
            assert isinstance(event, TeamUpdated)
            teams.append(TeamState(team_id, event.data.name, event.data.member_ids))
        data = ChargebackData(teams=teams, projects=projects, profiles=self._profiles())
        for item in self.events.values():
            event = item.event
            if not in_month(event):
                continue
            if isinstance(event, ApiUsageRecorded):
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                if event.data.client == "ui":
                    usage.ui_calls += event.data.count
                    usage.ui_last = max(usage.ui_last or event.occurred_at, event.occurred_at)
                else:
                    usage.sdk_calls += event.data.count
                    usage.sdk_last = max(usage.sdk_last or event.occurred_at, event.occurred_at)
            elif isinstance(event, WorkspaceBuilt):
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                usage.builds += 1
                usage.agent_builds += int(event.data.agent_managed)
            elif isinstance(event, ChatUsageRecorded) and event.data.purpose == "chat":
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                usage.cost_micros += event.data.cost_micros or 0
        return data
