"""Reports: projection rate, API latency over the projected events, and a raw-archive baseline.

Plain async functions that each return a dict of figures, and `run(ctx)` for `make bench`:

- `projection_rate` bulk-loads N synthetic events straight into the projection (the same
  `Projector` and one transaction per batch with the offsets, as the consumer does) and
  times only the transactions, beside a baseline: a bare COPY of the same rows into an
  unindexed table, the floor of getting the bytes into PostgreSQL at all.
- `api_latency` measures p50/p95 of the Activity API for a year by week and of the 30-day
  per-user cost list against a base URL.
- `archive_baseline` times a plain `SELECT sum()` over the raw archive beside the rollup
  query that answers the same question (the cost list's totals).

The events are synthetic rather than the simulator's because ten million of them must be
made in seconds; their mix and shapes follow the simulator (mostly chat with cache tokens,
sessions of realistic lengths, builds, API calls, storage samples), spread over `days`
days ending now so the APIs' default windows see them.

`python -m bench.reports [events]` runs all three against an embedded PostgreSQL (or
`DATABASE_URL`) with the API served in-process, and prints the figures as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import orjson
from prometheus_client import CollectorRegistry

from bench import BenchContext, Figure, percentile
from libs.events.models import (
    ActivitySession,
    ActivitySessionRecorded,
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryProject,
    DirectoryTeam,
    DirectoryUser,
    Envelope,
    EventData,
    ProjectUpdated,
    StorageSample,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.service.consumer import Batch, Consumed
from services.reports.consumer import ReportsSink
from services.reports.domain import Window, default_cost_window
from services.reports.metrics import ReportsMetrics
from services.reports.projection import Projector
from services.reports.storage import PostgresReportStore

__all__ = ["SyntheticUsage", "api_latency", "archive_baseline", "projection_rate", "run"]

TARGET_EVENTS_PER_S: Final = 20_000
TARGET_P95_MS: Final = 200.0
DEFAULT_EVENTS: Final = 10_000_000
BATCH: Final = 5000
PARTITIONS: Final = 12
_MODELS: Final = (
    ("claude-sonnet-4", "anthropic", 15),
    ("gpt-4o", "openai", 10),
    ("claude-haiku-3.5", "anthropic", 5),
    ("gemini-2.5-pro", "google", 4),
    ("llama-3.1-70b", "self-hosted", 1),
)
_CATEGORIES: Final = (
    ("ide", 45.0),
    ("login", 0.0),
    ("tunnel", 30.0),
    ("app", 15.0),
    ("web_terminal", 8.0),
)


class SyntheticUsage:
    """Deterministic synthetic events for `users` users over `days` days ending at `end`.

    Each event's payload is drawn from a small pool of prebuilt ones, so making an event
    costs one envelope; what the projection does with it is the same as for real events.
    """

    def __init__(
        self, *, users: int, days: int, end: datetime, seed: int = 1, run_id: str | None = None
    ) -> None:
        self.users = users
        self.days = days
        self.end = end
        self.start = end - timedelta(days=days)
        self.rng = random.Random(seed)
        self.run = run_id or uuid.uuid4().hex[:8]
        self.org = f"bench-{self.run}-org"
        self.offsets: dict[int, int] = {}
        self._user_ids = [f"bench-{self.run}-u{i:05d}" for i in range(users)]
        self._chats = self._chat_pool()
        self._sessions = self._session_pool()
        self._api = [ApiUsage(client=c, count=self.rng.randint(1, 200)) for c in ("ui", "sdk")] * 4
        self._builds = [
            WorkspaceBuild(
                workspace_id=f"w{i}", build_id=f"b{i}", template="t", agent_managed=i < 3
            )
            for i in range(10)
        ]
        self._samples = [
            StorageSample(
                project_id=f"bench-{self.run}-p{i:03d}",
                size_mb=self.rng.uniform(10, 5000),
                experiment_count=self.rng.randint(1, 100),
            )
            for i in range(200)
        ]
        # About the simulator's mix: chat 70%, sessions 20%, API 5%, builds 3%, storage 2%; each
        # with its type name, read once here rather than per event.
        mix: tuple[tuple[float, type[Envelope], Sequence[EventData]], ...] = (
            (0.70, ChatUsageRecorded, self._chats),
            (0.90, ActivitySessionRecorded, self._sessions),
            (0.95, ApiUsageRecorded, self._api),
            (0.98, WorkspaceBuilt, self._builds),
            (1.01, StorageSampled, self._samples),
        )
        self._mix = [(upto, m, m.model_fields["type"].default, pool) for upto, m, pool in mix]

    def _chat_pool(self) -> list[ChatUsage]:
        rng = self.rng
        names = [m for m, _, _ in _MODELS]
        weights = [w for _, _, w in _MODELS]
        providers = {m: p for m, p, _ in _MODELS}
        pool = []
        for i in range(4000):
            model = rng.choices(names, weights)[0]
            inp = rng.randint(200, 40_000)
            pool.append(
                ChatUsage(
                    chat_id=f"c{i % 997}",
                    root_chat_id=f"c{i % 331}" if i % 5 == 0 else None,
                    message_id=f"m{i}",
                    model=model,
                    provider=providers[model],
                    input_tokens=inp,
                    output_tokens=rng.randint(10, 4000),
                    cache_read_tokens=inp * 2 if rng.random() < 0.6 else 0,
                    cache_write_tokens=inp // 3 if rng.random() < 0.3 else 0,
                    cost_micros=None if rng.random() < 0.02 else rng.randint(100, 200_000),
                    priced=True,
                    purpose="title" if i % 20 == 0 else "chat",
                )
            )
        return pool

    def _session_pool(self) -> list[ActivitySession]:
        rng = self.rng
        pool = []
        for _ in range(2000):
            category, minutes = rng.choices(_CATEGORIES, (12, 10, 5, 4, 2))[0]
            duration = 0 if not minutes else int(rng.lognormvariate(0, 0.7) * minutes * 60_000)
            pool.append(ActivitySession(category=category, duration_ms=duration))
        return pool

    def directory(self) -> list[Envelope]:
        """Users, teams of ten and a project per team, at the start of the range."""
        at = self.start
        events: list[Envelope] = [
            UserUpdated(
                id=f"{uid}-dir",
                occurred_at=at,
                org_id=self.org,
                user_id=uid,
                data=DirectoryUser(
                    username=uid.rsplit("-", 1)[-1],
                    name=f"User {i}",
                    email=f"{uid}@example.com",
                    roles=("member",),
                    created_at=at,
                ),
            )
            for i, uid in enumerate(self._user_ids)
        ]
        for t in range(0, self.users, 10):
            team = f"bench-{self.run}-t{t // 10:04d}"
            events.append(
                TeamUpdated(
                    id=f"{team}-dir",
                    occurred_at=at,
                    org_id=self.org,
                    data=DirectoryTeam(
                        team_id=team, name=team, member_ids=tuple(self._user_ids[t : t + 10])
                    ),
                )
            )
            project = f"bench-{self.run}-p{(t // 10) % 200:03d}"
            events.append(
                ProjectUpdated(
                    id=f"{project}-{team}-dir",
                    occurred_at=at,
                    org_id=self.org,
                    data=DirectoryProject(project_id=project, team_id=team, name=project),
                )
            )
        return events

    def _event(self, n: int, total: int) -> Envelope:
        rng = self.rng
        # Roughly in time order, as a log is, with a few minutes of jitter.
        seconds = (n + rng.random()) / total * self.days * 86_400 - rng.random() * 300
        at = self.start + timedelta(seconds=max(0.0, seconds))
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        user = self._user_ids[rng.randrange(self.users)]
        eid = f"bench-{self.run}-e{n}"
        roll = rng.random()
        for upto, model, type_name, pool in self._mix:  # noqa: B007  # the bracket holding `roll`
            if roll < upto:
                break
        # Built without validation: the pools hold valid payloads.
        return model.model_construct(
            id=eid,
            type=type_name,
            occurred_at=at,
            org_id=self.org,
            user_id=user,
            data=pool[rng.randrange(len(pool))],
        )

    def consumed(self, events: list[Envelope]) -> list[Consumed]:
        """Events as the consumer would hand them over: partitioned by key, in order."""
        now_ms = int(time.time() * 1000)
        out = []
        for event in events:
            partition = zlib.crc32(event.partition_key.encode()) % PARTITIONS
            offset = self.offsets.get(partition, 0)
            self.offsets[partition] = offset + 1
            out.append(Consumed(event, partition, offset, now_ms))  # type: ignore[arg-type]
        return out

    def batches(self, total: int, size: int = BATCH) -> Iterator[list[Consumed]]:
        """The directory first, then `total` usage events in batches of `size`."""
        yield self.consumed(self.directory())
        made = 0
        while made < total:
            n = min(size, total - made)
            yield self.consumed([self._event(made + i, total) for i in range(n)])
            made += n


async def projection_rate(
    database_url: str,
    *,
    events: int = DEFAULT_EVENTS,
    users: int = 1000,
    days: int = 365,
    batch: int = BATCH,
    writers: int = 2,
    budget_s: float | None = None,
    seed: int = 1,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Project `events` synthetic events (or as many as `budget_s` allows); events/s figures.

    The batches go through the service's own sink (`ReportsSink`: rows and offsets in one
    transaction per partition group, `writers` of them at once, the next batch made while the
    last one commits), so the rate is the consumer's, with event generation in the place of
    decoding.
    """
    usage = SyntheticUsage(users=users, days=days, end=end or datetime.now(UTC), seed=seed)
    registry = CollectorRegistry()
    pool = await asyncpg.create_pool(database_url, min_size=writers, max_size=writers)
    assert pool is not None
    copy_conn = await asyncpg.connect(database_url)
    sink = ReportsSink(
        pool,
        consumer=f"bench-reports-{usage.run}",
        topic="bench",
        epoch="bench",
        projector=Projector(),
        metrics=ReportsMetrics.build(registry),
        writers=writers,
    )
    projected = batches = copied = 0
    generate_s = copy_s = 0.0
    started = time.perf_counter()
    try:
        await copy_conn.execute(
            "CREATE TEMP TABLE bench_copy (id text, type text, occurred_at timestamptz, "
            "org_id text, user_id text, log_partition int, log_offset bigint, data jsonb)"
        )
        made = time.perf_counter()
        for items in usage.batches(events, batch):
            generate_s += time.perf_counter() - made
            positions: dict[int, int] = {}
            for item in items:
                positions[item.partition] = item.offset + 1
            await sink.apply(Batch(events=items, positions=positions))
            projected += len(items)
            batches += 1
            if batches % 20 == 2:
                await sink.settle()  # measured alone, not beside a commit
                copy_s += await _bare_copy(copy_conn, items)
                copied += len(items)
            if budget_s is not None and time.perf_counter() - started > budget_s:
                break
            made = time.perf_counter()
        await sink.settle()
        wall = time.perf_counter() - started - copy_s
    finally:
        await sink.close()
        await copy_conn.close()
        await pool.close()
    commits = registry.get_sample_value("tollgate_reports_batch_commit_seconds_count") or 1
    commit_s = registry.get_sample_value("tollgate_reports_batch_commit_seconds_sum") or 0.0
    return {
        "events": projected,
        "requested_events": events,
        "users": users,
        "days": days,
        "batch": batch,
        "writers": writers,
        "seconds": wall,
        "events_per_s": projected / wall if wall else 0.0,
        "mean_commit_ms": commit_s / commits * 1000,
        "generate_s": generate_s,
        "bare_copy_events_per_s": copied / copy_s if copy_s else 0.0,
        "start": usage.start,
        "end": usage.end,
        "org": usage.org,
    }


