"""The publisher's consumer group from the real log to the billing sink, and what may leave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from libs.events.models import (
    ChatUsage,
    ChatUsageRecorded,
    DirectoryUser,
    Envelope,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
)
from services.publisher.app import build_app
from services.publisher.config import PublisherSettings
from services.publisher.domain import (
    HB_AGENT_RUNTIME,
    agent_hour,
    agent_time_id,
    build_billing_id,
    heartbeat_id,
    rfc3339,
)
from tests.support import ADMIN, ADMIN_TOKEN, Infra, eventually, produce, unique
from tools.billing_sink import BillingSink

pytestmark = pytest.mark.integration


def settings_for(
    infra: Infra, sink: BillingSink, topics: tuple[str, str], queue: str, group: str
) -> PublisherSettings:
    """A consuming publisher on a private topic, group and queue."""
    return PublisherSettings.model_validate(
        {
            "DATABASE_URL": infra.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
            "TOLLGATE_BROKER_EPOCH": infra.epoch,
            "TOLLGATE_ADMIN_TOKENS": ADMIN_TOKEN,
            "TOLLGATE_EVENTS_TOPIC": topics[0],
            "TOLLGATE_DLQ_TOPIC": topics[1],
            "TOLLGATE_PUBLISHER_GROUP": group,
            "TOLLGATE_PUBLISHER_QUEUE": queue,
            "TOLLGATE_PUBLISHER_SESSION_TIMEOUT": "2s",
            "TOLLGATE_PUBLISHER_HEARTBEAT_CHECK": "100ms",
            "BILLING_URL": sink.url,
            "LICENSE_KEY": "license-for-test",
            "DEPLOYMENT_ID": "deployment-for-test",
            "PUBLISH_INTERVAL": "200ms",
            "PUBLISH_FIRST_DELAY": "0s",
        }
    )


class World:
    """Users, their chats and builds, with every identifying string kept for the byte check."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(minutes=1)
        self.events: list[Envelope] = []
        self.secrets: set[str] = set()
        # Event identities of the builds, which billing ids derive from.
        self.agent_builds: list[str] = []
        self.other_builds: list[str] = []

    def user(self, *, licensed: bool = True, suspended: bool = False) -> str:
        """A directory user; returns the id."""
        uid = unique("user")
        name = unique("name")
        data = DirectoryUser(
            username=name,
            name=f"Person {name}",
            email=f"{name}@corp.example",
            roles=("member",),
            created_at=datetime(2025, 1, 1, tzinfo=UTC),
            licensed=licensed,
            suspended=suspended,
        )
        self.events.append(
            UserUpdated(id=unique("dir"), occurred_at=self.now, user_id=uid, data=data)
        )
        self.secrets |= {uid, name, data.email, data.name}
        return uid

    def chat(
        self,
        uid: str,
        purpose: str = "chat",
        *,
        runtime_ms: int | None = None,
        at: datetime | None = None,
    ) -> None:
        """One chat message by `uid`."""
        event_id = unique("chat")
        self.events.append(
            ChatUsageRecorded(
                id=event_id,
                occurred_at=at or self.now,
                user_id=uid,
                org_id="org-secret",
                data=ChatUsage.model_validate(
                    {
                        "chat_id": unique("chatid"),
                        "message_id": unique("msg"),
                        "model": "claude",
                        "input_tokens": 10,
                        "output_tokens": 5,
                        "purpose": purpose,
                        "runtime_ms": runtime_ms,
                    }
                ),
            )
        )
        self.secrets.add(event_id)

    def build(self, uid: str, *, agent: bool) -> None:
        """One workspace build by `uid`."""
        event_id, workspace, build = unique("evt"), unique("ws"), unique("build")
        self.events.append(
            WorkspaceBuilt(
                id=event_id,
                occurred_at=self.now,
                user_id=uid,
                org_id="org-secret",
                data=WorkspaceBuild(
                    workspace_id=workspace,
                    build_id=build,
                    template="tmpl-secret",
                    agent_managed=agent,
                    task_id=unique("task") if agent else None,
                ),
            )
        )
        (self.agent_builds if agent else self.other_builds).append(self.events[-1].identity)
        self.secrets |= {event_id, workspace, build, "tmpl-secret", "org-secret"}


