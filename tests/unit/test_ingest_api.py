"""Ingest's HTTP contract against an in-memory log and price table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from libs.events.bounds import MAX_EVENT_COST_MICROS
from libs.events.client import EMIT_PATH
from services.ingest.api import ROUTES
from services.ingest.app import build_app
from services.ingest.config import IngestSettings
from services.ingest.producer import InMemoryEventLog
from services.ingest.storage import InMemoryPriceStore
from tests.contracts import Example, failures, walk
from tests.support import eventually

EMITTER = {"Authorization": "Bearer emit"}
ADMIN = {"Authorization": "Bearer admin"}
PRICE = {
    "input_price_per_million": "3.00",
    "output_price_per_million": "15.00",
    "cache_read_price_per_million": "0.30",
    "cache_write_price_per_million": "3.75",
}


class Harness:
    """The app with its fakes, so tests can look at what reached the log."""

    def __init__(
        self,
        client: TestClient[web.Request, web.Application],
        log: InMemoryEventLog,
        registry: CollectorRegistry,
    ) -> None:
        self.client = client
        self.log = log
        self.registry = registry


@pytest.fixture
async def ingest() -> AsyncIterator[Harness]:
    """An ingest app on fakes."""
    settings = IngestSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_ADMIN_TOKENS="admin",
        TOLLGATE_MAX_BODY_BYTES=64 * 1024,
    )
    log = InMemoryEventLog()
    registry = CollectorRegistry()
    app = build_app(settings, event_log=log, price_store=InMemoryPriceStore(), registry=registry)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Harness(client, log, registry)
    finally:
        await client.close()


def chat(event_id: str, **data: object) -> dict[str, object]:
    """A valid chat usage envelope; `data` overrides fields."""
    body: dict[str, object] = {
        "chat_id": "c1",
        "message_id": f"m-{event_id}",
        "model": "sonnet",
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    body.update(data)
    return {
        "id": event_id,
        "type": "chat.usage.v1",
        "occurred_at": "2026-11-02T10:15:00Z",
        "org_id": "org-1",
        "user_id": "alice",
        "data": body,
    }


async def test_valid_events_are_accepted_and_keyed_by_user(ingest: Harness) -> None:
    """Accepted events reach the log keyed by their user, in the batch's order."""
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("e1"), chat("e2")]}, headers=EMITTER
    )
    assert resp.status == 200
    assert await resp.json() == {"accepted": ["e1", "e2"], "rejected": []}
    assert [k for k, _ in ingest.log.records] == [b"alice", b"alice"]
    assert [orjson.loads(v)["id"] for _, v in ingest.log.records] == ["e1", "e2"]


async def test_chat_usage_is_priced_from_the_table(ingest: Harness) -> None:
    """A chat event without a cost gets `ceil` of its priced tokens and is marked priced."""
    resp = await ingest.client.put("/api/v1/pricing/models/sonnet", json=PRICE, headers=ADMIN)
    assert resp.status == 200
    await ingest.client.post(
        "/api/v1/events",
        json={"events": [chat("e1", cache_read_tokens=10, cache_write_tokens=3)]},
        headers=EMITTER,
    )
    data = orjson.loads(ingest.log.records[-1][1])["data"]
    # 1000×3 + 100×15 + 10×0.30 + 3×3.75 = 4514.25 → 4515
    assert data["cost_micros"] == 4515
    assert data["priced"] is True


@pytest.mark.parametrize(
    ("event", "field", "reason"),
    [
        ({**chat("x"), "type": "chat.usage.v9"}, "type", "unknown_type"),
        ({k: v for k, v in chat("x").items() if k != "user_id"}, "user_id", "invalid"),
        (chat("x", input_tokens=-5), "data.input_tokens", "invalid"),
        (chat("x", output_tokens="12"), "data.output_tokens", "invalid"),
        (chat("x", surprise=1), "data.surprise", "invalid"),
        ({**chat("x"), "extra": True}, "extra", "invalid"),
        ({**chat("x"), "id": "i" * 129}, "id", "invalid"),
        (
            {**chat("x"), "occurred_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
            "occurred_at",
            "future",
        ),
        ({**chat("x"), "occurred_at": "2026-11-02T10:15:00"}, "occurred_at", "invalid"),
        ("not an object", "object", "not_an_object"),
        ({**chat("x"), "user_id": "eve\x00"}, "user_id", "unstorable_text"),
    ],
)
async def test_invalid_events_are_rejected_one_by_one_naming_the_field(
    ingest: Harness, event: object, field: str, reason: str
) -> None:
    """Each invalid event is rejected with a message naming its field and a reason code, counted under that code, while the valid one is accepted."""
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("good"), event]}, headers=EMITTER
    )
    body = await resp.json()
    assert resp.status == 200
    assert body["accepted"] == ["good"]
    [rejected] = body["rejected"]
    assert field in rejected["message"]
    assert rejected["permanent"] is True
    assert rejected["index"] == 1
    assert rejected["reason"] == reason
    kind = "chat.usage.v1" if isinstance(event, dict) and event["type"] == "chat.usage.v1" else None
    labels = {"type": kind or "unknown", "result": "rejected", "reason": reason}
    assert ingest.registry.get_sample_value("tollgate_ingest_events_total", labels) == 1


