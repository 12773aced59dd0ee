"""The reports HTTP contract on the in-memory store, with a fake limits service over HTTP."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

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
from libs.service.consumer import Consumed
from libs.service.embedded import free_port
from services.reports.api import ROUTES
from services.reports.app import build_app
from services.reports.config import ReportsSettings
from services.reports.limits import HttpLimitsClient
from services.reports.storage import InMemoryReportStore
from tests.contracts import Example, failures, walk, walk_values

EMITTER = {"Authorization": "Bearer emit"}
ADMIN = {"Authorization": "Bearer admin"}
T0 = datetime(2022, 8, 1, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2022, 8, day, hour, minute, tzinfo=UTC)


def user(user_id: str, username: str, name: str, *, licensed: bool = True) -> UserUpdated:
    return UserUpdated(
        id=f"{user_id}-dir",
        occurred_at=T0,
        user_id=user_id,
        org_id="o1",
        data=DirectoryUser(
            username=username,
            name=name,
            email=f"{username}@example.com",
            roles=("site-member",),
            avatar_hash="f" * 64,
            created_at=T0,
            licensed=licensed,
        ),
    )


def session(
    event_id: str, user_id: str, start: datetime, ms: int, *, category: str = "ide", org: str = "o1"
) -> ActivitySessionRecorded:
    return ActivitySessionRecorded(
        id=event_id,
        occurred_at=start,
        user_id=user_id,
        org_id=org,
        data=ActivitySession(category=category, duration_ms=ms),
    )


def chat(
    event_id: str,
    user_id: str,
    when: datetime,
    cost: int | None,
    *,
    chat_id: str = "c1",
    root: str | None = None,
    model: str = "gpt-4o",
    purpose: str = "chat",
) -> ChatUsageRecorded:
    return ChatUsageRecorded(
        id=event_id,
        occurred_at=when,
        user_id=user_id,
        data=ChatUsage(
            chat_id=chat_id,
            root_chat_id=root,
            message_id=event_id,
            model=model,
            provider="openai",
            input_tokens=100,
            output_tokens=10,
            cache_read_tokens=5,
            cache_write_tokens=1,
            cost_micros=cost,
            purpose=purpose,
            reasoning_tokens=4,
            runtime_ms=None if purpose == "title" else 1_250,
        ),
    )


@dataclass
class FakeLimits:
    """A limits service over HTTP that answers from a dict, slowly when told to."""

    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    delay_s: float = 0.0
    tokens: list[str] = field(default_factory=list)

    async def status(self, request: web.Request) -> web.Response:
        self.tokens.append(request.headers.get("Authorization", ""))
        await asyncio.sleep(self.delay_s)
        body = self.statuses.get(request.match_info["user_id"])
        if body is None:
            return web.json_response({**LIMITED, "is_limited": False, "source": "none"})
        return web.json_response(body)


LIMITED = {
    "is_limited": True,
    "period": "month",
    "limit_micros": 5_000_000,
    "spent_micros": 1_250_000,
    "period_start": "2022-08-01T00:00:00Z",
    "period_end": "2022-09-01T00:00:00Z",
    "source": "default",
    "group_id": None,
    "org_id": None,
}


@dataclass
class Harness:
    """The reports app on the in-memory store, and the fake limits service behind it."""

    client: TestClient[web.Request, web.Application]
    store: InMemoryReportStore
    limits: FakeLimits

    def feed(self, *events: Envelope) -> None:
        self.store.add([Consumed(e, 0, i, 0) for i, e in enumerate(events)])  # type: ignore[arg-type]

    async def get(self, path: str, /, **params: str) -> Any:
        """GET with the emitter token, asserting a 200."""
        return await self.get_as(EMITTER, path, **params)

    async def get_as(self, headers: dict[str, str], path: str, /, **params: str) -> Any:
        """GET with `headers`, asserting a 200."""
        resp = await self.client.get(path, params=params, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def error(self, path: str, status: int, /, **params: str) -> str:
        """GET with the emitter token, asserting `status` and the error shape."""
        return await self.error_as(EMITTER, path, status, **params)

    async def error_as(
        self, headers: dict[str, str], path: str, status: int, /, **params: str
    ) -> str:
        """GET with `headers`, asserting `status` and the error shape; returns the message."""
        resp = await self.client.get(path, params=params, headers=headers)
        assert resp.status == status, await resp.text()
        body = await resp.json()
        assert set(body) == {"message", "detail"}
        message: str = body["message"]
        return message


@pytest.fixture
async def limits_server() -> AsyncIterator[tuple[FakeLimits, str]]:
    """A fake limits service on a local port, and its base URL."""
    fake = FakeLimits()
    app = web.Application()
    app.router.add_get("/api/v1/limits/status/{user_id}", fake.status)
    server = TestServer(app)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def reports(limits_server: tuple[FakeLimits, str]) -> AsyncIterator[Harness]:
    """The reports app on an empty in-memory store, pointed at the fake limits service."""
    fake, url = limits_server
    settings = ReportsSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_ADMIN_TOKENS="admin",
        TOLLGATE_LIMITS_URL=url,
        TOLLGATE_LIMITS_TIMEOUT="0.2",
    )
    store = InMemoryReportStore()
    app = build_app(settings, store=store, registry=CollectorRegistry())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Harness(client, store, fake)
    finally:
        await client.close()


ACTIVITY = "/api/v1/metrics/activity"


async def test_activity_has_the_exact_shape_of_coders_reference(reports: Harness) -> None:
    """Keys and types match the Activity reference: buckets, user_activity and the users map."""
    reports.feed(
        user("u1", "joe2", "Joe"),
        session("s1", "u1", at(1, 9), 20 * 3_600_000),
        session("s2", "u2", at(2, 9), 46 * 60_000, category="tunnel"),
    )
    body = await reports.get(
        ACTIVITY,
        start="2022-08-01T00:00:00.000000Z",
        end="2022-08-31T00:00:00.000000Z",
        category="any",
        interval="1 week",
    )
    assert set(body) == {"activity", "users"}
    assert len(body["activity"]) == 5
    first = body["activity"][0]
    assert set(first) == {"time", "duration", "user_activity"}
    assert first["time"] == "2022-08-01T00:00:00Z"
    assert first["duration"] == 604_800_000
    assert first["user_activity"] == [
        {"user_id": "u1", "duration": 72_000_000, "count": 1},
        {"user_id": "u2", "duration": 2_760_000, "count": 1},
    ]
    assert body["activity"][-1]["duration"] == 2 * 86_400_000
    assert body["users"]["u1"] == {
        "id": "u1",
        "name": "Joe",
        "username": "joe2",
        "roles": ["site-member"],
        "avatar_hash": "f" * 64,
        "total_count": 1,
        "total_duration": 72_000_000,
    }
    assert set(body["users"]["u2"]) == set(body["users"]["u1"])


async def test_a_session_over_a_boundary_splits_its_time_and_keeps_its_count(
    reports: Harness,
) -> None:
    """A session from 23:00 to 01:00 gives an hour to each day; its count stays where it began."""
    reports.feed(session("s1", "u1", at(1, 23), 2 * 3_600_000))
    body = await reports.get(ACTIVITY, start="2022-08-01", end="2022-08-03", interval="1 day")
    assert [b["user_activity"] for b in body["activity"]] == [
        [{"user_id": "u1", "duration": 3_600_000, "count": 1}],
        [{"user_id": "u1", "duration": 3_600_000, "count": 0}],
    ]


async def test_activity_filters_by_category_and_org(reports: Harness) -> None:
    """`category` keeps one kind of session and `org` one organization."""
    reports.feed(
        session("s1", "u1", at(1, 9), 60_000, category="ide"),
        session("s2", "u1", at(1, 10), 120_000, category="web_terminal"),
        session("s3", "u2", at(1, 11), 180_000, category="ide", org="o2"),
    )
    params = {"start": "2022-08-01", "end": "2022-08-02"}
    ide = await reports.get(ACTIVITY, category="ide", **params)
    assert {r["user_id"]: r["duration"] for r in ide["activity"][0]["user_activity"]} == {
        "u1": 60_000,
        "u2": 180_000,
    }
    terminal = await reports.get(ACTIVITY, category="web_terminal", **params)
    assert terminal["activity"][0]["user_activity"] == [
        {"user_id": "u1", "duration": 120_000, "count": 1}
    ]
    org = await reports.get(ACTIVITY, org="o2", **params)
    assert list(org["users"]) == ["u2"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"interval": "2 weeks"}, "interval: '2 weeks' is not one of"),
        ({"start": "2022-08-10", "end": "2022-08-01"}, "end: is before start"),
        ({"start": "1990-01-01", "end": "2022-08-01"}, "more than 10000 buckets"),
        ({"start": "last tuesday"}, "start: 'last tuesday' is not an RFC 3339 time"),
        ({"end": "2022-08-01T00:00:00"}, "end: '2022-08-01T00:00:00' has no timezone"),
        ({"category": "ssh"}, "category: 'ssh' is not one of"),
        ({"intervall": "1 day"}, "unknown query parameter(s) 'intervall'"),
        ({"org": "a\x00b"}, "org: contains a control character (U+0000"),
        ({"end": "0001-01-05"}, "end: is too early for the default start"),
        ({"start": "0001-01-01T00:00:00+01:00"}, "start: '0001-01-01T00:00:00+01:00' is out of"),
    ],
)
async def test_activity_refuses_bad_queries_with_a_clear_400(
    reports: Harness, params: dict[str, str], fragment: str
) -> None:
    """Bad intervals, reversed or huge ranges, bad times and unknown parameters are 400s."""
    message = await reports.error(ACTIVITY, 400, **params)
    assert fragment in message


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        (ACTIVITY, {"interval": "2 weeks"}, "interval"),
        (ACTIVITY, {"start": "2022-08-10", "end": "2022-08-01"}, "end"),
        ("/api/v1/costs/users", {"start_date": "soon"}, "start_date"),
        ("/api/v1/costs/users/u1", {"end_date": "2022-08-01T00:00:00"}, "end_date"),
        ("/api/v1/chargeback/report", {"reportMonth": "2026-13"}, "reportMonth"),
    ],
)
async def test_a_bad_query_value_is_a_400_naming_its_field_in_the_detail(
    reports: Harness, path: str, params: dict[str, str], field: str
) -> None:
    """A parameter refused where it is parsed is answered 400 with `detail.field` naming it."""
    resp = await reports.client.get(path, params=params, headers=ADMIN)
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    assert body["detail"] == {"field": field}
    assert body["message"].startswith(f"{field}: ")


async def test_tokens_and_roles(reports: Harness) -> None:
    """Emitter and admin tokens read activity and costs; chargeback is admin only; none is 401."""
    assert (await reports.client.get(ACTIVITY)).status == 401
    assert (await reports.client.get(ACTIVITY, headers=ADMIN)).status == 200
    assert (await reports.client.get("/api/v1/costs/users", headers=EMITTER)).status == 200
    await reports.error("/api/v1/chargeback/report", 403, reportMonth="2022-08")
    await reports.get_as(ADMIN, "/api/v1/chargeback/report", reportMonth="2022-08")


COSTS = "/api/v1/costs/users"


def _spenders(reports: Harness) -> None:
    reports.feed(
        user("u1", "alice", "Alice Liddell"),
        user("u2", "bob", "Bob Builder"),
        user("u3", "carol", "Carol 100%"),
        chat("m1", "u1", at(2), 300, chat_id="a"),
        chat("m2", "u1", at(2, 1), None, chat_id="a-sub", root="a", model="local"),
        chat("m3", "u1", at(3), 200, chat_id="b"),
        chat("m4", "u1", at(3), 999_999, chat_id="b", purpose="title"),
        chat("m5", "u2", at(4), 1000, chat_id="c"),
        chat("m6", "u3", at(4), 10, chat_id="d"),
        chat("m7", "u4", at(4), 10, chat_id="e"),
    )


async def test_cost_list_is_cost_descending_with_count_and_pages(reports: Harness) -> None:
    """Users come cost first (ties by username); `count` is every match; limit/offset page."""
    _spenders(reports)
    window = {"start_date": "2022-08-01", "end_date": "2022-09-01"}
    page = await reports.get(COSTS, limit="2", **window)
    assert page["count"] == 4
    assert page["start_date"] == "2022-08-01T00:00:00Z"
    assert [u["user_id"] for u in page["users"]] == ["u2", "u1"]
    alice = page["users"][1]
    assert alice == {
        "user_id": "u1",
        "username": "alice",
        "name": "Alice Liddell",
        "avatar_hash": "f" * 64,
        "total_cost_micros": 500,
        "message_count": 3,
        "priced_message_count": 2,
        "unpriced_message_count": 1,
        "chat_count": 2,
        "total_input_tokens": 300,
        "total_output_tokens": 30,
        "total_cache_read_tokens": 15,
        "total_cache_creation_tokens": 3,
        "total_reasoning_tokens": 12,
        "total_runtime_ms": 3_750,
    }
    rest = await reports.get(COSTS, limit="2", offset="2", **window)
    assert [u["user_id"] for u in rest["users"]] == ["u3", "u4"]
    past = await reports.get(COSTS, limit="2", offset="10", **window)
    far = await reports.get(COSTS, start_date="9999-12-30", end_date="9999-12-31T23:00:00Z")
    assert far["users"] == []
    await reports.error(COSTS, 400, start_date="9999-12-30")
    await reports.error(COSTS, 400, end_date="0001-01-02")
    assert past["users"] == []
    assert past["count"] == 4


async def test_cost_list_searches_names_and_usernames_literally(reports: Harness) -> None:
    """`q` is a case-insensitive substring of the name or username; `%` is just a character."""
    _spenders(reports)
    window = {"start_date": "2022-08-01", "end_date": "2022-09-01"}
    assert [u["user_id"] for u in (await reports.get(COSTS, q="LIDDELL", **window))["users"]] == [
        "u1"
    ]
    assert [u["user_id"] for u in (await reports.get(COSTS, q="bo", **window))["users"]] == ["u2"]
    found = await reports.get(COSTS, q="100%", **window)
    assert [u["user_id"] for u in found["users"]] == ["u3"]
    assert found["count"] == 1
    assert (await reports.get(COSTS, q="%", **window))["count"] == 1


async def test_cost_list_window_is_start_inclusive_end_exclusive(reports: Harness) -> None:
    """A message at end_date is out; one at start_date is in; any time to the microsecond works."""
    _spenders(reports)
    day3 = await reports.get(COSTS, start_date="2022-08-03", end_date="2022-08-04")
    assert [(u["user_id"], u["total_cost_micros"]) for u in day3["users"]] == [("u1", 200)]
    early = await reports.get(
        COSTS, start_date="2022-08-02T00:30:00Z", end_date="2022-08-02T01:00:00.000001Z"
    )
    assert [(u["user_id"], u["message_count"]) for u in early["users"]] == [("u1", 1)]


async def test_cost_list_as_csv(reports: Harness) -> None:
    """`Accept: text/csv` returns every matching row as CSV with a header, formulas defused."""
    _spenders(reports)
    reports.feed(user("u4", "=cmd()", "Mallory"))
    resp = await reports.client.get(
        COSTS,
        params={"start_date": "2022-08-01", "end_date": "2022-09-01"},
        headers={**EMITTER, "Accept": "text/csv"},
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["user_id"] for r in rows] == ["u2", "u1", "u4", "u3"]
    assert rows[1]["total_cost_usd"] == "0.000500"
    assert rows[1]["unpriced_message_count"] == "1"
    assert (rows[1]["total_reasoning_tokens"], rows[1]["total_runtime_ms"]) == ("12", "3750")
    assert rows[2]["username"] == "'=cmd()"


async def test_cost_detail_rolls_chats_up_to_the_root_and_shows_the_limit(
    reports: Harness,
) -> None:
    """By model and by root chat, priced and unpriced counts, and the limits service's status."""
    _spenders(reports)
    reports.limits.statuses["u1"] = LIMITED
    body = await reports.get(f"{COSTS}/u1", start_date="2022-08-01", end_date="2022-09-01")
    assert body["total_cost_micros"] == 500
    assert body["priced_message_count"] == 2
    assert body["unpriced_message_count"] == 1
    assert body["chat_count"] == 2
    assert (
        body["total_reasoning_tokens"]
        == sum(m["total_reasoning_tokens"] for m in body["by_model"])
        == sum(c["total_reasoning_tokens"] for c in body["by_chat"])
        == 12
    )
    assert [(c["root_chat_id"], c["message_count"]) for c in body["by_chat"]] == [
        ("a", 2),
        ("b", 1),
    ]
    assert [(m["model"], m["total_cost_micros"]) for m in body["by_model"]] == [
        ("gpt-4o", 500),
        ("local", 0),
    ]
    assert body["usage_limit"] == {**LIMITED, "group_name": None}
    assert reports.limits.tokens[-1] == "Bearer admin"


