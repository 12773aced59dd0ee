"""The notifications admin API on an in-memory store: endpoints, secrets, test events, deliveries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.reports.app import build_app
from services.reports.config import ReportsSettings
from services.reports.notifications.api import NOTIFICATION_ROUTES
from services.reports.notifications.storage import InMemoryNotificationAdmin
from services.reports.storage import InMemoryReportStore
from tests.contracts import Example, failures, walk, walk_values

ADMIN = {"Authorization": "Bearer admin"}
EMITTER = {"Authorization": "Bearer emit"}
HOOKS = "/api/v1/notifications/webhooks"
DELIVERIES = "/api/v1/notifications/deliveries"

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def api() -> AsyncIterator[tuple[Client, InMemoryNotificationAdmin]]:
    """Reports on in-memory stores, with the default (public addresses only) webhook policy."""
    settings = ReportsSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="emit",
        TOLLGATE_ADMIN_TOKENS="admin",
        TOLLGATE_WEBHOOK_ALLOW_NETWORKS="10.9.0.0/16",
    )
    admin = InMemoryNotificationAdmin()
    app = build_app(
        settings, store=InMemoryReportStore(), registry=CollectorRegistry(), notifications=admin
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, admin
    finally:
        await client.close()


async def test_a_new_endpoint_shows_its_secret_once(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """POST answers 201 with a `whsec_` secret; the list never shows it."""
    client, _ = api
    resp = await client.post(
        HOOKS, json={"url": "https://hooks.example.com/t", "description": "ops"}, headers=ADMIN
    )
    assert resp.status == 201
    created = await resp.json()
    assert set(created) == {"id", "url", "description", "secret", "created_at"}
    assert created["secret"].startswith("whsec_")
    listed = await (await client.get(HOOKS, headers=ADMIN)).json()
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]
    assert "secret" not in listed["webhooks"][0]
    assert created["secret"] not in str(listed)


async def test_private_addresses_are_refused_unless_their_network_is_allowed(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """Loopback and metadata addresses are 422 naming `url`; an allowed network passes."""
    client, _ = api
    for url in (
        "http://127.0.0.1/x",
        "http://169.254.169.254/latest",
        "http://localhost/x",
        "gopher://x.example/",
    ):
        resp = await client.post(HOOKS, json={"url": url}, headers=ADMIN)
        assert resp.status == 422, url
        assert (await resp.json())["message"].startswith("url: ")
    resp = await client.post(HOOKS, json={"url": "http://10.9.3.4:8080/hook"}, headers=ADMIN)
    assert resp.status == 201


async def test_only_admins_manage_endpoints(api: tuple[Client, InMemoryNotificationAdmin]) -> None:
    """An emitter token gets 403 on every notifications route, no token 401."""
    client, _ = api
    for method, path in (
        ("GET", HOOKS),
        ("POST", HOOKS),
        ("GET", "/api/v1/notifications/deliveries"),
        ("GET", "/api/v1/notifications/status"),
        ("DELETE", f"{HOOKS}/wh_1"),
        ("POST", f"{HOOKS}/wh_1/test"),
    ):
        assert (await client.request(method, path, headers=EMITTER)).status == 403, path
        assert (await client.request(method, path)).status == 401, path


async def test_test_events_and_deletes_name_unknown_endpoints(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """A test event for an endpoint is queued (202); an unknown or deleted one is 404."""
    client, admin = api
    created = await (
        await client.post(HOOKS, json={"url": "https://h.example/x"}, headers=ADMIN)
    ).json()
    resp = await client.post(f"{HOOKS}/{created['id']}/test", headers=ADMIN)
    assert resp.status == 202
    queued = await resp.json()
    assert queued["id"].startswith("msg_")
    deliveries = await (
        await client.get("/api/v1/notifications/deliveries?status=pending", headers=ADMIN)
    ).json()
    assert [d["id"] for d in deliveries["deliveries"]] == [queued["id"]]
    assert deliveries["deliveries"][0]["type"] == "webhook.test"
    assert (await client.delete(f"{HOOKS}/{created['id']}", headers=ADMIN)).status == 204
    assert (await client.delete(f"{HOOKS}/{created['id']}", headers=ADMIN)).status == 404
    assert (await client.post(f"{HOOKS}/{created['id']}/test", headers=ADMIN)).status == 404
    failed = await (
        await client.get("/api/v1/notifications/deliveries?status=failed", headers=ADMIN)
    ).json()
    assert failed["deliveries"][0]["last_error"] == "the endpoint was deleted before delivery"
    status = await (await client.get("/api/v1/notifications/status", headers=ADMIN)).json()
    assert status["webhooks"] == 0
    assert status["email_configured"] is False
    assert status["channels"]["webhook"]["pending"] == 0
    assert status["retention_seconds"] == 90 * 86400
    assert admin.deleted == {created["id"]}


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("status=sent", "status: must be one of"),
        ("channel=sms", "channel: must be one of"),
        ("limit=0", "limit:"),
        ("limit=-1", "limit:"),
        ("limit=1e9", "limit:"),
        ("limit=99999999999999999999", "limit:"),
        ("user_id=%00x", "user_id:"),
        ("user_id=a%0Ab", "user_id:"),
        ("status=pending&status=failed", "give it once"),
        ("order=asc", "unknown query parameter"),
    ],
)
async def test_bad_delivery_queries_are_400_naming_the_parameter(
    api: tuple[Client, InMemoryNotificationAdmin], query: str, problem: str
) -> None:
    """Each bad filter is a 400 whose message names the parameter."""
    client, _ = api
    resp = await client.get(f"/api/v1/notifications/deliveries?{query}", headers=ADMIN)
    assert resp.status == 400
    assert problem in (await resp.json())["message"]


async def test_a_store_that_does_not_answer_is_503(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """A database outage answers 503 with Retry-After, never 500."""
    client, admin = api
    admin.down = True
    resp = await client.get(HOOKS, headers=ADMIN)
    assert resp.status == 503
    assert "Retry-After" in resp.headers


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TOLLGATE_NOTIFY_RETENTION": "30d"}, "TOLLGATE_NOTIFY_RETENTION"),
        ({"TOLLGATE_NOTIFY_RETENTION": "-90d"}, "TOLLGATE_NOTIFY_RETENTION"),
        ({"TOLLGATE_NOTIFY_RETENTION": "inf"}, "not a finite number"),
        ({"TOLLGATE_NOTIFY_RETENTION": "99999999999d"}, "longer than"),
        ({"TOLLGATE_NOTIFY_RETENTION": "90d\x00"}, "TOLLGATE_NOTIFY_RETENTION"),
        (
            {"TOLLGATE_NOTIFY_RETENTION": "70d", "TOLLGATE_NOTIFY_RETRY_FOR": "80d"},
            "longer than TOLLGATE_NOTIFY_RETRY_FOR",
        ),
    ],
)
def test_a_retention_shorter_than_a_period_or_the_retry_window_is_refused(
    env: dict[str, str], problem: str
) -> None:
    """Pruning a notification before its period ends would let a replay record it again."""
    with pytest.raises(ValueError, match=problem):
        ReportsSettings.model_validate({"DATABASE_URL": "postgresql://unused", **env})


async def test_every_route_answers_the_model_its_table_declares(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """Each notifications route, called once, succeeds with the body its table declares."""
    client, admin = api
    made = await client.post(HOOKS, json={"url": "https://h.example/walk"}, headers=ADMIN)
    webhook = {"webhook_id": (await made.json())["id"]}
    failed = await _failed_delivery(admin, webhook["webhook_id"])
    answers = await walk(
        client,
        NOTIFICATION_ROUTES,
        headers=ADMIN,
        examples={
            ("POST", HOOKS): Example(body={"url": "https://h.example/other"}),
            ("POST", f"{HOOKS}/{{webhook_id}}/test"): Example(path=webhook),
            ("POST", f"{HOOKS}/{{webhook_id}}/rotate-secret"): Example(path=webhook),
            ("POST", f"{HOOKS}/{{webhook_id}}/enable"): Example(path=webhook),
            ("POST", f"{DELIVERIES}/{{delivery_id}}/retry"): Example(
                path={"delivery_id": f"msg_{failed.hex}"}
            ),
            ("DELETE", f"{HOOKS}/{{webhook_id}}"): Example(path=webhook),
            ("GET", "/api/v1/notifications/deliveries"): Example(query={"status": "pending"}),
        },
    )
    assert failures(answers) == []
    assert len(answers) == len(NOTIFICATION_ROUTES)
    values = await walk_values(client, NOTIFICATION_ROUTES, headers=ADMIN)
    assert failures(values) == []
    assert len(values) == 3 + 2


async def _failed_delivery(admin: InMemoryNotificationAdmin, webhook_id: str) -> uuid.UUID:
    """A test delivery to the endpoint, given up as if its retry window had passed."""
    delivery_id = await admin.queue_trial(webhook_id, "{}")
    assert delivery_id is not None
    admin.items = [
        replace(d, status="failed", attempts=7, last_error="HTTP 503") if d.id == delivery_id else d
        for d in admin.items
    ]
    return delivery_id


async def test_a_failed_delivery_is_sent_again_under_the_same_id(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """Retry makes a failed delivery pending again; a pending one, an unknown id, a deleted
    endpoint's and a malformed id are refused by name, and only admins may ask."""
    client, admin = api
    made = await (
        await client.post(HOOKS, json={"url": "https://h.example/r"}, headers=ADMIN)
    ).json()
    failed = await _failed_delivery(admin, made["id"])
    shown = f"msg_{failed.hex}"
    assert (await client.post(f"{DELIVERIES}/{shown}/retry", headers=EMITTER)).status == 403
    resp = await client.post(f"{DELIVERIES}/{shown}/retry", headers=ADMIN)
    assert resp.status == 202
    assert await resp.json() == {"id": shown, "status": "pending"}
    listed = await (await client.get(f"{DELIVERIES}?status=pending", headers=ADMIN)).json()
    assert [(d["id"], d["attempts"]) for d in listed["deliveries"]] == [(shown, 7)]
    again = await client.post(f"{DELIVERIES}/{shown}/retry", headers=ADMIN)
    assert again.status == 409
    assert "pending or delivered" in (await again.json())["message"]
    unknown = await client.post(f"{DELIVERIES}/msg_{uuid.uuid4().hex}/retry", headers=ADMIN)
    assert unknown.status == 404
    for bad in ("abc", f"{failed.hex}", "msg_" + "g" * 32, "MSG_" + failed.hex, "a%00b"):
        resp = await client.post(f"{DELIVERIES}/{bad}/retry", headers=ADMIN)
        assert resp.status == 422, bad
        assert "delivery_id" in (await resp.json())["message"]
    other = await _failed_delivery(admin, made["id"])
    assert (await client.delete(f"{HOOKS}/{made['id']}", headers=ADMIN)).status == 204
    gone = await client.post(f"{DELIVERIES}/msg_{other.hex}/retry", headers=ADMIN)
    assert gone.status == 409
    assert "deleted or disabled" in (await gone.json())["message"]


