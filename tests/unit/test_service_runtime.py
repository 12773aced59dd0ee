"""The shared service skeleton: settings, auth roles, error mapping and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field, ValidationError

from libs.service.embedded import free_port, port_open
from libs.service.errors import Conflict, DependencyUnavailable
from libs.service.openapi import OpenApi
from libs.service.routes import Role, Route
from libs.service.runtime import expose_metrics
from libs.service.settings import CommonSettings
from libs.service.web import (
    READINESS_KEY,
    Probe,
    ResponseContractError,
    check_response,
    create_app,
    declare_readiness,
    install_routes,
    json_response,
    read_model,
)
from services.ingest.config import IngestSettings
from tests.support import scrape


class Body(BaseModel):
    """A request body with one constrained field."""

    amount: int = Field(gt=0)


async def admin_only(_: web.Request) -> web.Response:
    """Only admins get here."""
    return json_response({"ok": True})


async def emitter_route(request: web.Request) -> web.Response:
    """Any valid token gets here; the body is validated."""
    body = await read_model(request, Body)
    return json_response({"amount": body.amount})


async def conflict(_: web.Request) -> web.Response:
    """Raises a domain error."""
    raise Conflict("budget spent", detail={"spent": 5})


async def down(_: web.Request) -> web.Response:
    """Raises a dependency error."""
    raise DependencyUnavailable("database unavailable", retry_after_s=7)


async def boom(_: web.Request) -> web.Response:
    """Fails unexpectedly."""
    raise RuntimeError("secret internals")


async def unstorable(_: web.Request) -> web.Response:
    """The database refuses a value of the request."""
    raise asyncpg.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00")


#: What a handler may meet when PostgreSQL is away; the middleware answers each with 503.
OUTAGES: dict[str, BaseException] = {
    "refused": ConnectionRefusedError("connect call failed ('10.0.0.7', 5432)"),
    "timeout": TimeoutError(),
    "pool-closed": asyncpg.InterfaceError("pool is closing"),
    "connection-lost": asyncpg.ConnectionDoesNotExistError("connection was closed"),
    "starting": asyncpg.CannotConnectNowError("the database system is starting up"),
    "too-many": asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    "cancelled": asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    "shutdown": asyncpg.AdminShutdownError("terminating connection due to administrator command"),
}


def _raising(exc: BaseException) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(_: web.Request) -> web.Response:
        raise exc

    return handler


ROUTES = (
    Route("GET", "/admin", admin_only, "admin", role=Role.ADMIN, responses={200: None}),
    Route("POST", "/emit", emitter_route, "emit", request=Body, responses={200: Body}),
    Route("GET", "/conflict", conflict, "conflict", responses={409: None}),
    Route("GET", "/down", down, "down", responses={503: None}),
    Route("GET", "/boom", boom, "boom", responses={200: None}),
    Route("GET", "/unstorable", unstorable, "unstorable", responses={422: None}),
    *(
        Route("GET", f"/outage/{name}", _raising(exc), name, responses={503: None})
        for name, exc in OUTAGES.items()
    ),
    Route(
        "GET",
        "/duplicate",
        _raising(asyncpg.UniqueViolationError("duplicate key")),
        "duplicate",
        responses={500: None},
    ),
)


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An app built on the skeleton with a route per case."""
    settings = CommonSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="e1, e2",
        TOLLGATE_ADMIN_TOKENS="a1",
        TOLLGATE_MAX_BODY_BYTES=2048,
    )
    openapi = OpenApi(title="t")
    app = create_app(service="t", settings=settings, registry=CollectorRegistry(), openapi=openapi)
    ready = {"value": False}

    async def check() -> tuple[bool, str]:
        return ready["value"], "thing"

    app[READINESS_KEY].append(check)
    install_routes(app, ROUTES)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def test_token_lists_are_split_on_commas() -> None:
    """Comma-separated token variables become trimmed tuples without empty entries."""
    settings = CommonSettings(
        DATABASE_URL="x", TOLLGATE_EMITTER_TOKENS=" a, b,,c ", TOLLGATE_ADMIN_TOKENS=""
    )
    assert settings.emitter_tokens == ("a", "b", "c")
    assert settings.admin_tokens == ()