async def _bare_copy(conn: asyncpg.Connection, items: list[Consumed]) -> float:
    rows = [
        (
            c.event.id,
            c.event.type,
            c.event.occurred_at,
            c.event.org_id,
            c.event.user_id,
            c.partition,
            c.offset,
            c.event.data.model_dump_json(),
        )
        for c in items
    ]
    t0 = time.perf_counter()
    async with conn.transaction():
        await conn.copy_records_to_table("bench_copy", records=rows)
        elapsed = time.perf_counter() - t0
        await conn.execute("TRUNCATE bench_copy")
    return elapsed


async def _latencies(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], requests: int
) -> tuple[list[float], dict[str, Any]]:
    samples: list[float] = []
    body: dict[str, Any] = {}
    for i in range(requests + 2):
        t0 = time.perf_counter()
        async with session.get(url, params=params) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url} {params}: {resp.status} {raw[:300]!r}")
        if i >= 2:  # the first two warm the caches and the prepared statements
            samples.append(time.perf_counter() - t0)
        body = orjson.loads(raw)
    return samples, body


async def api_latency(
    base_url: str, token: str, *, requests: int = 30, org: str | None = None
) -> dict[str, Any]:
    """p50/p95 of the Activity API for a year by week and of the 30-day cost list.

    The year is the 52 ISO weeks up to the end of this week (buckets from a Monday, as weekly
    reports go); the same year shifted to start on a Thursday is measured beside it, since
    such buckets are read from daily rollups instead of weekly ones.
    """
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = today + timedelta(days=7 - today.weekday())
    headers = {"Authorization": f"Bearer {token}"}
    figures: dict[str, Any] = {"requests": requests}
    async with aiohttp.ClientSession(headers=headers) as session:
        for name, shift in (("activity_year_by_week", 0), ("activity_year_by_week_thursday", 3)):
            start = end - timedelta(weeks=52) + timedelta(days=shift)
            params = {
                "start": start.isoformat().replace("+00:00", "Z"),
                "end": (end + timedelta(days=shift)).isoformat().replace("+00:00", "Z"),
                "interval": "1 week",
                "category": "any",
            }
            if org:
                params["org"] = org
            samples, body = await _latencies(
                session, f"{base_url}/api/v1/metrics/activity", params, requests
            )
            figures[f"{name}_p50_ms"] = statistics.median(samples) * 1000
            figures[f"{name}_p95_ms"] = percentile(samples, 95) * 1000
            figures[f"{name}_users"] = len(body.get("users", {}))
            figures[f"{name}_start"] = params["start"]
        costs, cost_body = await _latencies(
            session, f"{base_url}/api/v1/costs/users", {"limit": "25"}, requests
        )
    figures["cost_list_30d_p50_ms"] = statistics.median(costs) * 1000
    figures["cost_list_30d_p95_ms"] = percentile(costs, 95) * 1000
    figures["cost_list_users"] = cost_body.get("count", 0)
    return figures


