"""The reports projection on real PostgreSQL: exactly-once effect, latest-wins, exact figures.

The PostgreSQL store (rollups plus the archive's ragged edges) is checked against the
in-memory store, which computes every figure from the events themselves, on random events
and random ranges down to the microsecond.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.events.bounds import (
    MAX_DURATION_MS,
    MAX_EVENT_COST_MICROS,
    MAX_EVENT_COUNT,
    MAX_EVENT_TOKENS,
    MAX_TOTAL,
)
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
    ProjectUpdated,
    StorageSample,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.events.vocabulary import ACTIVITY_CATEGORIES
from libs.service.consumer import (
    Batch,
    Consumed,
    EarlierBatchFailedError,
    PostgresSink,
    apply_isolating,
    is_transient,
    load_offsets,
)
from libs.service.db import Connection
from services.reports.consumer import ReportsSink
from services.reports.domain import (
    ActivityFigures,
    Window,
    add_months,
    make_buckets,
    month_window,
    parse_interval,
)
from services.reports.metrics import ReportsMetrics
from services.reports.projection import ProjectionOutcome, Projector
from services.reports.storage import InMemoryReportStore, PostgresReportStore
from tests.support import unique

pytestmark = pytest.mark.integration

MAX_SESSION_HOURS = 30
JSON = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS  # as the API writes it


class World:
    """Random events of a few users in two orgs, in a year of their own."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.prefix = unique("rp")
        self.orgs = (f"{self.prefix}-o1", f"{self.prefix}-o2")
        # A year no other test uses, so range queries over all users see only these events.
        self.start = datetime(1901 + seed % 97, 1, 1, tzinfo=UTC) + timedelta(
            days=self.rng.randrange(300)
        )
        self.users = [f"{self.prefix}-u{i}" for i in range(6)]
        self.n = 0

    def at(self, days: float) -> datetime:
        return self.start + timedelta(microseconds=int(days * 86_400_000_000))

    def _id(self) -> str:
        self.n += 1
        return f"{self.prefix}-e{self.n}"

    def directory(self) -> list[Envelope]:
        events: list[Envelope] = []
        for i, user_id in enumerate(self.users[:-1]):  # the last user has no directory entry
            events.append(
                UserUpdated(
                    id=self._id(),
                    occurred_at=self.at(0),
                    user_id=user_id,
                    org_id=self.orgs[i % 2],
                    data=DirectoryUser(
                        username=f"{self.prefix}-name{i}",
                        name=f"Person {i} {self.prefix}",
                        email=f"{user_id}@example.com",
                        roles=("member",),
                        created_at=self.at(0),
                        licensed=i != 1,
                    ),
                )
            )
        for t in range(2):
            team = f"{self.prefix}-t{t}"
            events.append(
                TeamUpdated(
                    id=self._id(),
                    occurred_at=self.at(0),
                    data=DirectoryTeam(team_id=team, name=team, member_ids=tuple(self.users[t::2])),
                )
            )
            events.extend(
                ProjectUpdated(
                    id=self._id(),
                    occurred_at=self.at(0),
                    data=DirectoryProject(
                        project_id=f"{team}-p{p}", team_id=team, name=f"{team}-p{p}"
                    ),
                )
                for p in range(2)
            )
        return events

    def usage(self, count: int, days: float = 70) -> list[Envelope]:
        rng = self.rng
        events: list[Envelope] = []
        for _ in range(count):
            user_id = rng.choice(self.users)
            org = rng.choice(self.orgs)
            when = self.at(rng.random() * days)
            roll = rng.random()
            if roll < 0.4:
                chat = f"c{rng.randrange(12)}"
                purpose = "title" if rng.random() < 0.1 else "chat"
                output = rng.randrange(900)
                events.append(
                    ChatUsageRecorded(
                        id=self._id(),
                        occurred_at=when,
                        user_id=user_id,
                        org_id=org,
                        data=ChatUsage(
                            chat_id=chat,
                            root_chat_id=f"c{rng.randrange(3)}" if rng.random() < 0.3 else None,
                            message_id=self._id(),
                            model=rng.choice(("m-a", "m-b", "m-c")),
                            provider=rng.choice(("p1", None)),
                            input_tokens=rng.randrange(5000),
                            output_tokens=output,
                            cache_read_tokens=rng.randrange(300),
                            cache_write_tokens=rng.randrange(50),
                            cost_micros=None if rng.random() < 0.15 else rng.randrange(90_000),
                            purpose=purpose,
                            reasoning_tokens=(
                                rng.randrange(output + 1) if rng.random() < 0.5 else None
                            ),
                            runtime_ms=(
                                rng.randrange(600_000)
                                if purpose == "chat" and rng.random() < 0.5
                                else None
                            ),
                        ),
                    )
                )
            elif roll < 0.8:
                hours = rng.choice((0.0, 0.2, 1.5, 7.0, 26.0, 80.0)) * rng.random()
                events.append(
                    ActivitySessionRecorded(
                        id=self._id(),
                        occurred_at=when,
                        user_id=user_id,
                        org_id=org if rng.random() < 0.95 else None,
                        data=ActivitySession(
                            category=rng.choice(ACTIVITY_CATEGORIES),
                            duration_ms=int(hours * 3_600_000),
                            count=rng.randint(1, 4),
                        ),
                    )
                )
            elif roll < 0.88:
                events.append(
                    ApiUsageRecorded(
                        id=self._id(),
                        occurred_at=when,
                        user_id=user_id,
                        data=ApiUsage(client=rng.choice(("ui", "sdk")), count=rng.randint(1, 9)),
                    )
                )
            elif roll < 0.94:
                build = self._id()
                events.append(
                    WorkspaceBuilt(
                        id=build,
                        occurred_at=when,
                        user_id=user_id,
                        data=WorkspaceBuild(
                            workspace_id="w",
                            build_id=build,
                            template="t",
                            agent_managed=rng.random() < 0.5,
                        ),
                    )
                )
            else:
                project = f"{self.prefix}-t{rng.randrange(2)}-p{rng.randrange(2)}"
                events.append(
                    StorageSampled(
                        id=self._id(),
                        occurred_at=when,
                        user_id=user_id,
                        data=StorageSample(
                            project_id=project,
                            size_mb=round(rng.uniform(0, 900), 2),
                            experiment_count=rng.randrange(50),
                        ),
                    )
                )
        return events