async def test_roles(client: TestClient[web.Request, web.Application]) -> None:
    """Admin routes need an admin token; emitter routes take either; unknown tokens are 401."""
    assert (await client.get("/admin")).status == 401
    assert (await client.get("/admin", headers={"Authorization": "Bearer e2"})).status == 403
    assert (await client.get("/admin", headers={"Authorization": "Bearer a1"})).status == 200
    assert (await client.get("/admin", headers={"Authorization": "Basic a1"})).status == 401
    resp = await client.post("/emit", json={"amount": 1}, headers={"Authorization": "Bearer a1"})
    assert resp.status == 200
    resp = await client.post("/emit", json={"amount": 1}, headers={"Authorization": "Bearer e1x"})
    assert resp.status == 401


async def test_errors_have_one_shape(client: TestClient[web.Request, web.Application]) -> None:
    """Domain errors, dependency errors and crashes all answer `{message, detail}` without internals."""
    auth = {"Authorization": "Bearer e1"}
    resp = await client.get("/conflict", headers=auth)
    assert resp.status == 409
    assert await resp.json() == {"message": "budget spent", "detail": {"spent": 5}}
    resp = await client.get("/down", headers=auth)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    resp = await client.get("/boom", headers=auth)
    assert resp.status == 500
    assert "secret" not in await resp.text()
    resp = await client.get("/nowhere", headers=auth)
    assert resp.status == 404
    assert "message" in await resp.json()


async def test_bodies_are_validated(client: TestClient[web.Request, web.Application]) -> None:
    """Invalid JSON is 400, a failing field is 422 naming it, an oversize body is 413."""
    auth = {"Authorization": "Bearer e1", "Content-Type": "application/json"}
    assert (await client.post("/emit", data=b"{", headers=auth)).status == 400
    resp = await client.post("/emit", data=b'{"amount": 0}', headers=auth)
    assert resp.status == 422
    assert (await resp.json())["message"].startswith("amount:")
    resp = await client.post(
        "/emit", data=b'{"amount": 1, "pad": "' + b"x" * 4096 + b'"}', headers=auth
    )
    assert resp.status == 413
    resp = await client.post(
        "/emit", data=b"amount=1", headers={**auth, "Content-Type": "text/plain"}
    )
    assert resp.status == 400
    assert "content type" in (await resp.json())["message"]


async def test_readiness_reflects_checks(client: TestClient[web.Request, web.Application]) -> None:
    """`/readyz` is 503 naming the failing check; health needs no token; metrics are elsewhere."""
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "checks": {"thing": "failing"}}
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics", headers={"Authorization": "Bearer a1"})).status == 404
    metrics = await scrape(client.app)
    assert "tollgate_http_requests_total" in metrics
    assert 'tollgate_ready{service="t"} 0.0' in metrics
    assert "e1" not in metrics.split("tollgate_http")[0]


