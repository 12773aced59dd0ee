"""The console's HTTP side: sign-in and sign-out, the pages, their assets, and the API gateway.

Pages are one static shell (`static/index.html`) whose scripts call `/console/api/v1/...`: this
module checks the session cookie (and the CSRF token on anything that changes state), puts the
session's credential on the call and sends it to the service that owns the path — reports
itself included, over loopback, so every call passes the same auth middleware as any client's.
The browser never holds a bearer token: an admin or emitter session calls with the token it
signed in with (kept in the configuration, identified in the session row by a fingerprint);
a portal session calls with a portal token re-signed per call from its claims, so the API
services apply the portal rules themselves.

With `TOLLGATE_*_URL` set, the public `/api/v1/...` prefixes of the other services are also
forwarded as they are, bearer header included: `make run` then has one origin for everything.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlencode, urlsplit

import aiohttp
import structlog
from aiohttp import web

from libs.service.errors import (
    DependencyUnavailable,
    Forbidden,
    NotFound,
    Unauthorized,
)
from libs.service.portal import PortalAuthority, PortalClaims
from libs.service.routes import Handler, Role, Route
from libs.service.web import (
    PORTAL_KEY,
    SETTINGS_KEY,
    install_routes,
    json_response,
    role_of_token,
)
from services.reports.config import ReportsSettings
from services.reports.console.proxy import OWNERS, Upstreams, forward, owner_of
from services.reports.console.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    CookieSession,
    SessionRole,
    SessionRow,
    SessionSigner,
    SessionStore,
    expiry,
)

log = structlog.get_logger(__name__)

STATIC = Path(__file__).with_name("static")
#: Pages by the least role that sees them; `me` is the portal user's own page.
ADMIN_PAGES: Final = frozenset({"settings", "pricing", "chargeback", "billing", "notifications"})
READ_PAGES: Final = frozenset({"", "costs", "users", "activity"})
PORTAL_PAGES: Final = frozenset({"me"})
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_CONTENT_TYPES: Final = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html",
    ".txt": "text/plain",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_PURGE_EVERY_S: Final = 600


@dataclass
class Console:
    """What the console's handlers share."""

    settings: ReportsSettings
    store: SessionStore
    signer: SessionSigner | None
    upstreams: Upstreams
    client: aiohttp.ClientSession | None = None

    def now(self) -> datetime:
        """The time, UTC."""
        return datetime.now(UTC)


CONSOLE = web.AppKey("console", Console)


@dataclass(frozen=True)
class ActiveSession:
    """A signed-in session, checked against its row and the configuration."""

    cookie: CookieSession
    role: SessionRole
    authorization: str | None
    portal: PortalClaims | None
    csrf: str

    @property
    def user_id(self) -> str | None:
        """The portal user, for a portal session."""
        return self.portal.user_id if self.portal else None


# -- response helpers ---------------------------------------------------------------------------


def _secure(request: web.Request, console: Console) -> bool:
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "")
    return console.settings.trust_proxy and proto.split(",")[0].strip().lower() == "https"