def consumed(events: Sequence[Envelope], *, first_offset: int = 0) -> list[Consumed]:
    """Events as one partition's records, in order."""
    return [
        Consumed(e, 0, first_offset + i, 1_700_000_000_000)  # type: ignore[arg-type]
        for i, e in enumerate(events)
    ]


async def project(db: asyncpg.Pool, items: Sequence[Consumed], size: int = 400) -> None:
    """Project in transactions of `size` events, as the consumer would."""
    projector = Projector(max_session_hours=MAX_SESSION_HOURS)
    for i in range(0, len(items), size):
        async with db.acquire() as conn, conn.transaction():
            await projector.project(conn, items[i : i + size])


async def figures(store: PostgresReportStore | InMemoryReportStore, world: World) -> object:
    """Every report over the world's range, as plain data (for before/after comparisons)."""
    buckets = make_buckets(world.at(-1), world.at(80), parse_interval("1 week"))
    window = Window(world.at(-1), world.at(80))
    page = await store.cost_users(window, search=world.prefix, limit=None, offset=0)
    summaries = [await store.cost_user(window, u) for u in world.users]
    month = month_window(world.start.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    charge = await store.chargeback(month)
    return (
        await store.activity(buckets, category="*", org=None),
        page,
        summaries,
        sorted((t.team_id, t.member_ids) for t in charge.teams if world.prefix in t.team_id),
        {u: charge.usage.get(u) for u in world.users},
    )


async def test_replaying_the_same_events_changes_nothing(db: asyncpg.Pool) -> None:
    """Projecting every event a second time, in other batches, leaves every figure as it was."""
    world = World(seed=1)
    events = world.directory() + world.usage(600)
    items = consumed(events)
    await project(db, items, size=250)
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    before = await figures(store, world)
    await project(db, consumed(events, first_offset=10_000), size=97)
    assert await figures(store, world) == before
    archived = await db.fetchval(
        "SELECT count(*) FROM reports_events WHERE id LIKE $1", f"{world.prefix}-%"
    )
    assert archived == len(events)


async def test_a_crash_between_the_rows_and_the_offsets_counts_nothing(db: asyncpg.Pool) -> None:
    """Rows written but offsets refused roll back together; the retried batch counts once."""
    world = World(seed=2)
    events = world.directory() + world.usage(300)
    consumer = unique("reports-crash")
    sink = ReportsSink(
        db,
        consumer=consumer,
        topic="t.crash",
        epoch="e1",
        projector=Projector(max_session_hours=MAX_SESSION_HOURS),
        metrics=ReportsMetrics.build(CollectorRegistry()),
    )
    projector = Projector(max_session_hours=MAX_SESSION_HOURS)

    async def handler(conn: Connection, events: Sequence[Consumed]) -> None:
        await projector.project(conn, events)

    once = PostgresSink(db, consumer=consumer, topic="t.crash", epoch="e1", handler=handler)
    # A negative offset breaks the offsets table's CHECK after the projector wrote its rows.
    broken = Batch(events=consumed(events), positions={0: -1})
    with pytest.raises(asyncpg.CheckViolationError):
        await once.apply(broken)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM reports_events WHERE id LIKE $1", f"{world.prefix}-%"
        )
        == 0
    )
    assert await load_offsets(db, consumer=consumer, topic="t.crash", epoch="e1") == {}
    await sink.apply(Batch(events=consumed(events), positions={0: len(events)}))
    await sink.settle()
    reference = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)
    reference.add(consumed(events))
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    assert await figures(store, world) == await figures(reference, world)
    assert await load_offsets(db, consumer=consumer, topic="t.crash", epoch="e1") == {
        0: len(events)
    }


