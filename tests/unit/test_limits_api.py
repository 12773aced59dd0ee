"""The limits HTTP contract against in-memory stores and a hand-fed log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from libs.events.limits import LIMIT_CHECK_PATH, LIMIT_STATUS_PATH
from libs.events.models import ChatUsage, ChatUsageRecorded, DirectoryGroup, Event, GroupUpdated
from libs.service.consumer import Batch, Consumed
from services.limits.api import ROUTES
from services.limits.app import SINK, SNAPSHOTTER, build_app
from services.limits.config import LimitsSettings
from services.limits.consumer import APPLY_CHUNK, LimitsSink
from services.limits.domain import MONTH
from services.limits.storage import InMemoryConfigStore, InMemorySnapshotStore
from tests.contracts import Example, failures, walk
from tests.support import scrape

EMITTER = {"Authorization": "Bearer emit"}
ADMIN = {"Authorization": "Bearer admin"}
NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)


class ManualFeed:
    """Stands in for the consumer loop: restores like it, then waits to be fed batches."""

    def __init__(self, sink: LimitsSink) -> None:
        self.sink = sink
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Load positions as the loop does, then idle."""
        await self.sink.load_positions(range(12))
        await asyncio.Event().wait()

    async def drain(self, timeout_s: float = 0.0) -> bool:
        """Everything fed is applied already."""
        return True


@dataclass
class Harness:
    """The app on fakes, with helpers to feed events and read metrics."""

    client: TestClient[web.Request, web.Application]
    app: web.Application
    registry: CollectorRegistry
    config_store: InMemoryConfigStore
    snapshots: InMemorySnapshotStore
    feeds: list[ManualFeed]
    offsets: dict[int, int] = field(default_factory=dict)

    async def feed(self, *events: Event, partition: int = 0) -> None:
        """Apply events as one batch read from `partition`."""
        consumed = []
        for event in events:
            offset = self.offsets.get(partition, 0)
            consumed.append(Consumed(event, partition, offset, int(NOW.timestamp() * 1000)))
            self.offsets[partition] = offset + 1
        await self.app[SINK].apply(Batch(events=consumed, positions=dict(self.offsets)))

    def caught_up(self) -> None:
        """Mark the log as read to its end."""
        self.feeds[0].caught_up.set()

    async def configure(
        self, *, enabled: bool = True, period: str = "month", default: int | None = 1_000_000
    ) -> None:
        """PUT the configuration."""
        body = {"enabled": enabled, "period": period, "default_limit_micros": default}
        resp = await self.client.put("/api/v1/limits/config", json=body, headers=ADMIN)
        assert resp.status == 200, await resp.text()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample's value (0 when absent)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def spend(
    event_id: str,
    user: str,
    cost: int | None,
    *,
    purpose: str = "chat",
    org: str | None = None,
    model: str = "sonnet",
) -> ChatUsageRecorded:
    """A chat usage event at NOW (in organisation `org`)."""
    return ChatUsageRecorded(
        id=event_id,
        occurred_at=NOW,
        user_id=user,
        org_id=org,
        data=ChatUsage.model_validate(
            {
                "chat_id": "c",
                "message_id": f"m-{event_id}",
                "model": model,
                "input_tokens": 1,
                "output_tokens": 1,
                "cost_micros": cost,
                "purpose": purpose,
            }
        ),
    )


def group(
    event_id: str, group_id: str, members: Sequence[str], *, org: str | None = None
) -> GroupUpdated:
    """A group membership event at NOW (a group of organisation `org`)."""
    return GroupUpdated(
        id=event_id,
        occurred_at=NOW,
        org_id=org,
        data=DirectoryGroup(group_id=group_id, name=group_id, member_ids=tuple(members)),
    )


