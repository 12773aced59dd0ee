"""The reports' read side (`ReportStore`): the events in memory and the PostgreSQL rollups alike.

The in-memory store computes every figure from the events themselves; PostgreSQL reads the
rollups the projector wrote from the same events. `feed` is the only place they differ.
(`tests/integration/test_reports_projection.py` also compares them over random event sets.)
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from libs.events.models import (
    ActivitySession,
    ActivitySessionRecorded,
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryGroup,
    DirectoryUser,
    Event,
    GroupUpdated,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from libs.service.consumer import Consumed
from services.reports.domain import Bucket, Window, month_window
from services.reports.projection import Projector
from services.reports.storage import InMemoryReportStore, PostgresReportStore, ReportStore
from tests.support import unique

MAX_SESSION_HOURS = 30


@dataclass
class Reports:
    """A report store and how events reach it, in a year no other test writes to."""

    store: ReportStore
    feed: Callable[[Sequence[Event]], Awaitable[None]]
    prefix: str
    start: datetime
    offset: int = 0

    def at(self, days: float) -> datetime:
        """A moment `days` after the start of this test's year."""
        return self.start + timedelta(days=days)

    def id(self) -> str:
        """An event id of this test."""
        return unique(self.prefix)

    def user(self, user_id: str, username: str, name: str, *, at: float = 0) -> UserUpdated:
        """A directory entry for `user_id`, `at` days into the year."""
        return UserUpdated(
            id=self.id(),
            occurred_at=self.at(at),
            user_id=user_id,
            data=DirectoryUser(
                username=username,
                name=name,
                email=f"{username}@example.com",
                roles=("member",),
                created_at=self.at(0),
            ),
        )

    def chat(
        self,
        user_id: str,
        *,
        at: float,
        cost: int | None,
        chat: str = "c1",
        root: str | None = None,
        model: str = "m-a",
        purpose: str = "chat",
    ) -> ChatUsageRecorded:
        """One chat message of `user_id`."""
        return ChatUsageRecorded(
            id=self.id(),
            occurred_at=self.at(at),
            user_id=user_id,
            data=ChatUsage(
                chat_id=chat,
                root_chat_id=root,
                message_id=self.id(),
                model=model,
                provider="p1",
                input_tokens=100,
                output_tokens=10,
                cache_read_tokens=0,
                cache_write_tokens=0,
                cost_micros=cost,
                purpose=purpose,
            ),
        )


@pytest.fixture
def reports(pool: asyncpg.Pool | None) -> Reports:
    """The store under test, fed through the projector when it is PostgreSQL."""
    # A year of this test's own: queries over a range then see only its events.
    start = datetime(random.randrange(2200, 2999), 1, 1, tzinfo=UTC)
    prefix = unique("rc")
    if pool is None:
        memory = InMemoryReportStore(max_session_hours=MAX_SESSION_HOURS)

        async def feed_memory(events: Sequence[Event]) -> None:
            memory.add(as_consumed(events))

        return Reports(memory, feed_memory, prefix, start)
    db = pool
    projector = Projector(max_session_hours=MAX_SESSION_HOURS)

    async def feed_postgres(events: Sequence[Event]) -> None:
        async with db.acquire() as conn, conn.transaction():
            await projector.project(conn, as_consumed(events))

    store = PostgresReportStore(db, max_session_hours=MAX_SESSION_HOURS)
    return Reports(store, feed_postgres, prefix, start)


def as_consumed(events: Sequence[Event]) -> list[Consumed]:
    """Events as one partition's records, in order."""
    return [Consumed(e, 0, i, 1_700_000_000_000) for i, e in enumerate(events)]


# -- the directory ------------------------------------------------------------------------------


async def test_the_newest_directory_entry_of_a_user_wins(reports: Reports) -> None:
    """Whatever order entries arrive in, a profile is the newest one; unknown users have none."""
    user = f"{reports.prefix}-u"
    await reports.feed([reports.user(user, f"{reports.prefix}-new", "New", at=2)])
    await reports.feed([reports.user(user, f"{reports.prefix}-old", "Old", at=1)])
    profiles = await reports.store.profiles([user, f"{reports.prefix}-nobody"])
    assert list(profiles) == [user]
    assert (profiles[user].username, profiles[user].name) == (f"{reports.prefix}-new", "New")
    assert await reports.store.profiles([]) == {}


