"""A simulated stream through Kafka into the reports app: every API figure equals the events'.

Sixty days of a simulated organisation (users, teams, projects, chats with sub-chats and
titles over several models, sessions of every category, builds, API calls, storage samples),
plus unpriced messages, resent duplicates and a record that is not an event, are produced to a
private topic. The reports app consumes them as a consumer group member, and its answers are
compared with the simulator's `Tally`, which computes each figure directly from the events.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer

from libs.events.codec import encode
from libs.events.models import ChatUsage, ChatUsageRecorded, Envelope
from libs.events.pricing import price_event
from libs.service.kafka import make_producer
from services.reports.app import build_app
from services.reports.config import ReportsSettings
from tests.support import ADMIN, ADMIN_TOKEN, EMITTER_TOKEN, Infra, eventually, scrape, unique
from tools.simulator.expected import Tally
from tools.simulator.generate import Simulation, SimulationConfig

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


def simulated_stream(
    seed: int, *, users: int = 10, days: int = 60
) -> tuple[Simulation, list[Envelope]]:
    """The simulation's events priced as ingest would price them, plus unpriced messages."""
    sim = Simulation(SimulationConfig(seed=seed, users=users, days=days))
    events: list[Envelope] = [
        price_event(e, sim.prices) if isinstance(e, ChatUsageRecorded) else e for e in sim.events()
    ]
    rng = random.Random(seed)
    for n in range(25):
        owner = rng.choice(sim.users)
        when = sim.start + timedelta(
            seconds=rng.randrange(int((sim.end - sim.start).total_seconds()))
        )
        events.append(
            ChatUsageRecorded(
                id=f"{sim.config.prefix}-unpriced-{n}",
                occurred_at=when.replace(microsecond=0),
                org_id=sim.config.org_id,
                user_id=owner.id,
                data=ChatUsage(
                    chat_id=f"{owner.id}-local-chat{n % 3}",
                    message_id=f"{sim.config.prefix}-unpriced-{n}",
                    model=f"{sim.config.prefix}-unpriced-model",
                    provider="self-hosted",
                    input_tokens=rng.randrange(1, 9000),
                    output_tokens=rng.randrange(1, 900),
                ),
            )
        )
    return sim, events


@pytest.fixture
async def reports(infra: Infra, topics: tuple[str, str]) -> AsyncIterator[Client]:
    """The reports app in-process, consuming the private topic as its own consumer group."""
    settings = ReportsSettings(
        DATABASE_URL=infra.database_url,
        KAFKA_BOOTSTRAP_SERVERS=infra.bootstrap,
        TOLLGATE_BROKER_EPOCH=infra.epoch,
        TOLLGATE_EVENTS_TOPIC=topics[0],
        TOLLGATE_DLQ_TOPIC=topics[1],
        TOLLGATE_REPORTS_GROUP=unique("reports"),
        TOLLGATE_REPORTS_SESSION_TIMEOUT_MS="2000",
        TOLLGATE_REPORTS_HEARTBEAT_MS="300",
        TOLLGATE_EMITTER_TOKENS=EMITTER_TOKEN,
        TOLLGATE_ADMIN_TOKENS=ADMIN_TOKEN,
    )
    client = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


Getter = Callable[..., Awaitable[Any]]


def client_getter(client: Client) -> Getter:
    """GET with the admin token through the in-process test client, asserting a 200."""

    async def get(path: str, **params: str) -> Any:
        resp = await client.get(path, params=params, headers=ADMIN)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    return get


