"""The service client against small in-process HTTP servers: retries, batching and fail-open."""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from libs.events import (
    ApiUsage,
    ApiUsageRecorded,
    EmitError,
    EmitResult,
    LimitDecision,
    LimitStatus,
    LimitStatusError,
    Rejection,
    TollgateClient,
)
from libs.events.client import MISCONFIGURATION_REASONS, TRANSIENT_REASONS, _parse_retry_after

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN = "emitter-secret"
FAILOPEN = "tollgate_limit_check_failopen_total"
FAILOPEN_REASONS = TRANSIENT_REASONS + MISCONFIGURATION_REASONS


@dataclass
class Recorder:
    """What a fake service received, and a gate that releases requests it holds open."""

    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def record(self, request: web.Request) -> Any:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        return body

    async def hang(self) -> None:
        await self.release.wait()


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/api/v1/events", handler)
    app.router.add_post("/api/v1/limits/check", handler)
    app.router.add_get("/api/v1/limits/status/{user_id}", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


@asynccontextmanager
async def gated(recorder: Recorder) -> AsyncIterator[None]:
    try:
        yield
    finally:
        recorder.release.set()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def events(count: int, prefix: str = "e") -> list[ApiUsageRecorded]:
    occurred = datetime(2026, 11, 2, 10, 15, tzinfo=UTC)
    return [
        ApiUsageRecorded(
            id=f"{prefix}-{n}",
            occurred_at=occurred,
            user_id=f"u-{n % 7}",
            data=ApiUsage(client="sdk", count=1),
        )
        for n in range(count)
    ]


def accept_all(body: Any) -> web.Response:
    return web.json_response({"accepted": [e["id"] for e in body["events"]], "rejected": []})


class Delays:
    """A stand-in for asyncio.sleep that records each backoff instead of waiting."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.seen.append(delay)


def client(
    url: str | None = None,
    *,
    registry: CollectorRegistry | None = None,
    limits_url: str | None = None,
    **options: Any,
) -> TollgateClient:
    return TollgateClient(
        ingest_url=url,
        limits_url=limits_url if limits_url is not None else url,
        token=TOKEN,
        registry=registry or CollectorRegistry(),
        **options,
    )


# Emitting


async def test_emit_posts_events_with_the_bearer_token() -> None:
    """Events are posted as one batch with the token, and accepted and rejected ids come back."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        body = await recorder.record(request)
        ids = [e["id"] for e in body["events"]]
        return web.json_response(
            {"accepted": ids[1:], "rejected": [{"id": ids[0], "message": "bad", "permanent": True}]}
        )

    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit(events(3))

    assert result == EmitResult(
        accepted=["e-1", "e-2"], rejected=[Rejection(id="e-0", message="bad", permanent=True)]
    )
    assert recorder.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert recorder.headers[0]["Content-Type"] == "application/json"
    assert recorder.bodies[0]["events"][0] == {
        "id": "e-0",
        "type": "api.usage.v1",
        "occurred_at": "2026-11-02T10:15:00Z",
        "org_id": None,
        "user_id": "u-0",
        "data": {"client": "sdk", "count": 1},
    }


async def test_emit_takes_plain_dicts_validated_like_ingest_and_never_sends_an_invalid_one() -> (
    None
):
    """A dict in the wire shape is sent exactly as its model would be (defaults filled in); one that breaks the model comes back rejected with ingest's message and is never sent."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        return accept_all(await recorder.record(request))

    good: dict[str, Any] = {
        "id": "d-1",
        "type": "chat.usage.v1",
        "occurred_at": "2026-11-02T11:15:00+01:00",
        "user_id": "alice",
        "data": {
            "chat_id": "c-1",
            "message_id": "m-1",
            "model": "claude-sonnet-4",
            "input_tokens": 10,
            "output_tokens": 5,
        },
    }
    bad = {**good, "id": "d-2", "data": {**good["data"], "input_tokens": -1}}
    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit([bad, *events(1), good])

    assert result.accepted == ["e-0", "d-1"]
    assert [(r.id, r.permanent) for r in result.rejected] == [("d-2", True)]
    assert result.rejected[0].message.startswith("data.input_tokens: Input should be greater")
    assert result.rejected[0].reason == "invalid"
    sent = recorder.bodies[0]["events"]
    assert [e["id"] for e in sent] == ["e-0", "d-1"]
    assert sent[1]["occurred_at"] == "2026-11-02T10:15:00Z"
    assert sent[1]["data"]["purpose"] == "chat"
    assert sent[1]["data"]["cache_read_tokens"] == 0


async def test_emit_of_only_invalid_dicts_sends_nothing() -> None:
    """A dict that is not an event at all, or holds a control character, is rejected locally."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        return accept_all(await recorder.record(request))

    nul: dict[str, object] = {"id": "n-1", "type": "api.usage.v1", "user_id": "a\x00b"}
    nul |= {"occurred_at": "2026-11-02T10:15:00Z", "data": {"client": "ui"}}
    unknown = {"id": "n-2", "type": "chat.usage.v9", "occurred_at": "2026-11-02T10:15:00Z"}
    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit([nul, unknown])
    assert result.accepted == []
    assert [r.id for r in result.rejected] == ["n-1", "n-2"]
    assert "user_id: contains a control character" in result.rejected[0].message
    assert "unknown event type 'chat.usage.v9'" in result.rejected[1].message
    assert recorder.bodies == []


async def test_emit_of_nothing_sends_nothing() -> None:
    """Emitting nothing sends no request, since ingest refuses empty batches."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response({"accepted": [], "rejected": []})

    async with serve(handler) as url, client(url) as tollgate:
        assert await tollgate.emit([]) == EmitResult([], [])
    assert recorder.bodies == []


async def test_emit_splits_into_batches_of_at_most_1000() -> None:
    """2,500 events go out as batches of 1,000, 1,000 and 500, and every id is accepted."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        return accept_all(await recorder.record(request))

    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit(events(2500))

    assert [len(body["events"]) for body in recorder.bodies] == [1000, 1000, 500]
    assert result.accepted == [f"e-{n}" for n in range(2500)]


async def test_emit_retries_503_with_the_same_ids() -> None:
    """A 503 is retried with exactly the same events until ingest accepts them."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        body = await recorder.record(request)
        if len(recorder.bodies) < 3:
            return web.json_response({"message": "broker unavailable"}, status=503)
        return accept_all(body)

    delays = Delays()
    async with serve(handler) as url, client(url, sleep=delays) as tollgate:
        result = await tollgate.emit(events(4))

    assert len(recorder.bodies) == 3
    assert recorder.bodies[0] == recorder.bodies[1] == recorder.bodies[2]
    assert result.accepted == ["e-0", "e-1", "e-2", "e-3"]
    assert len(delays.seen) == 2


async def test_emit_backs_off_exponentially_with_jitter() -> None:
    """Each retry waits between half and all of a doubling, capped delay."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "down"}, status=502)

    delays = Delays()
    options: dict[str, Any] = {"backoff_base": 0.1, "backoff_max": 0.4, "max_attempts": 5}
    async with serve(handler) as url, client(url, sleep=delays, **options) as tollgate:
        with pytest.raises(EmitError):
            await tollgate.emit(events(1))

    ceilings = [0.1, 0.2, 0.4, 0.4]
    assert len(delays.seen) == len(ceilings)
    for delay, ceiling in zip(delays.seen, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling


async def test_emit_honours_retry_after() -> None:
    """A Retry-After header sets the minimum wait before the next attempt."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        body = await recorder.record(request)
        if len(recorder.bodies) == 1:
            return web.json_response({"message": "busy"}, status=503, headers={"Retry-After": "7"})
        return accept_all(body)

    delays = Delays()
    async with serve(handler) as url, client(url, sleep=delays) as tollgate:
        await tollgate.emit(events(1))

    assert delays.seen == [7.0]


async def test_emit_retries_a_request_that_times_out() -> None:
    """A request that gets no answer in time is retried with the same ids."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        body = await recorder.record(request)
        if len(recorder.bodies) == 1:
            await recorder.hang()
        return accept_all(body)

    async with (
        serve(handler) as url,
        gated(recorder),
        client(url, emit_timeout=0.05, sleep=Delays()) as tollgate,
    ):
        result = await tollgate.emit(events(2))

    assert result.accepted == ["e-0", "e-1"]
    assert recorder.bodies[0] == recorder.bodies[1]


async def test_emit_gives_up_after_the_attempt_limit() -> None:
    """After the last attempt fails, EmitError reports the attempts and the last status."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response({"message": "down"}, status=503)

    async with serve(handler) as url, client(url, max_attempts=3, sleep=Delays()) as tollgate:
        with pytest.raises(EmitError) as caught:
            await tollgate.emit(events(1))

    assert len(recorder.bodies) == 3
    assert caught.value.status == 503
    assert str(caught.value) == "ingest failed 3 attempts, last: ingest answered 503"


async def test_emit_retries_connection_refused_then_raises() -> None:
    """Transport errors are retried and end in EmitError without a status."""
    delays = Delays()
    async with client(closed_port_url(), max_attempts=4, sleep=delays) as tollgate:
        with pytest.raises(EmitError, match="transport error") as caught:
            await tollgate.emit(events(1))
    assert caught.value.status is None
    assert len(delays.seen) == 3


async def test_emit_does_not_retry_a_client_error() -> None:
    """A 401 is final: one request, and EmitError carries the service's message."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response({"message": "invalid token"}, status=401)

    async with serve(handler) as url, client(url, sleep=Delays()) as tollgate:
        with pytest.raises(EmitError, match="ingest answered 401: invalid token") as caught:
            await tollgate.emit(events(1))

    assert caught.value.status == 401
    assert len(recorder.bodies) == 1


async def test_emit_reads_a_result_from_a_422() -> None:
    """A 422 whose body has the emit result shape is returned as a result, not raised."""

    async def handler(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        rejected = [
            {"id": e["id"], "message": "data.count: bad", "permanent": True} for e in body["events"]
        ]
        return web.json_response({"accepted": [], "rejected": rejected}, status=422)

    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit(events(1))

    assert result == EmitResult([], [Rejection("e-0", "data.count: bad")])


async def test_emit_reads_the_reason_code_of_each_rejection() -> None:
    """The code ingest gives a rejection reaches the caller, a code this client never heard of too."""

    async def handler(request: web.Request) -> web.Response:
        ids = [e["id"] for e in orjson.loads(await request.read())["events"]]
        rejected = [
            {
                "id": ids[0],
                "index": 0,
                "message": "id: twice",
                "permanent": True,
                "reason": "duplicate_in_batch",
            },
            {
                "id": ids[1],
                "index": 1,
                "message": "new rule",
                "permanent": True,
                "reason": "some_new_code",
            },
        ]
        return web.json_response({"accepted": ids[2:], "rejected": rejected})

    async with serve(handler) as url, client(url) as tollgate:
        result = await tollgate.emit(events(3))

    assert [(r.id, r.reason) for r in result.rejected] == [
        ("e-0", "duplicate_in_batch"),
        ("e-1", "some_new_code"),
    ]
    assert result.accepted == ["e-2"]


async def test_emit_error_carries_the_earlier_batches() -> None:
    """When a later batch fails, the error reports what earlier batches got accepted."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        body = await recorder.record(request)
        if len(recorder.bodies) == 2:
            return web.json_response({"message": "too large"}, status=413)
        return accept_all(body)

    async with serve(handler) as url, client(url, batch_size=2) as tollgate:
        with pytest.raises(EmitError) as caught:
            await tollgate.emit(events(5))

    assert caught.value.status == 413
    assert caught.value.partial == EmitResult(["e-0", "e-1"], [])


async def test_emit_rejects_a_malformed_success_body() -> None:
    """A 200 without the result shape is an error rather than a silent loss of ids."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async with serve(handler) as url, client(url) as tollgate:
        with pytest.raises(EmitError, match="not an emit result"):
            await tollgate.emit(events(1))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("soon", None),
        (format_datetime(datetime(2001, 1, 1, tzinfo=UTC), usegmt=True), 0.0),
    ],
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    """Retry-After is read as seconds or an HTTP date; anything else is ignored."""
    assert _parse_retry_after(header) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    """An HTTP date in the future becomes the seconds until then."""
    later = datetime.now(UTC) + timedelta(seconds=120)
    seconds = _parse_retry_after(format_datetime(later, usegmt=True))
    assert seconds is not None
    assert 110 < seconds <= 120


@pytest.mark.parametrize("options", [{"max_attempts": 0}, {"batch_size": 1001}, {"batch_size": 0}])
def test_client_rejects_bad_settings(options: dict[str, Any]) -> None:
    """Settings that would make emit loop zero times or exceed ingest's batch limit are refused."""
    with pytest.raises(ValueError):
        client("http://ingest", **options)


async def test_emit_without_ingest_url_is_a_usage_error() -> None:
    """A client built only for limit checks refuses to emit."""
    async with client(None, limits_url="http://limits") as tollgate:
        with pytest.raises(RuntimeError, match="ingest_url"):
            await tollgate.emit(events(1))


# Limit checks

LIMIT_FIELDS = {
    "limited": True,
    "limit_micros": 5_000_000,
    "spent_micros": 5_120_000,
    "remaining_micros": 0,
    "period": "month",
    "period_start": "2026-11-01T00:00:00Z",
    "resets_at": "2026-12-01T00:00:00Z",
    "source": "group",
    "group_id": "grp-platform",
    "org_id": "org-acme",
}


async def test_check_limit_allows_on_200() -> None:
    """A 200 allows the message and carries the spend fields."""
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.json_response(
            {
                "allowed": True,
                "limited": False,
                "limit_micros": None,
                "spent_micros": 1200,
                "remaining_micros": None,
                "period": "day",
                "period_start": "2026-11-02T00:00:00Z",
                "resets_at": "2026-11-03T00:00:00Z",
                "source": "none",
            }
        )

    async with serve(handler) as url, client(url) as tollgate:
        decision = await tollgate.check_limit("u-7f3a9c2e")

    assert recorder.bodies == [{"user_id": "u-7f3a9c2e"}]
    assert recorder.headers[0]["Authorization"] == f"Bearer {TOKEN}"
    assert decision == LimitDecision(
        allowed=True,
        limited=False,
        spent_micros=1200,
        period="day",
        period_start=datetime(2026, 11, 2, tzinfo=UTC),
        resets_at=datetime(2026, 11, 3, tzinfo=UTC),
        source="none",
    )


async def test_check_limit_blocks_on_409_with_the_contract_fields() -> None:
    """A check for an organisation sends its org_id; a 409 blocks the message and exposes the
    limit, spend, period, source and the organisation whose limit applied."""

    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.record(request)
        body = {"allowed": False, "message": "Chat usage limit exceeded.", **LIMIT_FIELDS}
        return web.json_response(body, status=409)

    async with serve(handler) as url, client(url) as tollgate:
        decision = await tollgate.check_limit("u-7f3a9c2e", org_id="org-acme")

    assert recorder.bodies == [{"user_id": "u-7f3a9c2e", "org_id": "org-acme"}]
    assert decision == LimitDecision(
        allowed=False,
        fail_open=False,
        limited=True,
        limit_micros=5_000_000,
        spent_micros=5_120_000,
        remaining_micros=0,
        period="month",
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        resets_at=datetime(2026, 12, 1, tzinfo=UTC),
        source="group",
        group_id="grp-platform",
        org_id="org-acme",
        message="Chat usage limit exceeded.",
    )


async def test_check_limit_trusts_the_status_over_a_broken_body() -> None:
    """A 409 with an unreadable body still blocks, with the standard message."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=409, text="over")

    async with serve(handler) as url, client(url) as tollgate:
        decision = await tollgate.check_limit("u-1")

    assert decision == LimitDecision(allowed=False, message="Chat usage limit exceeded.")


async def test_check_limit_fails_open_on_500() -> None:
    """An unexpected status allows the message and counts a `status` fail-open."""
    registry = CollectorRegistry()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "boom"}, status=500)

    async with serve(handler) as url, client(url, registry=registry) as tollgate:
        with capture_logs() as logs:
            decision = await tollgate.check_limit("u-1")

    assert decision == LimitDecision(allowed=True, fail_open=True)
    assert registry.get_sample_value(FAILOPEN, {"reason": "status"}) == 1
    assert registry.get_sample_value(FAILOPEN, {"reason": "timeout"}) == 0
    assert logs[0]["event"] == "limit_check_failed_open"
    assert logs[0]["status"] == 500


async def test_check_limit_fails_open_on_timeout() -> None:
    """A limits service that does not answer within the timeout lets the message through."""
    registry = CollectorRegistry()
    recorder = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await recorder.hang()
        return web.json_response({"allowed": False}, status=409)

    async with (
        serve(handler) as url,
        gated(recorder),
        client(url, registry=registry, check_timeout=0.05) as tollgate,
    ):
        started = asyncio.get_running_loop().time()
        decision = await tollgate.check_limit("u-1")
        elapsed = asyncio.get_running_loop().time() - started

    assert decision == LimitDecision(allowed=True, fail_open=True)
    assert elapsed < 1
    assert registry.get_sample_value(FAILOPEN, {"reason": "timeout"}) == 1


async def test_check_limit_fails_open_when_refused() -> None:
    """A connection that cannot be made allows the message and counts an `error` fail-open."""
    registry = CollectorRegistry()
    async with client(closed_port_url(), registry=registry) as tollgate:
        decision = await tollgate.check_limit("u-1")
    assert decision == LimitDecision(allowed=True, fail_open=True)
    assert registry.get_sample_value(FAILOPEN, {"reason": "error"}) == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (405, "not_found"),
        (400, "rejected"),
        (422, "rejected"),
    ],
)
async def test_check_limit_counts_a_misconfiguration_under_its_own_reason(
    status: int, reason: str
) -> None:
    """A refused check allows the message and counts under its own reason, not as a failure."""
    registry = CollectorRegistry()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "no"}, status=status)

    async with serve(handler) as url, client(url, registry=registry) as tollgate:
        decision = await tollgate.check_limit("u-1")

    assert decision == LimitDecision(allowed=True, fail_open=True)
    counts = {r: registry.get_sample_value(FAILOPEN, {"reason": r}) for r in FAILOPEN_REASONS}
    assert counts == {r: 1.0 if r == reason else 0.0 for r in FAILOPEN_REASONS}


async def test_check_limit_logs_each_misconfiguration_once_as_an_error() -> None:
    """A wrong token logs one error for many checks, a wrong URL afterwards logs its own."""
    registry = CollectorRegistry()
    answer = {"status": 401}

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "unknown token"}, status=answer["status"])

    async with serve(handler) as url, client(url, registry=registry) as tollgate:
        with capture_logs() as logs:
            for _ in range(5):
                assert (await tollgate.check_limit("u-1")).fail_open
            answer["status"] = 404
            for _ in range(3):
                assert (await tollgate.check_limit("u-1")).fail_open

    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [(e["event"], e["reason"], e["status"]) for e in errors] == [
        ("limit_check_misconfigured", "unauthorized", 401),
        ("limit_check_misconfigured", "not_found", 404),
    ]
    assert errors[0]["answer"] == "unknown token"
    assert "token" in errors[0]["hint"]
    assert "limits_url" in errors[1]["hint"]
    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert registry.get_sample_value(FAILOPEN, {"reason": "unauthorized"}) == 5
    assert registry.get_sample_value(FAILOPEN, {"reason": "not_found"}) == 3


@pytest.mark.parametrize("body", [b"<html>welcome</html>", b'{"status": "ok"}', b"[]"])
async def test_check_limit_does_not_take_any_200_for_a_yes(body: bytes) -> None:
    """A 200 that is not a limit decision (another server at limits_url) counts as misconfigured."""
    registry = CollectorRegistry()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    async with serve(handler) as url, client(url, registry=registry) as tollgate:
        with capture_logs() as logs:
            decision = await tollgate.check_limit("u-1")

    assert decision == LimitDecision(allowed=True, fail_open=True)
    assert registry.get_sample_value(FAILOPEN, {"reason": "invalid_answer"}) == 1
    assert logs[0]["log_level"] == "error"


@pytest.mark.parametrize("status", [429, 502, 503])
async def test_check_limit_treats_overload_and_server_errors_as_passing_failures(
    status: int,
) -> None:
    """429 and 5xx stay `status` fail-opens, logged as a warning on every check."""
    registry = CollectorRegistry()

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"message": "busy"}, status=status)

    async with serve(handler) as url, client(url, registry=registry) as tollgate:
        with capture_logs() as logs:
            await tollgate.check_limit("u-1")
            await tollgate.check_limit("u-1")

    assert registry.get_sample_value(FAILOPEN, {"reason": "status"}) == 2
    assert [e["log_level"] for e in logs] == ["warning", "warning"]


async def test_clients_share_one_counter_per_registry() -> None:
    """Several clients on one registry register the counter once and add to the same series."""
    registry = CollectorRegistry()
    url = closed_port_url()
    async with client(url, registry=registry) as first, client(url, registry=registry) as second:
        await first.check_limit("u-1")
        await second.check_limit("u-2")
    assert registry.get_sample_value(FAILOPEN, {"reason": "error"}) == 2


def test_default_registry_tolerates_many_clients() -> None:
    """Clients built without a registry use the global one without duplicate registration."""
    for _ in range(3):
        TollgateClient(ingest_url=None, limits_url="http://limits", token=TOKEN)


async def test_check_limit_without_limits_url_is_a_usage_error() -> None:
    """A client built only for emitting refuses to check limits."""
    async with TollgateClient(ingest_url="http://ingest", limits_url=None, token=TOKEN) as tollgate:
        with pytest.raises(RuntimeError, match="limits_url"):
            await tollgate.check_limit("u-1")


# Limit status

STATUS = {
    "is_limited": True,
    "period": "week",
    "limit_micros": 5_000_000,
    "spent_micros": 1_250_000,
    "period_start": "2026-11-02T00:00:00Z",
    "period_end": "2026-11-09T00:00:00Z",
    "source": "group",
    "group_id": "g-1",
    "org_id": "acme",
}


async def test_limit_status_reads_the_shared_status_model() -> None:
    """`limit_status` asks for the user (path-quoted, with org_id) and returns a `LimitStatus`."""
    seen: list[tuple[str, dict[str, str], str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(
            (
                request.match_info["user_id"],
                dict(request.query),
                request.headers.get("Authorization", ""),
            )
        )
        return web.json_response(STATUS)

    async with serve(answer) as url, client(url) as tollgate:
        status = await tollgate.limit_status("ann/b", org_id="acme")
    assert status == LimitStatus.model_validate(STATUS)
    assert status.period_start == datetime(2026, 11, 2, tzinfo=UTC)
    assert (status.source, status.group_id, status.org_id) == ("group", "g-1", "acme")
    assert seen == [("ann/b", {"org_id": "acme"}, f"Bearer {TOKEN}")]


async def test_limit_status_raises_with_the_services_message_on_a_refusal() -> None:
    """A 403 (or any non-200) is a `LimitStatusError` naming the status and the message."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(
            {"message": "a portal token may only read its own user"}, status=403
        )

    async with serve(answer) as url, client(url) as tollgate:
        with pytest.raises(LimitStatusError, match="403: a portal token") as caught:
            await tollgate.limit_status("u-1")
    assert caught.value.status == 403


@pytest.mark.parametrize(
    "body",
    [
        {**STATUS, "period": "quarter"},
        {**STATUS, "source": "elsewhere"},
        {key: value for key, value in STATUS.items() if key != "spent_micros"},
        {"allowed": True},
    ],
)
async def test_limit_status_refuses_a_body_that_is_not_a_status(body: dict[str, Any]) -> None:
    """A 200 whose body breaks the status contract is an error, never a made-up status."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(body)

    async with serve(answer) as url, client(url) as tollgate:
        with pytest.raises(LimitStatusError, match="not a limit status"):
            await tollgate.limit_status("u-1")


async def test_limit_status_refuses_an_id_that_is_not_text_before_sending() -> None:
    """A lone surrogate cannot be sent at all: the error names user_id and nothing is asked."""
    calls: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response(STATUS)

    async with serve(answer) as url, client(url) as tollgate:
        with pytest.raises(LimitStatusError, match="user_id: not valid text") as caught:
            await tollgate.limit_status("a\ud800")
    assert caught.value.status is None
    assert calls == []


async def test_limit_status_of_an_unreachable_service_is_an_error() -> None:
    """Unlike a check, a status read never fails open: no service means an error."""
    async with client(closed_port_url()) as tollgate:
        with pytest.raises(LimitStatusError, match="cannot reach limits"):
            await tollgate.limit_status("u-1")


# Sessions


async def test_a_given_session_stays_open() -> None:
    """A session passed in belongs to the caller and is not closed with the client."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"allowed": True})

    async with aiohttp.ClientSession() as session, serve(handler) as url:
        async with client(url, session=session) as tollgate:
            assert (await tollgate.check_limit("u-1")).allowed
        assert not session.closed


async def test_an_owned_session_is_closed_and_reopened_on_demand() -> None:
    """The client closes the session it opened, and opens a fresh one if used again."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"allowed": True})

    async with serve(handler) as url:
        tollgate = client(url)
        assert not (await tollgate.check_limit("u-1")).fail_open
        await tollgate.close()
        assert not (await tollgate.check_limit("u-1")).fail_open
        await tollgate.close()