def _page_headers(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _html(body: str, *, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    _page_headers(response)
    return response


def _redirect(location: str) -> web.Response:
    response = web.Response(status=303, headers={"Location": location})
    _page_headers(response)
    return response


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console/",
        httponly=True,
        samesite="Strict",
        secure=_secure(request, request.app[CONSOLE]),
    )


def _clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    _set_cookie(request, response, name, "", 0)


def _same_origin(request: web.Request, console: Console) -> bool:
    """The browser says the request came from this origin (Sec-Fetch-Site), or its Origin
    header, when it sends one, is this host."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    host = request.host
    if console.settings.trust_proxy and "X-Forwarded-Host" in request.headers:
        host = request.headers["X-Forwarded-Host"].split(",")[0].strip()
    return urlsplit(origin).netloc == host


def _safe_next(raw: str | None) -> str | None:
    """Only a console path may be where sign-in leads (never another site)."""
    if not raw or not raw.startswith("/console/") or "//" in raw or "\\" in raw:
        return None
    if any(ord(c) < 32 for c in raw) or len(raw) > 512:
        return None
    return raw


# -- sessions -----------------------------------------------------------------------------------


def _signer(console: Console) -> SessionSigner:
    if console.signer is None:
        raise DependencyUnavailable(
            "the console needs TOLLGATE_PORTAL_SECRET to sign sessions", retry_after_s=60
        )
    return console.signer


async def active_session(request: web.Request) -> ActiveSession | None:
    """The request's session when its cookie, row, token and portal generation all hold."""
    console = request.app[CONSOLE]
    if console.signer is None:
        return None
    now = console.now()
    cookie = console.signer.read_cookie(request.cookies.get(COOKIE, ""), now)
    if cookie is None:
        return None
    row = await console.store.get(cookie.digest)
    if row is None or row.ended_at is not None or row.expires_at <= now:
        return None
    settings = request.app[SETTINGS_KEY]
    csrf = console.signer.csrf_token(cookie)
    if row.role == "portal":
        authority = request.app.get(PORTAL_KEY)
        if authority is None or row.portal_user_id is None or row.portal_generation is None:
            return None
        if row.portal_generation < authority.current_generation(row.portal_user_id):
            return None
        claims = PortalClaims(
            row.portal_user_id,
            row.portal_generation,
            int(now.timestamp()),
            int(row.expires_at.timestamp()),
        )
        return ActiveSession(cookie, "portal", None, claims, csrf)
    tokens = settings.admin_tokens if row.role == "admin" else settings.emitter_tokens
    for token in tokens:
        if secrets.compare_digest(console.signer.fingerprint(token), row.token_fingerprint or b""):
            return ActiveSession(cookie, row.role, f"Bearer {token}", None, csrf)
    return None


async def _start_session(
    request: web.Request,
    response: web.StreamResponse,
    *,
    role: SessionRole,
    token: str | None = None,
    portal: PortalClaims | None = None,
) -> None:
    console = request.app[CONSOLE]
    signer = _signer(console)
    now = console.now()
    expires = expiry(now, console.settings.console_session_ttl_s)
    if portal is not None:
        expires = min(expires, datetime.fromtimestamp(portal.expires_at, UTC))
    value, cookie = signer.new_session(expires)
    await console.store.create(
        SessionRow(
            id_digest=cookie.digest,
            role=role,
            expires_at=expires,
            token_fingerprint=signer.fingerprint(token) if token else None,
            portal_user_id=portal.user_id if portal else None,
            portal_generation=portal.generation if portal else None,
        )
    )
    _set_cookie(request, response, COOKIE, value, int((expires - now).total_seconds()))
    _clear_cookie(request, response, LOGIN_COOKIE)
    log.info("console_signed_in", role=role, portal_user=portal.user_id if portal else None)


def _verify_portal(request: web.Request, token: str) -> PortalClaims:
    authority: PortalAuthority | None = request.app.get(PORTAL_KEY)
    if authority is None:
        raise Unauthorized("portal tokens are not enabled (TOLLGATE_PORTAL_SECRET is not set)")
    return authority.verify(token)


# -- sign-in and sign-out -----------------------------------------------------------------------


def _login_page(*, csrf: str, next_path: str | None, error: str = "", notice: str = "") -> str:
    template = (STATIC / "login.html").read_text()
    values = {
        "csrf": csrf,
        "next": next_path or "",
        "error": error,
        "notice": notice,
        "error_hidden": "" if error else "hidden",
        "notice_hidden": "" if notice else "hidden",
    }
    for key, value in values.items():
        template = template.replace("{{" + key + "}}", html.escape(value, quote=True))
    return template


async def login_page(request: web.Request) -> web.StreamResponse:
    """The sign-in form; an already signed-in browser goes to its start page."""
    session = await active_session(request)
    next_path = _safe_next(request.rel_url.query.get("next"))
    if session is not None:
        return _redirect(next_path or _start_page(session.role))
    notice = {
        "signed_out": "You have signed out.",
        "expired": "Your session has ended. Sign in again.",
    }.get(request.rel_url.query.get("reason", ""), "")
    error = ""
    if request.app[CONSOLE].signer is None:
        error = "Sign-in is off: this service has no TOLLGATE_PORTAL_SECRET to sign sessions with."
    csrf = secrets.token_urlsafe(24)
    response = _html(_login_page(csrf=csrf, next_path=next_path, notice=notice, error=error))
    _set_cookie(request, response, LOGIN_COOKIE, csrf, 1800)
    return response


def _start_page(role: SessionRole) -> str:
    return "/console/me" if role == "portal" else "/console/costs"


async def login(request: web.Request) -> web.StreamResponse:
    """Check the form's token; on success start a session and go on."""
    console = request.app[CONSOLE]
    form = await request.post()
    token = str(form.get("token", "")).strip()
    csrf = str(form.get("csrf", ""))
    next_path = _safe_next(str(form.get("next", "")))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if (
        not _same_origin(request, console)
        or not expected
        or not secrets.compare_digest(csrf.encode(), expected.encode())
    ):
        fresh = secrets.token_urlsafe(24)
        response = _html(
            _login_page(
                csrf=fresh,
                next_path=next_path,
                error="The sign-in form expired. Enter your token again.",
            ),
            status=403,
        )
        _set_cookie(request, response, LOGIN_COOKIE, fresh, 1800)
        return response
    _signer(console)
    settings = request.app[SETTINGS_KEY]
    role: SessionRole | None = None
    portal: PortalClaims | None = None
    error = "That token is not valid here."
    if token.startswith("tgp_"):
        try:
            portal = _verify_portal(request, token)
            role = "portal"
        except Unauthorized as exc:
            error = f"That portal token is not valid: {exc.message}."
    elif token and len(token) <= 4096 and "\x00" not in token:
        found = role_of_token(token, settings)
        if found is Role.ADMIN:
            role = "admin"
        elif found is Role.EMITTER:
            role = "emitter"
    if role is None:
        log.info("console_sign_in_refused")
        response = _html(_login_page(csrf=expected, next_path=next_path, error=error), status=401)
        return response
    destination = next_path or _start_page(role)
    if role == "portal" and destination != "/console/me":
        destination = "/console/me"
    response = _redirect(destination)
    await _start_session(
        request, response, role=role, token=None if portal else token, portal=portal
    )
    return response


async def portal_handoff(request: web.Request) -> web.StreamResponse:
    """A platform's page posts a user's portal token here (a form, never a URL)."""
    form = await request.post()
    token = str(form.get("token", "")).strip()
    claims = _verify_portal(request, token)
    # The page that follows is opened by this origin's own script, so the Strict cookie goes
    # with it (a redirect chained to another site's form post would go without it).
    response = _html((STATIC / "handoff.html").read_text())
    await _start_session(request, response, role="portal", portal=claims)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """End the session (CSRF-checked), clear the cookie, and show the sign-in page."""
    console = request.app[CONSOLE]
    session = await active_session(request)
    if session is not None:
        form = await request.post()
        given = request.headers.get("X-CSRF-Token") or str(form.get("csrf", ""))
        if not _same_origin(request, console) or not _signer(console).csrf_matches(
            session.cookie, given
        ):
            raise Forbidden("missing or wrong CSRF token")
        await console.store.end(session.cookie.digest, console.now())
        log.info("console_signed_out", role=session.role)
    response = _redirect("/console/login?reason=signed_out")
    _clear_cookie(request, response, COOKIE)
    return response


async def session_info(request: web.Request) -> web.Response:
    """Who is signed in, the CSRF token for this session, and when it ends."""
    session = await active_session(request)
    if session is None:
        raise Unauthorized("not signed in")
    response = json_response(
        {
            "role": session.role,
            "user_id": session.user_id,
            "csrf_token": session.csrf,
            "expires_at": session.cookie.expires_at,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# -- pages and assets ---------------------------------------------------------------------------


def _allowed(role: SessionRole, page: str) -> bool:
    if role == "portal":
        return page in PORTAL_PAGES
    if page in PORTAL_PAGES or page in READ_PAGES:
        return True
    return role == "admin" and page in ADMIN_PAGES


async def page(request: web.Request) -> web.StreamResponse:
    """The console shell for a known page; sign-in first when there is no session."""
    tail = request.match_info.get("tail", "")
    name = tail.split("/", 1)[0]
    if name not in ADMIN_PAGES | READ_PAGES | PORTAL_PAGES:
        raise NotFound(f"no console page at /console/{tail}")
    session = await active_session(request)
    if session is None:
        next_path = request.rel_url.path_qs
        location = "/console/login"
        if _safe_next(next_path) and next_path != "/console/":
            location += "?" + urlencode({"next": next_path})
        return _redirect(location)
    if not _allowed(session.role, name):
        # The shell shows a notice that this page needs another sign-in.
        return _html((STATIC / "index.html").read_text(), status=403)
    if name == "":
        return _redirect(_start_page(session.role))
    return _html((STATIC / "index.html").read_text())


async def asset(request: web.Request) -> web.StreamResponse:
    """A file under `static/` (no other path can be reached)."""
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if STATIC.resolve() not in path.parents or not path.is_file():
        raise NotFound(f"no console asset {name!r}")
    content_type = _CONTENT_TYPES.get(path.suffix)
    if content_type is None:
        raise NotFound(f"no console asset {name!r}")
    response = web.Response(body=path.read_bytes(), content_type=content_type, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def console_root(_: web.Request) -> web.StreamResponse:
    """`/console` goes to `/console/`."""
    raise web.HTTPPermanentRedirect("/console/")


# -- API gateway --------------------------------------------------------------------------------


def _self_url(settings: ReportsSettings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


async def console_api(request: web.Request) -> web.StreamResponse:
    """A console call: session and CSRF checked, the session's credential attached, forwarded."""
    console = request.app[CONSOLE]
    session = await active_session(request)
    if session is None:
        raise Unauthorized("not signed in, or the session has ended; sign in again")
    if request.method not in SAFE_METHODS:
        if not _same_origin(request, console):
            raise Forbidden("cross-origin request refused")
        if not _signer(console).csrf_matches(session.cookie, request.headers.get("X-CSRF-Token")):
            raise Forbidden("missing or wrong CSRF token (X-CSRF-Token)")
        if session.role != "admin":
            raise Forbidden("this session is read-only; sign in with an admin token to change it")
    path = "/api/v1/" + request.match_info["tail"]
    service = owner_of(path)
    if service is None:
        raise NotFound(f"no API at {path}")
    raw_path = request.rel_url.raw_path.removeprefix("/console")
    if session.portal is not None:
        authority = request.app.get(PORTAL_KEY)
        if authority is None:
            raise Unauthorized("portal tokens are not enabled")
        authorization: str | None = f"Bearer {authority.token_for(session.portal)}"
    else:
        authorization = session.authorization
    base = _self_url(console.settings) if service == "reports" else console.upstreams.url(service)
    assert console.client is not None
    return await forward(
        request,
        console.client,
        base_url=base,
        service=service,
        path=raw_path,
        authorization=authorization,
        max_body_bytes=console.settings.max_body_bytes,
        timeout_s=console.settings.forward_timeout_s,
    )


async def public_api(request: web.Request) -> web.StreamResponse:
    """Another service's public API on this origin, forwarded with the caller's own token."""
    console = request.app[CONSOLE]
    service = owner_of(request.path)
    if service is None or service == "reports":
        raise NotFound(f"no API at {request.path}")
    assert console.client is not None
    return await forward(
        request,
        console.client,
        base_url=console.upstreams.url(service),
        service=service,
        path=request.rel_url.raw_path,
        authorization=request.headers.get("Authorization"),
        max_body_bytes=console.settings.max_body_bytes,
        timeout_s=console.settings.forward_timeout_s,
    )


# -- wiring -------------------------------------------------------------------------------------


async def _purge_forever(console: Console) -> None:
    while True:
        await asyncio.sleep(_PURGE_EVERY_S)
        try:
            purged = await console.store.purge(console.now() - timedelta(days=1))
            if purged:
                log.info("console_sessions_purged", count=purged)
        except Exception as exc:
            log.warning("console_sessions_purge_failed", error=type(exc).__name__)


def add_console(app: web.Application, settings: ReportsSettings, store: SessionStore) -> None:
    """Register the console's routes and its HTTP client."""
    upstreams = Upstreams(
        {
            "ingest": settings.ingest_url,
            "limits": settings.limits_url,
            "publisher": settings.publisher_url,
        }
    )
    signer = SessionSigner(settings.portal_secret) if settings.portal_secret else None
    console = Console(settings=settings, store=store, signer=signer, upstreams=upstreams)
    app[CONSOLE] = console

    async def client(_: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            console.client = session
            task = asyncio.create_task(_purge_forever(console), name="console-purge")
            try:
                yield
            finally:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(client)
    install_routes(app, (*CONSOLE_ROUTES, *gateway_routes(upstreams)))


def _page(method: str, path: str, handler: Handler, summary: str) -> Route:
    # Sessions, not bearer tokens, guard the console: its handlers check them themselves.
    return Route(method, path, handler, summary, role=Role.PUBLIC, documented=False)


#: The console: its pages and assets, sign-in and out, and its session's API gateway.
CONSOLE_ROUTES = (
    _page("GET", "/console", console_root, "The console's start"),
    _page("GET", "/console/login", login_page, "The sign-in form"),
    _page("POST", "/console/login", login, "Sign in with a token"),
    _page("POST", "/console/logout", logout, "Sign out"),
    _page("POST", "/console/portal", portal_handoff, "Sign in with a portal token"),
    _page("GET", "/console/api/session", session_info, "Who is signed in"),
    _page("*", "/console/api/v1/{tail:.+}", console_api, "The APIs, with the session's token"),
    _page("GET", "/console/assets/{name:[A-Za-z0-9_./-]+}", asset, "Scripts and styles"),
    _page("GET", "/console/{tail:.*}", page, "A page"),
)


def gateway_routes(upstreams: Upstreams) -> tuple[Route, ...]:
    """The other services' public APIs on this port, for each service whose URL is set."""
    return tuple(
        _page("*", path, public_api, f"Forwarded to {owner}")
        for prefix, owner in OWNERS
        if owner != "reports" and upstreams.urls.get(owner)
        for path in (prefix, f"{prefix}/{{tail:.*}}")
    )
