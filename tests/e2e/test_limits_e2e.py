"""Limits as real processes, fed through ingest, driven over HTTP as a chat component would."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from libs.events.client import TollgateClient
from tests.support import (
    ADMIN,
    EMITTER,
    EMITTER_TOKEN,
    ServiceProcess,
    StartService,
    eventually,
    unique,
)

pytestmark = pytest.mark.e2e

JsonObject = dict[str, object]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def chat(
    user: str,
    cost: int | None,
    *,
    purpose: str = "chat",
    model: str = "claude-sonnet",
    org: str | None = None,
) -> JsonObject:
    """A chat usage event happening now (in organisation `org`), with the emitter's cost."""
    return {
        "id": unique("evt"),
        "type": "chat.usage.v1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "org_id": org,
        "user_id": user,
        "data": {
            "chat_id": "chat-1",
            "message_id": unique("msg"),
            "model": model,
            "input_tokens": 1000,
            "output_tokens": 200,
            "cost_micros": cost,
            "purpose": purpose,
        },
    }


def group(group_id: str, members: list[str], *, org: str | None = None) -> JsonObject:
    """A group's full member list (a group of organisation `org`)."""
    return {
        "id": unique("grp-evt"),
        "type": "directory.group.v1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "org_id": org,
        "data": {"group_id": group_id, "name": group_id, "member_ids": members},
    }


def start(
    service_factory: StartService, name: str, topics: tuple[str, str], *, snapshot_s: str = "30"
) -> ServiceProcess:
    """A service on this test's private topic."""
    return service_factory(
        name,
        TOLLGATE_EVENTS_TOPIC=topics[0],
        TOLLGATE_DLQ_TOPIC=topics[1],
        TOLLGATE_LIMITS_SNAPSHOT_INTERVAL=snapshot_s,
    )


async def emit(http: aiohttp.ClientSession, ingest: ServiceProcess, *events: JsonObject) -> None:
    """Send events through ingest and insist every one is accepted."""
    resp = await http.post(f"{ingest.url}/api/v1/events", json={"events": events}, headers=EMITTER)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["rejected"] == [], body


async def ready(http: aiohttp.ClientSession, svc: ServiceProcess) -> None:
    """Wait until the service says it is ready."""

    async def probe() -> bool:
        return (await http.get(f"{svc.url}/readyz")).status == 200

    await eventually(probe, timeout_s=20)


