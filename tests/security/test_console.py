"""Portal tokens, console sessions and CSRF under attack: bad input, forgeries and other users.

Portal tokens read one user's status and costs and nothing else; malformed, tampered, expired
and revoked tokens get 401; sessions are refused unless their cookie is signed, unexpired and
still open; state-changing console calls need the session's CSRF token from this origin.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from libs.service.portal import PortalClaims, PortalSigner
from services.reports.console.sessions import CookieSession, SessionSigner
from tests.reliability.stack import PORTAL_SECRET
from tests.security.conftest import Secured
from tests.security.operations import ADMIN, EMITTER, operations, request
from tests.support import ADMIN_TOKEN

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}


async def mint(secured: Secured, user_id: str, ttl: int = 600) -> str:
    """A portal token minted with the emitter token."""
    status, body, _ = await request(
        secured.url("reports"),
        "post",
        "/api/v1/portal/tokens",
        headers={**EMITTER, **JSON},
        body=orjson.dumps({"user_id": user_id, "ttl_seconds": ttl}),
    )
    assert status == 201, body
    token: str = orjson.loads(body)["token"]
    return token


BAD_MINT_BODIES: list[Any] = [
    {"user_id": "a\x00b"},
    {"user_id": "line\nbreak"},
    {"user_id": "\x1b[31mred"},
    {"user_id": ""},
    {"user_id": "x" * 129},
    {"user_id": 7},
    {"user_id": None},
    {},
    {"user_id": "u", "ttl_seconds": -1},
    {"user_id": "u", "ttl_seconds": 0},
    {"user_id": "u", "ttl_seconds": 59},
    {"user_id": "u", "ttl_seconds": 86_401},
    {"user_id": "u", "ttl_seconds": 2**63 - 1},
    {"user_id": "u", "ttl_seconds": 1e308},
    {"user_id": "u", "ttl_seconds": 3600.5},
    {"user_id": "u", "ttl_seconds": "3600"},
    {"user_id": "u", "ttl_seconds": True},
    {"user_id": "u", "ttl_seconds": None},
    {"user_id": "u", "scope": "admin"},
    ["user_id", "u"],
]


@pytest.mark.parametrize("body", BAD_MINT_BODIES)
async def test_minting_refuses_bad_input_with_a_clear_4xx(secured: Secured, body: Any) -> None:
    """Control characters, out-of-range, non-integer and unknown fields get a 422 naming the field."""
    status, answer, _ = await request(
        secured.url("reports"), "post", "/api/v1/portal/tokens",
        headers={**EMITTER, **JSON}, body=orjson.dumps(body),
    )  # fmt: skip
    assert status == 422, answer
    assert orjson.loads(answer)["message"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"user_id": "u", "ttl_seconds": NaN}', 400),
        (b'{"user_id": "u", "ttl_seconds": Infinity}', 400),
        (b'{"user_id": "u", "ttl_seconds": 1000000000000000000000000000000}', 422),
    ],
)
async def test_minting_refuses_non_finite_and_huge_numbers(
    secured: Secured, raw: bytes, expected: int
) -> None:
    """NaN and Infinity are not JSON (400); an integer beyond 64 bits is out of range (422)."""
    status, _, _ = await request(
        secured.url("reports"), "post", "/api/v1/portal/tokens",
        headers={**EMITTER, **JSON}, body=raw,
    )  # fmt: skip
    assert status == expected


async def test_only_admins_revoke_and_anyone_else_is_refused(secured: Secured) -> None:
    """Revocation needs an admin token (403 for an emitter, 401 for none) and rejects control characters."""
    url = secured.url("reports")
    body = orjson.dumps({"user_id": "someone"})
    path = "/api/v1/portal/tokens/revoke"
    assert (await request(url, "post", path, headers={**EMITTER, **JSON}, body=body))[0] == 403
    assert (await request(url, "post", path, headers=JSON, body=body))[0] == 401
    bad = orjson.dumps({"user_id": "a\x00"})
    assert (await request(url, "post", path, headers={**ADMIN, **JSON}, body=bad))[0] == 422


def tampered_variants(token: str) -> list[str]:
    """Altered, truncated, re-signed and malformed forms of a valid token."""
    payload, signature = token.split(".")
    flip = "A" if payload[10] != "A" else "B"
    other = PortalSigner("some-other-secret-of-more-than-32-chars")
    return [
        payload[:10] + flip + payload[11:] + "." + signature,
        payload + "." + signature[:-2],
        payload + "." + signature + "x",
        payload + "." + signature + ".extra",
        payload,
        payload + ".",
        "tgp_." + signature,
        "tgp_",
        token + "\x00",
        "tgp_" + "A" * 5000 + "." + signature,
        "tgp_!!!!." + signature,
        other.encode(PortalClaims("whoever", 0, int(time.time()), int(time.time()) + 600)),
    ]


async def test_tampered_expired_and_foreign_tokens_get_401(secured: Secured) -> None:
    """Every altered or expired portal token is refused with 401 by limits and reports, never a 5xx."""
    user = secured.sim.users[0].id
    token = await mint(secured, user)
    expired = PortalSigner(PORTAL_SECRET).encode(
        PortalClaims(user, 0, int(time.time()) - 3600, int(time.time()) - 1)
    )
    targets = [
        (secured.url("limits"), f"/api/v1/limits/status/{user}"),
        (secured.url("reports"), f"/api/v1/costs/users/{user}"),
    ]
    for bad in [*tampered_variants(token), expired]:
        for base, path in targets:
            try:
                status, body, _ = await request(
                    base, "get", path, headers={"Authorization": f"Bearer {bad}"}
                )
            except ValueError:
                continue  # a header the client library itself refuses to send (NUL)
            assert status == 401, f"{bad[:40]!r} {path}: {status} {body[:200]!r}"


async def test_portal_tokens_read_only_their_own_user_and_nothing_else(secured: Secured) -> None:
    """A portal token gets 403 for another user's status and costs and for every other documented route of every service."""
    mine, other = secured.sim.users[0].id, secured.sim.users[1].id
    token = await mint(secured, mine)
    bearer = {"Authorization": f"Bearer {token}"}
    allowed = {
        ("limits", "get", "/api/v1/limits/status/{user_id}"),
        ("reports", "get", "/api/v1/costs/users/{user_id}"),
    }
    for name in secured.services:
        url = secured.url(name)
        for op in await operations(name, url):
            if op.public:
                continue
            if (name, op.method, op.path) in allowed:
                status, _, _ = await request(url, op.method, op.concrete(mine), headers=bearer)
                assert status == 200, f"{op} own user: {status}"
                status, _, _ = await request(url, op.method, op.concrete(other), headers=bearer)
                assert status == 403, f"{op} other user: {status}"
                continue
            status, body, _ = await request(
                url, op.method, op.concrete(mine), headers={**bearer, **JSON}, body=b"{}"
            )
            assert status == 403, f"{op}: {status} {body[:200]!r}"


