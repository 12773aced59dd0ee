"""The real sender against the real billing sink and PostgreSQL: outages, replicas, poison, expiry."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.publisher.app import build_app, sender_options
from services.publisher.config import PublisherSettings
from services.publisher.domain import DC_MANAGED_AGENTS, BillingEvent
from services.publisher.metrics import PublisherMetrics
from services.publisher.sender import HttpBillingClient, Sender, SendError
from services.publisher.storage import PostgresQueue
from tests.support import ADMIN, ADMIN_TOKEN, Infra, eventually, scrape, unique
from tools.billing_sink import BillingSink

pytestmark = pytest.mark.integration


def settings_for(infra: Infra, sink: BillingSink, queue: str, **extra: Any) -> PublisherSettings:
    """Fast settings for a publisher that sends to `sink` from its own queue."""
    values: dict[str, Any] = {
        "DATABASE_URL": infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "TOLLGATE_ADMIN_TOKENS": ADMIN_TOKEN,
        "TOLLGATE_PUBLISHER_QUEUE": queue,
        "BILLING_URL": sink.url,
        "LICENSE_KEY": "test-license",
        "DEPLOYMENT_ID": "test-deployment",
        "PUBLISH_INTERVAL": "200ms",
        "PUBLISH_FIRST_DELAY": "0s",
        # Generous: a late answer on a busy machine would be a (harmless) resend.
        "PUBLISH_TIMEOUT": "5s",
        "PUBLISH_CLAIM_TIMEOUT": "10s",
        "PUBLISH_BACKOFF_BASE": "50ms",
        "PUBLISH_BACKOFF_MAX": "300ms",
        "TOLLGATE_PUBLISHER_GAUGE_REFRESH": "100ms",
        **extra,
    }
    return PublisherSettings.model_validate(values)


async def seed(
    db: asyncpg.Pool, queue: str, n: int, *, created: datetime | None = None
) -> list[str]:
    """Queue n builds' billing events; their ids."""
    at = created or datetime.now(UTC) - timedelta(minutes=1)
    events = [BillingEvent(unique("bill"), DC_MANAGED_AGENTS, 1, at) for _ in range(n)]
    store = PostgresQueue(db, queue)
    await store.open()
    await store.enqueue(events)
    return [e.id for e in events]


async def heartbeat_ids(db: asyncpg.Pool, queue: str) -> list[str]:
    """The seats heartbeats this test's publisher queued."""
    rows = await db.fetch(
        "SELECT id FROM publisher_events WHERE queue = $1 AND event_type = 'hb_ai_seats_v1'",
        queue,
    )
    return [r["id"] for r in rows]