@pytest.fixture
async def limits() -> AsyncIterator[Harness]:
    """A limits app on fakes whose clock reads NOW."""
    settings = LimitsSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_ADMIN_TOKENS="admin",
        TOLLGATE_EVENTS_TOPIC="t.events",
        TOLLGATE_BROKER_EPOCH="epoch-1",
        TOLLGATE_LIMITS_TOP_USERS=20,
    )
    registry = CollectorRegistry()
    config_store, snapshots = InMemoryConfigStore(), InMemorySnapshotStore()
    feeds: list[ManualFeed] = []

    def make_feed(sink: LimitsSink) -> ManualFeed:
        feeds.append(ManualFeed(sink))
        return feeds[-1]

    app = build_app(
        settings,
        config_store=config_store,
        snapshot_store=snapshots,
        feed=make_feed,
        registry=registry,
        clock=NOW.timestamp,
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Harness(client, app, registry, config_store, snapshots, feeds)
    finally:
        await client.close()


async def check(
    h: Harness, user: str, headers: dict[str, str] = EMITTER, *, org: str | None = None
) -> tuple[int, dict[str, object]]:
    """POST a check (for organisation `org` when given); (status, body)."""
    request = {"user_id": user} if org is None else {"user_id": user, "org_id": org}
    resp = await h.client.post("/api/v1/limits/check", json=request, headers=headers)
    body = await resp.json()
    assert isinstance(body, dict)
    return resp.status, body


# -- checks ----------------------------------------------------------------------------------


async def test_check_over_the_default_is_409_with_every_field(limits: Harness) -> None:
    """Spend reaching the $1 default blocks with the contract's 409 body and the month's reset."""
    limits.caught_up()
    await limits.configure(default=1_000_000)
    await limits.feed(spend("e1", "ann", 600_000), spend("e2", "ann", 400_000))
    status, body = await check(limits, "ann")
    assert status == 409
    assert body == {
        "allowed": False,
        "message": "Chat usage limit exceeded.",
        "detail": None,
        "limited": True,
        "limit_micros": 1_000_000,
        "spent_micros": 1_000_000,
        "remaining_micros": 0,
        "period": "month",
        "period_start": "2026-11-01T00:00:00Z",
        "resets_at": "2026-12-01T00:00:00Z",
        "source": "default",
        "group_id": None,
        "org_id": None,
    }


async def test_group_limit_409_names_the_group(limits: Harness) -> None:
    """A member over the lowest of their groups' limits is blocked with `source: group` and its id."""
    limits.caught_up()
    await limits.configure(default=1_000_000)
    for gid, limit in (("g-high", 300_000), ("g-low", 200_000)):
        resp = await limits.client.put(
            f"/api/v1/limits/overrides/groups/{gid}", json={"limit_micros": limit}, headers=ADMIN
        )
        assert resp.status == 200
        assert (await resp.json())["group_id"] == gid
    await limits.feed(group("m1", "g-high", ["bob"]), group("m2", "g-low", ["bob", "cy"]))
    await limits.feed(spend("e1", "bob", 250_000), partition=1)
    status, body = await check(limits, "bob")
    assert status == 409
    assert (body["source"], body["group_id"], body["limit_micros"]) == ("group", "g-low", 200_000)
    status, body = await check(limits, "cy")
    assert (status, body["remaining_micros"]) == (200, 200_000)


async def test_user_override_lets_a_blocked_user_through_at_once(limits: Harness) -> None:
    """Raising a blocked user's limit with an override allows their next check immediately."""
    limits.caught_up()
    await limits.configure(default=100)
    await limits.feed(spend("e1", "ann", 150))
    assert (await check(limits, "ann"))[0] == 409
    resp = await limits.client.put(
        "/api/v1/limits/overrides/users/ann", json={"limit_micros": 5_000_000}, headers=ADMIN
    )
    assert resp.status == 200
    override = await resp.json()
    assert (override["user_id"], override["limit_micros"]) == ("ann", 5_000_000)
    status, body = await check(limits, "ann")
    assert (status, body["source"], body["remaining_micros"]) == (200, "user", 4_999_850)
    resp = await limits.client.delete("/api/v1/limits/overrides/users/ann", headers=ADMIN)
    assert resp.status == 204
    assert (await check(limits, "ann"))[0] == 409
    resp = await limits.client.delete("/api/v1/limits/overrides/users/ann", headers=ADMIN)
    assert resp.status == 404
    assert "ann" in (await resp.json())["message"]


async def test_disabled_unknown_and_unlimited_users_are_allowed(limits: Harness) -> None:
    """Disabled limits answer `limited: false`; a user never seen is allowed with nothing spent."""
    limits.caught_up()
    await limits.configure(enabled=False, default=1)
    await limits.feed(spend("e1", "ann", 99))
    status, body = await check(limits, "ann")
    assert (status, body["allowed"], body["limited"], body["spent_micros"]) == (
        200,
        True,
        False,
        99,
    )
    assert (body["source"], body["limit_micros"], body["remaining_micros"]) == ("none", None, None)
    await limits.configure(enabled=True, default=None)
    assert (await check(limits, "ann"))[1]["limited"] is False
    await limits.configure(enabled=True, default=50)
    status, body = await check(limits, "new-user")
    assert (status, body["spent_micros"], body["remaining_micros"]) == (200, 0, 50)


async def test_title_usage_and_duplicates_do_not_count(limits: Harness) -> None:
    """Title generation and a resent event id add nothing to what a check reports."""
    limits.caught_up()
    await limits.configure(default=1_000)
    await limits.feed(spend("t", "ann", 5_000, purpose="title"), spend("e", "ann", 10))
    await limits.feed(spend("e", "ann", 10))
    assert (await check(limits, "ann"))[1]["spent_micros"] == 10
    assert limits.metric("tollgate_limits_duplicate_events_total") == 1


async def test_a_large_batch_is_folded_in_while_checks_are_answered(limits: Harness) -> None:
    """Between chunks the loop serves checks; what they see is a prefix of the batch, and the
    positions (which a snapshot would store) always match that prefix."""
    sink = limits.app[SINK]
    ledger = sink.limiter.ledger
    month = sink.limiter.current_periods(NOW.timestamp())[MONTH].key
    events = [spend(f"big-{n}", "ann", 10_000) for n in range(10 * APPLY_CHUNK + 5)]
    seen: list[tuple[int, int]] = []
    feeding = asyncio.create_task(limits.feed(*events, partition=3))
    while not feeding.done():
        seen.append((ledger.positions.get(3, 0), ledger.spent(MONTH, month, "ann")))
        await asyncio.sleep(0)
    await feeding
    assert all(spent == folded * 10_000 for folded, spent in seen), seen
    between = {folded for folded, _ in seen if 0 < folded < len(events)}
    assert len(between) >= 9, seen
    assert ledger.positions[3] == len(events)
    assert ledger.spent(MONTH, month, "ann") == len(events) * 10_000
    assert limits.metric("tollgate_limits_events_applied_total") == len(events)
    assert limits.metric("tollgate_limits_spend_micros_total", {"model": "sonnet"}) == (
        len(events) * 10_000
    )


async def test_status_reports_the_contract_fields(limits: Harness) -> None:
    """Status shows whether a limit applies, the limit, the spend, the period's bounds and where the limit comes from."""
    limits.caught_up()
    await limits.configure(period="week", default=700)
    await limits.feed(spend("e", "ann", 20))
    resp = await limits.client.get("/api/v1/limits/status/ann", headers=EMITTER)
    assert resp.status == 200
    assert await resp.json() == {
        "is_limited": True,
        "period": "week",
        "limit_micros": 700,
        "spent_micros": 20,
        "period_start": "2026-11-16T00:00:00Z",
        "period_end": "2026-11-23T00:00:00Z",
        "source": "default",
        "group_id": None,
        "org_id": None,
    }


async def test_a_check_for_an_organisation_uses_its_groups_and_its_spend(limits: Harness) -> None:
    """With org_id the 409 and the status name the organisation whose group limit applied."""
    limits.caught_up()
    await limits.configure(default=100_000_000)
    for gid, limit in (("g-acme", 5_000_000), ("g-beta", 50_000_000)):
        resp = await limits.client.put(
            f"/api/v1/limits/overrides/groups/{gid}", json={"limit_micros": limit}, headers=ADMIN
        )
        assert resp.status == 200
    await limits.feed(
        group("m1", "g-acme", ["ann"], org="acme"), group("m2", "g-beta", ["ann"], org="beta")
    )
    await limits.feed(
        spend("e1", "ann", 5_000_000, org="acme"),
        spend("e2", "ann", 1_000, org="beta"),
        partition=1,
    )
    status, body = await check(limits, "ann", org="acme")
    assert status == 409
    assert (body["source"], body["group_id"], body["org_id"]) == ("group", "g-acme", "acme")
    assert (body["limit_micros"], body["spent_micros"]) == (5_000_000, 5_000_000)
    status, body = await check(limits, "ann", org="beta")
    assert (status, body["group_id"], body["org_id"], body["spent_micros"]) == (
        200,
        "g-beta",
        "beta",
        1_000,
    )
    # Without an organisation: the lowest of every group, against all spend, as before.
    status, body = await check(limits, "ann")
    assert (status, body["group_id"], body["org_id"], body["spent_micros"]) == (
        409,
        "g-acme",
        None,
        5_001_000,
    )
    # An organisation the user has no group in: the default, against all spend.
    status, body = await check(limits, "ann", org="gamma")
    assert (status, body["source"], body["org_id"], body["spent_micros"]) == (
        200,
        "default",
        None,
        5_001_000,
    )
    resp = await limits.client.get("/api/v1/limits/status/ann?org_id=beta", headers=EMITTER)
    assert resp.status == 200
    status_body = await resp.json()
    assert (status_body["group_id"], status_body["org_id"], status_body["spent_micros"]) == (
        "g-beta",
        "beta",
        1_000,
    )
    view = await (await limits.client.get("/api/v1/limits/config", headers=ADMIN)).json()
    assert [(o["group_id"], o["org_id"]) for o in view["group_overrides"]] == [
        ("g-acme", "acme"),
        ("g-beta", "beta"),
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("org_id=", "org_id: must be 1 to 128 characters"),
        ("org_id=a&org_id=b", "org_id: given more than once"),
        ("org_id=%01x", "org_id: contains a control character"),
        ("org=acme", "query: unknown parameter(s) 'org'"),
    ],
)
async def test_bad_status_queries_are_422_naming_the_parameter(
    limits: Harness, query: str, message: str
) -> None:
    """A status query with a bad or unknown parameter gets a 422 naming it."""
    limits.caught_up()
    resp = await limits.client.get(f"/api/v1/limits/status/ann?{query}", headers=EMITTER)
    assert resp.status == 422
    assert (await resp.json())["message"].startswith(message)


