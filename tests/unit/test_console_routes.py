"""The console's sign-in, session and page routes on an in-memory reports app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from services.reports.app import build_app
from services.reports.config import ReportsSettings
from services.reports.console.sessions import InMemorySessionStore
from services.reports.portal import PORTAL_ROUTES
from services.reports.storage import InMemoryReportStore
from tests.contracts import Example, failures, walk

Client = TestClient[web.Request, web.Application]
SECRET = "unit-console-secret-0123456789abcdef0123"
ADMIN_TOKEN = "unit-admin-token"
EMITTER_TOKEN = "unit-emitter-token"


async def client_for(sessions: InMemorySessionStore, **env: str) -> Client:
    """An in-memory reports app (no PostgreSQL, no Kafka) behind a test client."""
    settings = ReportsSettings.model_validate(
        {
            "DATABASE_URL": "postgresql://unused",
            "TOLLGATE_ADMIN_TOKENS": ADMIN_TOKEN,
            "TOLLGATE_EMITTER_TOKENS": EMITTER_TOKEN,
            **env,
        }
    )
    app = build_app(settings, store=InMemoryReportStore(), sessions=sessions)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def sessions() -> InMemorySessionStore:
    """The session rows the app writes."""
    return InMemorySessionStore()


@pytest.fixture
async def console(sessions: InMemorySessionStore) -> AsyncIterator[Client]:
    """The app with a portal secret, so sessions can be signed."""
    client = await client_for(sessions, TOLLGATE_PORTAL_SECRET=SECRET)
    try:
        yield client
    finally:
        await client.close()


async def sign_in(client: Client, token: str) -> ClientResponse:
    """Post the sign-in form with its form token, as a browser on this origin does."""
    page = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert csrf is not None
    return await client.post(
        "/console/login",
        data={"token": token, "csrf": csrf.group(1), "next": "/console/activity"},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )


async def test_pages_send_a_browser_without_a_session_to_sign_in(console: Client) -> None:
    """A page without a session redirects to the sign-in page and remembers where it was going."""
    resp = await console.get("/console/costs?page=2", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/login?next=%2Fconsole%2Fcosts%3Fpage%3D2"
    assert (await console.get("/console/api/session")).status == 401


async def test_sign_in_sets_a_strict_http_only_cookie_and_stores_no_token(
    console: Client, sessions: InMemorySessionStore
) -> None:
    """Signing in with the admin token sets an HttpOnly, SameSite=Strict cookie, goes where it was asked, and keeps only a fingerprint."""
    resp = await sign_in(console, ADMIN_TOKEN)
    assert resp.status == 303
    assert resp.headers["Location"] == "/console/activity"
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if "tollgate_session=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Secure" not in cookie
    assert ADMIN_TOKEN not in cookie
    (row,) = sessions.rows.values()
    assert row.role == "admin"
    assert ADMIN_TOKEN.encode() not in repr(row).encode()
    info = await (await console.get("/console/api/session")).json()
    assert info["role"] == "admin"
    assert len(info["csrf_token"]) >= 32


async def test_cookies_are_secure_behind_a_trusted_tls_proxy(
    sessions: InMemorySessionStore,
) -> None:
    """With TOLLGATE_TRUST_PROXY, X-Forwarded-Proto: https makes the session cookie Secure."""
    client = await client_for(sessions, TOLLGATE_PORTAL_SECRET=SECRET, TOLLGATE_TRUST_PROXY="true")
    try:
        page = await client.get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert "Secure" in page.headers["Set-Cookie"]
    finally:
        await client.close()


async def test_emitter_sign_in_gets_a_read_only_session(console: Client) -> None:
    """An emitter token signs in, but its session cannot change anything, even with its CSRF token."""
    assert (await sign_in(console, EMITTER_TOKEN)).status == 303
    info = await (await console.get("/console/api/session")).json()
    assert info["role"] == "emitter"
    resp = await console.put(
        "/console/api/v1/limits/config",
        json={"enabled": True},
        headers={"X-CSRF-Token": info["csrf_token"], "Sec-Fetch-Site": "same-origin"},
    )
    assert resp.status == 403
    assert (await console.get("/console/settings")).status == 403


async def test_sign_out_ends_the_row_and_the_cookie(
    console: Client, sessions: InMemorySessionStore
) -> None:
    """Sign-out with the CSRF token marks the session ended; without it, it is refused."""
    await sign_in(console, ADMIN_TOKEN)
    info = await (await console.get("/console/api/session")).json()
    refused = await console.post(
        "/console/logout", data={"csrf": "wrong"}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert refused.status == 403
    resp = await console.post(
        "/console/logout",
        data={"csrf": info["csrf_token"]},
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert all(row.ended_at is not None for row in sessions.rows.values())


async def test_without_a_secret_sign_in_is_off_and_says_why(sessions: InMemorySessionStore) -> None:
    """Without TOLLGATE_PORTAL_SECRET the sign-in page explains that sign-in is off."""
    client = await client_for(sessions)
    try:
        page = await (await client.get("/console/login")).text()
        assert "TOLLGATE_PORTAL_SECRET" in page
        resp = await client.post("/api/v1/portal/tokens", json={"user_id": "u"},
                                 headers={"Authorization": f"Bearer {EMITTER_TOKEN}"})  # fmt: skip
        assert resp.status == 503
    finally:
        await client.close()


@pytest.mark.parametrize(
    "path",
    ["/console/assets/../config.py", "/console/assets/sessions.py", "/console/assets/nope.js",
     "/console/nowhere"],
)  # fmt: skip
async def test_only_known_assets_and_pages_are_served(console: Client, path: str) -> None:
    """Asset names outside the static folder, other file types and unknown pages are 404."""
    assert (await console.get(path, allow_redirects=False)).status == 404


async def test_pages_carry_a_strict_content_security_policy(console: Client) -> None:
    """The sign-in page forbids inline scripts, framing and foreign connections."""
    resp = await console.get("/console/login")
    policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_every_portal_route_answers_the_model_its_table_declares(console: Client) -> None:
    """Minting and revoking portal tokens succeed with the bodies their table declares."""
    answers = await walk(
        console,
        PORTAL_ROUTES,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        examples={
            ("POST", "/api/v1/portal/tokens"): Example(body={"user_id": "ann"}),
            ("POST", "/api/v1/portal/tokens/revoke"): Example(body={"user_id": "ann"}),
        },
    )
    assert failures(answers) == []
    assert len(answers) == len(PORTAL_ROUTES)
