"""Budget notifications end to end: usage through ingest, two limits replicas, one SIGKILLed.

A $1.00 monthly default with an 85 % warning; a user spends $0.50, then $0.90, then $1.10.
Exactly one `budget.warning` and one `budget.limit_reached` reach the registered endpoint,
each with a signature the `standardwebhooks` library accepts (the first only on its fourth
try: the receiver answers 500 three times), and the matching emails reach the user and
every admin through a real SMTP server (admins named in the directory just before, whatever
partition their entries went to). Two limits replicas record against one database, and one of
them is SIGKILLed between the warning and the limit: nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from tests.e2e.test_limits_e2e import chat
from tests.notify_support import SmtpSink, WebhookReceiver
from tests.support import (
    ADMIN,
    EMITTER,
    Infra,
    ServiceProcess,
    StartService,
    create_database,
    eventually,
    unique,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

JsonObject = dict[str, object]
#: A model without a price: the emitter's cost counts as sent.
MODEL = "house-model"


def person(user: str, email: str, roles: list[str]) -> JsonObject:
    """A directory entry."""
    return {
        "id": unique("dir"),
        "type": "directory.user.v1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "user_id": user,
        "data": {
            "username": user,
            "name": user.title(),
            "email": email,
            "roles": roles,
            "created_at": "2026-01-01T00:00:00Z",
            "suspended": False,
            "licensed": True,
        },
    }


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    """A real SMTP server for this test."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook endpoint that answers 500 three times, then 200."""
    hooks = await WebhookReceiver(script=[500, 500, 500]).start()
    try:
        yield hooks
    finally:
        await hooks.stop()


async def _send(http: aiohttp.ClientSession, ingest: ServiceProcess, *events: JsonObject) -> None:
    async with http.post(
        f"{ingest.url}/api/v1/events", json={"events": list(events)}, headers=EMITTER
    ) as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["rejected"] == [], body


async def _spent(http: aiohttp.ClientSession, limits: ServiceProcess, user: str) -> int:
    async with http.get(f"{limits.url}/api/v1/limits/status/{user}", headers=EMITTER) as r:
        if r.status != 200:
            return -1
        value = (await r.json())["spent_micros"]
        assert isinstance(value, int)
        return value


