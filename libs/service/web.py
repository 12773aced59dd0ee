"""The aiohttp skeleton every service builds on: auth, errors, health, metrics and OpenAPI."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import IntEnum
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from pydantic import BaseModel, ValidationError

from libs.events.bounds import text_problem
from libs.service.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    Unprocessable,
)
from libs.service.openapi import OpenApi
from libs.service.settings import CommonSettings

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
M = TypeVar("M", bound=BaseModel)


class Role(IntEnum):
    """Who may call a route; a higher role may do everything a lower one may."""

    PUBLIC = 0
    EMITTER = 1
    ADMIN = 2


_ROLE_ATTR = "__tollgate_role__"

SETTINGS_KEY = web.AppKey("settings", CommonSettings)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
OPENAPI_KEY = web.AppKey("openapi", OpenApi)
READINESS_KEY = web.AppKey("readiness", list[Callable[[], Awaitable[tuple[bool, str]]]])
ROLE_KEY = web.RequestKey("tollgate_role", Role)


def requires(role: Role) -> Callable[[H], H]:
    """Mark a handler with the least role that may call it (the default is EMITTER)."""

    def mark(handler: H) -> H:
        setattr(handler, _ROLE_ATTR, role)
        return handler

    return mark


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


def _role_of(request: web.Request, settings: CommonSettings) -> Role | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    if _tokens_match(token.strip(), settings.admin_tokens):
        return Role.ADMIN
    if _tokens_match(token.strip(), settings.emitter_tokens):
        return Role.EMITTER
    return None


# Methods as metric labels; anything else a client sends is `other`, so that made-up methods
# cannot grow the number of series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


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
            response = await handler(request)
            status = response.status
        except ApiError as exc:
            status = exc.status
            if status >= 500:
                log.warning("request_failed", status=status, reason=exc.message)
            return json_response(
                error_body(exc.message, exc.detail), status=status, headers=exc.headers
            )
        except web.HTTPRequestEntityTooLarge:
            status = 413
            limit = request.app[SETTINGS_KEY].max_body_bytes
            return json_response(
                error_body(f"request body too large: the limit is {limit} bytes"), status=413
            )
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            return json_response(error_body(exc.reason), status=status)
        except asyncpg.DataError as exc:
            # A value the database cannot hold that no check caught: the request's fault,
            # and resending it never helps, so never a 5xx.
            status = 422
            log.warning("request_value_unstorable", path=request.path, error=type(exc).__name__)
            return json_response(
                error_body(f"a value in this request cannot be stored: {exc}"), status=422
            )
        except Exception:
            log.exception("unhandled_error", path=request.path)
            return json_response(error_body("internal error"), status=500)
        else:
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
        role = _role_of(request, request.app[SETTINGS_KEY])
        if role is None:
            raise Unauthorized("missing or unknown bearer token")
        if role < needed:
            raise Forbidden("this token may not call this route; it needs an admin token")
        request[ROLE_KEY] = role
        return await handler(request)

    return [errors, auth]


@requires(Role.PUBLIC)
async def _healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@requires(Role.PUBLIC)
async def _readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    ready = True
    for check in request.app[READINESS_KEY]:
        ok, name = await check()
        checks[name] = "ok" if ok else "failing"
        ready &= ok
    return json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


@requires(Role.PUBLIC)
async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


@requires(Role.PUBLIC)
async def _openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_KEY].document())


def create_app(
    *,
    service: str,
    settings: CommonSettings,
    registry: CollectorRegistry,
    openapi: OpenApi,
) -> web.Application:
    """An application with the shared middlewares and the four operational routes.

    Services add their routes, `cleanup_ctx` resources and readiness checks
    (`app[READINESS_KEY].append(check)`) to what this returns.
    """
    app = web.Application(
        middlewares=_make_middlewares(service, registry),
        client_max_size=settings.max_body_bytes,
    )
    app[SETTINGS_KEY] = settings
    app[REGISTRY_KEY] = registry
    app[OPENAPI_KEY] = openapi
    app[READINESS_KEY] = []
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    openapi.add_operational_routes()
    return app