async def test_a_failing_batch_leaves_nothing_and_commits_once_when_applied_again(
    db: asyncpg.Pool,
) -> None:
    """A transaction that fails after writing keeps nothing; the next apply reports it, never blaming its own batch, and re-applying commits exactly once."""
    world = World(seed=3)
    events = world.directory() + world.usage(200)

    class FailsTwice(Projector):
        calls = 0

        async def project(self, conn: Connection, events: Sequence[Consumed]) -> ProjectionOutcome:
            outcome = await super().project(conn, events)
            FailsTwice.calls += 1
            if FailsTwice.calls <= 2:
                written = await conn.fetchval(
                    "SELECT count(*) FROM reports_events WHERE id LIKE $1", f"{world.prefix}-%"
                )
                assert written == len(events)
                raise ConnectionResetError("the database went away mid-batch")
            return outcome

    registry = CollectorRegistry()
    consumer = unique("reports-retry")
    sink = ReportsSink(
        db,
        consumer=consumer,
        topic="t.retry",
        epoch="e1",
        projector=FailsTwice(max_session_hours=MAX_SESSION_HOURS),
        metrics=ReportsMetrics.build(registry),
    )
    batch = Batch(events=consumed(events), positions={0: len(events)})
    await sink.apply(batch)
    with pytest.raises(EarlierBatchFailedError, match="went away"):
        await sink.apply(Batch(events=[], positions={}))
    assert is_transient(EarlierBatchFailedError("x"))
    assert await load_offsets(db, consumer=consumer, topic="t.retry", epoch="e1") == {}
    # What the loop does next: read again from the stored positions, and apply again.
    await sink.apply(batch)
    with pytest.raises(ConnectionResetError):
        await sink.settle()
    await sink.apply(batch)
    await sink.settle()
    assert FailsTwice.calls == 3
    reference = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)
    reference.add(consumed(events))
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    assert await figures(store, world) == await figures(reference, world)
    projected = sum(
        registry.get_sample_value("tollgate_reports_events_projected_total", {"type": t}) or 0
        for t in {e.type for e in events}
    )
    assert projected == len(events)


