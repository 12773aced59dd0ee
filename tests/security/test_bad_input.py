"""Malformed requests of every kind end in a 4xx with the error shape, never a 5xx."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.events import EVENT_TYPES, RejectReason
from libs.events.client import LimitStatusError, TollgateClient
from tests.reliability.stack import SERVICES, existing_services, missing_reason
from tests.security.conftest import Secured
from tests.security.operations import ADMIN, EMITTER, Operation, operations, request
from tests.support import EMITTER_TOKEN

pytestmark = pytest.mark.e2e

JSON = {**ADMIN, "Content-Type": "application/json"}
EMITTER_JSON = {**EMITTER, "Content-Type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty": (b"", JSON),
    "not JSON": (b"events=1&user_id=2", JSON),
    "invalid UTF-8": (b'{"events": [{"id": "\xff\xfe\xfd"}], "user_id": "\xc3\x28"}', JSON),
    "nested 100,000 deep": (DEEP, JSON),
    "nested objects 100,000 deep": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON),
    "NaN": (b'{"user_id": NaN, "events": [NaN]}', JSON),
    "a huge number": (b'{"user_id": 1e999999, "events": [1e999999]}', JSON),
    "an array": (b"[]", JSON),
    "null": (b"null", JSON),
    "a string": (b'"x"', JSON),
    "truncated": (b'{"events": [{"id": "a"', JSON),
    "text/plain": (b'{"user_id": "u"}', {**ADMIN, "Content-Type": "text/plain"}),
    "form": (b"user_id=u", {**ADMIN, "Content-Type": "application/x-www-form-urlencoded"}),
    "multipart": (
        b'--b\r\nContent-Disposition: form-data; name="user_id"\r\n\r\nu\r\n--b--\r\n',
        {**ADMIN, "Content-Type": "multipart/form-data; boundary=b"},
    ),
    "xml": (b"<user_id>u</user_id>", {**ADMIN, "Content-Type": "application/xml"}),
}


def _service(secured: Secured, name: str) -> str:
    if name not in existing_services():
        pytest.skip(missing_reason(name))
    return secured.url(name)


async def _body_routes(name: str, url: str) -> list[Operation]:
    return [op for op in await operations(name, url) if op.has_body]


async def _targets(name: str, url: str) -> list[tuple[Operation, str]]:
    """Routes that take a body, or (for a read-only service) its GET routes hit with POST."""
    ops = await operations(name, url)
    with_body = [(op, op.method) for op in ops if op.has_body]
    return with_body or [(op, "post") for op in ops if not op.public]


def _assert_client_error(what: str, status: int, body: bytes, content_type: str) -> None:
    assert 400 <= status < 500, f"{what}: {status} {body[:300]!r}"
    if content_type == "application/json":
        assert "message" in orjson.loads(body), f"{what}: {body[:300]!r}"


@pytest.mark.parametrize("name", SERVICES)
async def test_malformed_bodies_are_refused(secured: Secured, name: str) -> None:
    """Empty, non-JSON, invalid UTF-8, deeply nested and wrongly typed bodies get a 4xx.

    A read-only service gets them on its GET routes with POST.
    """
    url = _service(secured, name)
    for op, method in await _targets(name, url):
        for case, (body, headers) in BAD_BODIES.items():
            status, answer, kind = await request(
                url, method, op.concrete(), headers=headers, body=body
            )
            _assert_client_error(f"{op} {case}", status, answer, kind)


@pytest.mark.parametrize("name", SERVICES)
async def test_huge_bodies_are_refused_with_413(secured: Secured, name: str) -> None:
    """A body over the size limit is refused with 413 (405 where the route takes none)."""
    url = _service(secured, name)
    event = {"id": "x", "type": "api.usage.v1", "occurred_at": "2026-01-01T00:00:00Z"}
    huge = orjson.dumps({"events": [event] * 100_000, "user_id": "u" * 1_000_000})
    assert len(huge) > 5_000_000
    for op, method in await _targets(name, url):
        status, answer, kind = await request(url, method, op.concrete(), headers=JSON, body=huge)
        # A route that takes no body refuses the method before reading anything.
        expected = {413} if op.has_body else {405, 413}
        assert status in expected, f"{op}: {status} {answer[:200]!r}"
        _assert_client_error(str(op), status, answer, kind)


@pytest.mark.parametrize("name", SERVICES)
async def test_unknown_routes_and_methods_are_4xx(secured: Secured, name: str) -> None:
    """Unknown paths answer 404, known paths with the wrong method 405, never 5xx."""
    url = _service(secured, name)
    ops = await operations(name, url)
    for path in (
        "/api/v1/nope",
        "/api/v2/events",
        "/../../../../etc/passwd",
        "/api/v1/%2e%2e/%2e%2e/etc/passwd",
        "/api/v1/%00",
        "/" + "a" * 4000,
        "/api/v1/events;DROP TABLE x",
    ):
        status, answer, kind = await request(url, "get", path, headers=ADMIN)
        _assert_client_error(f"{name} GET {path[:60]}", status, answer, kind)
    documented = {(op.path, op.method) for op in ops}
    for op in ops:
        for method in ("delete", "patch", "post", "put"):
            if (op.path, method) in documented:
                continue
            status, answer, kind = await request(url, method, op.concrete(), headers=ADMIN)
            assert status in {404, 405}, f"{op.path} {method}: {status} {answer[:200]!r}"


@pytest.mark.parametrize("name", SERVICES)
async def test_oversized_urls_and_path_parameters_are_4xx(secured: Secured, name: str) -> None:
    """Very long ids in paths, very long query strings and SQL in parameters get a 4xx or 200."""
    url = _service(secured, name)
    for op in await operations(name, url):
        if op.method != "get" or op.public:
            continue
        for value in ("x" * 10_000, "' OR 1=1 --", "%00", "..%2f..%2f", "😀" * 100):
            path = op.concrete(value) if "{" in op.path else f"{op.path}?q={value}&start={value}"
            status, answer, kind = await request(url, "get", path, headers=ADMIN)
            assert status < 500, f"{op} with {value[:20]!r}: {status} {answer[:200]!r}"
            if status >= 400:
                _assert_client_error(str(op), status, answer, kind)


async def _slow_request(port: int, path: str, body: bytes, *, seconds: float) -> bytes:
    """Send headers, then the body a byte at a time over `seconds`; return the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: {ADMIN['Authorization']}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    pause = seconds / len(body)
    try:
        for i in range(len(body)):
            writer.write(body[i : i + 1])
            await writer.drain()
            await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), 30)
    except (ConnectionError, OSError):
        return b"HTTP/1.1 408 closed by the server while the client was slow"
    finally:
        writer.close()


