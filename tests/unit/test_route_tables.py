"""Each service's route table is the one source of its router, its auth and its OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from pydantic import BaseModel

from libs.service.openapi import OpenApi
from libs.service.routes import Param, Role, Route
from libs.service.web import OPENAPI_KEY, ROUTES_KEY
from services.ingest.app import build_app as build_ingest
from services.ingest.config import IngestSettings
from services.limits.app import build_app as build_limits
from services.limits.config import LimitsSettings
from services.publisher.app import build_app as build_publisher
from services.publisher.config import PublisherSettings
from services.reports.app import build_app as build_reports
from services.reports.config import ReportsSettings
from services.reports.console.proxy import OWNERS, owner_of

_ENV = {"DATABASE_URL": "postgresql://unused"}
_BUILDERS: dict[str, Callable[[], web.Application]] = {
    "ingest": lambda: build_ingest(IngestSettings.model_validate(_ENV)),
    "limits": lambda: build_limits(LimitsSettings.model_validate(_ENV)),
    "reports": lambda: build_reports(
        ReportsSettings.model_validate(
            {**_ENV, "TOLLGATE_INGEST_URL": "http://i", "TOLLGATE_LIMITS_URL": "http://l"}
        )
    ),
    "publisher": lambda: build_publisher(PublisherSettings.model_validate(_ENV)),
}
_OPERATIONAL = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")}


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }


@pytest.mark.parametrize("service", sorted(_BUILDERS))
def test_the_document_lists_exactly_the_routes_of_the_table(service: str) -> None:
    """Every operation in /openapi.json is a route of the table, and every route is in it once."""
    app = _BUILDERS[service]()
    table = [(r.method, r.path) for r in app[ROUTES_KEY]]
    assert len(table) == len(set(table)), f"{service} declares a route twice"
    documented = {(r.method, r.path) for r in app[ROUTES_KEY] if r.documented}
    assert _operations(app[OPENAPI_KEY].document()) == documented
    assert set(table) >= _OPERATIONAL


@pytest.mark.parametrize("service", sorted(_BUILDERS))
def test_the_router_serves_no_route_the_table_does_not_declare(service: str) -> None:
    """Every route the router serves (the console and its gateway too) comes from a table."""
    app = _BUILDERS[service]()
    # The router's canonical form of `{tail:.*}` is `{tail}`.
    table = {(r.method, re.sub(r"\{(\w+):[^}]+\}", r"{\1}", r.path)) for r in app[ROUTES_KEY]}
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == table
    undocumented = {(r.method, r.path) for r in app[ROUTES_KEY] if not r.documented}
    assert not undocumented & _operations(app[OPENAPI_KEY].document())


@pytest.mark.parametrize("service", sorted(_BUILDERS))
def test_the_gateway_forwards_each_route_to_the_service_whose_table_has_it(service: str) -> None:
    """Reports' gateway (`OWNERS`) sends every path of a service's table to that service."""
    app = _BUILDERS[service]()
    for route in app[ROUTES_KEY]:
        if route.documented and route.path.startswith("/api/"):
            assert owner_of(route.path) == service, f"{route.method} {route.path}"


def test_every_gateway_prefix_leads_to_a_declared_route() -> None:
    """No prefix in `OWNERS` is left over from a route that no table declares any more."""
    paths = {r.path for build in _BUILDERS.values() for r in build()[ROUTES_KEY] if r.documented}
    for prefix, owner in OWNERS:
        assert any(p == prefix or p.startswith(f"{prefix}/") for p in paths), (prefix, owner)


@pytest.mark.parametrize("service", sorted(_BUILDERS))
def test_the_document_shows_each_routes_role(service: str) -> None:
    """Public routes need no token; admin routes say so and may answer 403; others need one."""
    app = _BUILDERS[service]()
    document = app[OPENAPI_KEY].document()
    for route in app[ROUTES_KEY]:
        if not route.documented:
            continue
        op = document["paths"][route.path][route.method.lower()]
        name = f"{route.method} {route.path}"
        assert ("security" in op) == (route.role is not Role.PUBLIC), name
        assert (op.get("description") == "Needs an admin token.") == (route.role is Role.ADMIN), (
            name
        )
        if route.role is Role.ADMIN or route.portal:
            assert "403" in op["responses"], name


class _Body(BaseModel):
    """A body for the document builder's cases."""

    n: int


async def _handler(_: web.Request) -> web.Response:
    """Never called: the builder only reads the route."""
    raise NotImplementedError


def test_the_builder_derives_everything_from_the_route() -> None:
    """Enums, CSV, portal access and the implicit error statuses all come from the `Route`."""
    openapi = OpenApi(title="t")
    openapi.add(
        Route(
            "GET",
            "/api/v1/things/{thing_id}",
            _handler,
            "A thing",
            portal="thing_id",
            parameters=(Param("kind", "Which", values=("a", "b"), required=True),),
            responses={200: _Body},
            csv=True,
        )
    )
    openapi.add(Route("PUT", "/api/v1/things", _handler, "Put", role=Role.ADMIN, request=_Body))
    paths = openapi.document()["paths"]
    get = paths["/api/v1/things/{thing_id}"]["get"]
    assert [p["name"] for p in get["parameters"]] == ["thing_id", "kind"]
    assert get["parameters"][1]["schema"] == {"type": "string", "enum": ["a", "b"]}
    assert get["parameters"][1]["required"] is True
    assert set(get["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert set(get["responses"]) == {"200", "401", "403"}
    assert "portal token" in get["description"]
    put = paths["/api/v1/things"]["put"]
    assert set(put["responses"]) == {"400", "401", "403", "413", "422"}
    assert put["description"] == "Needs an admin token."
