"""Notifications under attack: hostile endpoint bodies, addresses inside the network, other users.

Webhook URLs are where a server-side request forgery would start: every address that is not
public (loopback, private, link-local such as the cloud metadata service, unspecified) is
refused when an endpoint is added, whatever spelling it hides behind, and so are schemes
other than http(s) and credentials in the URL. Text fields refuse NUL and control characters
like every other field; numbers that are not whole 1 to 99 are refused for the warning share.
Secrets are shown once and never logged.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.security.conftest import Secured
from tests.security.operations import ADMIN, EMITTER, request
from tests.security.test_console import mint

pytestmark = pytest.mark.e2e

JSON = {**ADMIN, "Content-Type": "application/json"}
HOOKS = "/api/v1/notifications/webhooks"

HOSTILE_ENDPOINTS: list[tuple[Any, str]] = [
    ({"url": "http://127.0.0.1:8083/api/v1/limits/config"}, "url"),
    ({"url": "http://2130706433/"}, "url"),
    ({"url": "http://0x7f.0.0.1/"}, "url"),
    ({"url": "http://[::1]:8082/"}, "url"),
    ({"url": "http://[::ffff:169.254.169.254]/"}, "url"),
    ({"url": "http://169.254.169.254/latest/meta-data/iam"}, "url"),
    ({"url": "http://metadata.localhost/"}, "url"),
    ({"url": "http://10.0.0.5/"}, "url"),
    ({"url": "http://0.0.0.0:9092/"}, "url"),
    ({"url": "file:///etc/passwd"}, "url"),
    ({"url": "gopher://evil.example/"}, "url"),
    ({"url": "https://admin:pw@hooks.example.com/"}, "url"),
    ({"url": "https://hooks.example.com/\x00"}, "url"),
    ({"url": "https://hooks.example.com/\r\nX-Injected: 1"}, "url"),
    ({"url": "https://hooks.example.com/" + "a" * 5000}, "url"),
    ({"url": ""}, "url"),
    ({"url": 7}, "url"),
    ({"url": 1e308}, "url"),
    ({"url": None}, "url"),
    ({"url": ["https://hooks.example.com/"]}, "url"),
    ({"description": "no url"}, "url"),
    ({"url": "https://hooks.example.com/", "description": "a\x00b"}, "description"),
    ({"url": "https://hooks.example.com/", "description": "\x1b[31mred"}, "description"),
    ({"url": "https://hooks.example.com/", "description": "x" * 257}, "description"),
    ({"url": "https://hooks.example.com/", "description": -1}, "description"),
    ({"url": "https://hooks.example.com/", "secret": "whsec_mine"}, "secret"),
    ({"url": "https://hooks.example.com/", "id": "wh_chosen"}, "id"),
]


@pytest.mark.parametrize(("body", "field"), HOSTILE_ENDPOINTS)
async def test_hostile_endpoints_are_422_naming_the_field(
    secured: Secured, body: Any, field: str
) -> None:
    """Addresses inside the network, other schemes, controls and wrong types are refused by name."""
    status, raw, _ = await request(
        secured.url("reports"), "post", HOOKS, headers=JSON, body=orjson.dumps(body)
    )
    assert status == 422, (body, raw)
    assert field in orjson.loads(raw)["message"]


async def test_a_secret_is_shown_once_and_never_logged(secured: Secured) -> None:
    """The secret is in the 201 answer only: not in the list, not in any service's log."""
    status, raw, _ = await request(
        secured.url("reports"),
        "post",
        HOOKS,
        headers=JSON,
        body=orjson.dumps({"url": "https://hooks.example.com/sec", "description": "security"}),
    )
    assert status == 201, raw
    created = orjson.loads(raw)
    _, listed, _ = await request(secured.url("reports"), "get", HOOKS, headers=ADMIN)
    assert created["secret"] not in listed.decode()
    for svc in secured.stack.services.values():
        assert created["secret"] not in svc.logs()
    status, _, _ = await request(
        secured.url("reports"), "delete", f"{HOOKS}/{created['id']}", headers=ADMIN
    )
    assert status == 204