async def test_50_90_110_cents_notify_once_each_across_two_replicas_and_a_sigkill(
    infra: Infra,
    service_factory: StartService,
    topics: tuple[str, str],
    smtp: SmtpSink,
    receiver: WebhookReceiver,
) -> None:
    """One warning and one limit notice, signed, the first on its fourth try; emails to the user and each admin."""
    database = await create_database(infra, unique("e2e_notify").replace("-", "_"))

    def start(name: str) -> ServiceProcess:
        return service_factory(
            name,
            DATABASE_URL=database,
            TOLLGATE_EVENTS_TOPIC=topics[0],
            TOLLGATE_DLQ_TOPIC=topics[1],
            TOLLGATE_LIMITS_SNAPSHOT_INTERVAL="1",
        )

    ingest = start("ingest")
    replicas = [start("limits"), start("limits")]
    reports = service_factory(
        "reports",
        DATABASE_URL=database,
        TOLLGATE_EVENTS_TOPIC=topics[0],
        TOLLGATE_DLQ_TOPIC=topics[1],
        TOLLGATE_SMTP_URL=smtp.url,
        TOLLGATE_SMTP_FROM="Tollgate <noreply@example.com>",
        TOLLGATE_NOTIFY_ADMIN_EMAILS="finance@example.com",
        TOLLGATE_WEBHOOK_ALLOW_PRIVATE="true",
        TOLLGATE_NOTIFY_POLL="0.1",
        TOLLGATE_NOTIFY_BACKOFF_BASE="200ms",
        TOLLGATE_NOTIFY_BACKOFF_MAX="1s",
        TOLLGATE_NOTIFY_TIMEOUT="5s",
        TOLLGATE_NOTIFY_CLAIM_TIMEOUT="10s",
    )
    user = unique("ann")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        for svc in (*replicas, reports):

            async def ready(svc: ServiceProcess = svc) -> bool:
                try:
                    async with http.get(f"{svc.url}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout_s=60)
        config = {
            "enabled": True,
            "period": "month",
            "default_limit_micros": 1_000_000,
            "warning_threshold_percent": 85,
        }
        async with http.put(
            f"{replicas[0].url}/api/v1/limits/config", json=config, headers=ADMIN
        ) as r:
            assert r.status == 200, await r.text()
        async with http.post(
            f"{reports.url}/api/v1/notifications/webhooks",
            json={"url": receiver.url(), "description": "e2e"},
            headers=ADMIN,
        ) as r:
            assert r.status == 201, await r.text()
            secret = (await r.json())["secret"]
        await _send(
            http,
            ingest,
            person(user, f"{user}@example.com", ["member"]),
            person(f"{user}-owner", f"owner-{user}@example.com", ["owner"]),
            person(f"{user}-admin", f"admin-{user}@example.com", ["member", "user-admin"]),
        )

        async def everywhere(cents: int) -> bool:
            spent = [
                await _spent(http, r, user)
                for r in replicas
                if r.process and r.process.poll() is None
            ]
            return all(s == cents * 10_000 for s in spent)

        await _send(http, ingest, chat(user, 500_000, model=MODEL))
        await eventually(lambda: everywhere(50))
        await _send(http, ingest, chat(user, 400_000, model=MODEL))
        await eventually(lambda: everywhere(90))

        async def warned() -> bool:
            return len(receiver.answered()) >= 1

        await eventually(warned, timeout_s=30)
        replicas[0].kill()
        await _send(http, ingest, chat(user, 200_000, model=MODEL))
        await eventually(lambda: everywhere(110))
        replicas[0].start()

        async def both_delivered() -> bool:
            return len(receiver.delivered_ids()) >= 2 and len(smtp.mails) >= 8

        try:
            await eventually(both_delivered, timeout_s=60)
        except AssertionError as exc:
            seen = [(h.webhook_id, h.answered) for h in receiver.hooks]
            mailed = [(m.rcpt_tos, m.subject) for m in smtp.mails]
            raise AssertionError(f"{exc}; webhooks: {seen}; mails: {mailed}") from exc
        await eventually(lambda: everywhere(110), timeout_s=60)
        # Whatever either replica re-evaluates after the restart adds nothing.
        await asyncio.sleep(2)
        async with http.get(
            f"{reports.url}/api/v1/notifications/deliveries",
            params={"user_id": user, "channel": "webhook"},
            headers=ADMIN,
        ) as r:
            deliveries = (await r.json())["deliveries"]
    delivered = receiver.answered()
    docs = [hook.verified(secret) for hook in delivered]
    assert [d["type"] for d in docs] == ["budget.warning", "budget.limit_reached"]
    assert all(d["data"]["user_id"] == user for d in docs)
    assert docs[0]["data"]["spent_micros"] == 900_000
    assert docs[0]["data"]["threshold_percent"] == 85
    assert docs[1]["data"]["threshold_percent"] == 100
    assert docs[0]["data"]["username"] == user
    assert docs[0]["data"]["limit_micros"] == 1_000_000
    assert docs[0]["data"]["source"] == "default"
    assert all(n == 1 for n in receiver.delivered_ids().values())
    warning_id = delivered[0].webhook_id
    assert [h.webhook_id for h in receiver.hooks[:4]] == [warning_id] * 4
    assert [h.answered for h in receiver.hooks[:4]] == [500, 500, 500, 200]
    by_type = {d["type"]: d for d in deliveries}
    assert by_type["budget.warning"]["attempts"] == 4
    assert by_type["budget.warning"]["id"] == warning_id
    assert by_type["budget.limit_reached"]["status"] == "delivered"
    assert len(deliveries) == 2
    for address in (
        f"{user}@example.com",
        f"owner-{user}@example.com",
        f"admin-{user}@example.com",
        "finance@example.com",
    ):
        got = smtp.to(address)
        assert len(got) == 2, address
    assert len(smtp.mails) == 8
    assert (
        smtp.to(f"{user}@example.com")[0].subject
        == "You have used 85% of your monthly AI spend limit"
    )
    assert (
        smtp.to("finance@example.com")[1].subject
        == f"{user} has reached their monthly AI spend limit"
    )
