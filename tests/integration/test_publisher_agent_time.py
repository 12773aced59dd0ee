"""Agent Time from the real log to the local billing sink: a simulated day, with a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.events.models import ChatUsage, ChatUsageRecorded, Envelope
from services.publisher.app import build_app
from services.publisher.config import PublisherSettings
from services.publisher.domain import HB_AGENT_RUNTIME, agent_time_id, rfc3339
from tests.support import ADMIN, ADMIN_TOKEN, Infra, eventually, produce, scrape, unique
from tools.billing_sink import BillingSink
from tools.simulator.expected import Tally
from tools.simulator.generate import Simulation, SimulationConfig

pytestmark = pytest.mark.integration

# Three days ago: the queue expires what is older than PUBLISH_MAX_AGE by the database's clock.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
LAG = timedelta(minutes=5)


def settings_for(
    infra: Infra, sink: BillingSink, topics: tuple[str, str], queue: str
) -> PublisherSettings:
    """A consuming publisher on a private topic and queue, checking often, with a 12-hour window."""
    return PublisherSettings.model_validate(
        {
            "DATABASE_URL": infra.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
            "TOLLGATE_BROKER_EPOCH": infra.epoch,
            "TOLLGATE_ADMIN_TOKENS": ADMIN_TOKEN,
            "TOLLGATE_EVENTS_TOPIC": topics[0],
            "TOLLGATE_DLQ_TOPIC": topics[1],
            "TOLLGATE_PUBLISHER_GROUP": unique("g"),
            "TOLLGATE_PUBLISHER_QUEUE": queue,
            "TOLLGATE_PUBLISHER_SESSION_TIMEOUT": "2s",
            "TOLLGATE_PUBLISHER_HEARTBEAT_CHECK": "100ms",
            "TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW": "12h",
            "BILLING_URL": sink.url,
            "LICENSE_KEY": "license-for-test",
            "DEPLOYMENT_ID": "deployment-for-test",
            "PUBLISH_INTERVAL": "200ms",
            "PUBLISH_FIRST_DELAY": "0s",
            "PUBLISH_BATCH_SIZE": "7",
        }
    )


def agent_time_at_sink(sink: BillingSink) -> dict[str, dict[str, Any]]:
    """The unique Agent Time events the sink accepted, by id."""
    return {i: e for i, e in sink.state.events.items() if e["event_type"] == HB_AGENT_RUNTIME}


async def run_until(
    settings: PublisherSettings, now: datetime, sink: BillingSink, wanted: set[str]
) -> dict[str, Any]:
    """Run one publisher with its clock at `now` until `wanted` reached the sink and settled."""
    app = build_app(settings, clock=lambda: now)
    async with TestClient(TestServer(app)) as client:

        async def delivered() -> bool:
            return wanted <= set(agent_time_at_sink(sink))

        await eventually(delivered, timeout_s=30)

        async def settled() -> dict[str, Any] | None:
            resp = await client.get("/api/v1/publisher/status", headers=ADMIN)
            body: dict[str, Any] = await resp.json()
            return body if body["pending"] == 0 else None

        await eventually(settled, timeout_s=10)
        report: dict[str, Any] = await (
            await client.get("/api/v1/publisher/agent-time", headers=ADMIN)
        ).json()
        return report


def late_chat(user_id: str, at: datetime, runtime_ms: int) -> ChatUsageRecorded:
    """One agent chat message that reaches the log after its hour was reported."""
    return ChatUsageRecorded(
        id=unique("late"),
        occurred_at=at,
        user_id=user_id,
        data=ChatUsage(
            chat_id="c",
            message_id="m",
            model="m",
            input_tokens=1,
            output_tokens=1,
            runtime_ms=runtime_ms,
        ),
    )


async def test_a_simulated_day_reports_each_hour_once_across_a_restart(
    infra: Infra, topics: tuple[str, str], sink: BillingSink
) -> None:
    """24 hourly events equal the simulator's totals; a restart at noon loses and repeats none."""
    sim = Simulation(
        SimulationConfig(seed=41, users=16, days=1, end=DAY + timedelta(days=1, milliseconds=-1))
    )
    events: list[Envelope] = list(sim.events())
    tally = Tally(sim.prices)
    tally.observe_all(events)
    expected = tally.agent_time(sim.start, sim.end)
    assert len(expected) == 24
    assert sum(1 for ms in expected.values() if ms) >= 6, "the day must have agent chats"
    noon = DAY + timedelta(hours=12)
    settings = settings_for(infra, sink, topics, unique("q"))

    # Morning: the log holds the morning; the publisher runs at 12:05 and reports 00:00-11:00.
    await produce(infra, topics[0], [e for e in events if e.occurred_at < noon])
    morning = {agent_time_id(DAY + timedelta(hours=h)) for h in range(12)}
    report = await run_until(settings, noon + LAG + timedelta(seconds=1), sink, morning)
    assert set(agent_time_at_sink(sink)) == morning
    assert report["log_read_until"] is not None

    # While it is down the afternoon arrives; the restarted publisher reads it before closing.
    await produce(infra, topics[0], [e for e in events if e.occurred_at >= noon])
    end = DAY + timedelta(days=1)
    report = await run_until(settings, end + LAG + timedelta(seconds=1), sink, set(expected))

    sent = agent_time_at_sink(sink)
    assert {i: e["event_data"]["runtime_ms"] for i, e in sent.items()} == expected
    assert all(sink.state.times_accepted[i] == 1 for i in sent)
    hours = {agent_time_id(DAY + timedelta(hours=h)): DAY + timedelta(hours=h) for h in range(24)}
    assert {i: e["created_at"] for i, e in sent.items()} == {
        i: rfc3339(h) for i, h in hours.items()
    }
    afternoon = {h["id"]: h for h in report["hours"]}
    assert all(afternoon[i]["reported_runtime_ms"] == expected[i] for i in afternoon)
    assert report["late_runtime_ms"] == 0

    # Runtime for 15:00 that arrives now is late: the report shows it, the sink never gets it.
    late_hour = DAY + timedelta(hours=15)
    await produce(infra, topics[0], [late_chat(sim.users[0].id, late_hour, 777)])
    app = build_app(settings, clock=lambda: end + LAG + timedelta(seconds=2))
    async with TestClient(TestServer(app)) as client:

        async def late_seen() -> dict[str, Any] | None:
            body: dict[str, Any] = await (
                await client.get("/api/v1/publisher/agent-time", headers=ADMIN)
            ).json()
            return body if body["late_runtime_ms"] else None

        seen = await eventually(late_seen, timeout_s=20)
        metrics = await scrape(app)
    assert seen is not None
    [hour] = [h for h in seen["hours"] if h["id"] == agent_time_id(late_hour)]
    assert hour["late_runtime_ms"] == 777
    assert hour["runtime_ms"] == expected[hour["id"]] + 777
    assert "tollgate_publisher_agent_time_late_runtime_ms_total 777.0" in metrics
    assert sink.state.events[hour["id"]]["event_data"] == {"runtime_ms": expected[hour["id"]]}