async def test_a_repeated_id_in_one_batch_is_accepted_once(ingest: Harness) -> None:
    """The second copy of an id in one batch is refused, so one request never logs an id twice."""
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("e1"), chat("e1")]}, headers=EMITTER
    )
    body = await resp.json()
    assert body["accepted"] == ["e1"]
    assert "more than once" in body["rejected"][0]["message"]
    assert body["rejected"][0]["reason"] == "duplicate_in_batch"


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b'{"events": []}', 422, "between 1 and 1000"),
        (b'{"events": {}}', 422, "array"),
        (b'{"evnts": []}', 422, "events"),
        (orjson.dumps({"events": [chat(f"e{i}") for i in range(1001)]}), 413, "too large"),
    ],
)
async def test_malformed_requests_get_a_clear_status(
    ingest: Harness, payload: bytes, status: int, needle: str
) -> None:
    """Bodies that are not JSON, empty, the wrong shape or too large get 400/413/422 with a message."""
    resp = await ingest.client.post(
        "/api/v1/events",
        data=payload,
        headers={**EMITTER, "Content-Type": "application/json"},
    )
    assert resp.status == status
    body = await resp.json()
    assert needle in body["message"]
    assert ingest.log.records == []


async def test_more_than_the_batch_limit_is_refused(ingest: Harness) -> None:
    """A batch over 1000 events is refused whole (422) when it fits the body limit."""
    events = [{"id": str(i)} for i in range(1001)]
    resp = await ingest.client.post("/api/v1/events", json={"events": events}, headers=EMITTER)
    assert resp.status == 422
    assert "between 1 and 1000" in (await resp.json())["message"]


async def test_tokens_and_roles_are_enforced(ingest: Harness) -> None:
    """No token or a wrong one is 401; an emitter token on the pricing API is 403."""
    body = {"events": [chat("e1")]}
    assert (await ingest.client.post("/api/v1/events", json=body)).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await ingest.client.post("/api/v1/events", json=body, headers=wrong)).status == 401
    resp = await ingest.client.get("/api/v1/pricing/models", headers=EMITTER)
    assert resp.status == 403
    assert (await ingest.client.get("/api/v1/pricing/models", headers=ADMIN)).status == 200
    assert ingest.log.records == []


async def test_broker_down_means_503_with_retry_after_and_nothing_accepted(
    ingest: Harness,
) -> None:
    """When the log does not acknowledge, the whole batch is refused with 503 and Retry-After."""
    ingest.log.down = True
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("e1")]}, headers=EMITTER
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert "nothing in this batch was accepted" in (await resp.json())["message"]
    ingest.log.down = False
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("e1")]}, headers=EMITTER
    )
    assert (await resp.json())["accepted"] == ["e1"]


async def test_pricing_api_round_trip(ingest: Harness) -> None:
    """Prices can be set, read, listed and deleted; a missing model is 404 naming it."""
    c = ingest.client
    assert (await c.get("/api/v1/pricing/models/sonnet", headers=ADMIN)).status == 404
    await c.put("/api/v1/pricing/models/sonnet", json=PRICE, headers=ADMIN)
    got = await (await c.get("/api/v1/pricing/models/sonnet", headers=ADMIN)).json()
    assert {k: got[k] for k in PRICE} == PRICE
    listed = await (await c.get("/api/v1/pricing/models", headers=ADMIN)).json()
    assert [m["model"] for m in listed["models"]] == ["sonnet"]
    assert (await c.delete("/api/v1/pricing/models/sonnet", headers=ADMIN)).status == 204
    resp = await c.delete("/api/v1/pricing/models/sonnet", headers=ADMIN)
    assert resp.status == 404
    assert "sonnet" in (await resp.json())["message"]