RAW_COST_SUM: Final = """
SELECT user_id, sum((data->>'cost_micros')::bigint) AS cost_micros, count(*) AS messages
FROM reports_events
WHERE type = 'chat.usage.v1' AND data->>'purpose' = 'chat'
  AND occurred_at >= $1 AND occurred_at < $2
GROUP BY user_id
"""


async def archive_baseline(
    database_url: str, *, window: Window | None = None, repeat: int = 5
) -> dict[str, Any]:
    """A plain `SELECT sum()` over the raw archive beside the rollups answering the same window.

    The rollup side is what the cost list runs: every user's totals, sorted, one page of 25
    with their distinct chat counts.
    """
    window = window or default_cost_window(datetime.now(UTC))
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = PostgresReportStore(pool)
        raw: list[float] = []
        rollup: list[float] = []
        raw_rows = rollup_rows = 0
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            rows = await pool.fetch(RAW_COST_SUM, window.start, window.end, timeout=600)
            raw.append(time.perf_counter() - t0)
            raw_rows = len(rows)
            t0 = time.perf_counter()
            page = await store.cost_users(window, search=None, limit=25, offset=0)
            rollup.append(time.perf_counter() - t0)
            rollup_rows = page.count
        archived = await pool.fetchval("SELECT count(*) FROM reports_events")
    finally:
        await pool.close()
    raw_ms = statistics.median(raw[1:]) * 1000
    rollup_ms = statistics.median(rollup[1:]) * 1000
    return {
        "archived_events": archived,
        "window_days": (window.end - window.start) / timedelta(days=1),
        "raw_sum_ms": raw_ms,
        "rollup_ms": rollup_ms,
        "speedup": raw_ms / rollup_ms if rollup_ms else None,
        "raw_users": raw_rows,
        "rollup_users": rollup_rows,
    }