async def test_a_committed_batch_applied_again_is_a_no_op(db: asyncpg.Pool) -> None:
    """A zombie or a lost offset re-applies a committed batch: ids already archived add nothing."""
    world = World(seed=4)
    events = world.directory() + world.usage(200)
    registry = CollectorRegistry()
    sink = ReportsSink(
        db,
        consumer=unique("reports-zombie"),
        topic="t.zombie",
        epoch="e1",
        projector=Projector(max_session_hours=MAX_SESSION_HOURS),
        metrics=ReportsMetrics.build(registry),
    )
    batch = Batch(events=consumed(events), positions={0: len(events)})
    await sink.apply(batch)
    await sink.apply(batch)
    await sink.settle()
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    reference = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)
    reference.add(consumed(events))
    assert await figures(store, world) == await figures(reference, world)
    duplicates = sum(
        registry.get_sample_value("tollgate_reports_duplicate_events_total", {"type": t}) or 0
        for t in {e.type for e in events}
    )
    assert duplicates == len(events)


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_postgres_figures_equal_the_events_for_any_range(db: asyncpg.Pool, seed: int) -> None:
    """Rollups plus the archive's edges give the events' exact figures for random ranges."""
    world = World(seed=seed)
    events = world.directory() + world.usage(900)
    items = consumed(events)
    await project(db, items)
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    reference = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)
    reference.add(items)
    rng = random.Random(seed)
    midnight = world.start.replace(hour=0, minute=0, second=0, microsecond=0)
    monday = midnight - timedelta(days=midnight.weekday())
    first = midnight.replace(day=1)
    aligned = [  # one rollup period per bucket: the path that skips summing per user
        (monday, "1 week", monday + timedelta(weeks=9)),
        (first, "1 month", add_months(first, 3)),
        (midnight, "1 day", midnight + timedelta(days=40)),
    ]
    for n in range(15):
        start = world.at(rng.uniform(-2, 60))
        if rng.random() < 0.5:
            start = start.replace(minute=0, second=0, microsecond=0)
        interval = parse_interval(rng.choice(("1 day", "1 week", "1 month", "90 day", "1 year")))
        end = start + timedelta(days=rng.uniform(0.01, 75))
        if n < len(aligned):
            start, name, end = aligned[n]
            interval = parse_interval(name)
        buckets = make_buckets(start, end, interval)
        category = rng.choice(("*", *ACTIVITY_CATEGORIES))
        org = rng.choice((None, *world.orgs))
        got = await store.activity(buckets, category=category, org=org)
        want = await reference.activity(buckets, category=category, org=org)
        assert got == want, (start, end, interval, category, org)
        # The response PostgreSQL writes as JSON is the one the figures and profiles make.
        body = await store.activity_report(buckets, category=category, org=org)
        want_body = await reference.activity_report(buckets, category=category, org=org)
        assert orjson.dumps(body, option=JSON) == orjson.dumps(want_body, option=JSON), (
            start, end, interval, category, org,
        )  # fmt: skip
        window = Window(start, end)
        limit = rng.choice((None, 2))
        offset = rng.choice((0, 1))
        got_page = await store.cost_users(window, search=world.prefix, limit=limit, offset=offset)
        want_page = await reference.cost_users(
            window, search=world.prefix, limit=limit, offset=offset
        )
        assert got_page == want_page, (start, end)
        for user_id in world.users:
            assert await store.cost_user(window, user_id) == await reference.cost_user(
                window, user_id
            )