async def test_invalid_price_is_422_naming_the_field(ingest: Harness) -> None:
    """A negative or non-numeric price is refused with the field's name."""
    resp = await ingest.client.put(
        "/api/v1/pricing/models/sonnet",
        json={**PRICE, "output_price_per_million": "cheap"},
        headers=ADMIN,
    )
    assert resp.status == 422
    assert "output_price_per_million" in (await resp.json())["message"]


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({}, "set at least one of input_price_per_million"),
        (
            dict.fromkeys(("input_price_per_million", "output_price_per_million")),
            "set at least one of",
        ),
        (
            {"input_price_per_million": "0.0000001"},
            "input_price_per_million: Decimal input should have no more than 6 decimal places",
        ),
        (
            {"cache_read_price_per_million": "1000000.000001"},
            "cache_read_price_per_million: Input should be less than or equal to 1000000",
        ),
        ({"output_price_per_million": "-1"}, "output_price_per_million: Input should be greater"),
    ],
)
async def test_a_price_sets_some_kind_within_six_places_or_is_422(
    ingest: Harness, price: dict[str, object], message: str
) -> None:
    """A price with no kind set, more than 6 decimal places or out of bounds is refused, named."""
    resp = await ingest.client.put("/api/v1/pricing/models/sonnet", json=price, headers=ADMIN)
    assert resp.status == 422
    assert message in (await resp.json())["message"]


async def test_a_price_may_leave_kinds_unset_and_shows_them_as_null(ingest: Harness) -> None:
    """Kinds left out (or null) are unset, shown as null, and tokens of only those are unpriced."""
    c = ingest.client
    resp = await c.put(
        "/api/v1/pricing/models/sonnet",
        json={"output_price_per_million": "15", "cache_read_price_per_million": None},
        headers=ADMIN,
    )
    assert resp.status == 200
    got = await (await c.get("/api/v1/pricing/models/sonnet", headers=ADMIN)).json()
    assert {k: got[k] for k in PRICE} == {
        "input_price_per_million": None,
        "output_price_per_million": "15.00",
        "cache_read_price_per_million": None,
        "cache_write_price_per_million": None,
    }
    resp = await c.post(
        "/api/v1/events",
        json={
            "events": [
                chat("both", input_tokens=1000, output_tokens=100),
                chat("input-only", input_tokens=1000, output_tokens=0, cost_micros=9),
            ]
        },
        headers=EMITTER,
    )
    assert (await resp.json())["accepted"] == ["both", "input-only"]
    sent = [orjson.loads(value) for _, value in ingest.log.records[-2:]]
    data = {e["id"]: e["data"] for e in sent}
    assert (data["both"]["cost_micros"], data["both"]["priced"]) == (1500, True)
    # Only input tokens, and no input price: unpriced, so the emitter's figure is what counts.
    assert (data["input-only"]["cost_micros"], data["input-only"]["priced"]) == (9, False)


async def test_metrics_count_accepted_and_rejected_by_type(ingest: Harness) -> None:
    """The events counter tells accepted from rejected per type and reason."""
    await ingest.client.post(
        "/api/v1/events",
        json={"events": [chat("e1"), chat("e2", input_tokens=-1)]},
        headers=EMITTER,
    )
    value = ingest.registry.get_sample_value
    labels = {"type": "chat.usage.v1", "result": "accepted", "reason": ""}
    assert value("tollgate_ingest_events_total", labels) == 1
    labels = {"type": "chat.usage.v1", "result": "rejected", "reason": "invalid"}
    assert value("tollgate_ingest_events_total", labels) == 1


async def test_operational_routes_need_no_token(ingest: Harness) -> None:
    """Health and the OpenAPI document are public; `/metrics` is not on the API port at all."""
    assert (await ingest.client.get("/healthz")).status == 200
    assert (await ingest.client.get("/metrics", headers=ADMIN)).status == 404
    doc = await (await ingest.client.get("/openapi.json")).json()
    assert "/api/v1/events" in doc["paths"]
    assert "/metrics" not in doc["paths"]
    assert "/api/v1/pricing/models/{model}" in doc["paths"]


class UnreachablePriceStore(InMemoryPriceStore):
    """A price table whose database does not answer until told to."""

    def __init__(self) -> None:
        super().__init__()
        self.reachable = False

    async def version(self) -> int:
        """Fail like PostgreSQL that is away."""
        if not self.reachable:
            raise ConnectionRefusedError("PostgreSQL is away")
        return await super().version()


async def test_starts_without_the_database_and_turns_ready_once_prices_are_read() -> None:
    """A replica starting while PostgreSQL is away comes up not ready (prices unread), then ready when it reads them."""
    settings = IngestSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_PRICE_REFRESH=0.01,
        TOLLGATE_KAFKA_TIMEOUT=0.1,
    )
    store = UnreachablePriceStore()
    app = build_app(settings, event_log=InMemoryEventLog(), price_store=store)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"]["prices"] == "failing"
        store.reachable = True

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await eventually(ready, timeout_s=5)
        store.reachable = False

        async def database_reported_down() -> bool:
            body = await (await client.get("/readyz")).json()
            return bool(body["ready"]) and body["dependencies"]["database"] == "failing"

        await eventually(database_reported_down, timeout_s=5)


