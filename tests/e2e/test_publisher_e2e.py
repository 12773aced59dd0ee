"""Ingest, the publisher and the billing sink as real processes, driven over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from libs.events.models import WorkspaceBuilt
from libs.service.embedded import free_port, port_open
from services.publisher.domain import agent_time_id, build_billing_id, rfc3339
from tests.support import (
    ADMIN,
    EMITTER,
    EMITTER_TOKEN,
    ROOT,
    Infra,
    ServiceProcess,
    StartService,
    eventually,
    unique,
)
from tools.simulator.expected import Tally
from tools.simulator.generate import Simulation, SimulationConfig
from tools.simulator.send import IngestSender

pytestmark = pytest.mark.e2e

LICENSE = "license-e2e"
DEPLOYMENT = "deployment-e2e"


@dataclass
class SinkProcess:
    """`tollgate billing-sink` as a process."""

    port: int
    control_port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The billing URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> str:
        """The control API that stays up while refusing."""
        return f"http://127.0.0.1:{self.control_port}/_sink"


@pytest.fixture
def sink(infra: Infra, tmp_path: Path) -> Iterator[SinkProcess]:
    """A billing sink process on free ports, stopped after the test."""
    port, control = free_port(), free_port()
    with (tmp_path / "sink.log").open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "libs.service.cli",
                "billing-sink",
                "--port",
                str(port),
                "--control-port",
                str(control),
                "--license-key",
                LICENSE,
            ],
            env=infra.env(),
            stdout=out,
            stderr=out,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 15
    while not port_open("127.0.0.1", control):
        assert process.poll() is None, (tmp_path / "sink.log").read_text()
        assert time.monotonic() < deadline, "the billing sink did not listen"
        time.sleep(0.05)
    try:
        yield SinkProcess(port, control, process)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def start_pair(
    service_factory: StartService,
    topics: tuple[str, str],
    sink: SinkProcess,
    *,
    timeout: str = "5s",
) -> tuple[ServiceProcess, ServiceProcess]:
    """Ingest and a fast publisher on a private topic, group and queue.

    The request timeout is generous unless a test needs hangs to time out quickly: an answer
    that arrives after the timeout makes a resend, which the sink counts.
    """
    ingest = service_factory(
        "ingest", TOLLGATE_EVENTS_TOPIC=topics[0], TOLLGATE_DLQ_TOPIC=topics[1]
    )
    publisher = service_factory(
        "publisher",
        TOLLGATE_EVENTS_TOPIC=topics[0],
        TOLLGATE_DLQ_TOPIC=topics[1],
        TOLLGATE_PUBLISHER_GROUP=unique("group"),
        TOLLGATE_PUBLISHER_QUEUE=unique("queue"),
        TOLLGATE_PUBLISHER_SESSION_TIMEOUT="2s",
        BILLING_URL=sink.url,
        LICENSE_KEY=LICENSE,
        DEPLOYMENT_ID=DEPLOYMENT,
        PUBLISH_INTERVAL="200ms",
        PUBLISH_FIRST_DELAY="0s",
        PUBLISH_TIMEOUT=timeout,
        PUBLISH_CLAIM_TIMEOUT="10s",
        PUBLISH_BACKOFF_BASE="100ms",
        PUBLISH_BACKOFF_MAX="400ms",
    )
    return ingest, publisher


class Traffic:
    """Builds and directory entries to send, and every identifying string among them."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.secrets: set[str] = set()
        # Event identities of the builds, which billing ids derive from.
        self.agent: list[str] = []
        self.other: list[str] = []
        self.at = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()

    def users(self, n: int) -> list[str]:
        """n directory users."""
        ids = []
        for _ in range(n):
            uid, name = unique("user"), unique("login")
            email = f"{name}@corp.example"
            self.events.append(
                {
                    "id": unique("dir"),
                    "type": "directory.user.v1",
                    "occurred_at": self.at,
                    "user_id": uid,
                    "data": {
                        "username": name,
                        "name": f"Real Name {name}",
                        "email": email,
                        "roles": ["member"],
                        "created_at": "2025-01-01T00:00:00Z",
                    },
                }
            )
            self.secrets |= {uid, name, email}
            ids.append(uid)
        return ids

    def builds(self, users: list[str], n: int, *, agent: bool) -> None:
        """n builds spread over `users`."""
        for i in range(n):
            event_id, workspace, build = unique("evt"), unique("ws"), unique("build")
            self.events.append(
                {
                    "id": event_id,
                    "type": "workspace.build.v1",
                    "occurred_at": self.at,
                    "org_id": "org-e2e-secret",
                    "user_id": users[i % len(users)],
                    "data": {
                        "workspace_id": workspace,
                        "build_id": build,
                        "template": "template-e2e-secret",
                        "agent_managed": agent,
                    },
                }
            )
            identity = WorkspaceBuilt.model_validate(self.events[-1]).identity
            (self.agent if agent else self.other).append(identity)
            self.secrets |= {event_id, workspace, build}
        self.secrets |= {"org-e2e-secret", "template-e2e-secret"}

    def take(self) -> list[dict[str, object]]:
        """The events not sent yet."""
        out, self.events = self.events, []
        return out


