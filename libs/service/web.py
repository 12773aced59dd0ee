"""The aiohttp skeleton every service builds on: auth, errors, health, metrics and OpenAPI."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ValidationError

from libs.events.bounds import text_problem
from libs.service.db import DATABASE_UNAVAILABLE
from libs.service.errors import (
    ApiError,
    BadRequest,
    DependencyUnavailable,
    Forbidden,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unprocessable,
)
from libs.service.openapi import OpenApi
from libs.service.portal import PREFIX as PORTAL_PREFIX
from libs.service.portal import PortalAuthority, PortalClaims, RevocationStore, running_authority
from libs.service.routes import Handler, Role, Route
from libs.service.settings import CommonSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


_ROLE_ATTR = "__tollgate_role__"
_PORTAL_ATTR = "__tollgate_portal_param__"

SETTINGS_KEY = web.AppKey("settings", CommonSettings)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
OPENAPI_KEY = web.AppKey("openapi", OpenApi)
#: Every route `install_routes` added, in order: what the router serves and OpenAPI shows.
ROUTES_KEY = web.AppKey("routes", list[Route])
Check = Callable[[], Awaitable[tuple[bool, str]]]
#: Checks that decide readiness: what the service needs to do its job.
READINESS_KEY = web.AppKey("readiness", list[Check])
#: Dependencies reported (in `/readyz` and as `tollgate_dependency_up`) without deciding
#: readiness: ingest keeps accepting events on its cached prices while PostgreSQL is away.
DEPENDENCIES_KEY = web.AppKey("dependencies", list[Check])
ROLE_KEY = web.RequestKey("tollgate_role", Role)
#: Set on a service that accepts portal tokens (only on routes whose `Route` names `portal=`).
PORTAL_KEY = web.AppKey("portal_authority", PortalAuthority)
PORTAL_CLAIMS_KEY = web.RequestKey("tollgate_portal_claims", PortalClaims)


def json_response(
    body: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response encoded with orjson (datetimes as ISO 8601, UTC as `Z`)."""
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_body(message: str, detail: object = None) -> dict[str, object]:
    """The one error shape of every API."""
    return {"message": message, "detail": detail}


async def read_json(request: web.Request) -> object:
    """Read the body as JSON or raise a 400/413 that says what is wrong with it."""
    if request.content_type not in ("application/json", "application/octet-stream", ""):
        raise BadRequest(
            f"unsupported content type {request.content_type!r}; send application/json"
        )
    timeout_s = request.app[SETTINGS_KEY].body_timeout_s
    try:
        if request.content.is_eof():
            # The whole body came with the headers (a check does): nothing to wait for.
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout_s):
                raw = await request.read()
    except TimeoutError as exc:
        # A client that stalls mid-body must not hold a connection and a handler forever.
        raise RequestTimeout(f"request body not received within {timeout_s:g}s") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        raise PayloadTooLarge(
            f"request body too large: the limit is {limit} bytes", detail={"max_bytes": limit}
        ) from exc
    if not raw:
        raise BadRequest("request body is empty; send a JSON document")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


def validation_message(exc: ValidationError) -> str:
    """`field.path: problem; other.field: problem` for a pydantic error."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def read_model(request: web.Request, model: type[M]) -> M:
    """Read and validate a JSON body against a pydantic model (400 malformed, 422 invalid)."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(
            validation_message(exc), detail=exc.errors(include_url=False, include_context=False)
        ) from exc


def storable_text(
    value: str, name: str, *, max_length: int = 128, error: type[ApiError] = Unprocessable
) -> str:
    """`value` when it is 1 to `max_length` characters that text can store; else `error` naming it.

    Ids in paths, bodies and queries follow the event contract (`libs.events.bounds`): a value
    no event can carry is refused here rather than failing in the database.
    """
    if not 1 <= len(value) <= max_length:
        raise error(f"{name}: must be 1 to {max_length} characters")
    problem = text_problem(value)
    if problem is not None:
        raise error(f"{name}: {problem}")
    return value


def _tokens_match(candidate: str, tokens: Iterable[str]) -> bool:
    # Compare against every token without short-circuiting so timing says nothing about which.
    found = False
    encoded = candidate.encode()
    for token in tokens:
        found |= hmac.compare_digest(encoded, token.encode())
    return found


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the Authorization header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def role_of_token(token: str, settings: CommonSettings) -> Role | None:
    """The role an admin or emitter token has; None for any other string."""
    if _tokens_match(token, settings.admin_tokens):
        return Role.ADMIN
    if _tokens_match(token, settings.emitter_tokens):
        return Role.EMITTER
    return None