HUGE_PRICE = {"input_price_per_million": "1000000", "output_price_per_million": "1000000"}


async def test_one_unpriceable_event_is_refused_and_the_rest_of_the_batch_accepted(
    ingest: Harness,
) -> None:
    """An event whose priced cost exceeds the per-event cap is a per-event 422-style rejection, never a 500."""
    resp = await ingest.client.put("/api/v1/pricing/models/sonnet", json=HUGE_PRICE, headers=ADMIN)
    assert resp.status == 200
    batch = [
        chat("ok", model="other"),
        chat("overflow", input_tokens=2**53 - 1),
        chat("too-costly", input_tokens=10**10),
        chat("at-cap", input_tokens=10**6, output_tokens=0),
    ]
    resp = await ingest.client.post("/api/v1/events", json={"events": batch}, headers=EMITTER)
    assert resp.status == 200
    body = await resp.json()
    assert body["accepted"] == ["ok", "at-cap"]
    rejected = {r["id"]: r for r in body["rejected"]}
    assert rejected["overflow"]["message"].startswith("data.input_tokens: Input should be less")
    assert rejected["too-costly"]["message"].startswith("data: at the price of model 'sonnet'")
    assert str(MAX_EVENT_COST_MICROS) in rejected["too-costly"]["message"]
    assert (rejected["overflow"]["reason"], rejected["too-costly"]["reason"]) == (
        "invalid",
        "cost_too_high",
    )
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    on_log = [orjson.loads(v) for _, v in ingest.log.records]
    assert [e["id"] for e in on_log] == ["ok", "at-cap"]
    assert on_log[1]["data"]["cost_micros"] == MAX_EVENT_COST_MICROS


async def test_a_user_cannot_lower_their_spend_with_an_emitter_cost(ingest: Harness) -> None:
    """`cost_micros: 0` on a priced model is repriced; the emitter's figure is kept for audit only."""
    await ingest.client.put("/api/v1/pricing/models/sonnet", json=PRICE, headers=ADMIN)
    resp = await ingest.client.post(
        "/api/v1/events",
        json={"events": [chat("free?", input_tokens=10**9, output_tokens=0, cost_micros=0)]},
        headers=EMITTER,
    )
    assert (await resp.json())["accepted"] == ["free?"]
    data = orjson.loads(ingest.log.records[-1][1])["data"]
    assert (data["cost_micros"], data["priced"], data["reported_cost_micros"]) == (
        3 * 10**9,
        True,
        0,
    )


@pytest.mark.parametrize(
    ("where", "value"),
    [("user_id", "eve\x00"), ("id", "e\x01"), ("data.model", "m\x7f"), ("data.chat_id", "c\x85")],
)
async def test_unstorable_text_is_refused_per_event_naming_the_field(
    ingest: Harness, where: str, value: str
) -> None:
    """NUL and other control characters are refused per event with the field named; the rest is accepted."""
    bad = chat("bad")
    target = bad["data"] if where.startswith("data.") else bad
    assert isinstance(target, dict)
    target[where.removeprefix("data.")] = value
    resp = await ingest.client.post(
        "/api/v1/events", json={"events": [chat("good"), bad]}, headers=EMITTER
    )
    body = await resp.json()
    assert body["accepted"] == ["good"]
    assert body["rejected"][0]["message"].startswith(f"{where}: contains a control character")


async def test_a_model_name_with_a_control_character_is_422_on_the_pricing_routes(
    ingest: Harness,
) -> None:
    """Pricing paths follow the same text rule as events."""
    resp = await ingest.client.put("/api/v1/pricing/models/a%00b", json=PRICE, headers=ADMIN)
    assert resp.status == 422
    assert (await resp.json())["message"].startswith("model: contains a control character")


async def test_every_route_answers_the_model_its_table_declares(ingest: Harness) -> None:
    """Each route of ingest's table, called once, succeeds with the body its table declares."""
    model = {"model": "sonnet"}
    price_path = "/api/v1/pricing/models/{model}"
    answers = await walk(
        ingest.client,
        ROUTES,
        headers=ADMIN,
        examples={
            ("POST", EMIT_PATH): Example(body={"events": [chat("walk-1")]}),
            ("PUT", price_path): Example(path=model, body=PRICE),
            ("GET", price_path): Example(path=model),
            ("DELETE", price_path): Example(path=model),
        },
    )
    assert failures(answers) == []
    assert len(answers) == len(ROUTES)