async def test_usage_limit_is_null_without_a_limit_or_when_limits_is_slow(
    reports: Harness,
) -> None:
    """No limit, or no answer within the timeout, gives `usage_limit: null` and still a 200."""
    _spenders(reports)
    window = {"start_date": "2022-08-01", "end_date": "2022-09-01"}
    assert (await reports.get(f"{COSTS}/u2", **window))["usage_limit"] is None
    reports.limits.statuses["u2"] = LIMITED
    reports.limits.delay_s = 1.0
    started = asyncio.get_running_loop().time()
    body = await reports.get(f"{COSTS}/u2", **window)
    assert body["usage_limit"] is None
    assert body["total_cost_micros"] == 1000
    assert asyncio.get_running_loop().time() - started < 0.9


async def test_unknown_user_is_404_and_a_known_idle_one_is_zero(reports: Harness) -> None:
    """A user never seen is 404; a directory user without usage has zeros."""
    _spenders(reports)
    await reports.error(f"{COSTS}/nobody", 404)
    reports.feed(user("u9", "idle", "Idle"))
    body = await reports.get(f"{COSTS}/u9")
    assert body["total_cost_micros"] == 0
    assert body["by_model"] == []
    assert body["username"] == "idle"


async def test_limits_client_gives_none_when_the_service_is_down() -> None:
    """An unreachable limits service is None, not an error."""
    async with aiohttp.ClientSession() as session:
        client = HttpLimitsClient(
            session, base_url=f"http://127.0.0.1:{free_port()}", token="t", timeout_s=0.2
        )
        assert await client.status("u1") is None