@pytest.mark.parametrize("webhook_id", ["a%00b", "a%0Ab", "%1B%5B31m", "x" * 129])
async def test_hostile_endpoint_ids_are_4xx(secured: Secured, webhook_id: str) -> None:
    """NUL, controls and overlong ids in the path are refused, never a 5xx."""
    for method, path in (
        ("delete", f"{HOOKS}/{webhook_id}"),
        ("post", f"{HOOKS}/{webhook_id}/test"),
        ("post", f"{HOOKS}/{webhook_id}/rotate-secret"),
        ("post", f"{HOOKS}/{webhook_id}/enable"),
    ):
        status, raw, _ = await request(secured.url("reports"), method, path, headers=ADMIN)
        assert 400 <= status < 500, (path, status, raw)


@pytest.mark.parametrize(
    "delivery_id",
    [
        "msg_%00" + "0" * 31,
        "msg_" + "0" * 31 + "%0A",
        "%1B%5B31m",
        "msg_" + "f" * 33,
        "msg_-1",
        "msg_1e308",
        "x" * 129,
        "..%2F..%2Fwebhooks",
    ],
)
async def test_hostile_delivery_ids_are_4xx(secured: Secured, delivery_id: str) -> None:
    """Controls, wrong lengths, numbers and paths as a delivery id are refused, never a 5xx."""
    status, raw, _ = await request(
        secured.url("reports"),
        "post",
        f"/api/v1/notifications/deliveries/{delivery_id}/retry",
        headers=ADMIN,
    )
    assert 400 <= status < 500, (delivery_id, status, raw)


async def test_only_admins_retry_deliveries_and_rotate_secrets(secured: Secured) -> None:
    """Emitter and portal tokens may neither send a delivery again nor get an endpoint's secret."""
    token = await mint(secured, secured.sim.users[0].id)
    made_status, made, _ = await request(
        secured.url("reports"),
        "post",
        HOOKS,
        headers=JSON,
        body=orjson.dumps({"url": "https://hooks.example.com/rot", "description": "security"}),
    )
    assert made_status == 201, made
    hook = orjson.loads(made)
    for headers in ({"Authorization": f"Bearer {token}"}, EMITTER):
        for path in (
            f"{HOOKS}/{hook['id']}/rotate-secret",
            f"{HOOKS}/{hook['id']}/enable",
            f"/api/v1/notifications/deliveries/msg_{'0' * 32}/retry",
        ):
            status, raw, _ = await request(secured.url("reports"), "post", path, headers=headers)
            assert status == 403, (path, status)
            assert b"whsec_" not in raw
    status, _, _ = await request(
        secured.url("reports"), "delete", f"{HOOKS}/{hook['id']}", headers=ADMIN
    )
    assert status == 204


async def test_portal_and_emitter_tokens_cannot_read_deliveries_even_their_own(
    secured: Secured,
) -> None:
    """Deliveries name users and recipients: admin only, even for a portal token's own user."""
    user = secured.sim.users[0].id
    token = await mint(secured, user)
    for headers in ({"Authorization": f"Bearer {token}"}, EMITTER):
        status, _, _ = await request(
            secured.url("reports"),
            "get",
            f"/api/v1/notifications/deliveries?user_id={user}",
            headers=headers,
        )
        assert status == 403
        status, _, _ = await request(secured.url("reports"), "get", HOOKS, headers=headers)
        assert status == 403


@pytest.mark.parametrize("value", [0, 100, -5, 85.5, "85", True, 1e308, 2**63, [85], {"p": 85}])
async def test_a_hostile_warning_share_is_422_naming_it(secured: Secured, value: Any) -> None:
    """The warning share is a whole number from 1 to 99, or null; the limits config stays as it was."""
    base = secured.url("limits")
    _, before, _ = await request(base, "get", "/api/v1/limits/config", headers=ADMIN)
    body = {
        "enabled": True,
        "period": "month",
        "default_limit_micros": None,
        "warning_threshold_percent": value,
    }
    status, raw, _ = await request(
        base, "put", "/api/v1/limits/config", headers=JSON, body=orjson.dumps(body)
    )
    assert status == 422, raw
    assert "warning_threshold_percent" in orjson.loads(raw)["message"]
    _, after, _ = await request(base, "get", "/api/v1/limits/config", headers=ADMIN)
    assert (
        orjson.loads(after)["warning_threshold_percent"]
        == orjson.loads(before)["warning_threshold_percent"]
    )