async def test_month_and_week_edges(db: asyncpg.Pool) -> None:
    """A session over Sunday-Monday midnight and a month end splits exactly; costs stay in month."""
    prefix = unique("edge")
    user_id, org = f"{prefix}-u", f"{prefix}-o"
    sunday = datetime(1899, 12, 31, 23, 30, tzinfo=UTC)  # a Sunday, and the last of a month
    events: list[Envelope] = [
        ActivitySessionRecorded(
            id=f"{prefix}-s1",
            occurred_at=sunday,
            user_id=user_id,
            org_id=org,
            data=ActivitySession(category="ide", duration_ms=3_600_000),
        ),
        ChatUsageRecorded(
            id=f"{prefix}-c1",
            occurred_at=datetime(1899, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
            user_id=user_id,
            data=ChatUsage(chat_id="c", message_id="1", model="m", input_tokens=1,
                           output_tokens=1, cost_micros=7),
        ),
        ChatUsageRecorded(
            id=f"{prefix}-c2",
            occurred_at=datetime(1900, 1, 1, tzinfo=UTC),
            user_id=user_id,
            data=ChatUsage(chat_id="c", message_id="2", model="m", input_tokens=1,
                           output_tokens=1, cost_micros=11),
        ),
    ]  # fmt: skip
    await project(db, consumed(events))
    store = PostgresReportStore(db)
    weeks = make_buckets(
        datetime(1899, 12, 25, tzinfo=UTC),
        datetime(1900, 1, 8, tzinfo=UTC),
        parse_interval("1 week"),
    )
    assert [b.by_user() for b in await store.activity(weeks, category="ide", org=org)] == [
        {user_id: ActivityFigures(1_800_000_000, 1)},
        {user_id: ActivityFigures(1_800_000_000, 0)},
    ]
    months = make_buckets(
        datetime(1899, 12, 1, tzinfo=UTC),
        datetime(1900, 2, 1, tzinfo=UTC),
        parse_interval("1 month"),
    )
    got = await store.activity(months, category="*", org=org)
    assert [b.by_user()[user_id].duration_us for b in got] == [1_800_000_000, 1_800_000_000]
    december = month_window(datetime(1899, 12, 1, tzinfo=UTC))
    january = month_window(datetime(1900, 1, 1, tzinfo=UTC))
    assert (await store.chargeback(december)).usage[user_id].cost_micros == 7
    assert (await store.chargeback(january)).usage[user_id].cost_micros == 11
    one_day = Window(datetime(1899, 12, 31, tzinfo=UTC), datetime(1900, 1, 1, tzinfo=UTC))
    summary = await store.cost_user(one_day, user_id)
    assert summary is not None
    assert summary.figures.cost_micros == 7


async def test_latest_directory_entry_and_storage_sample_win(db: asyncpg.Pool) -> None:
    """The newest event wins by time, then by log position, whatever order they arrive in."""
    prefix = unique("latest")
    user_id, project_id = f"{prefix}-u", f"{prefix}-p"
    base = datetime(1850, 6, 10, tzinfo=UTC)

    def profile(n: int, when: datetime) -> UserUpdated:
        return UserUpdated(
            id=f"{prefix}-d{n}",
            occurred_at=when,
            user_id=user_id,
            data=DirectoryUser(username=f"{prefix}-v{n}", name="", email="a@b.c", roles=(),
                               created_at=base),
        )  # fmt: skip

    def sample(n: int, when: datetime, size: float) -> StorageSampled:
        return StorageSampled(
            id=f"{prefix}-s{n}",
            occurred_at=when,
            data=StorageSample(project_id=project_id, size_mb=size, experiment_count=n),
        )

    later = base + timedelta(hours=5)
    await project(db, consumed([profile(2, later), sample(2, later, 20.0)]))
    await project(db, consumed([profile(1, base), sample(1, base, 10.0)], first_offset=5))
    # Same time: the later log position wins.
    await project(db, consumed([profile(3, later), sample(3, later, 30.0)], first_offset=9))
    store = PostgresReportStore(db)
    assert (await store.profiles([user_id]))[user_id].username == f"{prefix}-v3"
    row = await db.fetchrow(
        "SELECT size_mb, experiment_count FROM reports_storage WHERE project_id = $1", project_id
    )
    assert row is not None
    assert tuple(row) == (30.0, 3)


async def test_the_longest_storable_session_counts_at_most_the_cap(db: asyncpg.Pool) -> None:
    """A session of the largest allowed duration is counted as long as the configured cap."""
    prefix = unique("long")
    user_id = f"{prefix}-u"
    events = [
        ActivitySessionRecorded(
            id=f"{prefix}-s",
            occurred_at=datetime(1800, 1, 1, tzinfo=UTC),
            user_id=user_id,
            org_id=prefix,
            data=ActivitySession(category="app", duration_ms=MAX_DURATION_MS, count=MAX_EVENT_COUNT),
        ),
    ]  # fmt: skip
    await project(db, consumed(events))
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    buckets = make_buckets(
        datetime(1800, 1, 1, tzinfo=UTC), datetime(1800, 3, 1, tzinfo=UTC), parse_interval("1 year")
    )
    got = (await store.activity(buckets, category="app", org=prefix))[0].by_user()[user_id]
    assert got.duration_us == MAX_SESSION_HOURS * 3_600_000_000
    assert got.count == MAX_EVENT_COUNT


async def test_activity_json_by_week_in_one_org_and_with_a_user_in_two(db: asyncpg.Pool) -> None:
    """Whole weeks read as stored in one org, and summed per user once a second org appears."""
    prefix = unique("weeks")
    monday = datetime(random.randrange(1600, 1700), 3, 1, tzinfo=UTC)
    monday -= timedelta(days=monday.weekday())
    users = [f"{prefix}-u{i}" for i in range(3)]
    org, other = f"{prefix}-o1", f"{prefix}-o2"
    n = 0

    def session(user_id: str, org_id: str, days: float, hours: float) -> ActivitySessionRecorded:
        nonlocal n
        n += 1
        return ActivitySessionRecorded(
            id=f"{prefix}-s{n}",
            occurred_at=monday + timedelta(days=days),
            user_id=user_id,
            org_id=org_id,
            data=ActivitySession(
                category="ide", duration_ms=int(hours * 3_600_000), count=1 + n % 3
            ),
        )

    one_org: list[Envelope] = [
        session(users[0], org, 0.5, 2),
        session(users[1], org, 1.25, 30),
        session(users[0], org, 6.9, 5),  # into the second week
        session(users[2], org, 9, 0),
        session(users[1], org, 15, 1),
    ]
    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    reference = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)
    weeks = make_buckets(monday, monday + timedelta(weeks=4), parse_interval("1 week"))

    async def same(events: list[Envelope], offset: int) -> None:
        items = consumed(events, first_offset=offset)
        await project(db, items)
        reference.add(items)
        for category, org_id in (("*", None), ("ide", None), ("*", org), ("ide", other)):
            got = await store.activity_report(weeks, category=category, org=org_id)
            want = await reference.activity_report(weeks, category=category, org=org_id)
            assert orjson.dumps(got, option=JSON) == orjson.dumps(want, option=JSON), org_id

    await same(one_org, 0)
    await same([session(users[0], other, 0.75, 3), session(users[2], other, 8, 4)], 10)