CHARGEBACK = "/api/v1/chargeback/report"


def _organisation(reports: Harness) -> None:
    reports.feed(
        user("u1", "alice", "Alice"),
        user("u2", "bob", "Bob", licensed=False),
        TeamUpdated(
            id="t1",
            occurred_at=T0,
            data=DirectoryTeam(team_id="team-1", name="workspace 1", member_ids=("u1", "u2")),
        ),
        ProjectUpdated(
            id="p1",
            occurred_at=T0,
            data=DirectoryProject(project_id="p1", team_id="team-1", name="some project name"),
        ),
        StorageSampled(
            id="s-jul",
            occurred_at=datetime(2022, 7, 31, 23, 59, tzinfo=UTC),
            user_id="u1",
            data=StorageSample(project_id="p1", size_mb=99.0, experiment_count=9),
        ),
        StorageSampled(
            id="s-early",
            occurred_at=at(2),
            user_id="u1",
            data=StorageSample(project_id="p1", size_mb=1.0, experiment_count=1),
        ),
        StorageSampled(
            id="s-late",
            occurred_at=at(30),
            user_id="u1",
            data=StorageSample(project_id="p1", size_mb=2.5, experiment_count=3),
        ),
        ApiUsageRecorded(
            id="a1", occurred_at=at(3), user_id="u1", data=ApiUsage(client="ui", count=4)
        ),
        ApiUsageRecorded(
            id="a2", occurred_at=at(9), user_id="u1", data=ApiUsage(client="sdk", count=40)
        ),
        WorkspaceBuilt(
            id="b1",
            occurred_at=at(5),
            user_id="u2",
            data=WorkspaceBuild(workspace_id="w", build_id="b1", template="t", agent_managed=True),
        ),
        chat("m1", "u1", at(5), 1234),
        chat("m2", "u1", datetime(2022, 9, 1, tzinfo=UTC), 99),
    )