async def test_checks_wait_for_the_log_to_be_read(limits: Harness) -> None:
    """Until the replica has caught up, checks answer 503 with Retry-After and readiness fails."""
    await limits.configure()
    resp = await limits.client.post(
        "/api/v1/limits/check", json={"user_id": "ann"}, headers=EMITTER
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    ready = await limits.client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"] == {"log": "failing", "config": "ok"}
    assert limits.metric("tollgate_limits_ready") == 0
    limits.caught_up()
    assert (await limits.client.get("/readyz")).status == 200
    assert limits.metric("tollgate_limits_ready") == 1
    assert (await check(limits, "ann"))[0] == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "user_id: Field required"),
        ({"user_id": 7}, "user_id: Input should be a valid string"),
        ({"user_id": ""}, "user_id: must be 1 to 128 characters"),
        ({"user_id": "a", "chat": 1}, "body: unknown field(s) 'chat'"),
        ({"user_id": "a", "org_id": "o", "x": 1}, "body: unknown field(s) 'x'"),
        ({"org_id": "o"}, "user_id: Field required"),
        ({"user_id": "a", "org_id": 7}, "org_id: Input should be a valid string"),
        ({"user_id": "a", "org_id": ""}, "org_id: must be 1 to 128 characters"),
        ({"user_id": "a", "org_id": "o" * 129}, "org_id: must be 1 to 128 characters"),
        ({"user_id": "a", "org_id": "acme\x00"}, "org_id: contains a control character"),
        ([], "body: expected an object"),
    ],
)
async def test_bad_check_bodies_are_422_naming_the_field(
    limits: Harness, body: object, message: str
) -> None:
    """A malformed check gets a 422 whose message names the field."""
    limits.caught_up()
    resp = await limits.client.post("/api/v1/limits/check", json=body, headers=EMITTER)
    assert resp.status == 422
    assert (await resp.json())["message"].startswith(message)


