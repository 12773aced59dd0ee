"""Limits, reports and publisher agree on every user, whatever stream of events comes in.

Hypothesis draws streams of operations: priced and unpriced chat usage (the largest storable
costs and token counts among them, and emitter costs that must not lower a price), title
generation, agent and other builds, events ingest must refuse (NUL and other control
characters, costs above the per-event cap), resends, the same id for another user or as
another type, the same id reused with other content, and exact copies produced straight onto
another partition than their key's (as a librdkafka or round-robin producer would). Each
stream goes through the real ingest, and the real limits, reports and publisher consume it
from the real broker into PostgreSQL. Afterwards every user's spend, messages, agent builds
and AI-chat use must be the same in all three and equal to what the stream implies, and
nothing ingest accepted may have been dead-lettered.

The services run in this process on the session's broker and database; hypothesis runs in a
worker thread and hands each stream to the event loop they run on.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from libs.events.bounds import (
    MAX_DURATION_MS,
    MAX_EVENT_COST_MICROS,
    MAX_EVENT_COUNT,
    MAX_EVENT_TOKENS,
    MAX_SIZE_MB,
    capped,
)
from libs.events.codec import encode, parse_event
from libs.events.models import ChatUsageRecorded
from libs.events.pricing import ModelPrice, price_event
from libs.service.kafka import home_partition, make_producer
from libs.service.settings import CommonSettings
from services.ingest.app import build_app as ingest_app
from services.ingest.config import IngestSettings
from services.ingest.storage import InMemoryPriceStore
from services.limits.app import build_app as limits_app
from services.limits.config import LimitsSettings
from services.limits.storage import InMemoryConfigStore, InMemorySnapshotStore
from services.publisher.app import build_app as publisher_app
from services.publisher.config import PublisherSettings
from services.publisher.domain import DC_MANAGED_AGENTS, build_billing_id
from services.reports.app import build_app as reports_app
from services.reports.config import ReportsSettings
from tests.support import ADMIN, ADMIN_TOKEN, EMITTER, EMITTER_TOKEN, Infra, eventually, unique

pytestmark = pytest.mark.integration

PARTITIONS = 12
PRICED = "agree-priced"
UNPRICED = "agree-unpriced"
# $1,000,000 per million input tokens: 10^6 tokens cost exactly the per-event cap.
PRICES = {
    PRICED: ModelPrice(
        input_price_per_million=Decimal(1_000_000), output_price_per_million=Decimal(3)
    )
}
EXAMPLES = 20
OPS_PER_EXAMPLE = (500, 560)
CONSUMERS = ("limits", "reports", "publisher")

KINDS = (
    "chat",
    "chat",
    "chat_at_cap",
    "chat_over_cap",
    "chat_unpriced",
    "chat_unpriced_max",
    "chat_reported_zero",
    "title",
    "build",
    "build",
    "unstorable",
    "resend",
    "misplaced",
    "other_user",
    "other_type",
    "reuse_id",
    "odd_sizes",
)
Op = tuple[str, int, int]
ops = st.lists(
    st.tuples(
        st.sampled_from(KINDS), st.integers(0, 7), st.integers(0, 10**6)
    ),  # kind, user, variety
    min_size=OPS_PER_EXAMPLE[0],
    max_size=OPS_PER_EXAMPLE[1],
)


@dataclasses.dataclass
class Stream:
    """One example: the events it sends, in order, and what each user must end up with."""

    prefix: str
    at: str
    users: list[str]
    steps: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    refused: set[int] = dataclasses.field(default_factory=set)
    counted: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    sent: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    n: int = 0

    def new_id(self) -> str:
        """A fresh event id of this stream."""
        self.n += 1
        return f"{self.prefix}-e{self.n}"

    def envelope(
        self, kind: str, user: str, data: dict[str, Any], event_id: str | None = None
    ) -> dict[str, Any]:
        """A wire event of this stream."""
        return {
            "id": event_id or self.new_id(),
            "type": kind,
            "occurred_at": self.at,
            "user_id": user,
            "data": data,
        }


def chat_data(
    model: str, tokens: int, *, cost: int | None = None, purpose: str = "chat"
) -> dict[str, Any]:
    """A chat usage payload."""
    data: dict[str, Any] = {
        "chat_id": "c", "message_id": "m", "model": model,
        "input_tokens": tokens, "output_tokens": tokens % 7, "purpose": purpose,
    }  # fmt: skip
    if cost is not None:
        data["cost_micros"] = cost
    return data


def build_data(*, agent: bool) -> dict[str, Any]:
    """A workspace build payload."""
    return {"workspace_id": "w", "build_id": "b", "template": "t", "agent_managed": agent}


def plan(stream: Stream, operations: list[Op]) -> None:
    """Turn drawn operations into the events to send, predicting which ingest refuses."""
    users = stream.users
    accepted: list[dict[str, Any]] = []
    for kind, who, variety in operations:
        user = users[who % len(users)]
        event: dict[str, Any] | None = None
        if kind == "chat":
            event = stream.envelope("chat.usage.v1", user, chat_data(PRICED, variety % 1000))
        elif kind == "chat_at_cap":
            # 10^6 input tokens at $1,000,000 per million: exactly the largest cost of one event.
            event = stream.envelope("chat.usage.v1", user, chat_data(PRICED, 10**6))
            event["data"]["output_tokens"] = 0
        elif kind == "chat_over_cap":
            event = stream.envelope("chat.usage.v1", user, chat_data(PRICED, 10**6 + 1 + variety))
            stream.refused.add(len(stream.steps))
        elif kind == "chat_unpriced":
            event = stream.envelope(
                "chat.usage.v1",
                user,
                chat_data(UNPRICED, variety, cost=None if variety % 3 == 0 else variety),
            )
        elif kind == "chat_unpriced_max":
            event = stream.envelope(
                "chat.usage.v1",
                user,
                chat_data(UNPRICED, MAX_EVENT_TOKENS, cost=MAX_EVENT_COST_MICROS),
            )
        elif kind == "chat_reported_zero":
            event = stream.envelope(
                "chat.usage.v1", user, chat_data(PRICED, 1 + variety % 500, cost=0)
            )
        elif kind == "title":
            event = stream.envelope("chat.usage.v1", user, chat_data(PRICED, 50, purpose="title"))
        elif kind == "build":
            event = stream.envelope("workspace.build.v1", user, build_data(agent=variety % 2 == 0))
        elif kind == "unstorable":
            event = stream.envelope("chat.usage.v1", user, chat_data(PRICED, 5))
            where = variety % 4
            bad = "\x00\x01\x1f\x7f\x85"[variety % 5]
            if where == 0:
                event["user_id"] = f"{user}{bad}"
            elif where == 1:
                event["id"] = f"{event['id']}{bad}"
            else:
                event["data"]["model" if where == 2 else "chat_id"] += bad
            stream.refused.add(len(stream.steps))
        elif kind == "odd_sizes":
            choice = variety % 3
            if choice == 0:
                data = {"category": "ide", "duration_ms": MAX_DURATION_MS, "count": MAX_EVENT_COUNT}
                event = stream.envelope("activity.session.v1", user, data)
            elif choice == 1:
                event = stream.envelope(
                    "api.usage.v1", user, {"client": "sdk", "count": MAX_EVENT_COUNT}
                )
            else:
                data = {
                    "project_id": f"{stream.prefix}-p",
                    "size_mb": MAX_SIZE_MB,
                    "experiment_count": MAX_EVENT_COUNT,
                }
                event = stream.envelope("storage.sample.v1", user, data)
        elif accepted:
            original = accepted[variety % len(accepted)]
            if kind == "resend":
                event = dict(original)
            elif kind == "misplaced":
                stream.steps.append(
                    ("produce", {"event": original, "shift": 1 + variety % (PARTITIONS - 1)})
                )
                continue
            elif kind == "other_user":
                event = {
                    **original,
                    "user_id": users[(users.index(original["user_id"]) + 1) % len(users)],
                }
            elif kind == "other_type":
                if original["type"] == "chat.usage.v1":
                    event = stream.envelope(
                        "workspace.build.v1",
                        original["user_id"],
                        build_data(agent=True),
                        original["id"],
                    )
                else:
                    event = stream.envelope(
                        "chat.usage.v1", original["user_id"], chat_data(PRICED, 3), original["id"]
                    )
            elif kind == "reuse_id" and original["type"] == "chat.usage.v1":
                tokens = original["data"]["input_tokens"]
                data = {**original["data"], "input_tokens": tokens - 1 if tokens else 1}
                event = {**original, "data": data}
        if event is None:
            continue
        stream.steps.append(("send", event))
        if len(stream.steps) - 1 not in stream.refused:
            accepted.append(event)


def expected(stream: Stream) -> dict[str, dict[str, int]]:
    """Per user: spend, messages, agent builds, as the first copy of each identity says."""
    out = {u: {"spend": 0, "messages": 0, "agent_builds": 0} for u in stream.users}
    for event in stream.counted.values():
        figures = out[event["user_id"]]
        data = event["data"]
        if event["type"] == "chat.usage.v1" and data["purpose"] == "chat":
            figures["messages"] += 1
            figures["spend"] = capped(figures["spend"] + (data.get("cost_micros") or 0))
        elif event["type"] == "workspace.build.v1" and data["agent_managed"]:
            figures["agent_builds"] += 1
    return out


@dataclasses.dataclass
class System:
    """The four services running in this process, and what the checks read."""

    ingest: TestClient[web.Request, web.Application]
    limits: TestClient[web.Request, web.Application]
    reports: TestClient[web.Request, web.Application]
    db: asyncpg.Pool
    infra: Infra
    topics: tuple[str, str]
    queue: str
    registries: dict[str, CollectorRegistry]
    generated: int = 0
    refused: int = 0
    checked: list[tuple[Stream, dict[str, dict[str, dict[str, int]]]]] = dataclasses.field(
        default_factory=list
    )


@asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An app served on a free port until the block ends."""
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def system(infra: Infra, db: asyncpg.Pool, topics: tuple[str, str]) -> AsyncIterator[System]:
    """Ingest, limits, reports and publisher on fresh topics, a fresh consumer group each."""
    common: dict[str, str] = {
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "DATABASE_URL": infra.database_url,
        "TOLLGATE_BROKER_EPOCH": infra.epoch,
        "TOLLGATE_EVENTS_TOPIC": topics[0],
        "TOLLGATE_DLQ_TOPIC": topics[1],
        "TOLLGATE_EMITTER_TOKENS": EMITTER_TOKEN,
        "TOLLGATE_ADMIN_TOKENS": ADMIN_TOKEN,
    }
    queue = unique("agree")
    registries = {name: CollectorRegistry() for name in ("ingest", *CONSUMERS)}
    prices = InMemoryPriceStore()
    for model, price in PRICES.items():
        await prices.put(model, price)

    def make(cls: type[CommonSettings], **extra: str) -> Any:
        return cls.model_validate({**common, **extra})

    async with AsyncExitStack() as stack:
        ingest = await stack.enter_async_context(
            running(
                ingest_app(make(IngestSettings), price_store=prices, registry=registries["ingest"])
            )
        )
        limits = await stack.enter_async_context(
            running(
                limits_app(
                    make(LimitsSettings, TOLLGATE_LIMITS_SNAPSHOT_INTERVAL="3600"),
                    config_store=InMemoryConfigStore(),
                    snapshot_store=InMemorySnapshotStore(),
                    registry=registries["limits"],
                )
            )
        )
        reports = await stack.enter_async_context(
            running(
                reports_app(
                    make(
                        ReportsSettings,
                        TOLLGATE_REPORTS_GROUP=unique("agree-reports"),
                        TOLLGATE_REPORTS_FETCH_WAIT_MS="50",
                        TOLLGATE_REPORTS_SESSION_TIMEOUT_MS="6000",
                        TOLLGATE_REPORTS_HEARTBEAT_MS="500",
                    ),
                    registry=registries["reports"],
                )
            )
        )
        await stack.enter_async_context(
            running(
                publisher_app(
                    make(
                        PublisherSettings,
                        TOLLGATE_PUBLISHER_GROUP=unique("agree-publisher"),
                        TOLLGATE_PUBLISHER_QUEUE=queue,
                        TOLLGATE_PUBLISHER_SESSION_TIMEOUT="6s",
                        TOLLGATE_PUBLISHER_FETCH_WAIT_MS="50",
                        PUBLISH_FIRST_DELAY="1h",
                    ),
                    registry=registries["publisher"],
                )
            )
        )
        for client in (limits, reports):

            async def ready(c: TestClient[web.Request, web.Application] = client) -> bool:
                return (await c.get("/readyz")).status == 200

            await eventually(ready, timeout_s=60, interval_s=0.2)
        yield System(ingest, limits, reports, db, infra, topics, queue, registries)


