"""Reports as a process behind ingest: SIGKILL mid-stream, a restart, and every figure exact."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from libs.events.models import Envelope
from tests.integration.test_reports_stream import Getter, assert_figures_match, simulated_stream
from tests.support import ADMIN, EMITTER, ServiceProcess, StartService, eventually, unique
from tools.simulator.expected import Tally

pytestmark = pytest.mark.e2e


def http_getter(session: aiohttp.ClientSession, base: str) -> Getter:
    """GET a service's route with the admin token, asserting a 200."""

    async def get(path: str, **params: str) -> Any:
        async with session.get(f"{base}{path}", params=params, headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
            return orjson.loads(await resp.read())

    return get


async def post(
    session: aiohttp.ClientSession, ingest: ServiceProcess, events: list[Envelope]
) -> None:
    """Send events through ingest in batches of 500; every one must be accepted."""
    for i in range(0, len(events), 500):
        body = {"events": [e.model_dump(mode="json") for e in events[i : i + 500]]}
        async with session.post(
            f"{ingest.url}/api/v1/events", data=orjson.dumps(body),
            headers={**EMITTER, "Content-Type": "application/json"},
        ) as resp:  # fmt: skip
            answer = await resp.json()
            assert resp.status == 200, answer
            assert not answer["rejected"], answer["rejected"][:3]


async def projected(session: aiohttp.ClientSession, reports: ServiceProcess) -> float:
    """Events the reports process has projected so far (its own counter)."""
    async with session.get(reports.metrics_url) as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tollgate_reports_events_projected_total{")
    )


async def ready(session: aiohttp.ClientSession, service: ServiceProcess) -> bool:
    try:
        async with session.get(f"{service.url}/readyz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_sigkill_mid_stream_and_restart_leave_every_figure_exact(
    service_factory: StartService, topics: tuple[str, str]
) -> None:
    """Killing reports while it projects and starting it again gives exactly the events' figures."""
    events_topic, dlq_topic = topics
    group = unique("reports")

    def start_reports() -> ServiceProcess:
        return service_factory(
            "reports",
            TOLLGATE_EVENTS_TOPIC=events_topic,
            TOLLGATE_DLQ_TOPIC=dlq_topic,
            TOLLGATE_REPORTS_GROUP=group,
            TOLLGATE_REPORTS_SESSION_TIMEOUT_MS="2000",
            TOLLGATE_REPORTS_HEARTBEAT_MS="300",
            TOLLGATE_REPORTS_BATCH="200",
        )

    sim, events = simulated_stream(random.randrange(10**7, 10**8), users=8, days=45)
    tally = Tally(sim.prices)
    tally.observe_all(events)
    third = len(events) // 3
    ingest = service_factory(
        "ingest", TOLLGATE_EVENTS_TOPIC=events_topic, TOLLGATE_DLQ_TOPIC=dlq_topic
    )
    reports = start_reports()
    async with aiohttp.ClientSession() as session:
        await eventually(lambda: ready(session, ingest), timeout_s=30)
        await post(session, ingest, events[:third])
        await eventually(lambda: projected(session, reports), timeout_s=30)
        seen = await projected(session, reports)
        await post(session, ingest, events[third : 2 * third])

        async def moving() -> bool:
            return await projected(session, reports) > seen

        await eventually(moving, timeout_s=30)
        reports.kill()
        # The rest arrives while reports is down, and a client retries a batch it already sent.
        await post(session, ingest, events[2 * third :])
        await post(session, ingest, events[third : third + 300])
        restarted = start_reports()
        await eventually(lambda: ready(session, restarted), timeout_s=45)
        get = http_getter(session, restarted.url)
        expected = tally.costs(sim.start.date(), sim.end.date())
        window = {
            "start_date": sim.start.date().isoformat(),
            "end_date": (sim.end.date() + timedelta(days=1)).isoformat(),
        }

        async def caught_up() -> bool:
            page = await get("/api/v1/costs/users", limit="1000", **window)
            mine = [u for u in page["users"] if u["user_id"].startswith(sim.config.prefix)]
            got = sum(int(u["message_count"]) for u in mine)
            return got >= sum(int(u["message_count"]) for u in expected.values())

        await eventually(caught_up, timeout_s=30)
        await assert_figures_match(get, sim, tally)
    assert "consumer_positions_loaded" in restarted.logs()