async def test_tokens_decide_who_may_check_and_who_may_configure(limits: Harness) -> None:
    """Checks need a token; configuration needs an admin token."""
    limits.caught_up()
    resp = await limits.client.post("/api/v1/limits/check", json={"user_id": "a"})
    assert resp.status == 401
    resp = await limits.client.get("/api/v1/limits/config", headers=EMITTER)
    assert resp.status == 403
    resp = await limits.client.put(
        "/api/v1/limits/overrides/users/a", json={"limit_micros": 1}, headers=EMITTER
    )
    assert resp.status == 403
    assert (await check(limits, "a", ADMIN))[0] == 200


# -- configuration ---------------------------------------------------------------------------


async def test_config_view_lists_overrides_and_unpriced_models(limits: Harness) -> None:
    """GET shows the settings, every override and the models seen without a price."""
    limits.caught_up()
    await limits.configure(period="day", default=None)
    await limits.client.put(
        "/api/v1/limits/overrides/users/u1", json={"limit_micros": 5}, headers=ADMIN
    )
    await limits.client.put(
        "/api/v1/limits/overrides/groups/g1", json={"limit_micros": 7}, headers=ADMIN
    )
    limits.config_store.priced = {"sonnet"}
    await limits.feed(spend("e1", "u1", None, model="mystery"), spend("e2", "u1", 5))
    resp = await limits.client.get("/api/v1/limits/config", headers=ADMIN)
    assert resp.status == 200
    view = await resp.json()
    assert (view["enabled"], view["period"], view["default_limit_micros"]) == (True, "day", None)
    assert (view["unpriced_model_count"], view["unpriced_models"]) == (1, ["mystery"])
    # Pricing the model takes it off the list on the next read, with no new usage.
    limits.config_store.priced.add("mystery")
    view = await (await limits.client.get("/api/v1/limits/config", headers=ADMIN)).json()
    assert (view["unpriced_model_count"], view["unpriced_models"]) == (0, [])
    assert [(o["user_id"], o["limit_micros"]) for o in view["user_overrides"]] == [("u1", 5)]
    assert [(o["group_id"], o["org_id"], o["limit_micros"]) for o in view["group_overrides"]] == [
        ("g1", None, 7)
    ]
    assert view["updated_at"].endswith("Z")
    # What GET returned can be PUT back: the read-only fields are ignored.
    view["period"] = "month"
    resp = await limits.client.put("/api/v1/limits/config", json=view, headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["period"] == "month"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"enabled": True, "period": "month", "default_limit_micros": 0},
            "default_limit_micros: Input should be greater than 0",
        ),
        (
            {"enabled": True, "period": "month", "default_limit_micros": -5},
            "default_limit_micros: Input should be greater than 0",
        ),
        (
            {"enabled": True, "period": "month", "default_limit_micros": 1.5},
            "default_limit_micros: Input should be a valid integer",
        ),
        (
            {"enabled": True, "period": "year", "default_limit_micros": None},
            "period: Input should be 'day', 'week' or 'month'",
        ),
        (
            {"enabled": "yes", "period": "month", "default_limit_micros": None},
            "enabled: Input should be a valid boolean",
        ),
        ({"enabled": True, "period": "month"}, "default_limit_micros: Field required"),
        (
            {"enabled": True, "period": "month", "default_limit_micros": None, "limit": 1},
            "limit: Extra inputs are not permitted",
        ),
    ],
)
async def test_invalid_config_is_422_naming_the_field(
    limits: Harness, body: dict[str, object], message: str
) -> None:
    """Limits must be positive integers, periods known, fields present and known."""
    resp = await limits.client.put("/api/v1/limits/config", json=body, headers=ADMIN)
    assert resp.status == 422
    assert (await resp.json())["message"] == message


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/api/v1/limits/overrides/users/u",
            {"limit_micros": 0},
            "limit_micros: Input should be greater than 0",
        ),
        (
            "/api/v1/limits/overrides/groups/g",
            {"limit_micros": "5"},
            "limit_micros: Input should be a valid integer",
        ),
        ("/api/v1/limits/overrides/groups/g", {}, "limit_micros: Field required"),
        (
            f"/api/v1/limits/overrides/users/{'x' * 129}",
            {"limit_micros": 1},
            "user_id: must be 1 to 128 characters",
        ),
    ],
)
async def test_invalid_override_is_422_naming_the_field(
    limits: Harness, path: str, body: dict[str, object], message: str
) -> None:
    """An override needs a positive integer limit and a sensible id."""
    resp = await limits.client.put(path, json=body, headers=ADMIN)
    assert resp.status == 422
    assert (await resp.json())["message"] == message