async def test_agent_builds_and_the_heartbeats_reach_the_sink_and_nothing_personal_does(
    infra: Infra, topics: tuple[str, str], sink: BillingSink
) -> None:
    """Only agent builds, seat counts and hourly Agent Time leave, as bare numbers."""
    world = World()
    active = [world.user() for _ in range(3)]
    unlicensed = world.user(licensed=False)
    suspended = world.user(suspended=True)
    title_only = world.user()
    for uid in [*active, unlicensed, suspended]:
        world.chat(uid)
    world.chat(active[0])
    world.chat(title_only, purpose="title")
    hour = agent_hour(world.now) - timedelta(hours=2)
    world.chat(active[1], runtime_ms=4_000, at=hour + timedelta(minutes=5))
    world.chat(suspended, runtime_ms=250, at=hour + timedelta(minutes=59))
    for i in range(40):
        world.build(active[i % 3], agent=i % 2 == 0)
    await produce(infra, topics[0], world.events)

    queue, group = unique("q"), unique("g")
    app = build_app(settings_for(infra, sink, topics, queue, group))
    async with TestClient(TestServer(app)) as client:
        expected = {build_billing_id(e) for e in world.agent_builds}
        hb = heartbeat_id(datetime.now(UTC))
        runtime_id = agent_time_id(hour)

        async def delivered() -> bool:
            return expected | {hb, runtime_id} <= set(sink.state.events)

        await eventually(delivered, timeout_s=20)

        async def settled() -> dict[str, Any] | None:
            # The sink has the events before the publisher has read the answer.
            resp = await client.get("/api/v1/publisher/status", headers=ADMIN)
            body: dict[str, Any] = await resp.json()
            return body if body["pending"] == 0 else None

        status = await eventually(settled)
        assert status is not None
    counts = {i for i, e in sink.state.events.items() if e["event_type"] != HB_AGENT_RUNTIME}
    assert counts == expected | {hb}
    assert {build_billing_id(e) for e in world.other_builds}.isdisjoint(sink.state.events)
    # Licensed, not suspended, AI chat: the three active users (title generation is not AI chat).
    assert sink.state.events[hb]["event_data"] == {"count": 3}
    assert sink.state.events[runtime_id]["event_data"] == {"runtime_ms": 4_250}
    assert sink.state.events[runtime_id]["created_at"] == rfc3339(hour)
    assert all(sink.state.times_accepted[i] == 1 for i in expected)
    assert (status["pending"], status["consecutive_failures"]) == (0, 0)
    check_every_byte(sink, world.secrets)


def check_every_byte(sink: BillingSink, secrets: set[str]) -> None:
    """No identifying string appears anywhere in what the sink received; bodies are bare counts."""
    for request in sink.state.received:
        raw = orjson.dumps([request.headers, request.body]).decode()
        leaked = [s for s in secrets if s in raw]
        assert not leaked, f"identifying data sent: {leaked}"
        assert dict(request.headers)["Coder-License-Key"] == "license-for-test"
        assert dict(request.headers)["Coder-Deployment-ID"] == "deployment-for-test"
        assert dict(request.headers)["User-Agent"].startswith("tollgate-publisher/")
        body: dict[str, Any] = orjson.loads(request.body)
        assert list(body) == ["events"]
        for event in body["events"]:
            assert set(event) == {"id", "event_type", "event_data", "created_at"}
            number = "runtime_ms" if event["event_type"] == HB_AGENT_RUNTIME else "count"
            assert list(event["event_data"]) == [number]


# Agent Time hours keep being filled in while the test runs; every other row comes from the log.
COUNTS = (
    "SELECT count(*) FROM publisher_events WHERE queue = $1 AND event_type <> 'hb_agent_runtime_v1'"
)


async def test_a_replay_of_the_log_queues_nothing_twice(
    infra: Infra, topics: tuple[str, str], sink: BillingSink, db: asyncpg.Pool
) -> None:
    """A second group reading the same log into the same queue derives the same ids: no new rows."""
    world = World()
    uid = world.user()
    for _ in range(10):
        world.build(uid, agent=True)
    await produce(infra, topics[0], world.events)
    queue = unique("q")
    expected = {build_billing_id(e) for e in world.agent_builds}

    async def delivered() -> bool:
        return expected <= set(sink.state.events)

    async with TestClient(
        TestServer(build_app(settings_for(infra, sink, topics, queue, unique("g"))))
    ):
        await eventually(delivered, timeout_s=20)
    rows_before = await db.fetchval(COUNTS, queue)
    second = unique("g")
    app = build_app(settings_for(infra, sink, topics, queue, second))
    async with TestClient(TestServer(app)):

        async def replayed() -> bool:
            read = await db.fetchval(
                "SELECT sum(next_offset) FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
                second,
                topics[0],
            )
            return bool(read is not None and read >= len(world.events))

        await eventually(replayed, timeout_s=20)
    rows_after = await db.fetchval(COUNTS, queue)
    assert rows_after == rows_before
    assert all(sink.state.times_accepted[i] == 1 for i in expected)