@pytest.mark.parametrize("name", SERVICES)
async def test_slow_clients_do_not_hold_up_others(secured: Secured, name: str) -> None:
    """Slow and idle connections leave other callers served quickly, and end in a 4xx."""
    url = _service(secured, name)
    routes = await _body_routes(name, url)
    port = secured.stack.services[name].port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    try:
        slow = [
            asyncio.create_task(
                _slow_request(port, op.concrete(), b'{"not": "what it wants"', seconds=3)
            )
            for op in routes[:3]
        ]
        worst = 0.0
        for _ in range(30):
            started = time.perf_counter()
            status, _, _ = await request(url, "get", "/healthz")
            worst = max(worst, time.perf_counter() - started)
            assert status == 200
            await asyncio.sleep(0.05)
        assert worst < 2.0, f"{name} kept a caller waiting {worst:.2f}s behind slow clients"
        for answer in await asyncio.gather(*slow):
            status_line = answer.split(b"\r\n", 1)[0]
            assert status_line.split(b" ")[1][:1] == b"4", f"{name}: {status_line!r}"
    finally:
        for _, writer in idle:
            writer.close()


# Hostile values for the fields chat usage gained after v1 (raw JSON, as a careless client
# would write them), and what ingest must say about each.
ADDED_FIELD_CASES: list[tuple[str, str, str]] = [
    ("runtime_ms", '"12\\u0000"', "contains a control character (U+0000"),
    ("runtime_ms", '"\\u001b[31m1"', "contains a control character (U+001B"),
    ("runtime_ms", "-1", "greater than or equal to 0"),
    ("runtime_ms", "86400001", "less than or equal to 86400000"),
    ("runtime_ms", "9223372036854775808", "less than or equal to 86400000"),
    ("runtime_ms", "1e308", "valid integer"),
    ("runtime_ms", "1.5", "valid integer"),
    ("runtime_ms", "true", "valid integer"),
    ("runtime_ms", "[1]", "valid integer"),
    ("reasoning_tokens", '"5\\u0000"', "contains a control character (U+0000"),
    ("reasoning_tokens", "-5", "greater than or equal to 0"),
    ("reasoning_tokens", "1000000000001", "less than or equal to 1000000000000"),
    ("reasoning_tokens", "100000000000000000000", "valid integer"),
    ("reasoning_tokens", "11", "at most output_tokens (10)"),
    ("reasoning_tokens", "0.5", "valid integer"),
]