async def test_config_store_down_is_503_while_checks_keep_answering(limits: Harness) -> None:
    """With the database down, admin calls get 503 and checks still answer from memory."""
    limits.caught_up()
    await limits.configure(default=10)
    limits.config_store.down = True
    resp = await limits.client.put(
        "/api/v1/limits/overrides/users/u", json={"limit_micros": 1}, headers=ADMIN
    )
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert (await limits.client.get("/api/v1/limits/config", headers=ADMIN)).status == 503
    assert (await check(limits, "u"))[0] == 200


async def test_a_change_made_elsewhere_arrives_with_the_next_poll(limits: Harness) -> None:
    """A change written by another replica is in force here after one refresh interval."""
    limits.caught_up()
    await limits.configure(default=10)
    await limits.config_store.put_override("user", "far", 99)

    async def seen() -> bool:
        return (await check(limits, "far"))[1]["limit_micros"] == 99

    for _ in range(40):
        if await seen():
            break
        await asyncio.sleep(0.05)
    assert await seen()


# -- metrics, snapshots, docs ----------------------------------------------------------------


async def test_metrics_count_checks_spend_and_users(limits: Harness) -> None:
    """Checks by result, their latency, spend by model, users tracked and top spenders are exported."""
    limits.caught_up()
    await limits.configure(default=100)
    await limits.feed(spend("e1", "big", 150), spend("e2", "small", 5))
    await check(limits, "big")
    await check(limits, "small")
    await limits.configure(enabled=False)
    await check(limits, "small")
    for result in ("blocked", "allowed", "unlimited"):
        assert limits.metric("tollgate_limit_checks_total", {"result": result}) == 1
    assert limits.metric("tollgate_limit_check_duration_seconds_count") == 3
    assert limits.metric("tollgate_limits_spend_micros_total", {"model": "sonnet"}) == 155
    assert limits.metric("tollgate_limits_events_applied_total") == 2
    assert limits.metric("tollgate_limits_users_tracked") == 2
    assert limits.metric("tollgate_limits_top_user_spend_micros", {"user_id": "big"}) == 150
    assert limits.metric("tollgate_limits_dedup_ids") == 2
    text = await scrape(limits.client.app)
    assert "tollgate_limits_snapshot_age_seconds" in text