async def test_a_portal_token_reads_its_own_status_for_any_organisation_and_no_one_elses(
    secured: Secured,
) -> None:
    """With ?org_id a portal token still reads only its own status: another user's is 403 whatever
    the organisation, and a hostile org_id is a 422, never a 5xx."""
    mine, other = secured.sim.users[0].id, secured.sim.users[1].id
    bearer = {"Authorization": f"Bearer {await mint(secured, mine)}"}
    url = secured.url("limits")
    for org in ("acme", secured.sim.config.org_id, "x" * 128):
        status, body, _ = await request(
            url, "get", f"/api/v1/limits/status/{mine}?org_id={quote(org)}", headers=bearer
        )
        assert status == 200, (org, status, body[:200])
        status, _, _ = await request(
            url, "get", f"/api/v1/limits/status/{other}?org_id={quote(org)}", headers=bearer
        )
        assert status == 403, (org, status)
    for org in ("%00", "a%1Fb", "x" * 129, "", "a&org_id=b"):
        status, body, _ = await request(
            url, "get", f"/api/v1/limits/status/{mine}?org_id={org}", headers=bearer
        )
        assert status == 422, (org, status, body[:200])


async def test_portal_tokens_never_appear_in_logs(secured: Secured) -> None:
    """A minted, used and refused portal token shows up in no service's log."""
    user = secured.sim.users[2].id
    token = await mint(secured, user)
    for base, path in (
        (secured.url("limits"), f"/api/v1/limits/status/{user}"),
        (secured.url("reports"), f"/api/v1/costs/users/{secured.sim.users[3].id}"),
        (secured.url("reports"), "/api/v1/limits/config"),
    ):
        await request(base, "get", path, headers={"Authorization": f"Bearer {token}"})
    payload, signature = token.split(".")
    for name, service in secured.stack.services.items():
        logs = service.logs()
        assert signature not in logs, f"{name} logged a portal token"
        assert payload not in logs, f"{name} logged a portal token"