async def test_chargeback_report_for_a_month(reports: Harness) -> None:
    """Sizes come from the month's latest sample; usage, cost and agent builds from the month."""
    _organisation(reports)
    body = await reports.get_as(ADMIN, CHARGEBACK, reportMonth="2022-08")
    assert body["reportDate"] == "2022-08"
    [workspace] = body["workspaces"]
    assert workspace["numberOfMembers"] == 2
    assert workspace["totalSizeInMb"] == 2.5
    assert workspace["numberOfExperiments"] == 3
    assert workspace["llmCostMicros"] == 1234
    assert workspace["agentBuilds"] == 1
    assert workspace["projects"] == [
        {"id": "p1", "name": "some project name", "numberOfExperiments": 3, "totalSizeInMb": 2.5}
    ]
    [alice] = body["users"]["licensedUsers"]
    assert alice["uiUsageCount"] == 4
    assert alice["uiUsageUpdateTs"] == int(at(3).timestamp() * 1000)
    assert alice["sdkUsageCount"] == 40
    assert alice["llmCostMicros"] == 1234
    assert body["users"]["numberOfUsers"] == 1
    await reports.error_as(ADMIN, CHARGEBACK, 400, reportMonth="2022-8")
    await reports.error_as(ADMIN, CHARGEBACK, 400)


