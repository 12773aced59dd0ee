"""Schemathesis against each running service's own `/openapi.json`, with every kind of token.

Cases that fit the documents and cases that break them (wrong types, missing fields,
values out of range) go to every documented operation with an admin token, an emitter
token, an unknown token and none. No answer may be a 5xx; without a valid token every
authenticated operation must answer 401.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode

from tests.reliability.stack import SERVICES, existing_services, missing_reason
from tests.security.conftest import WRONG_TOKENS, Secured
from tests.support import ADMIN_TOKEN, EMITTER_TOKEN

pytestmark = pytest.mark.e2e

TOKENS = {"admin": ADMIN_TOKEN, "emitter": EMITTER_TOKEN, "unknown": WRONG_TOKENS[0], "none": None}


@pytest.mark.parametrize("token", sorted(TOKENS))
@pytest.mark.parametrize("name", SERVICES)
def test_no_generated_request_gets_a_server_error(secured: Secured, name: str, token: str) -> None:
    """Every generated request, valid or not, gets a non-5xx answer (401 without a token)."""
    if name not in existing_services():
        pytest.skip(missing_reason(name))
    schema = schemathesis.openapi.from_url(f"{secured.url(name)}/openapi.json")
    strategy = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(
        GenerationMode.NEGATIVE
    )
    value = TOKENS[token]
    headers = {"Authorization": f"Bearer {value}"} if value is not None else {}
    authenticated = token in {"admin", "emitter"}

    @given(case=strategy)
    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: Case[Any]) -> None:
        if not authenticated and case.headers is not None:
            case.headers.pop("Authorization", None)
        response = case.call(headers=headers, timeout=20)
        what = f"{case.method} {case.formatted_path} ({token} token)"
        assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
        if not authenticated and case.operation.definition.raw.get("security"):
            assert response.status_code == 401, f"{what}: {response.status_code}"

    call()