# -- console sessions ---------------------------------------------------------------------------


async def console(
    secured: Secured,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    data: Any = None,
) -> tuple[int, bytes, dict[str, str]]:
    """One request to the console with an optional session cookie; no redirects followed."""
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = cookie
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        http.request(
            method, f"{secured.url('reports')}{path}", headers=sent, data=data,
            allow_redirects=False,
        ) as resp,
    ):  # fmt: skip
        return resp.status, await resp.read(), dict(resp.headers)


async def sign_in(secured: Secured, token: str) -> tuple[int, str | None, dict[str, str]]:
    """The login page's form, as a browser posts it: returns the status and session cookie."""
    status, _, headers = await console(secured, "GET", "/console/login")
    assert status == 200
    login = headers["Set-Cookie"].split(";")[0]
    csrf = login.split("=", 1)[1]
    status, _, headers = await console(
        secured, "POST", "/console/login", cookie=login,
        headers={"Sec-Fetch-Site": "same-origin"},
        data={"token": token, "csrf": csrf, "next": ""},
    )  # fmt: skip
    cookie = headers.get("Set-Cookie", "")
    session = next(
        (part.split(";")[0] for part in cookie.split(",") if "tollgate_session=" in part), None
    )
    return status, session, headers


async def test_sign_in_needs_the_form_token_and_a_valid_token(secured: Secured) -> None:
    """A login without its form cookie, from another site, or with a wrong, NUL-laden or huge token starts no session and never echoes the token."""
    status, _, headers = await console(
        secured, "POST", "/console/login", data={"token": ADMIN_TOKEN, "csrf": "x"}
    )
    assert status == 403
    assert "tollgate_session" not in headers.get("Set-Cookie", "")
    status, _, headers = await console(secured, "GET", "/console/login")
    login = headers["Set-Cookie"].split(";")[0]
    csrf = login.split("=", 1)[1]
    status, _, headers = await console(
        secured, "POST", "/console/login", cookie=login,
        headers={"Sec-Fetch-Site": "cross-site"}, data={"token": ADMIN_TOKEN, "csrf": csrf},
    )  # fmt: skip
    assert status == 403
    for bad in (f"wrong-{uuid.uuid4().hex}", "a\x00b", "x" * 100_000, "tgp_garbage.sig"):
        status, body, headers = await console(
            secured, "POST", "/console/login", cookie=login,
            headers={"Sec-Fetch-Site": "same-origin"}, data={"token": bad, "csrf": csrf},
        )  # fmt: skip
        assert status in (401, 413), status
        assert "tollgate_session" not in headers.get("Set-Cookie", "")
        assert bad.encode() not in body