async def test_chargeback_tables_as_csv(reports: Harness) -> None:
    """`format=csv` exports the workspaces, members or users table."""
    _organisation(reports)
    tables = {}
    for table in ("workspaces", "members", "users"):
        resp = await reports.client.get(
            CHARGEBACK,
            params={"reportMonth": "2022-08", "format": "csv", "table": table},
            headers=ADMIN,
        )
        assert resp.status == 200
        tables[table] = list(csv.DictReader(io.StringIO(await resp.text())))
    assert tables["workspaces"][0]["llm_cost_usd"] == "0.001234"
    assert [r["username"] for r in tables["members"]] == ["alice", "bob"]
    assert tables["users"][0]["ui_usage_count"] == "4"
    await reports.error_as(ADMIN, CHARGEBACK, 400, reportMonth="2022-08", table="teams")


async def test_openapi_describes_every_route(reports: Harness) -> None:
    """The OpenAPI document lists the four report routes with their parameters."""
    doc = await reports.get("/openapi.json")
    paths = doc["paths"]
    for path in (ACTIVITY, COSTS, f"{COSTS}/{{user_id}}", CHARGEBACK):
        assert "get" in paths[path]
    names = {p["name"] for p in paths[ACTIVITY]["get"]["parameters"]}
    assert names == {"start", "end", "interval", "category", "org"}
    assert "text/csv" in paths[COSTS]["get"]["responses"]["200"]["content"]