async def test_dependencies_are_reported_without_deciding_readiness() -> None:
    """A failing dependency shows in `/readyz` and as `tollgate_dependency_up` 0, yet the app is ready."""
    settings = CommonSettings(DATABASE_URL="postgresql://unused")
    app = create_app(
        service="t", settings=settings, registry=CollectorRegistry(), openapi=OpenApi(title="t")
    )
    up = {"broker": True, "database": False}
    declare_readiness(
        app,
        needs={"broker": lambda: up["broker"]},
        reports={"broker": lambda: up["broker"], "database": lambda: up["database"]},
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {
            "ready": True,
            "checks": {"broker": "ok"},
            "dependencies": {"broker": "ok", "database": "failing"},
        }
        metrics = await scrape(client.app)
        assert 'tollgate_ready{service="t"} 1.0' in metrics
        assert 'tollgate_dependency_up{dependency="database",service="t"} 0.0' in metrics
        assert 'tollgate_dependency_up{dependency="broker",service="t"} 1.0' in metrics
        up["broker"] = False
        assert (await client.get("/readyz")).status == 503
        assert 'tollgate_ready{service="t"} 0.0' in await scrape(client.app)


async def test_metrics_server_runs_beside_the_app_on_its_own_port() -> None:
    """`expose_metrics` serves `/metrics` on the metrics port from start to stop, and only that."""
    settings = CommonSettings(DATABASE_URL="postgresql://unused")
    app = create_app(
        service="t", settings=settings, registry=CollectorRegistry(), openapi=OpenApi(title="t")
    )
    port = free_port()
    expose_metrics(app, host="127.0.0.1", port=port)
    async with TestClient(TestServer(app)) as api, aiohttp.ClientSession() as http:
        assert (await api.get("/healthz")).status == 200
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert 'tollgate_ready{service="t"} 1.0' in await resp.text()
        for path in ("/healthz", "/readyz", "/openapi.json"):
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                assert resp.status == 404, path
    assert not port_open("127.0.0.1", port)


def test_metrics_port_must_differ_from_the_api_port() -> None:
    """A service's settings refuse a metrics port equal to its API port, naming the problem."""
    with pytest.raises(ValidationError, match="metrics port must differ from the API port"):
        IngestSettings(
            DATABASE_URL="x", TOLLGATE_INGEST_PORT=9000, TOLLGATE_INGEST_METRICS_PORT=9000
        )
    assert IngestSettings(DATABASE_URL="x").metrics_port == 9081


async def test_request_metrics_count_each_route_method_and_status(
    client: TestClient[web.Request, web.Application],
) -> None:
    """Each answer lands in its route/method/status series; other methods share `other`."""
    auth = {"Authorization": "Bearer e1"}
    for _ in range(3):
        assert (await client.get("/conflict", headers=auth)).status == 409
    assert (await client.request("PROPFIND", "/conflict", headers=auth)).status == 405
    assert (await client.request("TRACE", "/conflict", headers=auth)).status == 405
    metrics = await scrape(client.app)
    conflict = 'method="GET",route="/conflict",service="t",status="409"'
    assert f"tollgate_http_requests_total{{{conflict}}} 3.0" in metrics
    assert f"tollgate_http_request_duration_seconds_count{{{conflict}}} 3.0" in metrics
    other = 'method="other",route="unmatched",service="t",status="405"'
    assert f"tollgate_http_requests_total{{{other}}} 2.0" in metrics
    assert "PROPFIND" not in metrics
    assert "TRACE" not in metrics


async def test_openapi_document_describes_routes(
    client: TestClient[web.Request, web.Application],
) -> None:
    """The document lists operational and added routes, with request schemas and security."""
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    emit = doc["paths"]["/emit"]["post"]
    assert emit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Body")
    assert {"401", "422", "200"} <= set(emit["responses"])
    assert "Body" in doc["components"]["schemas"]
    assert "/healthz" in doc["paths"]


async def test_a_stalled_body_times_out_with_408() -> None:
    """A client that stops sending its body gets 408 instead of holding the handler forever."""
    settings = CommonSettings(
        DATABASE_URL="postgresql://unused", TOLLGATE_EMITTER_TOKENS="e1", TOLLGATE_BODY_TIMEOUT=0.2
    )
    app = create_app(
        service="t", settings=settings, registry=CollectorRegistry(), openapi=OpenApi(title="t")
    )
    app.router.add_post("/emit", emitter_route)
    server = TestServer(app)
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /emit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer e1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"amo'
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        assert b" 408 " in status_line
        writer.close()
    finally:
        await server.close()


async def test_a_value_the_database_refuses_is_422_not_a_server_error(
    client: TestClient[web.Request, web.Application],
) -> None:
    """A database data error that no check caught is the request's fault: 422, no Retry-After."""
    resp = await client.get("/unstorable", headers={"Authorization": "Bearer e1"})
    assert resp.status == 422
    assert "Retry-After" not in resp.headers
    assert (await resp.json())["message"].startswith("a value in this request cannot be stored")


@pytest.mark.parametrize("outage", sorted(OUTAGES))
async def test_a_database_outage_is_503_answered_by_the_middleware(
    client: TestClient[web.Request, web.Application], outage: str
) -> None:
    """Every kind of database outage a handler lets through is one 503 naming the service's database, without its text."""
    resp = await client.get(f"/outage/{outage}", headers={"Authorization": "Bearer e1"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    body = await resp.json()
    assert body == {
        "message": "the t database is unavailable; retry shortly",
        "detail": type(OUTAGES[outage]).__name__,
    }


async def test_a_database_error_that_is_no_outage_stays_a_server_error(
    client: TestClient[web.Request, web.Application],
) -> None:
    """A constraint violation no handler expected is a 500, not an outage to retry."""
    resp = await client.get("/duplicate", headers={"Authorization": "Bearer e1"})
    assert resp.status == 500
    assert "Retry-After" not in resp.headers
    assert "duplicate" not in await resp.text()


async def test_a_probe_keeps_the_last_answer_and_says_down_for_errors_false_and_silence() -> None:
    """An answer is up, an exception or False is down, and a question that hangs is down on
    time, with the hung question cancelled and never asked twice at once."""
    answers: list[object] = [True]
    started = 0
    hang = asyncio.Event()

    async def ask() -> object:
        nonlocal started
        started += 1
        answer = answers[0]
        if answer == "hang":
            await hang.wait()
        if isinstance(answer, Exception):
            raise answer
        return answer

    probe = Probe("thing", ask, every_s=0.01, timeout_s=0.05)
    assert probe() is False
    assert await probe.once() is True
    answers[0] = OSError("refused")
    assert await probe.once() is False
    answers[0] = 0
    assert await probe.once() is True
    answers[0] = False
    assert await probe.once() is False
    answers[0] = "hang"
    before = started
    assert await probe.once() is False
    assert started == before + 1
    answers[0] = True
    # The next look finds the given-up question ending (cancelled): still down; then it asks anew.
    assert await probe.once() is False
    assert started == before + 1
    assert await probe.once() is True
    assert (started, probe()) == (before + 2, True)


async def test_a_probe_stops_when_cancelled_even_while_a_question_hangs() -> None:
    """Cancelling `run_forever` ends it at once and cancels the question in flight."""
    asked = asyncio.Event()
    cancelled = asyncio.Event()

    async def ask() -> object:
        asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    probe = Probe("thing", ask, every_s=0.01, timeout_s=60)
    task = asyncio.create_task(probe.run_forever())
    await asked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    await asyncio.wait_for(cancelled.wait(), 1)


async def _drifted(_: web.Request) -> web.Response:
    """Answers a body without the field its route declares."""
    return json_response({"amount": "many"})


async def _undeclared(_: web.Request) -> web.Response:
    """Answers a status its route does not declare."""
    return json_response({"amount": 1}, status=202)


@pytest.mark.parametrize("check", [True, False])
async def test_answers_are_checked_against_their_declared_models_when_asked(check: bool) -> None:
    """With TOLLGATE_CHECK_RESPONSES a drifted body or an undeclared status is a 500 naming the
    route; without it (production) the answer goes out as the handler made it."""
    settings = CommonSettings(
        DATABASE_URL="postgresql://unused",
        TOLLGATE_EMITTER_TOKENS="e1",
        TOLLGATE_CHECK_RESPONSES=check,
    )
    app = create_app(
        service="t", settings=settings, registry=CollectorRegistry(), openapi=OpenApi(title="t")
    )
    install_routes(
        app,
        (
            Route("GET", "/drifted", _drifted, "drifted", responses={200: Body}),
            Route("GET", "/undeclared", _undeclared, "undeclared", responses={200: Body}),
        ),
    )
    auth = {"Authorization": "Bearer e1"}
    async with TestClient(TestServer(app)) as client:
        drifted = await client.get("/drifted", headers=auth)
        undeclared = await client.get("/undeclared", headers=auth)
    expected = (500, 500) if check else (200, 202)
    assert (drifted.status, undeclared.status) == expected


def test_a_broken_contract_names_the_route_and_what_broke() -> None:
    """The error says which route answered what: a status it lacks, a field that is wrong."""
    route = Route("GET", "/things", _drifted, "things", responses={200: Body, 404: None})
    with pytest.raises(
        ResponseContractError, match=r"GET /things answered a 200 body that is not a Body: amount: "
    ):
        check_response(route, json_response({"amount": "many"}))
    with pytest.raises(
        ResponseContractError, match="GET /things answered 202, which it does not declare"
    ):
        check_response(route, json_response({"amount": 1}, status=202))
    with pytest.raises(ResponseContractError, match="answered text/plain, not JSON"):
        check_response(route, web.Response(text="1"))
    check_response(route, json_response({"amount": 1}))
    check_response(route, json_response({"message": "no such thing"}, status=404))


async def _shared(_: web.Request) -> web.Response:
    """One handler that two routes try to serve with different roles."""
    return json_response({"amount": 1})


def test_one_handler_cannot_serve_two_roles() -> None:
    """Installing a handler under a second, different role is refused instead of widening it."""
    settings = CommonSettings(DATABASE_URL="postgresql://unused", TOLLGATE_CHECK_RESPONSES=False)
    app = create_app(
        service="t", settings=settings, registry=CollectorRegistry(), openapi=OpenApi(title="t")
    )
    install_routes(app, (Route("GET", "/a", _shared, "a", role=Role.ADMIN, responses={200: Body}),))
    with pytest.raises(ValueError, match="GET /b: its handler serves another role"):
        install_routes(app, (Route("GET", "/b", _shared, "b", responses={200: Body}),))