async def send(
    http: aiohttp.ClientSession, ingest: ServiceProcess, events: list[dict[str, object]]
) -> None:
    """Through ingest, 1000 at a time; every event must be accepted."""
    for start in range(0, len(events), 1000):
        batch = events[start : start + 1000]
        resp = await http.post(
            f"{ingest.url}/api/v1/events", json={"events": batch}, headers=EMITTER
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert len(body["accepted"]) == len(batch), body["rejected"][:3]


async def sink_events(http: aiohttp.ClientSession, sink: SinkProcess) -> dict[str, dict[str, Any]]:
    """The unique events the sink accepted, by id."""
    body = await (await http.get(f"{sink.control}/events")).json()
    return {e["id"]: e for e in body["events"]}


async def test_a_thousand_agent_builds_arrive_exactly_once_with_the_right_headers_and_body(
    topics: tuple[str, str],
    service_factory: StartService,
    sink: SinkProcess,
    http: aiohttp.ClientSession,
) -> None:
    """1,000 agent builds through ingest reach the sink once each as bare counts; other builds never."""
    ingest, _publisher = start_pair(service_factory, topics, sink)
    traffic = Traffic()
    users = traffic.users(25)
    traffic.builds(users, 1000, agent=True)
    traffic.builds(users, 300, agent=False)
    await send(http, ingest, traffic.take())
    expected = {build_billing_id(e) for e in traffic.agent}

    async def all_delivered() -> dict[str, dict[str, Any]] | None:
        events = await sink_events(http, sink)
        dc = {i: e for i, e in events.items() if e["event_type"] == "dc_managed_agents_v1"}
        return dc if len(dc) >= len(expected) else None

    delivered = await eventually(all_delivered, timeout_s=40, interval_s=0.2)
    assert delivered is not None
    assert set(delivered) == expected
    assert all(e["times_accepted"] == 1 for e in delivered.values())
    assert all(e["event_data"] == {"count": 1} for e in delivered.values())
    assert {e["created_at"] for e in delivered.values()} == {traffic.at.replace("+00:00", "Z")}
    assert {build_billing_id(e) for e in traffic.other}.isdisjoint(await sink_events(http, sink))

    requests = (await (await http.get(f"{sink.control}/received")).json())["requests"]
    sent_ids: Counter[str] = Counter()
    for request in requests:
        headers = dict(request["headers"])
        assert request["method"] == "POST"
        assert request["path"] == "/api/v1/events/ingest"
        assert headers["Coder-License-Key"] == LICENSE
        assert headers["Coder-Deployment-ID"] == DEPLOYMENT
        assert headers["User-Agent"].startswith("tollgate-publisher/")
        assert headers["Content-Type"] == "application/json"
        raw = orjson.dumps(request).decode()
        leaked = [s for s in traffic.secrets if s in raw]
        assert not leaked, f"identifying data reached the billing server: {leaked[:5]}"
        body = orjson.loads(request["body"])
        assert list(body) == ["events"]
        assert 1 <= len(body["events"]) <= 100
        for event in body["events"]:
            assert list(event) == ["id", "event_type", "event_data", "created_at"]
            sent_ids[event["id"]] += 1
    assert all(sent_ids[i] == 1 for i in expected)


async def test_an_outage_ends_with_every_event_delivered_once_a_streak_and_clear_logs(
    topics: tuple[str, str],
    service_factory: StartService,
    sink: SinkProcess,
    http: aiohttp.ClientSession,
) -> None:
    """5xx, hangs and refused connections, then recovery: status shows the streak, logs say why."""
    ingest, publisher = start_pair(service_factory, topics, sink, timeout="1s")
    status_url = f"{publisher.url}/api/v1/publisher/status"
    await http.post(f"{sink.control}/mode", json={"mode": "error", "status": 503})
    traffic = Traffic()
    traffic.builds(traffic.users(5), 200, agent=True)
    await send(http, ingest, traffic.take())
    worst = 0

    async def failing(cause: str) -> bool:
        nonlocal worst
        status = await (await http.get(status_url, headers=ADMIN)).json()
        worst = max(worst, status["consecutive_failures"])
        return bool(status["last_error_cause"] == cause and status["pending"] > 0)

    await eventually(lambda: failing("http_5xx"), timeout_s=20)
    await http.post(f"{sink.control}/mode", json={"mode": "hang"})
    await eventually(lambda: failing("timeout"), timeout_s=10)
    await http.post(f"{sink.control}/mode", json={"mode": "refuse"})
    await eventually(lambda: failing("connect"), timeout_s=10)
    assert worst >= 3
    await http.post(f"{sink.control}/mode", json={"mode": "ok"})
    expected = {build_billing_id(e) for e in traffic.agent}

    async def recovered() -> bool:
        status = await (await http.get(status_url, headers=ADMIN)).json()
        events = await sink_events(http, sink)
        return status["consecutive_failures"] == 0 and expected <= set(events)

    await eventually(recovered, timeout_s=20, interval_s=0.2)
    events = await sink_events(http, sink)
    assert all(events[i]["times_accepted"] == 1 for i in expected)
    logs = [orjson.loads(line) for line in publisher.logs().splitlines() if line.startswith("{")]
    failures = {
        e.get("cause") for e in logs if e["event"].startswith("failed to send publish request")
    }
    assert {"http_5xx", "timeout", "connect"} <= failures
    assert any(e["level"] == "info" and e["event"].startswith("publisher recovered") for e in logs)
    assert any(e["event"].startswith("published usage events accepted=") for e in logs)


async def test_yesterdays_agent_time_survives_a_publisher_killed_mid_send(
    topics: tuple[str, str],
    service_factory: StartService,
    sink: SinkProcess,
    http: aiohttp.ClientSession,
) -> None:
    """A simulated yesterday reaches the sink as 24 hours equal to the simulator's totals, each
    id once, although the publisher is SIGKILLed while sending them; every other hour is 0."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    sim = Simulation(
        SimulationConfig(seed=43, users=10, days=1, end=today - timedelta(milliseconds=1))
    )
    events = list(sim.events())
    tally = Tally(sim.prices)
    tally.observe_all(events)
    expected = tally.agent_time(sim.start, sim.end)
    assert len(expected) == 24
    assert any(expected.values())
    ingest = service_factory(
        "ingest", TOLLGATE_EVENTS_TOPIC=topics[0], TOLLGATE_DLQ_TOPIC=topics[1]
    )
    # The whole day is on the log before the publisher first runs (history, sent in time).
    report = await IngestSender(ingest_url=ingest.url, token=EMITTER_TOKEN).send(events)
    assert report.accepted == len(events)
    # Slow answers and small batches, so the kill lands between requests of one cycle.
    await http.post(f"{sink.control}/mode", json={"mode": "ok", "delay": "300ms"})
    publisher = service_factory(
        "publisher",
        TOLLGATE_EVENTS_TOPIC=topics[0],
        TOLLGATE_DLQ_TOPIC=topics[1],
        TOLLGATE_PUBLISHER_GROUP=unique("group"),
        TOLLGATE_PUBLISHER_QUEUE=unique("queue"),
        TOLLGATE_PUBLISHER_SESSION_TIMEOUT="2s",
        TOLLGATE_PUBLISHER_HEARTBEAT_CHECK="200ms",
        # From yesterday's midnight to now, whatever the time of day.
        TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW="50h",
        BILLING_URL=sink.url,
        LICENSE_KEY=LICENSE,
        DEPLOYMENT_ID=DEPLOYMENT,
        PUBLISH_INTERVAL="200ms",
        PUBLISH_FIRST_DELAY="0s",
        PUBLISH_BATCH_SIZE="6",
        PUBLISH_TIMEOUT="1s",
        PUBLISH_CLAIM_TIMEOUT="2s",
        PUBLISH_BACKOFF_BASE="100ms",
        PUBLISH_BACKOFF_MAX="400ms",
    )

    async def agent_time() -> dict[str, dict[str, Any]]:
        events = await sink_events(http, sink)
        return {i: e for i, e in events.items() if e["event_type"] == "hb_agent_runtime_v1"}

    async def some_sent() -> bool:
        return 6 <= len(await agent_time()) < 40

    await eventually(some_sent, timeout_s=30, interval_s=0.05)
    publisher.kill()
    assert not set(expected) <= set(await agent_time()), "killed too late to matter"
    await http.post(f"{sink.control}/mode", json={"mode": "ok"})
    publisher.start()

    async def all_sent() -> dict[str, dict[str, Any]] | None:
        sent = await agent_time()
        return sent if set(expected) <= set(sent) else None

    sent = await eventually(all_sent, timeout_s=40, interval_s=0.2)
    assert sent is not None
    assert {i: sent[i]["event_data"]["runtime_ms"] for i in expected} == expected
    assert {i: sent[i]["created_at"] for i in expected} == {
        agent_time_id(yesterday + timedelta(hours=h)): rfc3339(yesterday + timedelta(hours=h))
        for h in range(24)
    }
    others = {i: e["event_data"]["runtime_ms"] for i, e in sent.items() if i not in expected}
    assert set(others.values()) <= {0}, others
    requests = (await (await http.get(f"{sink.control}/received")).json())["requests"]
    ids = [e["id"] for r in requests for e in orjson.loads(r["body"])["events"]]
    # A batch in flight at the kill may be sent again (the server deduplicates); nothing more.
    assert max(Counter(i for i in ids if i in expected).values()) <= 2