async def set_mode(sink: BillingSink, **body: object) -> None:
    """Drive the sink through its control API, as an operator would."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{sink.control_url}/_sink/mode", json=body)
        assert resp.status == 200, await resp.text()


async def received(sink: BillingSink) -> list[dict[str, Any]]:
    """Every request the sink recorded."""
    async with aiohttp.ClientSession() as http:
        resp = await http.get(f"{sink.control_url}/_sink/received")
        requests: list[dict[str, Any]] = (await resp.json())["requests"]
        return requests


def accepted_counts(requests: list[dict[str, Any]]) -> Counter[str]:
    """How often each id was accepted by the sink."""
    return Counter(i for r in requests for i in r["accepted"])


async def test_an_outage_of_many_intervals_loses_nothing_and_duplicates_nothing(
    infra: Infra, db: asyncpg.Pool, sink: BillingSink
) -> None:
    """5xx, then hangs, then refused connections, then recovery: each event arrives exactly once."""
    queue = unique("q")
    ids = await seed(db, queue, 450)
    await set_mode(sink, mode="error", status=503)
    settings = settings_for(infra, sink, queue, PUBLISH_TIMEOUT="1s", PUBLISH_CLAIM_TIMEOUT="3s")
    app = build_app(settings, consume=False)
    streaks: list[int] = []
    causes: list[str] = []

    async with TestClient(TestServer(app)) as client:

        async def status() -> dict[str, Any]:
            resp = await client.get("/api/v1/publisher/status", headers=ADMIN)
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            streaks.append(body["consecutive_failures"])
            causes.append(body["last_error_cause"])
            return body

        async def failing_with(cause: str, at_least: int) -> bool:
            body = await status()
            return bool(
                body["last_error_cause"] == cause and body["consecutive_failures"] >= at_least
            )

        with capture_logs() as logs:
            await eventually(lambda: failing_with("http_5xx", 3))
            await set_mode(sink, mode="hang")
            await eventually(lambda: failing_with("timeout", 5))
            await set_mode(sink, mode="refuse")
            await eventually(lambda: failing_with("connect", 7))
            during = await status()
            assert during["pending"] == 451  # the builds and this bucket's seats heartbeat
            assert during["failing_since"] is not None
            assert during["message"].startswith("failing: ")
            await set_mode(sink, mode="ok")

            async def drained() -> bool:
                body = await status()
                return bool(body["pending"] == 0 and body["consecutive_failures"] == 0)

            await eventually(drained)
        after = await status()
        metrics = await scrape(client.app)

    requests = await received(sink)
    counts = accepted_counts(requests)
    heartbeats = await heartbeat_ids(db, queue)
    assert len(heartbeats) == 1
    assert set(counts) == {*ids, *heartbeats}
    assert set(counts.values()) == {1}
    assert sink.stats()["duplicates"] == 0
    assert max(streaks) >= 7
    assert {"http_5xx", "timeout", "connect"} <= set(causes)
    assert after["last_success_at"] is not None
    assert after["published"] == 451
    assert after["last_error"] is not None
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert {w["cause"] for w in warnings} >= {"http_5xx", "timeout", "connect"}
    assert all(w["event"].startswith("failed to send publish request cause=") for w in warnings)
    recovered = [e for e in logs if e["event"].startswith("publisher recovered")]
    assert len(recovered) == 1
    assert recovered[0]["previous_failures"] >= 7
    published = [e for e in logs if e["event"].startswith("published usage events accepted=")]
    assert sum(e["accepted"] for e in published) == 451
    assert 'tollgate_publisher_send_errors_total{cause="http_5xx"}' in metrics
    assert "tollgate_publisher_consecutive_failures 0.0" in metrics


async def test_two_replicas_never_send_the_same_event_twice_in_one_cycle(
    infra: Infra, db: asyncpg.Pool, sink: BillingSink
) -> None:
    """Concurrent cycles of two replicas split the backlog: every id goes out in one request."""
    queue = unique("q")
    ids = await seed(db, queue, 1500)
    await set_mode(sink, mode="ok", delay="20ms")
    settings = settings_for(infra, sink, queue)
    async with aiohttp.ClientSession() as session:
        replicas = [
            Sender(
                PostgresQueue(db, queue),
                HttpBillingClient(
                    session,
                    base_url=sink.url,
                    license_key="k",
                    deployment_id="d",
                    timeout=settings.request_timeout,
                ),
                sender_options(settings),
                PublisherMetrics.build(CollectorRegistry()),
                claimant=f"replica-{i}",
            )
            for i in range(2)
        ]
        results = await asyncio.gather(*(r.run_cycle() for r in replicas))
    requests = await received(sink)
    sent = Counter(e["id"] for r in requests for e in orjson.loads(r["body"])["events"])
    assert set(sent) == set(ids)
    assert set(sent.values()) == {1}
    assert all(r.accepted > 100 for r in results)
    assert sum(r.accepted for r in results) == 1500


async def test_a_poison_event_rejected_temporarily_forever_does_not_stop_the_rest(
    infra: Infra, db: asyncpg.Pool, sink: BillingSink
) -> None:
    """The poison event keeps being retried with backoff while everything else flows past it."""
    queue = unique("q")
    (poison,) = await seed(db, queue, 1, created=datetime.now(UTC) - timedelta(hours=1))
    first = await seed(db, queue, 250)
    async with aiohttp.ClientSession() as http:
        await http.post(
            f"{sink.url}/_sink/rules",
            json={"ids": [poison], "outcome": "temporary", "message": "try later"},
        )
    app = build_app(settings_for(infra, sink, queue), consume=False)
    async with TestClient(TestServer(app)) as client:
        await eventually(lambda: _accepted(sink, first))
        later = await seed(db, queue, 120)
        await eventually(lambda: _accepted(sink, later))
        await eventually(lambda: _attempts(db, queue, poison, 4))
        status = await (await client.get("/api/v1/publisher/status", headers=ADMIN)).json()
    row = await db.fetchrow(
        "SELECT status, last_error FROM publisher_events WHERE queue = $1 AND id = $2",
        queue,
        poison,
    )
    assert row is not None
    assert (row["status"], row["last_error"]) == ("pending", "try later")
    assert poison not in sink.state.events
    assert status["pending"] == 1  # the poison event only
    assert status["consecutive_failures"] == 0
    per_request = [
        [e["id"] for e in orjson.loads(r["body"])["events"]] for r in await received(sink)
    ]
    assert all(batch.count(poison) <= 1 for batch in per_request)


async def test_expired_events_are_counted_and_never_reach_the_billing_server(
    infra: Infra, db: asyncpg.Pool, sink: BillingSink
) -> None:
    """Events past the maximum age are expired, counted in status and metrics, and not sent."""
    queue = unique("q")
    stale = await seed(db, queue, 5, created=datetime.now(UTC) - timedelta(days=3))
    fresh = await seed(db, queue, 5)
    app = build_app(settings_for(infra, sink, queue, PUBLISH_MAX_AGE="2d"), consume=False)
    async with TestClient(TestServer(app)) as client:

        async def drained() -> dict[str, Any] | None:
            resp = await client.get("/api/v1/publisher/status", headers=ADMIN)
            body: dict[str, Any] = await resp.json()
            return body if body["pending"] == 0 else None

        status = await eventually(drained)
        assert status is not None
        metrics = await scrape(client.app)
    assert (status["expired"], status["pending"], status["max_age"]) == (5, 0, "2d")
    assert set(fresh) <= set(sink.state.events)
    assert not set(stale) & set(sink.state.events)
    assert "tollgate_publisher_expired_total 5.0" in metrics
    assert (
        'tollgate_publisher_events_total{event_type="dc_managed_agents_v1",result="expired"} 5.0'
        in metrics
    )


async def test_without_billing_url_and_license_key_events_wait_and_status_says_why(
    infra: Infra, db: asyncpg.Pool, sink: BillingSink
) -> None:
    """Queue-only mode keeps events pending and names the missing settings."""
    queue = unique("q")
    await seed(db, queue, 3)
    settings = settings_for(infra, sink, queue, BILLING_URL="", LICENSE_KEY="")
    async with TestClient(TestServer(build_app(settings, consume=False))) as client:
        await asyncio.sleep(0.5)
        resp = await client.get("/api/v1/publisher/status", headers=ADMIN)
        status = await resp.json()
        metrics = await scrape(client.app)
        unauthorized = await client.get("/api/v1/publisher/status")
    assert status["configured"] is False
    assert status["pending"] == 4  # three builds and the seats heartbeat
    assert "BILLING_URL and LICENSE_KEY not set" in status["message"]
    assert "tollgate_publisher_configured 0.0" in metrics
    assert unauthorized.status == 401
    assert sink.stats()["requests"] == 0


async def _accepted(sink: BillingSink, ids: list[str]) -> bool:
    return all(i in sink.state.events for i in ids)


async def _attempts(db: asyncpg.Pool, queue: str, event_id: str, at_least: int) -> bool:
    attempts = await db.fetchval(
        "SELECT attempts FROM publisher_events WHERE queue = $1 AND id = $2", queue, event_id
    )
    return bool(attempts is not None and attempts >= at_least)


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (web.Response(status=401, text="bad license"), "http_4xx"),
        (web.Response(status=307, headers={"Location": "/elsewhere"}), "http_4xx"),
        (web.Response(status=502, text="bad gateway"), "http_5xx"),
        (web.Response(status=200, text="<html>maintenance</html>"), "bad_response"),
        (web.json_response({"accepted_events": "all"}), "bad_response"),
    ],
)
async def test_every_kind_of_failed_answer_is_a_send_error_with_its_cause(
    answer: web.Response, cause: str
) -> None:
    """Statuses, redirects and unreadable bodies become send errors named by cause."""

    async def handler(_: web.Request) -> web.Response:
        return answer

    app = web.Application()
    app.router.add_post("/api/v1/events/ingest", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        client = HttpBillingClient(
            session,
            base_url=str(server.make_url("/")),
            license_key="k",
            deployment_id="d",
            timeout=timedelta(seconds=2),
        )
        with pytest.raises(SendError) as failure:
            await client.send([])
    assert failure.value.cause == cause
