"""Ingest as a real process against the real broker and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.support import ADMIN, EMITTER, Infra, StartService, eventually, unique

pytestmark = pytest.mark.e2e

PRICE = {
    "input_price_per_million": "3.00",
    "output_price_per_million": "15.00",
    "cache_read_price_per_million": "0.30",
    "cache_write_price_per_million": "3.75",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def chat(event_id: str, user: str, model: str) -> dict[str, object]:
    """The README's example event, with this test's ids."""
    return {
        "id": event_id,
        "type": "chat.usage.v1",
        "occurred_at": "2026-11-02T10:15:00Z",
        "org_id": "org-1",
        "user_id": user,
        "data": {
            "chat_id": "chat-1",
            "message_id": f"msg-{event_id}",
            "model": model,
            "input_tokens": 1200,
            "output_tokens": 350,
            "cache_read_tokens": 5000,
            "cache_write_tokens": 0,
        },
    }


async def read_topic(infra: Infra, topic: str, want: int) -> list[tuple[bytes, dict[str, object]]]:
    """Read the whole topic until `want` records arrived."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=infra.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes, dict[str, object]]] = []
    try:
        deadline = time.monotonic() + 15
        while len(out) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            out += [(r.key, orjson.loads(r.value)) for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return out


async def test_accepted_event_is_on_the_log_keyed_by_user_with_its_cost(
    infra: Infra,
    topics: tuple[str, str],
    service_factory: StartService,
    http: aiohttp.ClientSession,
) -> None:
    """The README example is accepted, and lands on the topic keyed by user with the stamped cost."""
    ingest = service_factory("ingest", TOLLGATE_EVENTS_TOPIC=topics[0])
    model, user, event_id = unique("model"), unique("user"), unique("evt")
    resp = await http.put(f"{ingest.url}/api/v1/pricing/models/{model}", json=PRICE, headers=ADMIN)
    assert resp.status == 200
    resp = await http.post(
        f"{ingest.url}/api/v1/events",
        json={"events": [chat(event_id, user, model)]},
        headers=EMITTER,
    )
    assert resp.status == 200
    assert (await resp.json())["accepted"] == [event_id]
    [(key, event)] = await read_topic(infra, topics[0], 1)
    assert key == user.encode()
    assert event["id"] == event_id
    data = event["data"]
    assert isinstance(data, dict)
    # 1200×3 + 350×15 + 5000×0.30 = 10350 micro-dollars
    assert data["cost_micros"] == 10350
    assert data["priced"] is True


async def test_price_change_reaches_every_replica_within_a_second(
    service_factory: StartService, http: aiohttp.ClientSession, topics: tuple[str, str]
) -> None:
    """A price set through one replica prices events on another within a second."""
    one = service_factory("ingest", TOLLGATE_EVENTS_TOPIC=topics[0])
    two = service_factory("ingest", TOLLGATE_EVENTS_TOPIC=topics[0])
    model = unique("model")
    resp = await http.put(f"{one.url}/api/v1/pricing/models/{model}", json=PRICE, headers=ADMIN)
    assert resp.status == 200
    started = time.monotonic()

    async def seen_by_two() -> bool:
        r = await http.get(f"{two.url}/api/v1/pricing/models/{model}", headers=ADMIN)
        return r.status == 200

    await eventually(seen_by_two, timeout_s=1.0, interval_s=0.02)
    assert time.monotonic() - started < 1.0


async def test_paused_broker_means_503_then_resending_succeeds(
    infra: Infra,
    topics: tuple[str, str],
    service_factory: StartService,
    http: aiohttp.ClientSession,
) -> None:
    """With the broker frozen ingest answers 503 within 5 s and accepts nothing; after it thaws the same batch is accepted."""
    ingest = service_factory("ingest", TOLLGATE_EVENTS_TOPIC=topics[0])
    user = unique("user")
    warmup = {"events": [chat(unique("evt"), user, "m")]}
    assert (
        await http.post(f"{ingest.url}/api/v1/events", json=warmup, headers=EMITTER)
    ).status == 200
    events = [chat(unique("evt"), user, "m") for _ in range(3)]
    batch = {"events": events}
    infra.broker.pause()
    try:
        started = time.monotonic()
        resp = await http.post(f"{ingest.url}/api/v1/events", json=batch, headers=EMITTER)
        elapsed = time.monotonic() - started
        assert resp.status == 503
        assert elapsed < 5
        assert resp.headers["Retry-After"]
        assert "accepted" not in await resp.json()

        async def not_ready() -> bool:
            r = await http.get(f"{ingest.url}/readyz")
            return r.status == 503

        await eventually(not_ready, timeout_s=6)
    finally:
        infra.broker.resume()

    async def accepted() -> list[object]:
        r = await http.post(f"{ingest.url}/api/v1/events", json=batch, headers=EMITTER)
        return (await r.json())["accepted"] if r.status == 200 else []

    ids = await eventually(accepted, timeout_s=20, interval_s=0.5)
    assert ids == [e["id"] for e in events]
    records = await read_topic(infra, topics[0], 4)
    assert {e["id"] for e in events} <= {ev["id"] for _, ev in records}


async def test_paused_postgres_leaves_ingest_ready_and_accepting_priced_events(
    infra: Infra,
    topics: tuple[str, str],
    service_factory: StartService,
    http: aiohttp.ClientSession,
) -> None:
    """With PostgreSQL frozen, ingest stays ready, reports the database down, and accepts events priced from its cache."""
    ingest = service_factory("ingest", TOLLGATE_EVENTS_TOPIC=topics[0])
    model, user = unique("model"), unique("user")
    resp = await http.put(f"{ingest.url}/api/v1/pricing/models/{model}", json=PRICE, headers=ADMIN)
    assert resp.status == 200

    async def scraped() -> str:
        r = await http.get(ingest.metrics_url)
        return await r.text()

    events = [chat(unique("evt"), user, model) for _ in range(3)]
    async with infra.postgres_paused():

        async def database_down() -> bool:
            return (
                'tollgate_dependency_up{dependency="database",service="ingest"} 0.0'
                in await scraped()
            )

        await eventually(database_down, timeout_s=15, interval_s=0.2)
        ready = await http.get(f"{ingest.url}/readyz")
        assert ready.status == 200
        assert (await ready.json())["dependencies"] == {"broker": "ok", "database": "failing"}
        assert 'tollgate_ready{service="ingest"} 1.0' in await scraped()
        resp = await http.post(
            f"{ingest.url}/api/v1/events", json={"events": events}, headers=EMITTER
        )
        assert resp.status == 200
        assert (await resp.json())["accepted"] == [e["id"] for e in events]
    records = await read_topic(infra, topics[0], len(events))
    logged = {ev["id"]: ev for _, ev in records}
    for event in events:
        data = logged[str(event["id"])]["data"]
        assert isinstance(data, dict)
        assert (data["cost_micros"], data["priced"]) == (10350, True)