async def test_top_spenders_are_not_exported_unless_asked_for() -> None:
    """By default no user id reaches /metrics: the top-spender gauge needs TOLLGATE_LIMITS_TOP_USERS."""
    settings = LimitsSettings(DATABASE_URL="postgresql://unused", TOLLGATE_EVENTS_TOPIC="t.events")
    assert settings.top_users == 0
    app = build_app(
        settings,
        config_store=InMemoryConfigStore(),
        snapshot_store=InMemorySnapshotStore(),
        feed=ManualFeed,
        clock=NOW.timestamp,
    )
    text = await scrape(app)
    assert "tollgate_limits_ready" in text
    assert "tollgate_limits_top_user_spend_micros" not in text


async def test_snapshot_written_then_restored_by_a_new_replica(limits: Harness) -> None:
    """A snapshot carries spend and positions; a replica starting later resumes from it."""
    limits.caught_up()
    await limits.configure(default=1_000)
    await limits.feed(spend("e1", "ann", 300), partition=4)
    saved = await limits.app[SNAPSHOTTER].take()
    assert saved is not None
    assert saved.positions == {4: 1}
    assert await limits.app[SNAPSHOTTER].take() is None  # nothing moved since
    assert limits.metric("tollgate_limits_snapshot_age_seconds") == 0

    settings = LimitsSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_EVENTS_TOPIC="t.events",
        TOLLGATE_BROKER_EPOCH="epoch-1",
    )
    feeds: list[ManualFeed] = []

    def make_feed(sink: LimitsSink) -> ManualFeed:
        feeds.append(ManualFeed(sink))
        return feeds[-1]

    app = build_app(
        settings,
        config_store=limits.config_store,
        snapshot_store=limits.snapshots,
        feed=make_feed,
        registry=CollectorRegistry(),
        clock=NOW.timestamp,
    )
    async with TestClient(TestServer(app)) as client:
        positions = await app[SINK].load_positions(range(12))
        assert positions == {4: 1}
        feeds[0].caught_up.set()
        resp = await client.post("/api/v1/limits/check", json={"user_id": "ann"}, headers=EMITTER)
        assert (await resp.json())["spent_micros"] == 300