async def test_forged_expired_and_garbled_session_cookies_are_refused(secured: Secured) -> None:
    """Cookies that are unsigned, signed with another key, expired, altered or absurd get 401 from the console API."""
    status, session, _ = await sign_in(secured, ADMIN_TOKEN)
    assert status == 303
    assert session is not None
    value = session.split("=", 1)[1]
    version, sid, expires, signature = value.split(".")
    ours = SessionSigner(PORTAL_SECRET)
    theirs = SessionSigner("some-other-secret-of-more-than-32-chars")
    past = CookieSession(sid, datetime.now(UTC) - timedelta(seconds=5))
    future = CookieSession(sid, datetime.now(UTC) + timedelta(days=30))
    forgeries = [
        f"{version}.{sid}.{int(expires) + 86400}.{signature}",
        # Another last character (a session id ending in "A" stays valid with "A").
        f"{version}.{sid[:-1]}{'B' if sid.endswith('A') else 'A'}.{expires}.{signature}",
        theirs.cookie_value(CookieSession(sid, datetime.now(UTC) + timedelta(hours=1))),
        ours.cookie_value(past),
        ours.cookie_value(CookieSession("made-up-session-id", future.expires_at)),
        "v1....",
        "v1.a.99999999999999999999999.b",
        "v1.a.-5.b",
        "x" * 5000,
        "\u00e9\u00e9",
    ]
    for forged in forgeries:
        status, _, _ = await console(
            secured, "GET", "/console/api/session", cookie=f"tollgate_session={forged}"
        )
        assert status == 401, forged[:40]
        status, _, _ = await console(
            secured, "GET", "/console/api/v1/limits/config", cookie=f"tollgate_session={forged}"
        )
        assert status == 401, forged[:40]
    status, _, _ = await console(secured, "GET", "/console/api/session", cookie=session)
    assert status == 200


async def test_state_changes_need_csrf_and_the_same_origin(secured: Secured) -> None:
    """With a valid admin session, a PUT without the CSRF token, with a wrong one, or from another site is refused; with it, it goes through."""
    _, session, _ = await sign_in(secured, ADMIN_TOKEN)
    assert session is not None
    _, body, _ = await console(secured, "GET", "/console/api/session", cookie=session)
    csrf = orjson.loads(body)["csrf_token"]
    config = orjson.dumps({"enabled": False, "period": "month", "default_limit_micros": None})
    path = "/console/api/v1/limits/config"
    for headers in (
        {},
        {"X-CSRF-Token": "wrong"},
        {"X-CSRF-Token": csrf + "\x00"},
        {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
        {"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
    ):
        try:
            status, _, _ = await console(
                secured, "PUT", path, cookie=session, headers={**JSON, **headers}, data=config
            )
        except ValueError:
            continue
        assert status == 403, headers
    status, _, _ = await console(
        secured, "PUT", path, cookie=session, headers={**JSON, "X-CSRF-Token": csrf}, data=config
    )
    assert status == 200


async def test_sign_in_never_redirects_to_another_site(secured: Secured) -> None:
    """A `next` that points anywhere but a console page is ignored."""
    status, _, headers = await console(secured, "GET", "/console/login")
    login = headers["Set-Cookie"].split(";")[0]
    csrf = login.split("=", 1)[1]
    for target in ("//evil.example/", "https://evil.example/", "/console/..//evil", "/\\evil"):
        status, _, headers = await console(
            secured, "POST", "/console/login", cookie=login,
            headers={"Sec-Fetch-Site": "same-origin"},
            data={"token": ADMIN_TOKEN, "csrf": csrf, "next": target},
        )  # fmt: skip
        assert status == 303
        assert headers["Location"].startswith("/console/")
        assert "evil" not in headers["Location"]


async def test_console_api_paths_and_assets_cannot_escape(secured: Secured) -> None:
    """Asset traversal, unknown API prefixes and control characters in console paths get 4xx."""
    _, session, _ = await sign_in(secured, ADMIN_TOKEN)
    assert session is not None
    for path in (
        "/console/assets/../../config.py",
        "/console/assets/%2e%2e/%2e%2e/config.py",
        "/console/assets/js/../../sessions.py",
        "/console/assets/nothing.js",
        "/console/api/v1/../../metrics",
        "/console/api/v1/unknown/thing",
        "/console/nothing-here",
    ):
        status, body, _ = await console(secured, "GET", path, cookie=session)
        assert 400 <= status < 500, f"{path}: {status} {body[:200]!r}"