async def test_a_rotated_secret_is_shown_once_and_the_old_one_signs_for_a_day(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """Rotation answers a new `whsec_` secret and when the old one stops signing; unknown is 404."""
    client, admin = api
    made = await (
        await client.post(HOOKS, json={"url": "https://h.example/s"}, headers=ADMIN)
    ).json()
    path = f"{HOOKS}/{made['id']}/rotate-secret"
    assert (await client.post(path, headers=EMITTER)).status == 403
    before = datetime.now(UTC)
    resp = await client.post(path, headers=ADMIN)
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["id"] == made["id"]
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != made["secret"]
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert timedelta(hours=23, minutes=59) < expires - before <= timedelta(hours=24, seconds=5)
    assert admin.previous[made["id"]] == made["secret"]
    assert admin.hooks[made["id"]].secret == rotated["secret"]
    listed = await (await client.get(HOOKS, headers=ADMIN)).text()
    assert rotated["secret"] not in listed
    assert (await client.post(f"{HOOKS}/wh_nope/rotate-secret", headers=ADMIN)).status == 404


async def test_an_endpoint_disabled_by_a_410_can_be_enabled_again(
    api: tuple[Client, InMemoryNotificationAdmin],
) -> None:
    """Enable clears the disabled mark (and is harmless on an active endpoint); unknown is 404."""
    client, admin = api
    made = await (
        await client.post(HOOKS, json={"url": "https://h.example/e"}, headers=ADMIN)
    ).json()
    admin.hooks[made["id"]] = replace(
        admin.hooks[made["id"]], disabled_at=datetime.now(UTC), disabled_reason="HTTP 410 Gone"
    )
    path = f"{HOOKS}/{made['id']}/enable"
    assert (await client.post(path, headers=EMITTER)).status == 403
    resp = await client.post(path, headers=ADMIN)
    assert resp.status == 200
    view = await resp.json()
    assert (view["disabled_at"], view["disabled_reason"]) == (None, None)
    assert "secret" not in view
    assert (await client.post(path, headers=ADMIN)).status == 200
    assert (await client.post(f"{HOOKS}/wh_nope/enable", headers=ADMIN)).status == 404