async def test_ranges_at_the_ends_of_the_calendar_answer(db: asyncpg.Pool) -> None:
    """Year 1 and year 9999 ranges, cut anywhere, read PostgreSQL without an error."""
    store = PostgresReportStore(db)
    late = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    buckets = make_buckets(datetime(9999, 1, 1, 7, tzinfo=UTC), late, parse_interval("1 week"))
    assert all(not b.user_ids for b in await store.activity(buckets, category="*", org=None))
    body = orjson.loads(orjson.dumps(await store.activity_report(buckets, category="*", org=None)))
    assert body["users"] == {}
    assert all(not b["user_activity"] for b in body["activity"])
    early = Window(datetime(1, 1, 1, tzinfo=UTC), datetime(1, 2, 3, 4, 5, tzinfo=UTC))
    assert (await store.cost_users(early, search=None, limit=10, offset=0)).count == 0
    assert await store.cost_user(Window(early.start, late), unique("nobody")) is None


async def test_an_event_postgresql_refuses_is_set_aside_and_the_rest_count_once(
    db: asyncpg.Pool,
) -> None:
    """An event PostgreSQL cannot store (a NUL that got past decoding) is isolated and refused; the others project once."""
    prefix = unique("refused")
    hour = datetime(1700, 3, 4, 5, tzinfo=UTC)
    bystander = f"{prefix}-other"

    def message(n: int, user_id: str) -> ChatUsageRecorded:
        return ChatUsageRecorded(
            id=f"{prefix}-m{n}",
            occurred_at=hour,
            user_id=user_id,
            data=ChatUsage(chat_id="c", message_id=str(n), model="m", input_tokens=5,
                           output_tokens=1, cost_micros=10),
        )  # fmt: skip

    refused: list[tuple[str, str]] = []

    async def refuse(item: Consumed, exc: BaseException) -> None:
        refused.append((item.event.id, f"{type(exc).__name__}: {exc}"))

    consumer = unique("reports-refused")
    sink = ReportsSink(
        db,
        consumer=consumer,
        topic="t.refused",
        epoch="e1",
        projector=Projector(),
        metrics=ReportsMetrics.build(CollectorRegistry()),
        isolate=lambda apply, batch: apply_isolating(apply, batch, refuse),
    )
    batch = [message(n, bystander) for n in range(1, 8)]
    # Built in Python, it skips the decoder's check: only PostgreSQL is left to refuse it.
    batch.insert(4, message(99, f"{prefix}-eve\x00"))
    await sink.apply(Batch(events=consumed(batch, first_offset=10), positions={0: 18}))
    await sink.settle()
    assert [event_id for event_id, _ in refused] == [f"{prefix}-m99"]
    assert "CharacterNotInRepertoireError" in refused[0][1]
    day = Window(hour, hour + timedelta(hours=1))
    other = await PostgresReportStore(db).cost_user(day, bystander)
    assert other is not None
    assert other.figures.messages == 7
    assert other.figures.input_tokens == 35
    assert await load_offsets(db, consumer=consumer, topic="t.refused", epoch="e1") == {0: 18}