def z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def by_model(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """`by_model` keyed by model (the simulator gives each model one provider)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        for key, value in row.items():
            if key.startswith("total_") or key.endswith("_count"):
                out[row["model"]][key] += value
    return {m: dict(v) for m, v in out.items()}


async def assert_figures_match(get: Getter, sim: Simulation, tally: Tally) -> None:
    """Costs, per-user detail, activity per bucket and every month's chargeback equal the tally."""
    prefix = sim.config.prefix

    # Cost list and per-user detail over the whole simulated range.
    expected = tally.costs(sim.start.date(), sim.end.date())
    window = {
        "start_date": sim.start.date().isoformat(),
        "end_date": (sim.end.date() + timedelta(days=1)).isoformat(),
    }
    page = await get("/api/v1/costs/users", limit="1000", **window)
    rows = {r["user_id"]: r for r in page["users"] if r["user_id"].startswith(prefix)}
    assert set(rows) == set(expected)
    fields = (
        "total_cost_micros",
        "message_count",
        "priced_message_count",
        "unpriced_message_count",
        "chat_count",
        "total_input_tokens",
        "total_output_tokens",
        "total_cache_read_tokens",
        "total_cache_creation_tokens",
        "total_reasoning_tokens",
        "total_runtime_ms",
    )
    for user_id, want in expected.items():
        assert {f: rows[user_id][f] for f in fields} == {f: want[f] for f in fields}, user_id
        detail = await get(f"/api/v1/costs/users/{user_id}", **window)
        assert {f: detail[f] for f in fields} == {f: want[f] for f in fields}
        assert by_model(detail["by_model"]) == want["by_model"]
        assert {
            c["root_chat_id"]: {k: v for k, v in c.items() if k != "root_chat_id"}
            for c in detail["by_chat"]
        } == want["by_chat"]
        assert detail["usage_limit"] is None
    costs = [r["total_cost_micros"] for r in page["users"]]
    assert costs == sorted(costs, reverse=True)

    # Activity: the simulated range ends at an arbitrary millisecond, so the last day is cut.
    for interval, category in (("1 day", "any"), ("1 week", "ide"), ("1 month", "tunnel")):
        want_activity = tally.activity(sim.start, sim.end, interval, category)  # type: ignore[arg-type]
        got = await get(
            "/api/v1/metrics/activity",
            start=z(sim.start),
            end=z(sim.end),
            interval=interval,
            category=category,
            org=sim.config.org_id,
        )
        assert [b["time"] for b in got["activity"]] == [
            z(b["time"]) for b in want_activity["activity"]
        ]
        for g, w in zip(got["activity"], want_activity["activity"], strict=True):
            assert g["duration"] == w["duration"]
            assert sorted(g["user_activity"], key=lambda r: r["user_id"]) == w["user_activity"]
        assert {u: (v["total_duration"], v["total_count"]) for u, v in got["users"].items()} == {
            u: (v["total_duration"], v["total_count"]) for u, v in want_activity["users"].items()
        }
        for user_id, info in got["users"].items():
            assert info["username"] == want_activity["users"][user_id]["username"]
            assert info["roles"] == want_activity["users"][user_id]["roles"]

    # Chargeback for every month with usage.
    for month in tally.months():
        want_report = tally.chargeback(month)
        report = await get("/api/v1/chargeback/report", reportMonth=month)
        teams = {w["id"]: w for w in report["workspaces"] if w["id"].startswith(prefix)}
        assert set(teams) == {w["team_id"] for w in want_report["workspaces"]}
        for want_team in want_report["workspaces"]:
            team = teams[want_team["team_id"]]
            assert team["name"] == want_team["name"]
            assert team["numberOfMembers"] == want_team["numberOfMembers"]
            assert team["numberOfExperiments"] == want_team["numberOfExperiments"]
            assert team["totalSizeInMb"] == pytest.approx(want_team["totalSizeInMb"], abs=1e-6)
            assert team["llmCostMicros"] == want_team["llm_cost_micros"]
            assert team["agentBuilds"] == want_team["agent_builds"]
            assert [p["id"] for p in team["projects"]] == [
                p["project_id"] for p in want_team["projects"]
            ]
            assert sorted(m["userName"] for m in team["members"]) == sorted(want_team["members"])
        licensed = {
            u["userId"]: u
            for u in report["users"]["licensedUsers"]
            if u["userId"].startswith(prefix)
        }
        assert set(licensed) == {u["user_id"] for u in want_report["users"]["licensedUsers"]}
        for want_user in want_report["users"]["licensedUsers"]:
            got_user = licensed[want_user["user_id"]]
            for key in (
                "username",
                "email",
                "created_at",
                "uiUsageCount",
                "uiUsageUpdateTs",
                "sdkUsageCount",
                "sdkUsageUpdateTs",
                "suspended",
            ):
                assert got_user[key] == want_user[key], (month, key)
            assert got_user["llmCostMicros"] == want_user["llm_cost_micros"]
            assert got_user["agentBuilds"] == want_user["agent_builds"]


async def test_every_api_figure_equals_the_figure_computed_from_the_events(
    infra: Infra, topics: tuple[str, str], reports: Client
) -> None:
    """Costs, per-user detail, activity per bucket and every month's chargeback are exact."""
    sim, events = simulated_stream(random.randrange(10**6, 10**7))
    tally = Tally(sim.prices)
    tally.observe_all(events)
    producer = make_producer(infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        for event in [*events, *events[::7]]:  # a seventh of the stream is delivered twice
            await producer.send(topics[0], encode(event), key=event.partition_key.encode())
        await producer.send(topics[0], b'{"id": "not-an-event"}', key=b"garbage")
        await producer.flush()
    finally:
        await producer.stop()

    async def ready() -> bool:
        return (await reports.get("/readyz")).status == 200

    await eventually(ready, timeout_s=45)
    await assert_figures_match(client_getter(reports), sim, tally)

    # The record that was not an event went to the dead-letter topic with its reason.
    dlq = AIOKafkaConsumer(
        topics[1], bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest"
    )
    await dlq.start()
    try:
        fetched = await asyncio.wait_for(dlq.getmany(timeout_ms=5000), 10)
        [record] = [r for rs in fetched.values() for r in rs]
        assert record.value == b'{"id": "not-an-event"}'
        assert dict(record.headers)["reason"].startswith(b"type: Field required")
    finally:
        await dlq.stop()
    metrics = await scrape(reports.app)
    assert 'tollgate_reports_events_projected_total{type="chat.usage.v1"}' in metrics
    assert "tollgate_reports_projection_lag_seconds 0.0" in metrics
    assert 'tollgate_reports_query_duration_seconds_count{endpoint="activity"} 3.0' in metrics
