"""Property tests: any event, query or user id a caller can send gets a 4xx or an answer.

Hypothesis draws events whose text fields hold SQL, control characters and very long
strings, whose numbers are negative, enormous or not numbers, and whose dates lie far
in the past or the future. Ingest must accept or reject each one and never fail; what
it accepts must not stop a consumer (the aftermath tests check that).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.stack import existing_services, missing_reason
from tests.security.conftest import Secured
from tests.support import ADMIN_TOKEN, EMITTER_TOKEN

pytestmark = pytest.mark.e2e

SQL = [
    "' OR '1'='1",
    "'; DROP TABLE reports_events; --",
    '" OR ""="',
    "1; SELECT pg_sleep(30); --",
    "' UNION SELECT next_offset FROM consumer_offsets --",
    "Robert'); DROP TABLE students;--",
    "$1",
    "%s%s%s%n",
    "\\x00\\'",
    "\x00",
    "nul\x00inside",
    "\u202e\u0000\ufeff",
    "{{7*7}}",
    "../../etc/passwd",
    "<script>alert(1)</script>",
]
settings_ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
    database=None,
)

texts = st.one_of(
    st.sampled_from(SQL),
    st.text(max_size=40),
    st.builds(lambda a, b: a + b, st.sampled_from(SQL), st.text(max_size=10)),
    st.text(min_size=120, max_size=400),
)
numbers: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 2**53 - 1, 2**53, 2**63, -(2**63), 1e308, -0.0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    texts,
    st.none(),
)
dates = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001  # the timezone comes from `timezones`
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.just(UTC),
    ).map(lambda d: d.isoformat()),
    st.sampled_from(
        ["0000-00-00T00:00:00Z", "2026-13-45T99:99:99Z", "2026-11-02T10:15:00", "1e9", ""]
    ),
    texts,
    numbers,
)
DATA_FIELDS: dict[str, list[str]] = {
    "chat.usage.v1": ["chat_id", "root_chat_id", "message_id", "model", "provider", "purpose"],
    "workspace.build.v1": ["workspace_id", "build_id", "template", "task_id"],
    "activity.session.v1": ["category", "detail", "workspace_id"],
    "api.usage.v1": ["client"],
    "storage.sample.v1": ["project_id"],
    "directory.user.v1": ["username", "name", "email", "avatar_hash"],
    "directory.group.v1": ["group_id", "name"],
    "directory.team.v1": ["team_id", "name"],
    "directory.project.v1": ["project_id", "team_id", "name"],
}
NUMBER_FIELDS: dict[str, list[str]] = {
    "chat.usage.v1": [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "cost_micros",
        "reasoning_tokens",
        "runtime_ms",
    ],
    "activity.session.v1": ["duration_ms", "count"],
    "api.usage.v1": ["count"],
    "storage.sample.v1": ["size_mb", "experiment_count"],
}
BASE_DATA: dict[str, dict[str, Any]] = {
    "chat.usage.v1": {
        "chat_id": "c",
        "message_id": "m",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
    },
    "workspace.build.v1": {
        "workspace_id": "w",
        "build_id": "b",
        "template": "t",
        "agent_managed": False,
    },
    "activity.session.v1": {"category": "ide", "duration_ms": 1000},
    "api.usage.v1": {"client": "ui", "count": 1},
    "storage.sample.v1": {"project_id": "p", "size_mb": 1.0, "experiment_count": 1},
    "directory.user.v1": {
        "username": "u",
        "name": "n",
        "email": "prop@example.com",
        "roles": [],
        "created_at": "2026-01-01T00:00:00Z",
    },
    "directory.group.v1": {"group_id": "g", "name": "n", "member_ids": []},
    "directory.team.v1": {"team_id": "t", "name": "n", "member_ids": []},
    "directory.project.v1": {"project_id": "p", "team_id": "t", "name": "n"},
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """An event of a known type with one or more fields replaced by hostile values."""
    kind = draw(st.sampled_from(sorted(BASE_DATA)))
    data = dict(BASE_DATA[kind])
    for name in draw(st.lists(st.sampled_from(DATA_FIELDS[kind]), max_size=3)):
        data[name] = draw(texts)
    for name in draw(st.lists(st.sampled_from(NUMBER_FIELDS.get(kind, ["x"])), max_size=2)):
        data[name] = draw(numbers)
    event: dict[str, Any] = {
        "id": f"prop-{draw(texts)}"[:140],
        "type": kind,
        "occurred_at": draw(dates),
        "user_id": f"prop-{draw(texts)}",
        "org_id": draw(st.one_of(st.none(), texts)),
        "data": data,
    }
    if draw(st.booleans()):
        event[draw(st.sampled_from(["extra", "data"]))] = draw(numbers)
    return event


class Http:
    """A keep-alive HTTP/1.1 connection to one service (the property tests are synchronous)."""

    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=20)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def __call__(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """Send one request and return the status and the decoded JSON body."""
        self.conn.request(method, path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        payload = (
            orjson.loads(raw) if raw and "json" in response.getheader("Content-Type", "") else raw
        )
        return response.status, payload


@pytest.fixture
def ingest(secured: Secured) -> Iterator[Http]:
    """A connection to ingest with the emitter token."""
    client = Http(secured.url("ingest"), EMITTER_TOKEN)
    yield client
    client.conn.close()


def _json(value: object) -> bytes:
    # The standard library writes integers of any size, as a careless client would.
    return json.dumps(value, default=str).encode()


@given(batch=st.lists(events(), min_size=1, max_size=5))
@settings_
def test_any_event_is_accepted_or_rejected_never_a_server_error(
    ingest: Http, batch: list[dict[str, Any]]
) -> None:
    """Ingest answers every batch of hostile events with per-event results or a 4xx."""
    status, body = ingest("POST", "/api/v1/events", _json({"events": batch}))
    assert status < 500, (status, body)
    if status == 200:
        assert len(body["accepted"]) + len(body["rejected"]) == len(batch)
        assert all(r["permanent"] and r["message"] for r in body["rejected"])
    else:
        assert 400 <= status < 500
        assert body["message"]


@given(user_id=st.one_of(texts, numbers), org_id=st.one_of(st.none(), texts, numbers))
@settings_
def test_any_limit_check_gets_an_answer_or_a_4xx(
    secured: Secured, user_id: object, org_id: object
) -> None:
    """A limit check or status for any user id and organisation answers 200/409 or a 4xx, never a
    5xx."""
    if "limits" not in existing_services():
        pytest.skip(missing_reason("limits"))
    client = Http(secured.url("limits"), EMITTER_TOKEN)
    try:
        check = {"user_id": user_id} if org_id is None else {"user_id": user_id, "org_id": org_id}
        status, body = client("POST", "/api/v1/limits/check", _json(check))
        assert status in {200, 409} or 400 <= status < 500, (status, body)
        path = f"/api/v1/limits/status/{quote(str(user_id), safe='')}"
        if org_id is not None:
            path += f"?org_id={quote(str(org_id), safe='')}"
        status, body = client("GET", path)
        assert status < 500, (status, body)
    finally:
        client.conn.close()


@given(start=dates, end=dates, interval=texts, category=texts, limit=numbers, offset=numbers)
@settings_
def test_any_report_query_gets_an_answer_or_a_4xx(  # noqa: PLR0917
    secured: Secured,
    start: object,
    end: object,
    interval: object,
    category: object,
    limit: object,
    offset: object,
) -> None:
    """Report queries with hostile dates, intervals, categories and paging never fail."""
    if "reports" not in existing_services():
        pytest.skip(missing_reason("reports"))
    client = Http(secured.url("reports"), ADMIN_TOKEN)
    try:
        queries = [
            ("/api/v1/metrics/activity", {"start": start, "end": end, "interval": interval}),
            ("/api/v1/metrics/activity", {"category": category, "org": interval}),
            ("/api/v1/costs/users", {"start_date": start, "end_date": end, "q": category}),
            ("/api/v1/costs/users", {"limit": limit, "offset": offset}),
            ("/api/v1/costs/users/x", {"start_date": start, "end_date": end}),
            ("/api/v1/chargeback/report", {"reportMonth": start}),
        ]
        for path, params in queries:
            query = urlencode({k: str(v) for k, v in params.items()})
            status, body = client("GET", f"{path}?{query}")
            assert status < 500, (path, params, status, body)
    finally:
        client.conn.close()