async def configure(
    http: aiohttp.ClientSession,
    limits: ServiceProcess,
    *,
    enabled: bool = True,
    default: int | None,
) -> None:
    """Set the configuration (it is global: every test sets what it needs)."""
    body = {"enabled": enabled, "period": "month", "default_limit_micros": default}
    resp = await http.put(f"{limits.url}/api/v1/limits/config", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()


async def override(
    http: aiohttp.ClientSession, limits: ServiceProcess, kind: str, subject: str, limit: int
) -> None:
    """Set a user or group override."""
    resp = await http.put(
        f"{limits.url}/api/v1/limits/overrides/{kind}/{subject}",
        json={"limit_micros": limit},
        headers=ADMIN,
    )
    assert resp.status == 200, await resp.text()


async def check(
    http: aiohttp.ClientSession, limits: ServiceProcess, user: str, org: str | None = None
) -> tuple[int, JsonObject]:
    """A limit check, for a chat of organisation `org` when given: (status, body)."""
    request = {"user_id": user} if org is None else {"user_id": user, "org_id": org}
    resp = await http.post(f"{limits.url}/api/v1/limits/check", json=request, headers=EMITTER)
    body = await resp.json()
    assert isinstance(body, dict)
    return resp.status, body


async def spent(http: aiohttp.ClientSession, limits: ServiceProcess, user: str) -> int:
    """The user's spend this month, from the status API."""
    resp = await http.get(f"{limits.url}/api/v1/limits/status/{user}", headers=EMITTER)
    assert resp.status == 200, await resp.text()
    value = (await resp.json())["spent_micros"]
    assert isinstance(value, int)
    return value


def next_month_start(now: datetime) -> str:
    """The first of next month at 00:00 UTC, as the API renders it."""
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00Z"


async def test_default_user_and_group_limits_as_an_admin_sets_them(
    service_factory: StartService, topics: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    """$1 default blocks with the 409 fields, a $5 override frees at once, groups apply lowest first."""
    ingest, limits = (
        start(service_factory, "ingest", topics),
        start(service_factory, "limits", topics),
    )
    await ready(http, limits)
    await configure(http, limits, default=1_000_000)
    ann, bob, cy, newcomer = unique("ann"), unique("bob"), unique("cy"), unique("new")
    g_low, g_two, g_three = unique("g-low"), unique("g-two"), unique("g-three")
    unpriced_model = unique("model")

    sent_at = time.monotonic()
    await emit(
        http,
        ingest,
        chat(ann, 600_000),
        chat(ann, 400_000),
        chat(ann, 9_000_000, purpose="title"),
        chat(ann, None, model=unpriced_model),
    )

    async def blocked() -> tuple[int, JsonObject] | None:
        status, body = await check(http, limits, ann)
        return (status, body) if status == 409 else None

    result = await eventually(blocked, timeout_s=5, interval_s=0.02)
    assert result is not None
    visible_after = time.monotonic() - sent_at
    status, body = result
    assert body["message"] == "Chat usage limit exceeded."
    assert (body["allowed"], body["limited"], body["source"]) == (False, True, "default")
    assert (body["spent_micros"], body["limit_micros"], body["remaining_micros"]) == (
        1_000_000,
        1_000_000,
        0,
    )
    assert body["resets_at"] == next_month_start(datetime.now(UTC))
    assert body["period"] == "month"
    assert str(body["period_start"]).endswith("-01T00:00:00Z")
    assert visible_after < 2.0

    # The fail-open client other services use reads the same 409.
    async with TollgateClient(
        ingest_url=None,
        limits_url=limits.url,
        token=EMITTER_TOKEN,
        session=http,
        registry=CollectorRegistry(),
        check_timeout=2.0,
    ) as client:
        decision = await client.check_limit(ann)
    assert (decision.allowed, decision.fail_open, decision.source) == (False, False, "default")
    assert decision.resets_at is not None
    assert decision.resets_at.isoformat().replace("+00:00", "Z") == body["resets_at"]

    await override(http, limits, "users", ann, 5_000_000)
    status, body = await check(http, limits, ann)
    assert (status, body["source"], body["remaining_micros"]) == (200, "user", 4_000_000)

    # A group limit lower than the default applies to a member without a user override.
    await override(http, limits, "groups", g_low, 500_000)
    await override(http, limits, "groups", g_two, 3_000_000)
    await override(http, limits, "groups", g_three, 2_000_000)
    await emit(
        http,
        ingest,
        group(g_low, [bob]),
        group(g_two, [cy]),
        group(g_three, [cy, ann]),
        chat(bob, 500_000),
    )

    async def bob_blocked() -> JsonObject | None:
        status, body = await check(http, limits, bob)
        return body if status == 409 else None

    bob_body = await eventually(bob_blocked, timeout_s=5, interval_s=0.02)
    assert bob_body is not None
    assert (bob_body["source"], bob_body["group_id"], bob_body["limit_micros"]) == (
        "group",
        g_low,
        500_000,
    )

    # Group events are keyed by group, so they may arrive after bob's usage: poll.
    async def cy_in_both_groups() -> JsonObject | None:
        status, body = await check(http, limits, cy)
        return body if status == 200 and body["limit_micros"] == 2_000_000 else None

    cy_body = await eventually(cy_in_both_groups, timeout_s=5, interval_s=0.02)
    assert cy_body is not None
    assert (cy_body["source"], cy_body["group_id"]) == ("group", g_three)
    # The user override still outranks ann's new group.
    assert (await check(http, limits, ann))[1]["source"] == "user"

    status, body = await check(http, limits, newcomer)
    assert (status, body["spent_micros"], body["source"]) == (200, 0, "default")

    await configure(http, limits, enabled=False, default=1_000_000)
    status, body = await check(http, limits, bob)
    assert (status, body["allowed"], body["limited"]) == (200, True, False)

    config = await (await http.get(f"{limits.url}/api/v1/limits/config", headers=ADMIN)).json()
    assert unpriced_model in config["unpriced_models"]
    assert config["unpriced_model_count"] >= 1


async def test_a_config_change_reaches_two_replicas_within_a_second(
    service_factory: StartService, topics: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    """A default and an override set through one replica are in force on the other within a second."""
    one, two = start(service_factory, "limits", topics), start(service_factory, "limits", topics)
    await ready(http, one)
    await ready(http, two)
    user = unique("user")
    default = random.randint(10_000, 99_999)
    await configure(http, one, default=default)
    started = time.monotonic()
    await override(http, one, "users", user, default + 1)

    async def both_see_it() -> bool:
        answers = [await check(http, svc, user) for svc in (one, two)]
        other = unique("other")
        defaults = [(await check(http, svc, other))[1]["limit_micros"] for svc in (one, two)]
        return all(body["limit_micros"] == default + 1 for _, body in answers) and defaults == [
            default,
            default,
        ]

    await eventually(both_see_it, timeout_s=1.0, interval_s=0.02)
    assert time.monotonic() - started < 1.0


async def test_pricing_a_model_takes_it_off_unpriced_models_on_both_replicas_within_a_second(
    service_factory: StartService, topics: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    """An admin prices a model on ingest; both limits replicas stop listing it within a second,
    with no new usage, and list it again within a second of the price being deleted."""
    ingest = start(service_factory, "ingest", topics)
    one, two = start(service_factory, "limits", topics), start(service_factory, "limits", topics)
    await ready(http, one)
    await ready(http, two)
    model = unique("model")
    await emit(http, ingest, chat(unique("u"), None, model=model))

    async def listed_on(svc: ServiceProcess) -> bool:
        resp = await http.get(f"{svc.url}/api/v1/limits/config", headers=ADMIN)
        assert resp.status == 200, await resp.text()
        return model in (await resp.json())["unpriced_models"]

    async def listed_on_both() -> bool:
        return await listed_on(one) and await listed_on(two)

    async def listed_on_neither() -> bool:
        return not await listed_on(one) and not await listed_on(two)

    await eventually(listed_on_both, timeout_s=10, interval_s=0.05)
    price = {"input_price_per_million": "3.00", "output_price_per_million": "15.00"}
    resp = await http.put(f"{ingest.url}/api/v1/pricing/models/{model}", json=price, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    started = time.monotonic()
    await eventually(listed_on_neither, timeout_s=1.0, interval_s=0.02)
    assert time.monotonic() - started < 1.0
    resp = await http.delete(f"{ingest.url}/api/v1/pricing/models/{model}", headers=ADMIN)
    assert resp.status == 204
    started = time.monotonic()
    await eventually(listed_on_both, timeout_s=1.0, interval_s=0.02)
    assert time.monotonic() - started < 1.0


async def test_group_limits_belong_to_organisations_and_count_their_spend(
    service_factory: StartService, topics: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    """A user in groups of two organisations is blocked in the one whose group budget their spend
    there reached, allowed in the other, and the 409 names the organisation and its group."""
    ingest, limits = (
        start(service_factory, "ingest", topics),
        start(service_factory, "limits", topics),
    )
    await ready(http, limits)
    await configure(http, limits, default=100_000_000)
    ann, org_a, org_b = unique("ann"), unique("org-a"), unique("org-b")
    g_a, g_b = unique("g-a"), unique("g-b")
    await override(http, limits, "groups", g_a, 1_000_000)
    await override(http, limits, "groups", g_b, 2_000_000)
    await emit(
        http,
        ingest,
        group(g_a, [ann], org=org_a),
        group(g_b, [ann], org=org_b),
        chat(ann, 1_000_000, org=org_a),
        chat(ann, 500_000, org=org_b),
    )

    async def blocked_in_a() -> JsonObject | None:
        status, body = await check(http, limits, ann, org_a)
        return body if status == 409 else None

    body = await eventually(blocked_in_a, timeout_s=5, interval_s=0.02)
    assert body is not None
    assert (body["source"], body["group_id"], body["org_id"]) == ("group", g_a, org_a)
    assert (body["limit_micros"], body["spent_micros"]) == (1_000_000, 1_000_000)

    async def allowed_in_b() -> JsonObject | None:
        status, body = await check(http, limits, ann, org_b)
        return body if status == 200 and body["spent_micros"] == 500_000 else None

    body_b = await eventually(allowed_in_b, timeout_s=5, interval_s=0.02)
    assert body_b is not None
    assert (body_b["group_id"], body_b["org_id"], body_b["remaining_micros"]) == (
        g_b,
        org_b,
        1_500_000,
    )
    status = await http.get(
        f"{limits.url}/api/v1/limits/status/{ann}", params={"org_id": org_b}, headers=EMITTER
    )
    assert (await status.json())["org_id"] == org_b
    config = await (await http.get(f"{limits.url}/api/v1/limits/config", headers=ADMIN)).json()
    orgs = {o["group_id"]: o["org_id"] for o in config["group_overrides"]}
    assert (orgs[g_a], orgs[g_b]) == (org_a, org_b)


async def test_sigkill_during_a_stream_then_restart_gives_exact_totals(
    service_factory: StartService, topics: tuple[str, str], http: aiohttp.ClientSession
) -> None:
    """After SIGKILL mid-stream, a restart from the snapshot has every accepted cost exactly once."""
    ingest = start(service_factory, "ingest", topics)
    limits = start(service_factory, "limits", topics, snapshot_s="0.2")
    await ready(http, limits)
    await configure(http, limits, default=10**12)
    users = [unique("user") for _ in range(5)]
    expected: dict[str, int] = defaultdict(int)
    sent: list[JsonObject] = []
    rng = random.Random(7)
    stop = asyncio.Event()

    async def stream() -> None:
        while not stop.is_set():
            batch: list[JsonObject] = []
            for _ in range(20):
                user = rng.choice(users)
                cost = rng.randint(1, 5_000)
                batch.append(chat(user, cost))
                expected[user] += cost
            # Resends of earlier events (same ids) must never count twice.
            batch += rng.sample(sent, min(len(sent), 5))
            await emit(http, ingest, *batch)
            sent.extend(e for e in batch[:20])
            await asyncio.sleep(0.02)

    streaming = asyncio.create_task(stream())
    try:

        async def snapshot_written() -> bool:
            return "limits_snapshot_written" in limits.logs() and len(sent) > 200

        await eventually(snapshot_written, timeout_s=10)
        limits.kill()
        await asyncio.sleep(0.5)  # events keep arriving while limits is down
        restarted = start(service_factory, "limits", topics, snapshot_s="0.2")
        await ready(http, restarted)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await streaming

    async def exact() -> bool:
        return all([await spent(http, restarted, u) == expected[u] for u in users])

    await eventually(exact, timeout_s=5)
    assert "limits_snapshot_loaded" in restarted.logs()
    assert len(sent) > 200