async def run(ctx: BenchContext) -> list[Figure]:
    """`make bench`: load the projection directly, then time the APIs over what it holds."""
    events = int(os.environ.get("TOLLGATE_BENCH_REPORTS_EVENTS") or DEFAULT_EVENTS)
    budget = float(os.environ.get("TOLLGATE_BENCH_REPORTS_BUDGET") or 900)
    load = await projection_rate(ctx.database_url, events=events, budget_s=budget)
    note = (
        f"{load['events']:,} of {events:,} events in {load['seconds']:.0f}s; batches of "
        f"{BATCH} in {load['writers']} transactions each (mean {load['mean_commit_ms']:.0f} ms)"
    )
    figures = [
        Figure(
            "reports",
            "projection rate",
            load["events_per_s"],
            "events/s",
            target=f"≥ {TARGET_EVENTS_PER_S:,}",
            meets=load["events_per_s"] >= TARGET_EVENTS_PER_S,
            baseline_name="bare COPY",
            baseline=load["bare_copy_events_per_s"] or None,
            note=note,
        )
    ]
    base = ctx.url("reports")
    baseline = await archive_baseline(ctx.database_url)
    if base is not None:
        api = await api_latency(base, ctx.admin_token)
        over = f"over {baseline['archived_events']:,} archived events"
        figures += [
            Figure(
                "reports",
                "Activity API, a year by week, p95",
                api["activity_year_by_week_p95_ms"],
                "ms",
                target=f"< {TARGET_P95_MS:.0f} ms",
                meets=api["activity_year_by_week_p95_ms"] < TARGET_P95_MS,
                note=f"52 ISO weeks; p50 {api['activity_year_by_week_p50_ms']:.0f} ms; "
                f"{api['activity_year_by_week_users']} users; {over}",
            ),
            Figure(
                "reports",
                "Activity API, a year by week from a Thursday, p95",
                api["activity_year_by_week_thursday_p95_ms"],
                "ms",
                note="weeks not starting on Monday read daily rollups; "
                f"p50 {api['activity_year_by_week_thursday_p50_ms']:.0f} ms",
            ),
            Figure(
                "reports",
                "cost list, 30 days, p95",
                api["cost_list_30d_p95_ms"],
                "ms",
                target=f"< {TARGET_P95_MS:.0f} ms",
                meets=api["cost_list_30d_p95_ms"] < TARGET_P95_MS,
                baseline_name="raw SELECT sum()",
                baseline=baseline["raw_sum_ms"],
                note=f"p50 {api['cost_list_30d_p50_ms']:.0f} ms; {api['cost_list_users']} users; "
                f"its rollup query alone {baseline['rollup_ms']:.0f} ms; {over}",
            ),
        ]
    return figures


async def _standalone(events: int) -> dict[str, Any]:
    from aiohttp import web  # noqa: PLC0415

    from libs.service.db import migrate  # noqa: PLC0415
    from libs.service.embedded import EmbeddedPostgres, free_port  # noqa: PLC0415
    from services.reports.app import build_app  # noqa: PLC0415
    from services.reports.config import ReportsSettings  # noqa: PLC0415

    postgres = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="reports-bench-")) / "pgdata")
        url = postgres.start()
    try:
        await migrate(url)
        load = await projection_rate(url, events=events)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=10)
        assert pool is not None
        port = free_port()
        settings = ReportsSettings(DATABASE_URL=url, TOLLGATE_ADMIN_TOKENS="bench")
        runner = web.AppRunner(build_app(settings, store=PostgresReportStore(pool)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            api = await api_latency(f"http://127.0.0.1:{port}", "bench")
        finally:
            await runner.cleanup()
            await pool.close()
        return {"projection": load, "api": api, "baseline": await archive_baseline(url)}
    finally:
        if postgres is not None:
            postgres.destroy()


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    result = asyncio.run(_standalone(count))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