async def test_directory_search_matches_names_case_blind_or_an_exact_id(reports: Reports) -> None:
    """A search finds a substring of name or username in any case, or a whole user id."""
    p = reports.prefix
    await reports.feed(
        [
            reports.user(f"{p}-1", f"{p}-alice", "Alice Liddell"),
            reports.user(f"{p}-2", f"{p}-bob", "Robert ALI"),
            reports.user(f"{p}-3", f"{p}-carol", "Carol"),
        ]
    )
    found = await reports.store.directory_users(search=f"{p}-AL", limit=10, offset=0)
    assert [u.user_id for u in found.users] == [f"{p}-1"]
    by_name = await reports.store.directory_users(search="ali", limit=50, offset=0)
    assert {u.user_id for u in by_name.users} >= {f"{p}-1", f"{p}-2"}
    assert f"{p}-3" not in {u.user_id for u in by_name.users}
    by_id = await reports.store.directory_users(search=f"{p}-3", limit=10, offset=0)
    assert [u.username for u in by_id.users] == [f"{p}-carol"]


async def test_directory_search_takes_like_wildcards_literally(reports: Reports) -> None:
    """`%` and `_` in a search match only themselves."""
    p = reports.prefix
    await reports.feed(
        [
            reports.user(f"{p}-1", f"{p}-a_b", "Under Score"),
            reports.user(f"{p}-2", f"{p}-axb", "Ex"),
            reports.user(f"{p}-3", f"{p}-5%x", "Percent"),
            reports.user(f"{p}-4", f"{p}-5yx", "Why"),
        ]
    )
    underscore = await reports.store.directory_users(search=f"{p}-a_", limit=10, offset=0)
    assert [u.user_id for u in underscore.users] == [f"{p}-1"]
    percent = await reports.store.directory_users(search=f"{p}-5%", limit=10, offset=0)
    assert [u.user_id for u in percent.users] == [f"{p}-3"]


async def test_directory_pages_are_by_username_and_count_every_match(reports: Reports) -> None:
    """A page holds `limit` users from `offset`, by username; the count is of all matches while the page has any."""
    p = reports.prefix
    await reports.feed([reports.user(f"{p}-{n}", f"{p}-{n}", "x") for n in "dacb"])
    page = await reports.store.directory_users(search=p, limit=2, offset=1)
    assert page.count == 4
    assert [u.username for u in page.users] == [f"{p}-b", f"{p}-c"]
    past = await reports.store.directory_users(search=p, limit=2, offset=10)
    # Counted in the page's own rows, as Coder's user list counts: past the end, nothing.
    assert (past.count, past.users) == (0, [])


async def test_groups_show_their_newest_state_and_distinct_members(reports: Reports) -> None:
    """A group's name, organisation and member count are those of its newest event."""
    p = reports.prefix

    def group(group_id: str, name: str, members: tuple[str, ...], at: float) -> GroupUpdated:
        return GroupUpdated(
            id=reports.id(),
            occurred_at=reports.at(at),
            org_id=f"{p}-org",
            data=DirectoryGroup(group_id=group_id, name=name, member_ids=members),
        )

    await reports.feed(
        [
            group(f"{p}-g1", f"{p}-zeta", ("a", "b", "c"), 2),
            group(f"{p}-g1", f"{p}-old", ("a",), 1),
            group(f"{p}-g2", f"{p}-alpha", ("a", "a", "b"), 1),
        ]
    )
    mine = [g for g in await reports.store.directory_groups() if g.group_id.startswith(p)]
    assert [(g.group_id, g.name, g.org_id, g.member_count) for g in mine] == [
        (f"{p}-g2", f"{p}-alpha", f"{p}-org", 2),
        (f"{p}-g1", f"{p}-zeta", f"{p}-org", 3),
    ]