async def play(system: System, stream: Stream) -> None:
    """Send the stream in order: batches through ingest, copies straight onto a partition."""
    producer = make_producer(system.infra.bootstrap, idempotent=False)
    await producer.start()
    try:
        batch: list[tuple[int, dict[str, Any]]] = []

        async def flush() -> None:
            if not batch:
                return
            resp = await system.ingest.post(
                "/api/v1/events", json={"events": [e for _, e in batch]}, headers=EMITTER
            )
            assert resp.status == 200, await resp.text()
            body = await resp.json()
            refused = {r["index"]: r["message"] for r in body["rejected"]}
            for position, (step, event) in enumerate(batch):
                if step in stream.refused:
                    assert position in refused, f"ingest accepted {event!r}"
                    continue
                assert position not in refused, refused[position]
                stream.sent.append(event)
                identity = parse_event(event).identity
                stream.counted.setdefault(identity, priced(event))
            batch.clear()

        for step, (what, payload) in enumerate(stream.steps):
            if what == "send":
                # Ingest refuses one event twice in one batch: a resend goes in the next one.
                if step not in stream.refused and any(
                    s not in stream.refused and _same_event(e, payload) for s, e in batch
                ):
                    await flush()
                batch.append((step, payload))
                if len(batch) >= 200:
                    await flush()
                continue
            await flush()
            # An exact copy of what ingest put on the log, on another partition than its key's.
            record = parse_event(payload["event"])
            if isinstance(record, ChatUsageRecorded):
                record = price_event(record, PRICES)
            home = home_partition(record.partition_key, PARTITIONS)
            await producer.send_and_wait(
                system.topics[0],
                encode(record),
                key=record.partition_key.encode(),
                partition=(home + payload["shift"]) % PARTITIONS,
            )
        await flush()
    finally:
        await producer.stop()