async def test_totals_saturate_instead_of_overflowing_even_over_values_stored_before(
    db: asyncpg.Pool,
) -> None:
    """A rollup already at bigint's end (stored before the bounds) takes more usage at the cap, never an error."""
    prefix = unique("cap")
    hour = datetime(1700, 5, 6, 7, tzinfo=UTC)
    user = f"{prefix}-user"

    def message(n: int, tokens: int, cost: int) -> ChatUsageRecorded:
        return ChatUsageRecorded(
            id=f"{prefix}-m{n}",
            occurred_at=hour,
            user_id=user,
            data=ChatUsage(chat_id="c", message_id=str(n), model="m", input_tokens=tokens,
                           output_tokens=1, cost_micros=cost),
        )  # fmt: skip

    await project(db, consumed([message(0, 1, 1)]))
    await db.execute(
        "UPDATE reports_chat_totals SET input_tokens = 9223372036854775807 WHERE user_id = $1",
        user,
    )
    at_cap = [message(n, MAX_EVENT_TOKENS, MAX_EVENT_COST_MICROS) for n in range(1, 10_001, 1000)]
    await project(db, consumed(at_cap, first_offset=1))
    rows = await db.fetch(
        "SELECT grain, cost_micros, input_tokens FROM reports_chat_totals WHERE user_id = $1",
        user,
    )
    assert {r["grain"] for r in rows} == {b"h", b"d", b"m"}
    for row in rows:
        assert row["input_tokens"] == MAX_TOTAL
        assert row["cost_micros"] == 1 + 10 * MAX_EVENT_COST_MICROS
    # Two days of hours and days, each at the cap: the cost list's sum saturates as well.
    page = await PostgresReportStore(db).cost_users(
        Window(hour - timedelta(minutes=30), hour + timedelta(days=2)),
        search=user,
        limit=1,
        offset=0,
    )
    assert [row.figures.input_tokens for row in page.rows] == [MAX_TOTAL]
