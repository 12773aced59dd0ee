"""Authentication and roles: no token, a wrong token or the wrong role never gets through."""

from __future__ import annotations

import orjson
import pytest

from tests.reliability.stack import SERVICES, existing_services, missing_reason
from tests.security.conftest import WRONG_TOKENS, Secured
from tests.security.operations import ADMIN, EMITTER, operations, request

pytestmark = pytest.mark.e2e

BAD_HEADERS = [
    {},
    *({"Authorization": f"Bearer {t}"} for t in WRONG_TOKENS),
    {"Authorization": "Basic dGVzdDp0ZXN0"},
    {"Authorization": "Bearer"},
    {"Authorization": "Token test-admin-token"},
    {"Authorization": "Bearer test-admin-token test-admin-token"},
    {"Authorization": "Bearer ' OR '1'='1"},
]


def _service(secured: Secured, name: str) -> str:
    if name not in existing_services():
        pytest.skip(missing_reason(name))
    return secured.url(name)


@pytest.mark.parametrize("name", SERVICES)
async def test_protected_routes_refuse_missing_or_wrong_tokens(secured: Secured, name: str) -> None:
    """Every authenticated route answers 401 with the error shape to absent or unknown tokens."""
    url = _service(secured, name)
    ops = [op for op in await operations(name, url) if not op.public]
    assert ops, f"{name} documents no authenticated route"
    for op in ops:
        for headers in BAD_HEADERS:
            status, body, _ = await request(url, op.method, op.concrete(), headers=headers)
            assert status == 401, f"{op} with {headers}: {status} {body[:200]!r}"
            assert "message" in orjson.loads(body)


@pytest.mark.parametrize("name", SERVICES)
async def test_emitter_tokens_cannot_reach_admin_routes(secured: Secured, name: str) -> None:
    """Every admin route refuses an emitter token with 403, before looking at the request."""
    url = _service(secured, name)
    admin_ops = [op for op in await operations(name, url) if op.admin]
    for op in admin_ops:
        status, body, _ = await request(
            url, op.method, op.concrete(), headers=EMITTER, body=b'{"any": "thing"}'
        )
        assert status == 403, f"{op}: {status} {body[:200]!r}"


@pytest.mark.parametrize("name", SERVICES)
async def test_operational_routes_need_no_token(secured: Secured, name: str) -> None:
    """Health, readiness and the OpenAPI document answer without a token; metrics are elsewhere."""
    url = _service(secured, name)
    for path in ("/healthz", "/readyz", "/openapi.json"):
        status, _, _ = await request(url, "get", path)
        assert status == 200, f"{name} {path}: {status}"
    status, _, _ = await request(url, "get", "/metrics", headers=ADMIN)
    assert status == 404, f"{name} serves /metrics on its API port: {status}"


@pytest.mark.parametrize("name", SERVICES)
async def test_metrics_port_serves_metrics_and_nothing_else(secured: Secured, name: str) -> None:
    """The metrics port answers `/metrics` and 404 for every API and operational route."""
    _service(secured, name)
    metrics_url = secured.stack.services[name].metrics_url
    base = metrics_url.removesuffix("/metrics")
    status, body, content_type = await request(base, "get", "/metrics")
    assert status == 200, f"{name} metrics port: {status}"
    assert content_type.startswith("text/plain")
    assert b"tollgate_ready{" in body
    for path in ("/healthz", "/readyz", "/openapi.json", "/api/v1/events", "/metrics/../api"):
        status, _, _ = await request(base, "get", path, headers=ADMIN)
        assert status == 404, f"{name} metrics port {path}: {status}"