def _portal_claims(request: web.Request, token: str, handler: Handler) -> PortalClaims:
    """Check a portal token: 401 unless valid, 403 unless this route reads its own user."""
    authority = request.app.get(PORTAL_KEY)
    if authority is None:
        raise Unauthorized("this service does not accept portal tokens")
    claims = authority.verify(token)
    param = getattr(handler, _PORTAL_ATTR, None)
    if param is None:
        raise Forbidden("a portal token may only read its own user's limit status and costs")
    if request.match_info.get(param) != claims.user_id:
        raise Forbidden("a portal token may only read its own user")
    return claims


# Methods as metric labels; anything else a client sends is `other`, so that made-up methods
# cannot grow the number of series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def database_unavailable(service: str, exc: BaseException) -> DependencyUnavailable:
    """The 503 for a database that did not answer (one of `db.DATABASE_UNAVAILABLE`).

    The detail names the kind of failure only: the exception's text can hold addresses.
    """
    return DependencyUnavailable(
        f"the {service} database is unavailable; retry shortly", detail=type(exc).__name__
    )


def error_response(request: web.Request, service: str, exc: Exception) -> web.Response:
    """The one error shape for whatever a handler raised; the one place errors become statuses."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        # Handlers let a database outage through: it is answered here, always the same way.
        exc = database_unavailable(service, exc)
    if isinstance(exc, ApiError):
        if exc.status >= 500:
            log.warning("request_failed", status=exc.status, reason=exc.message, error=exc.detail)
        return json_response(
            error_body(exc.message, exc.detail), status=exc.status, headers=exc.headers
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[SETTINGS_KEY].max_body_bytes
        return json_response(
            error_body(f"request body too large: the limit is {limit} bytes"), status=413
        )
    if isinstance(exc, web.HTTPException):
        return json_response(error_body(exc.reason), status=exc.status)
    if isinstance(exc, asyncpg.DataError):
        # A value the database cannot hold that no check caught: the request's fault,
        # and resending it never helps, so never a 5xx.
        log.warning("request_value_unstorable", path=request.path, error=type(exc).__name__)
        return json_response(
            error_body(f"a value in this request cannot be stored: {exc}"), status=422
        )
    log.error("unhandled_error", path=request.path, exc_info=exc)
    return json_response(error_body("internal error"), status=500)


def _make_middlewares(service: str, registry: CollectorRegistry) -> list[Any]:
    latency = Histogram(
        "tollgate_http_request_duration_seconds",
        "HTTP request latency by route",
        ["service", "route", "method", "status"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    requests = Counter(
        "tollgate_http_requests_total",
        "HTTP requests by route and status",
        ["service", "route", "method", "status"],
        registry=registry,
    )

    # The series of each (route, method, status), looked up once: `labels()` takes a lock and
    # checks its arguments on every call, a noticeable share of a limit check's time.
    children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            try:
                response: web.StreamResponse = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:  # a redirect is an answer, not an error
                    status = exc.status
                    raise
                response = error_response(request, service, exc)
            except Exception as exc:  # every failure gets the one error shape
                response = error_response(request, service, exc)
            status = response.status
            return response
        finally:
            method = request.method if request.method in _METHODS else "other"
            key = (_route_name(request), method, status)
            series = children.get(key)
            if series is None:
                labels = (service, key[0], key[1], str(status))
                series = children[key] = (latency.labels(*labels), requests.labels(*labels))
            series[0].observe(time.perf_counter() - started)
            series[1].inc()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = getattr(handler, _ROLE_ATTR, Role.EMITTER)
        if needed is Role.PUBLIC:
            return await handler(request)
        token = bearer_token(request)
        if token is not None and token.startswith(PORTAL_PREFIX):
            request[PORTAL_CLAIMS_KEY] = _portal_claims(request, token, handler)
            return await handler(request)
        role = None if token is None else role_of_token(token, request.app[SETTINGS_KEY])
        if role is None:
            raise Unauthorized("missing or unknown bearer token")
        if role < needed:
            raise Forbidden("this token may not call this route; it needs an admin token")
        request[ROLE_KEY] = role
        return await handler(request)

    return [errors, auth]


async def _healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


class HealthMetrics:
    """`tollgate_ready` and `tollgate_dependency_up`, set whenever readiness is evaluated."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.service = service
        self.ready = Gauge(
            "tollgate_ready",
            "1 when every readiness check passes (what /readyz answers with 200)",
            ["service"],
            registry=registry,
        )
        self.dependency_up = Gauge(
            "tollgate_dependency_up",
            "1 when the dependency answered this replica's last probe",
            ["service", "dependency"],
            registry=registry,
        )

    def observe(self, *, ready: bool, dependencies: dict[str, bool]) -> None:
        """Record one evaluation."""
        self.ready.labels(self.service).set(1 if ready else 0)
        for name, up in dependencies.items():
            self.dependency_up.labels(self.service, name).set(1 if up else 0)