async def test_runtime_and_reasoning_refuse_hostile_values_by_name(secured: Secured) -> None:
    """NUL, control characters, huge, negative, fractional and non-finite values are refused
    one event at a time, each message naming the field; the valid event beside them passes."""
    if "ingest" not in existing_services():
        pytest.skip(missing_reason("ingest"))
    url = secured.url("ingest")
    headers = {**EMITTER_JSON}
    base = (
        '{{"id": "{id}", "type": "chat.usage.v1", "occurred_at": "2026-01-01T00:00:00Z", '
        '"user_id": "sec-added-fields", "data": {{"chat_id": "c", "message_id": "m", '
        '"model": "m", "input_tokens": 1, "output_tokens": 10, {field}: {value}}}}}'
    )
    events = [
        base.format(id=f"sec-added-{i}", field=f'"{name}"', value=raw)
        for i, (name, raw, _) in enumerate(ADDED_FIELD_CASES)
    ]
    events.append(base.format(id="sec-added-ok", field='"runtime_ms"', value="1200"))
    body = ('{"events": [' + ", ".join(events) + "]}").encode()
    status, answer, _ = await request(url, "post", "/api/v1/events", headers=headers, body=body)
    assert status == 200, answer[:300]
    result = orjson.loads(answer)
    assert result["accepted"] == ["sec-added-ok"]
    messages = {r["id"]: r["message"] for r in result["rejected"]}
    for i, (name, raw, expected) in enumerate(ADDED_FIELD_CASES):
        message = messages[f"sec-added-{i}"]
        assert message.startswith(f"data.{name}: "), (raw, message)
        assert expected in message, (raw, message)
    for raw in ("NaN", "Infinity", "-Infinity"):
        nan = base.format(id="sec-added-nan", field='"runtime_ms"', value=raw)
        status, answer, _ = await request(
            url, "post", "/api/v1/events", headers=headers, body=f'{{"events": [{nan}]}}'.encode()
        )
        assert status == 400, (raw, status, answer[:200])
        assert "message" in orjson.loads(answer)


async def test_hostile_events_get_a_fixed_reason_code_that_never_echoes_them(
    secured: Secured,
) -> None:
    """Rejected events carry a code from the fixed set (never a piece of the input), and the
    rejection counter's `reason` and `type` labels stay within fixed sets however odd the type."""
    if "ingest" not in existing_services():
        pytest.skip(missing_reason("ingest"))
    url = secured.url("ingest")
    data: dict[str, object] = {
        "chat_id": "c",
        "message_id": "m",
        "model": "m",
        "input_tokens": 1,
        "output_tokens": 1,
    }
    good: dict[str, object] = {
        "id": "sec-code-ok",
        "type": "chat.usage.v1",
        "occurred_at": "2026-01-01T00:00:00Z",
        "user_id": "sec-codes",
        "data": data,
    }
    hostile: list[tuple[object, str]] = [
        ({**good, "id": "sec-code-1", "type": "evil\x00type"}, "unstorable_text"),
        ({**good, "id": "sec-code-2", "type": "x" * 5000}, "unknown_type"),
        ({**good, "id": "sec-code-3", "type": 'chat.usage.v1",reason="x'}, "unknown_type"),
        ({**good, "id": "sec-code-4", "type": 1e308}, "invalid"),
        ({**good, "id": "sec-code-5", "user_id": "\u0085other"}, "unstorable_text"),
        ({**good, "id": "sec-code-6", "occurred_at": "9999-12-31T23:59:59Z"}, "future"),
        ({**good, "id": "sec-code-7", "data": {**data, "input_tokens": -(2**63)}}, "invalid"),
        (["not", "an", "event"], "not_an_object"),
        (good, "duplicate_in_batch"),
    ]
    events = [good, *(event for event, _ in hostile)]
    status, answer, _ = await request(
        url, "post", "/api/v1/events", headers=EMITTER_JSON, body=orjson.dumps({"events": events})
    )
    assert status == 200, answer[:300]
    result = orjson.loads(answer)
    assert result["accepted"] == ["sec-code-ok"], result["rejected"]
    codes = {r["index"]: r["reason"] for r in result["rejected"]}
    assert codes == {i + 1: code for i, (_, code) in enumerate(hostile)}
    async with aiohttp.ClientSession() as http:
        async with http.get(secured.stack.services["ingest"].metrics_url) as resp:
            text = await resp.text()
    reasons = {code.value for code in RejectReason} | {""}
    types = set(EVENT_TYPES) | {"unknown"}
    for family in text_string_to_metric_families(text):
        if family.name != "tollgate_ingest_events":
            continue
        for sample in family.samples:
            assert sample.labels["reason"] in reasons, sample.labels
            assert sample.labels["type"] in types, sample.labels


@pytest.mark.parametrize(
    ("user_id", "status"),
    [
        ("a\x00b", 422),
        ("tab\tid", 422),
        ("c1\x85", 422),
        ("x" * 10_000, 400),
        ("", 404),
        ("\ud800", None),
    ],
)
async def test_the_clients_status_read_refuses_hostile_user_ids(
    secured: Secured, user_id: str, status: int | None
) -> None:
    """`TollgateClient.limit_status` reports a refused id as an error with the service's status
    (a lone surrogate is refused before sending), never as some user's status."""
    if "limits" not in existing_services():
        pytest.skip(missing_reason("limits"))
    async with TollgateClient(
        ingest_url=None, limits_url=secured.url("limits"), token=EMITTER_TOKEN
    ) as client:
        with pytest.raises(LimitStatusError, match=r"limits answered|user_id: ") as refused:
            await client.limit_status(user_id)
        assert refused.value.status == status, str(refused.value)
        # A path in the id stays one id: quoted, it reaches no other route.
        escaped = await client.limit_status("../../api/v1/limits/config")
        assert (escaped.source, escaped.spent_micros) == ("none", 0)