_AUGUST = {"start_date": "2022-08-01", "end_date": "2022-09-01"}
#: A request per reports route that finds the data `_organisation` and `_spenders` feed.
_EXAMPLES = {
    ("GET", ACTIVITY): Example(query={"start": "2022-01-01", "end": "2022-09-01"}),
    ("GET", COSTS): Example(query=_AUGUST),
    ("GET", f"{COSTS}/{{user_id}}"): Example(path={"user_id": "u1"}, query=_AUGUST),
    ("GET", CHARGEBACK): Example(query={"reportMonth": "2022-08"}),
}


async def test_every_route_answers_the_model_its_table_declares(reports: Harness) -> None:
    """Each route of reports' table, called once, succeeds with the body its table declares."""
    _organisation(reports)
    _spenders(reports)
    reports.limits.statuses["u1"] = LIMITED
    answers = await walk(reports.client, ROUTES, headers=ADMIN, examples=_EXAMPLES)
    assert failures(answers) == []
    assert len(answers) == len(ROUTES)


async def test_every_value_a_query_parameter_lists_is_understood(reports: Harness) -> None:
    """Each enum value the document lists for a query parameter gets an answer, never a 400."""
    _spenders(reports)
    answers = await walk_values(reports.client, ROUTES, headers=ADMIN, examples=_EXAMPLES)
    assert failures(answers) == []
    assert len(answers) == 5 + 6 + 2 + 2 + 2 + 3