# -- cost ----------------------------------------------------------------------------------------


async def test_cost_counts_chat_messages_in_the_window_and_not_titles(reports: Reports) -> None:
    """A user's figures sum the window's chat messages; unpriced ones count as messages only."""
    p = reports.prefix
    user = f"{p}-u"
    await reports.feed(
        [
            reports.user(user, f"{p}-ann", "Ann"),
            reports.chat(user, at=10, cost=300, chat="c1"),
            reports.chat(user, at=11, cost=None, chat="c2", root="c1", model="m-b"),
            reports.chat(user, at=12, cost=50, chat="c3", purpose="title"),
            reports.chat(user, at=40, cost=900, chat="c4"),
        ]
    )
    window = Window(reports.at(5), reports.at(20))
    summary = await reports.store.cost_user(window, user)
    assert summary is not None
    f = summary.figures
    assert (f.cost_micros, f.messages, f.priced_messages, f.input_tokens) == (300, 2, 1, 200)
    assert [(m.model, m.figures.messages) for m in summary.by_model] == [("m-a", 1), ("m-b", 1)]
    assert [(c.root_chat_id, c.figures.messages) for c in summary.by_chat] == [("c1", 2)]
    assert summary.profile is not None
    assert summary.profile.username == f"{p}-ann"


async def test_a_user_never_seen_has_no_cost_and_a_known_one_has_zero(reports: Reports) -> None:
    """No summary for an unknown user; a user known only to the directory has empty figures."""
    p = reports.prefix
    await reports.feed([reports.user(f"{p}-known", f"{p}-known", "Known")])
    window = Window(reports.at(0), reports.at(30))
    assert await reports.store.cost_user(window, f"{p}-nobody") is None
    known = await reports.store.cost_user(window, f"{p}-known")
    assert known is not None
    assert (known.figures.messages, known.by_model, known.by_chat) == (0, [], [])


async def test_chat_at_any_time_makes_a_user_known_to_every_window(reports: Reports) -> None:
    """Without a directory entry, chat outside the window still makes a user known: zero, not None."""
    user = f"{reports.prefix}-u"
    await reports.feed([reports.chat(user, at=40, cost=10)])
    before = await reports.store.cost_user(Window(reports.at(0), reports.at(30)), user)
    assert before is not None
    assert (before.profile, before.figures.messages) == (None, 0)
    found = await reports.store.cost_user(Window(reports.at(0), reports.at(50)), user)
    assert found is not None
    assert found.figures.cost_micros == 10
    titled = f"{reports.prefix}-titles"
    await reports.feed([reports.chat(titled, at=1, cost=5, purpose="title")])
    assert await reports.store.cost_user(Window(reports.at(0), reports.at(50)), titled) is None


async def test_the_cost_list_orders_searches_and_pages(reports: Reports) -> None:
    """Users by spend (either way), found by name or id, with distinct root chats and a count."""
    p = reports.prefix
    users = [f"{p}-u{n}" for n in range(3)]
    await reports.feed(
        [
            reports.user(users[0], f"{p}-zed", "Zed"),
            reports.user(users[1], f"{p}-amy", "Amy"),
            reports.chat(users[0], at=1, cost=500, chat="a"),
            reports.chat(users[0], at=1.5, cost=100, chat="b"),
            reports.chat(users[0], at=2, cost=100, chat="c", root="a"),
            reports.chat(users[1], at=1, cost=200),
            reports.chat(users[2], at=1, cost=None),
        ]
    )
    window = Window(reports.at(0), reports.at(3))
    store = reports.store
    page = await store.cost_users(window, search=None, limit=None, offset=0)
    assert [(r.user_id, r.figures.cost_micros, r.chat_count) for r in page.rows] == [
        (users[0], 700, 2),
        (users[1], 200, 1),
        (users[2], 0, 1),
    ]
    assert page.count == 3
    assert page.rows[2].profile is None
    ascending = await store.cost_users(window, search=None, limit=2, offset=0, ascending=True)
    assert [r.user_id for r in ascending.rows] == [users[2], users[1]]
    assert ascending.count == 3
    found = await store.cost_users(window, search="AMY", limit=10, offset=0)
    assert [r.user_id for r in found.rows] == [users[1]]
    by_id = await store.cost_users(window, search=users[2], limit=10, offset=0)
    assert [r.user_id for r in by_id.rows] == [users[2]]
    past = await store.cost_users(window, search=None, limit=2, offset=5)
    assert (past.count, past.rows) == (3, [])