HEALTH_METRICS_KEY = web.AppKey("health_metrics", HealthMetrics)


async def _run_checks(checks: list[Check]) -> dict[str, bool]:
    results: dict[str, bool] = {}
    for check in checks:
        ok, name = await check()
        results[name] = ok
    return results


async def evaluate_health(app: web.Application) -> tuple[bool, dict[str, bool], dict[str, bool]]:
    """Readiness, each readiness check and each reported dependency; the gauges follow."""
    checks = await _run_checks(app[READINESS_KEY])
    dependencies = await _run_checks(app[DEPENDENCIES_KEY])
    ready = all(checks.values())
    app[HEALTH_METRICS_KEY].observe(ready=ready, dependencies=dependencies)
    return ready, checks, dependencies


class Probe:
    """A dependency asked in the background; `/readyz` reads its last answer and never waits.

    `ask` raises, or answers False, when the dependency is down; it gets `timeout_s`. Call
    the probe (`probe()`) for its last answer; `run_forever` asks every `every_s` seconds.
    """

    def __init__(
        self,
        name: str,
        ask: Callable[[], Awaitable[object]],
        *,
        every_s: float = 1.0,
        timeout_s: float = 2.0,
    ) -> None:
        self.name = name
        self.ask = ask
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.up = False
        self._asking: asyncio.Future[object] | None = None

    def __call__(self) -> bool:
        """The last answer."""
        return self.up

    async def once(self) -> bool:
        """Ask now (or go on waiting for the last question); the answer is kept.

        The question runs as a task of its own that is cancelled, never awaited, when it takes
        too long: cancelling a query to a frozen PostgreSQL waits for the server, and the probe
        must say "down" on time all the same.
        """
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self.ask())
            self._asking.add_done_callback(_consume_outcome)
        asking = self._asking
        try:
            done, _ = await asyncio.wait({asking}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            asking.cancel()
            raise
        if not done:
            asking.cancel()
            self.up = False
        elif asking.cancelled() or asking.exception() is not None:
            self.up = False
        else:
            self.up = asking.result() is not False
        return self.up

    async def run_forever(self) -> None:
        """Ask every `every_s` seconds until cancelled."""
        while True:
            await self.once()
            await asyncio.sleep(self.every_s)


def _consume_outcome(task: asyncio.Future[object]) -> None:
    # A question given up on ends later; what it ended with was already answered as "down".
    if not task.cancelled():
        task.exception()


def declare_readiness(
    app: web.Application,
    *,
    needs: Mapping[str, Callable[[], bool]],
    reports: Mapping[str, Callable[[], bool]] | None = None,
) -> None:
    """Name what the service needs to do its job (`needs`: `/readyz` is 200 only when all hold)
    and the dependencies it reports without needing them (`reports`: in `/readyz` and as
    `tollgate_dependency_up`). Each is a cheap synchronous look at state kept elsewhere (a
    `Probe`, a consumer's progress), so that a probe of `/readyz` never waits on a dependency.
    """

    def check(name: str, holds: Callable[[], bool]) -> Check:
        async def evaluate() -> tuple[bool, str]:
            return holds(), name

        return evaluate

    app[READINESS_KEY].extend(check(name, holds) for name, holds in needs.items())
    app[DEPENDENCIES_KEY].extend(check(name, holds) for name, holds in (reports or {}).items())


def _words(results: dict[str, bool]) -> dict[str, str]:
    return {name: "ok" if ok else "failing" for name, ok in results.items()}


async def _readyz(request: web.Request) -> web.Response:
    ready, checks, dependencies = await evaluate_health(request.app)
    body: dict[str, object] = {"ready": ready, "checks": _words(checks)}
    if dependencies:
        body["dependencies"] = _words(dependencies)
    return json_response(body, status=200 if ready else 503)


async def metrics_text(app: web.Application) -> bytes:
    """The app's registry in Prometheus text format, readiness gauges freshly evaluated."""
    await evaluate_health(app)
    return generate_latest(app[REGISTRY_KEY])


def create_metrics_app(app: web.Application) -> web.Application:
    """`GET /metrics` of `app`, and nothing else, for the metrics port.

    The metrics stay off the API port: that port is what clients and an Ingress reach, and
    the metrics port is what only Prometheus needs.
    """

    async def metrics(_: web.Request) -> web.Response:
        resp = web.Response(body=await metrics_text(app))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    return metrics_app


async def _openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY].document())