def _same_event(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return parse_event(a).identity == parse_event(b).identity


def priced(event: dict[str, Any]) -> dict[str, Any]:
    """The event as ingest stamps it (the deployment's cost for a priced model)."""
    parsed = parse_event(event)
    if isinstance(parsed, ChatUsageRecorded):
        parsed = price_event(parsed, PRICES)
    out: dict[str, Any] = orjson.loads(encode(parsed))
    return out


async def observed(system: System, stream: Stream) -> dict[str, dict[str, dict[str, int]]]:
    """Each user's figures as limits, reports and the publisher hold them."""
    month = datetime.fromisoformat(stream.at).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    out: dict[str, dict[str, dict[str, int]]] = {name: {} for name in CONSUMERS}
    rows = await system.db.fetch(
        "SELECT user_id, agent_builds FROM reports_builds WHERE month = $1 AND user_id = ANY($2::text[])",
        month,
        stream.users,
    )
    builds = {r["user_id"]: r["agent_builds"] for r in rows}
    billed = {
        r["id"]
        for r in await system.db.fetch(
            "SELECT id FROM publisher_events WHERE queue = $1 AND event_type = $2",
            system.queue,
            DC_MANAGED_AGENTS,
        )
    }
    chatting = {
        r["user_id"]
        for r in await system.db.fetch(
            "SELECT user_id FROM publisher_ai_seats WHERE queue = $1", system.queue
        )
    }
    billing_owner = {
        build_billing_id(identity): event["user_id"]
        for identity, event in stream.counted.items()
        if event["type"] == "workspace.build.v1"
    }
    for user in stream.users:
        resp = await system.limits.get(f"/api/v1/limits/status/{user}", headers=ADMIN)
        spent = (await resp.json())["spent_micros"] if resp.status == 200 else -1
        resp = await system.reports.get(
            f"/api/v1/costs/users/{user}",
            params={"start_date": month.date().isoformat()},
            headers=ADMIN,
        )
        cost = await resp.json() if resp.status == 200 else {}
        messages = cost.get("message_count", 0)
        out["limits"][user] = {"spend": spent}
        out["reports"][user] = {
            "spend": cost.get("total_cost_micros", 0),
            "messages": messages,
            "agent_builds": builds.get(user, 0),
            "chats": int(messages > 0),
        }
        out["publisher"][user] = {
            "agent_builds": sum(1 for b in billed if billing_owner.get(b) == user),
            "chats": int(user in chatting),
        }
    return out


def wanted(stream: Stream) -> dict[str, dict[str, dict[str, int]]]:
    """`observed`'s shape, from the stream."""
    per_user = expected(stream)
    return {
        "limits": {u: {"spend": f["spend"]} for u, f in per_user.items()},
        "reports": {u: {**f, "chats": int(f["messages"] > 0)} for u, f in per_user.items()},
        "publisher": {
            u: {"agent_builds": f["agent_builds"], "chats": int(f["messages"] > 0)}
            for u, f in per_user.items()
        },
    }


async def one_stream(system: System, operations: list[Op]) -> None:
    """Plan, play and check one drawn stream."""
    prefix = unique("agree")
    stream = Stream(
        prefix=prefix,
        at=datetime.now(UTC).replace(microsecond=0).isoformat(),
        users=[f"{prefix}-u{n}" for n in range(8)],
    )
    plan(stream, operations)
    system.generated += len(stream.steps)
    system.refused += len(stream.refused)
    await play(system, stream)
    want = wanted(stream)
    system.checked.append((stream, want))

    async def agree() -> bool:
        return await observed(system, stream) == want

    try:
        await eventually(agree, timeout_s=60, interval_s=0.25)
    except AssertionError:
        got = await observed(system, stream)
        differ = {
            (service, user): (got[service][user], want[service][user])
            for service in CONSUMERS
            for user in stream.users
            if got[service][user] != want[service][user]
        }
        raise AssertionError(f"figures differ (got, wanted): {differ}") from None


async def dead_letters(system: System) -> list[dict[str, str]]:
    """The headers of every record on the dead-letter topic."""
    reader = AIOKafkaConsumer(
        system.topics[1], bootstrap_servers=system.infra.bootstrap, auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        batch = await reader.getmany(timeout_ms=2000)
        return [
            {k: v.decode(errors="replace") for k, v in r.headers}
            for records in batch.values()
            for r in records
        ]
    finally:
        await reader.stop()


def in_thread(loop: asyncio.AbstractEventLoop, system: System) -> Callable[[], None]:
    """The hypothesis test, run in a worker thread, each example on the services' loop."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(operations=ops)
    def every_stream_agrees(operations: list[Op]) -> None:
        asyncio.run_coroutine_threadsafe(one_stream(system, operations), loop).result(timeout=180)

    return every_stream_agrees


@pytest.mark.timeout(600)
# The services use the random module on their own thread while hypothesis draws on this one;
# hypothesis takes that for a strategy using it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
async def test_limits_reports_and_publisher_agree_on_every_user(system: System) -> None:
    """Across 10,000+ generated events (duplicates across users, types and partitions, refused text, the largest storable values), every user's figures are equal in the three consumers and nothing ingest accepted is dead-lettered."""
    await asyncio.to_thread(in_thread(asyncio.get_running_loop(), system))
    assert system.generated >= 10_000, system.generated
    assert system.refused > 0
    # Copies forwarded home arrive after the figures first agreed: they must change nothing.
    await asyncio.sleep(2)
    for stream, want in system.checked:
        assert await observed(system, stream) == want
    assert await dead_letters(system) == []
    for name in CONSUMERS:
        labels = {"consumer": _consumer_name(system, name)}
        registry = system.registries[name]
        refused = registry.get_sample_value("tollgate_consumer_refused_total", labels)
        assert not refused, (name, refused)
        assert (registry.get_sample_value("tollgate_consumer_misplaced_total", labels) or 0) > 0


def _consumer_name(system: System, service: str) -> str:
    """The `consumer` label each service's loop uses."""
    registry = system.registries[service]
    for metric in registry.collect():
        if metric.name == "tollgate_consumer_consecutive_failures":
            for sample in metric.samples:
                return sample.labels["consumer"]
    raise AssertionError(f"{service} exports no consumer metrics")
