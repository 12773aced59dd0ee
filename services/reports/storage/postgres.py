"""`PostgresReportStore`: the reports' figures read from the rollups that the projection writes.

It never scans raw events: a query range is covered by rollup periods (`domain.cover`, laid
out by `planner`) and only those rows are read, plus the archive for parts of periods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from datetime import datetime

import asyncpg

from services.reports.domain import (
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
    TeamState,
    UsageMonth,
    UserProfile,
    Window,
    activity_body,
    activity_body_of_json,
    cover,
    month_start,
    sort_chats,
    sort_models,
)
from services.reports.storage.planner import (
    ActivityPlan,
    Edges,
    activity_args,
    like_pattern,
    split_spans,
)
from services.reports.storage.sql import (
    ACTIVITY_PLANNER,
    ACTIVITY_WORK_MEM,
    SELECT_ACTIVITY,
    SELECT_ACTIVITY_EDGES,
    SELECT_ACTIVITY_JSON,
    SELECT_ALL_PROFILES,
    SELECT_CHAT_COUNTS,
    SELECT_COST_DETAIL,
    SELECT_COST_USERS,
    SELECT_COST_USERS_ASCENDING,
    SELECT_DIRECTORY_GROUPS,
    SELECT_DIRECTORY_USERS,
    SELECT_MONTH_API_USAGE,
    SELECT_MONTH_BUILDS,
    SELECT_MONTH_COSTS,
    SELECT_PROFILES,
    SELECT_PROJECTS,
    SELECT_TEAMS,
    SELECT_USER_KNOWN,
)

__all__ = ["PostgresReportStore"]


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
        plan = ActivityPlan.of(ranges)
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
            edges = Edges.of(found, len(ranges))
            await conn.execute(ACTIVITY_PLANNER)
            return await conn.fetch(
                statement, *activity_args(plan, edges), category, org, *extra,
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
        rollup, exact = split_spans(cover(window.start, window.end, COST_TOTAL_GRAINS))
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
                d_rollup, d_exact = split_spans(cover(window.start, window.end, COST_DETAIL_GRAINS))
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
        rollup, exact = split_spans(cover(window.start, window.end, COST_DETAIL_GRAINS))
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