# -- activity and chargeback ----------------------------------------------------------------------


async def test_a_session_is_split_over_the_buckets_it_overlaps(reports: Reports) -> None:
    """Overlap goes to each bucket it covers; the session count to the one it began in."""
    p = reports.prefix
    user = f"{p}-u"
    began = reports.at(1) - timedelta(hours=2)
    await reports.feed(
        [
            ActivitySessionRecorded(
                id=reports.id(),
                occurred_at=began,
                user_id=user,
                org_id=f"{p}-org",
                data=ActivitySession(category="ide", duration_ms=3 * 3_600_000, count=2),
            )
        ]
    )
    buckets = [Bucket(reports.at(0), reports.at(1)), Bucket(reports.at(1), reports.at(2))]
    found = await reports.store.activity(buckets, category="*", org=None)
    hour_us = 3_600_000_000
    assert [(b.user_ids, b.durations_us, b.counts) for b in found] == [
        ([user], [2 * hour_us], [2]),
        ([user], [hour_us], [0]),
    ]
    other_category = await reports.store.activity(buckets, category="login", org=None)
    other_org = await reports.store.activity(buckets, category="ide", org=f"{p}-elsewhere")
    assert [b.user_ids for b in other_category + other_org] == [[], [], [], []]
    in_org = await reports.store.activity_report(buckets, category="ide", org=f"{p}-org")
    body = orjson.loads(orjson.dumps(in_org, option=orjson.OPT_UTC_Z))
    assert [(b["duration"], b["user_activity"]) for b in body["activity"]] == [
        (86_400_000, [{"user_id": user, "duration": 7_200_000, "count": 2}]),
        (86_400_000, [{"user_id": user, "duration": 3_600_000, "count": 0}]),
    ]
    assert [b["time"] for b in body["activity"]] == [
        b.start.strftime("%Y-%m-%dT%H:%M:%SZ") for b in buckets
    ]
    totals = body["users"][user]
    assert (totals["total_count"], totals["total_duration"]) == (2, 10_800_000)


async def test_chargeback_sums_the_months_usage_per_user(reports: Reports) -> None:
    """API calls by client with the last call, builds and agent builds, and chat spend."""
    p = reports.prefix
    user = f"{p}-u"

    def api(client: str, count: int, at: float) -> ApiUsageRecorded:
        return ApiUsageRecorded(
            id=reports.id(),
            occurred_at=reports.at(at),
            user_id=user,
            data=ApiUsage(client=client, count=count),
        )

    def build(at: float, *, agent: bool) -> WorkspaceBuilt:
        build_id = reports.id()
        return WorkspaceBuilt(
            id=build_id,
            occurred_at=reports.at(at),
            user_id=user,
            data=WorkspaceBuild(
                workspace_id="w", build_id=build_id, template="t", agent_managed=agent
            ),
        )

    await reports.feed(
        [
            reports.user(user, f"{p}-ann", "Ann"),
            api("ui", 3, 1),
            api("ui", 2, 5),
            api("sdk", 7, 2),
            api("sdk", 1, 40),
            build(3, agent=True),
            build(4, agent=False),
            reports.chat(user, at=6, cost=250),
            reports.chat(user, at=6.5, cost=None),
        ]
    )
    data = await reports.store.chargeback(month_window(reports.at(0)))
    usage = data.usage[user]
    assert (usage.ui_calls, usage.ui_last, usage.sdk_calls, usage.sdk_last) == (
        5,
        reports.at(5),
        7,
        reports.at(2),
    )
    assert (usage.builds, usage.agent_builds, usage.cost_micros) == (2, 1, 250)
    assert data.profiles[user].username == f"{p}-ann"