async def test_openapi_describes_every_limits_route(limits: Harness) -> None:
    """The OpenAPI document lists the check, status, config and override routes."""
    doc = await (await limits.client.get("/openapi.json")).json()
    assert {
        "/api/v1/limits/check",
        "/api/v1/limits/status/{user_id}",
        "/api/v1/limits/config",
        "/api/v1/limits/overrides/users/{user_id}",
        "/api/v1/limits/overrides/groups/{group_id}",
    } <= set(doc["paths"])
    assert "409" in doc["paths"]["/api/v1/limits/check"]["post"]["responses"]


async def test_shutdown_writes_a_final_snapshot(limits: Harness) -> None:
    """Stopping the app stores the ledger as it stands, so a restart replays nothing."""
    limits.caught_up()
    await limits.feed(spend("e1", "ann", 300), partition=2)
    await limits.feed(spend("e2", "ann", 1), partition=5)
    assert limits.snapshots.snapshots == []
    await limits.client.close()
    [final] = limits.snapshots.snapshots
    assert final.positions == {2: 1, 5: 1}
    assert (final.topic, final.epoch) == ("t.events", "epoch-1")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/limits/overrides/users/a%00b",
        "/api/v1/limits/overrides/groups/g%1Fx",
        "/api/v1/limits/overrides/users/tab%09id",
        "/api/v1/limits/overrides/users/c1%C2%85",
    ],
)
async def test_an_unstorable_id_in_an_override_path_is_422_never_503(
    limits: Harness, path: str
) -> None:
    """A NUL or other control character in a path id is refused naming it, not sent to the database."""
    limits.caught_up()
    for method in ("put", "delete"):
        resp = await limits.client.request(method, path, json={"limit_micros": 5}, headers=ADMIN)
        assert resp.status == 422, await resp.text()
        body = await resp.json()
        assert body["message"].split(":")[0] in {"user_id", "group_id"}
        assert "control character" in body["message"]
    assert (await limits.config_store.load()).user_overrides == ()


async def test_a_value_the_database_refuses_is_422_not_503(limits: Harness) -> None:
    """A data error from the store means the request can never succeed: 422, no Retry-After."""
    limits.caught_up()

    async def refuse(*_: object) -> object:
        raise asyncpg.CharacterNotInRepertoireError("invalid byte sequence")

    limits.config_store.put_override = refuse  # type: ignore[method-assign,assignment]
    resp = await limits.client.put(
        "/api/v1/limits/overrides/users/u", json={"limit_micros": 1}, headers=ADMIN
    )
    assert resp.status == 422
    assert "Retry-After" not in resp.headers
    assert "cannot be stored" in (await resp.json())["message"]


async def test_checks_and_status_refuse_unstorable_user_ids(limits: Harness) -> None:
    """The check body and the status path follow the same text rule as events."""
    limits.caught_up()
    status, body = await check(limits, "eve\x00")
    assert status == 422
    assert str(body["message"]).startswith("user_id: contains a control character (U+0000")
    resp = await limits.client.get("/api/v1/limits/status/eve%00", headers=EMITTER)
    assert resp.status == 422


async def test_every_route_answers_the_model_its_table_declares(limits: Harness) -> None:
    """Each route of limits' table, called once, succeeds with the body its table declares."""
    limits.caught_up()
    await limits.configure(period="week", default=700)
    await limits.feed(spend("e", "ann", 20))
    ann, team = {"user_id": "ann"}, {"group_id": "team"}
    answers = await walk(
        limits.client,
        ROUTES,
        headers=ADMIN,
        examples={
            ("POST", LIMIT_CHECK_PATH): Example(body=ann),
            ("GET", LIMIT_STATUS_PATH): Example(path=ann),
            ("PUT", "/api/v1/limits/config"): Example(
                body={"enabled": True, "period": "month", "default_limit_micros": 10}
            ),
            ("PUT", "/api/v1/limits/overrides/users/{user_id}"): Example(
                path=ann, body={"limit_micros": 5}
            ),
            ("DELETE", "/api/v1/limits/overrides/users/{user_id}"): Example(path=ann),
            ("PUT", "/api/v1/limits/overrides/groups/{group_id}"): Example(
                path=team, body={"limit_micros": 5}
            ),
            ("DELETE", "/api/v1/limits/overrides/groups/{group_id}"): Example(path=team),
        },
    )
    assert failures(answers) == []
    assert len(answers) == len(ROUTES)