def create_app(
    *,
    service: str,
    settings: CommonSettings,
    registry: CollectorRegistry,
    openapi: OpenApi,
) -> web.Application:
    """An application with the shared middlewares and the operational routes.

    Services add their routes, `cleanup_ctx` resources, readiness checks
    (`app[READINESS_KEY].append(check)`) and reported dependencies
    (`app[DEPENDENCIES_KEY]`) to what this returns. `/metrics` is not among its routes:
    `create_metrics_app` serves it on a port of its own.
    """
    app = web.Application(
        middlewares=_make_middlewares(service, registry),
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[OPENAPI_KEY] = openapi
    app[ROUTES_KEY] = []
    app[READINESS_KEY] = []
    app[DEPENDENCIES_KEY] = []
    app[HEALTH_METRICS_KEY] = HealthMetrics(service, registry)
    install_routes(app, OPERATIONAL_ROUTES)
    return app


#: Health, readiness and the API's description (metrics have a port of their own).
OPERATIONAL_ROUTES = (
    Route("GET", "/healthz", _healthz, "Liveness", role=Role.PUBLIC, responses={200: None}),
    Route(
        "GET",
        "/readyz",
        _readyz,
        "Readiness",
        role=Role.PUBLIC,
        responses={200: None, 503: None},
    ),
    Route(
        "GET",
        "/openapi.json",
        _openapi,
        "This document",
        role=Role.PUBLIC,
        responses={200: {"type": "object"}},
    ),
)


def install_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Serve `routes` on `app`, with the role each declares, and describe them in its OpenAPI.

    With `TOLLGATE_CHECK_RESPONSES` set (the tests set it), every JSON body a route answers
    with is validated against the model its table declares for that status: a body that
    drifts from its contract turns into a 500 naming the route instead of passing unnoticed.
    """
    check = app[SETTINGS_KEY].check_responses
    for route in routes:
        handler = _checked(route) if check and route.documented else route.handler
        role = getattr(handler, _ROLE_ATTR, route.role)
        portal = getattr(handler, _PORTAL_ATTR, route.portal)
        if (role, portal) != (route.role, route.portal):
            # A handler function carries one role: two routes must not disagree about it.
            raise ValueError(f"{route.method} {route.path}: its handler serves another role")
        # The auth middleware reads these from the handler it is about to call.
        setattr(handler, _ROLE_ATTR, route.role)
        if route.portal is not None:
            setattr(handler, _PORTAL_ATTR, route.portal)
        if route.method.upper() == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method.upper(), route.path, handler)
        if route.documented:
            app[OPENAPI_KEY].add(route)
        app[ROUTES_KEY].append(route)


class ResponseContractError(AssertionError):
    """A handler answered with a body its route table does not declare."""


def _checked(route: Route) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = await route.handler(request)
        check_response(route, response)
        return response

    return handler


def check_response(route: Route, response: web.StreamResponse) -> None:
    """Raise `ResponseContractError` unless `response` is what `route` declares for its status.

    Error statuses raised as `ApiError`s never reach here (the error middleware shapes them);
    a JSON body of a status the route declares with a model must validate against that model,
    and a status the route does not declare at all is itself a broken contract.
    """
    name = f"{route.method.upper()} {route.path}"
    if response.status not in route.responses:
        raise ResponseContractError(f"{name} answered {response.status}, which it does not declare")
    model = route.model_for(response.status)
    if model is None or not isinstance(response, web.Response):
        return
    if response.content_type != "application/json":
        if route.csv and response.content_type == "text/csv":
            return
        raise ResponseContractError(f"{name} answered {response.content_type}, not JSON")
    body = response.body
    if not isinstance(body, bytes):
        raise ResponseContractError(f"{name} answered a body that is not bytes")
    try:
        model.model_validate_json(body)
    except ValidationError as exc:
        raise ResponseContractError(
            f"{name} answered a {response.status} body that is not a {model.__name__}: "
            f"{validation_message(exc)}"
        ) from exc


def accept_portal_tokens(
    app: web.Application, settings: CommonSettings, *, store: RevocationStore | None = None
) -> None:
    """Verify portal tokens on this app's routes that name `portal=` when a portal secret is set.

    The authority polls the revocations table (or `store`, in tests) for the app's lifetime.
    """
    if not settings.portal_secret:
        return

    async def portal(app: web.Application) -> AsyncIterator[None]:
        async with running_authority(
            settings.portal_secret,
            settings.database_url,
            refresh_s=settings.portal_refresh_s,
            store=store,
        ) as authority:
            assert authority is not None
            app[PORTAL_KEY] = authority
            yield

    app.cleanup_ctx.append(portal)
