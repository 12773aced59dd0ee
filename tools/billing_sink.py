"""`tollgate billing-sink`: a local billing server for demos and tests that can be told to fail.

It speaks the billing server's ingest API (`POST /api/v1/events/ingest`), deduplicates by id
like the real one (a resent id is accepted again but counted once), records every request
it receives byte for byte, and obeys a control API under `/_sink/`:

- `POST /_sink/mode` `{"mode": "ok"|"error"|"hang"|"refuse", "status": 503, "delay": "50ms",
  "duration": "5s"}`: answer normally; answer `status` (5xx by default); hold requests without
  answering until the mode changes; or stop accepting connections on the ingest port (the
  listening socket is closed and open connections are dropped). `delay` slows every answer,
  `duration` returns to `ok` by itself. `GET /_sink/mode` shows the mode.
- `POST /_sink/rules` `{"ids": [...], "outcome": "temporary"|"permanent"|"omit",
  "message": "...", "times": null}`: reject those ids (or leave them out of the answer) every
  time, or the next `times` times; `DELETE /_sink/rules` drops every rule.
- `GET /_sink/received?since=N`: every request (headers, body, status, outcome) after
  sequence number N; `GET /_sink/events`: the unique accepted events and how often each was
  accepted; `GET /_sink/stats`: counters; `POST /_sink/reset`: forget everything.

The control API is served on the ingest port and on a control port (`--control-port`, by
default the next port), which keeps answering while the ingest port refuses connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import structlog
from aiohttp import web
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from libs.service.durations import parse_duration
from libs.service.logging import configure_logging
from services.publisher.domain import (
    BILLING_EVENT_TYPES,
    EVENT_DATA,
    INGEST_PATH,
)
from tools import BILLING_SINK_DEFAULT_PORT, BILLING_SINK_PORT_ENV

log = structlog.get_logger(__name__)

Mode = Literal["ok", "error", "hang", "refuse"]
RuleOutcome = Literal["temporary", "permanent", "omit"]


def _seconds(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(ge=0)]


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError("created_at must be an RFC 3339 string")  # noqa: TRY004  # pydantic wants ValueError
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("created_at must carry a timezone")
    return parsed


class ModeRequest(BaseModel):
    """`POST /_sink/mode`."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode
    status: int = Field(503, ge=400, le=599)
    delay: Seconds = 0.0
    duration: Seconds | None = None


class RuleRequest(BaseModel):
    """`POST /_sink/rules`."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(min_length=1)
    outcome: RuleOutcome
    message: str | None = None
    times: int | None = Field(None, ge=1)


@dataclass
class Rule:
    """What to do with one id, and how many more times (None: for ever)."""

    outcome: RuleOutcome
    message: str
    remaining: int | None


@dataclass
class Received:
    """One request as it arrived, and what the sink answered."""

    seq: int
    at: str
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: str
    status: int | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class SinkState:
    """Everything the sink remembers; reset by `POST /_sink/reset`."""

    mode: Mode = "ok"
    error_status: int = 503
    delay_s: float = 0.0
    rules: dict[str, Rule] = field(default_factory=dict)
    events: dict[str, dict[str, object]] = field(default_factory=dict)
    times_accepted: Counter[str] = field(default_factory=Counter)
    received: list[Received] = field(default_factory=list)
    seq: int = 0
    dropped_records: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)


class BillingSink:
    """The sink's state and its two listeners (ingest and control)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = BILLING_SINK_DEFAULT_PORT,
        control_port: int | None = None,
        control_port_optional: bool = False,
        license_key: str | None = None,
        max_records: int = 50_000,
    ) -> None:
        self.host = host
        self.port = port
        self.control_port = control_port
        self.control_port_optional = control_port_optional
        self.license_key = license_key
        self.max_records = max_records
        self.state = SinkState()
        self._changed = asyncio.Event()
        self._ingest_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._ingest_site: web.TCPSite | None = None
        self._revert: asyncio.TimerHandle | None = None

    @property
    def url(self) -> str:
        """The billing URL to give the publisher."""
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        """Where the control API answers even while the ingest port refuses connections."""
        port = self.control_port or self.port
        return f"http://{self.host}:{port}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the ingest port (and the control port, when there is one)."""
        self._ingest_runner = web.AppRunner(self._app(ingest=True), access_log=None)
        await self._ingest_runner.setup()
        await self._listen()
        if self.control_port:
            self._control_runner = web.AppRunner(self._app(ingest=False), access_log=None)
            await self._control_runner.setup()
            site = web.TCPSite(self._control_runner, self.host, self.control_port)
            try:
                await site.start()
            except OSError as exc:
                if not self.control_port_optional:
                    raise
                # The default control port (port + 1) is taken: run without one.
                log.warning(
                    "billing_sink_without_control_port", port=self.control_port, error=str(exc)
                )
                self.control_port = None
        log.info("billing_sink_listening", url=self.url, control_url=self.control_url)

    async def stop(self) -> None:
        """Stop both listeners and release every held request."""
        if self._revert is not None:
            self._revert.cancel()
        self._changed.set()
        for runner in (self._control_runner, self._ingest_runner):
            if runner is not None:
                await runner.cleanup()

    async def _listen(self) -> None:
        assert self._ingest_runner is not None
        self._ingest_site = web.TCPSite(self._ingest_runner, self.host, self.port)
        await self._ingest_site.start()

    async def _refuse(self, spare: object = None) -> None:
        if self._ingest_site is not None:
            await self._ingest_site.stop()
            self._ingest_site = None
        server = self._ingest_runner.server if self._ingest_runner is not None else None
        for handler in server.connections if server is not None else []:
            # The connection that asked for the refusal gets its answer, then closes.
            if handler is not spare:
                handler.force_close()

    def _app(self, *, ingest: bool) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[SINK_KEY] = self
        if ingest:
            app.router.add_post(INGEST_PATH, _ingest)
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/_sink/mode", _get_mode)
        app.router.add_post("/_sink/mode", _post_mode)
        app.router.add_post("/_sink/rules", _post_rules)
        app.router.add_delete("/_sink/rules", _delete_rules)
        app.router.add_get("/_sink/received", _get_received)
        app.router.add_get("/_sink/events", _get_events)
        app.router.add_get("/_sink/stats", _get_stats)
        app.router.add_post("/_sink/reset", _post_reset)
        return app

    # -- control ---------------------------------------------------------------------------

    async def set_mode(
        self,
        mode: Mode,
        *,
        status: int = 503,
        delay_s: float = 0.0,
        duration_s: float | None = None,
        spare: object = None,
    ) -> None:
        """Change how the ingest route behaves; held requests are released."""
        if mode == "refuse" and not self.control_port and duration_s is None:
            raise ValueError(
                "refusing connections without a control port could never be undone; "
                "start the sink with --control-port or give a duration"
            )
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        previous = self.state.mode
        self.state.mode, self.state.error_status, self.state.delay_s = mode, status, delay_s
        self._changed.set()
        self._changed = asyncio.Event()
        if mode == "refuse" and previous != "refuse":
            await self._refuse(spare)
        elif mode != "refuse" and previous == "refuse":
            await self._listen()
        if duration_s is not None:
            loop = asyncio.get_running_loop()
            self._revert = loop.call_later(
                duration_s, lambda: loop.create_task(self.set_mode("ok"))
            )
        log.info(
            "billing_sink_mode", mode=mode, status=status, delay_s=delay_s, duration_s=duration_s
        )

    def add_rules(
        self, ids: Sequence[str], outcome: RuleOutcome, message: str | None, times: int | None
    ) -> None:
        """Reject (or omit) these ids from now on."""
        text = (
            message
            or {
                "temporary": "temporarily unavailable; retry later",
                "permanent": "rejected by the billing sink",
                "omit": "",
            }[outcome]
        )
        for event_id in ids:
            self.state.rules[event_id] = Rule(outcome, text, times)

    async def reset(self) -> None:
        """Forget requests, events, rules and counters, and answer normally again."""
        await self.set_mode("ok")
        self.state = SinkState()

    # -- ingest ----------------------------------------------------------------------------

    def _record(self, request: web.Request, body: bytes) -> Received:
        state = self.state
        state.seq += 1
        record = Received(
            seq=state.seq,
            at=datetime.now(UTC).isoformat(),
            method=request.method,
            path=request.path_qs,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body=body.decode("utf-8", errors="replace"),
        )
        state.received.append(record)
        if len(state.received) > self.max_records:
            drop = len(state.received) - self.max_records
            del state.received[:drop]
            state.dropped_records += drop
        return record

    async def handle_ingest(self, request: web.Request) -> web.StreamResponse:
        """Answer one ingest request according to the mode and the rules."""
        body = await request.read()
        record = self._record(request, body)
        state = self.state
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        if state.mode == "hang":
            state.counts["hung"] += 1
            await self._changed.wait()
            record.status = 503
            return _error(503, "released from a hang")
        if state.mode == "refuse":
            # Arrived on a connection opened before the refusal: drop it unanswered.
            state.counts["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            record.status = 0
            return web.Response(status=503)
        if state.mode == "error":
            record.status = state.error_status
            state.statuses[str(state.error_status)] += 1
            return _error(state.error_status, "the billing sink was told to fail")
        response = self._answer(request, body, record)
        record.status = response.status
        state.statuses[str(response.status)] += 1
        return response

    def _answer(self, request: web.Request, body: bytes, record: Received) -> web.Response:
        key = request.headers.get("Coder-License-Key", "")
        if not key or (self.license_key is not None and key != self.license_key):
            return _error(401, "missing or invalid Coder-License-Key")
        if not request.headers.get("Coder-Deployment-ID"):
            return _error(400, "missing Coder-Deployment-ID")
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc}")
        if (
            not isinstance(doc, dict)
            or set(doc) != {"events"}
            or not isinstance(doc["events"], list)
        ):
            return _error(400, 'body must be exactly {"events": [...]}')
        for raw in doc["events"]:
            self._one(raw, record)
        return web.json_response(
            {
                "accepted_events": [{"id": i} for i in record.accepted],
                "rejected_events": record.rejected,
            }
        )

    def _one(self, raw: object, record: Received) -> None:
        state = self.state
        state.counts["events_received"] += 1
        try:
            event = WireEvent.model_validate(raw)
        except ValidationError as exc:
            event_id = raw.get("id") if isinstance(raw, dict) else None
            message = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            record.rejected.append({"id": event_id, "message": message, "permanent": True})
            state.counts["rejected_permanent"] += 1
            return
        rule = state.rules.get(event.id)
        if rule is not None:
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del state.rules[event.id]
            if rule.outcome == "omit":
                record.omitted.append(event.id)
                state.counts["omitted"] += 1
            else:
                permanent = rule.outcome == "permanent"
                record.rejected.append(
                    {"id": event.id, "message": rule.message, "permanent": permanent}
                )
                state.counts["rejected_permanent" if permanent else "rejected_temporary"] += 1
            return
        record.accepted.append(event.id)
        state.times_accepted[event.id] += 1
        if event.id in state.events:
            record.duplicates.append(event.id)
            state.counts["duplicates"] += 1
        else:
            state.events[event.id] = event.model_dump(mode="json")
            state.counts[f"accepted:{event.event_type}"] += 1

    def stats(self) -> dict[str, object]:
        """Counters of everything received."""
        state = self.state
        return {
            "mode": state.mode,
            "requests": state.seq,
            "statuses": dict(state.statuses),
            "events_received": state.counts["events_received"],
            "unique_accepted": len(state.events),
            "accepted_by_type": {t: state.counts[f"accepted:{t}"] for t in BILLING_EVENT_TYPES},
            "duplicates": state.counts["duplicates"],
            "rejected_temporary": state.counts["rejected_temporary"],
            "rejected_permanent": state.counts["rejected_permanent"],
            "omitted": state.counts["omitted"],
            "hung": state.counts["hung"],
            "dropped": state.counts["dropped"],
            "dropped_records": state.dropped_records,
        }


SINK_KEY = web.AppKey("billing_sink", BillingSink)


class WireEvent(BaseModel):
    """One billing event as the billing server accepts it (unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: Annotated[str, Field(min_length=1, max_length=512)]
    event_type: Literal["dc_managed_agents_v1", "hb_ai_seats_v1", "hb_agent_runtime_v1"]
    event_data: dict[str, Any]
    created_at: Annotated[datetime, BeforeValidator(_timestamp)]

    @model_validator(mode="after")
    def _data_fits_the_type(self) -> WireEvent:
        # `{"count": N}` for builds and seats, `{"runtime_ms": N}` for Agent Time, nothing more.
        EVENT_DATA[self.event_type].model_validate(self.event_data)
        return self


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _sink(request: web.Request) -> BillingSink:
    return request.app[SINK_KEY]


async def _ingest(request: web.Request) -> web.StreamResponse:
    return await _sink(request).handle_ingest(request)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        raise web.HTTPUnprocessableEntity(
            text=orjson.dumps({"message": str(exc)}).decode(), content_type="application/json"
        ) from exc


async def _get_mode(request: web.Request) -> web.Response:
    state = _sink(request).state
    return web.json_response(
        {"mode": state.mode, "status": state.error_status, "delay": state.delay_s}
    )


async def _post_mode(request: web.Request) -> web.Response:
    body: ModeRequest = await _body(request, ModeRequest)
    try:
        await _sink(request).set_mode(
            body.mode,
            status=body.status,
            delay_s=body.delay,
            duration_s=body.duration,
            spare=request.protocol,
        )
    except ValueError as exc:
        return _error(409, str(exc))
    response = await _get_mode(request)
    if body.mode == "refuse":
        response.force_close()
    return response


async def _post_rules(request: web.Request) -> web.Response:
    body: RuleRequest = await _body(request, RuleRequest)
    sink = _sink(request)
    sink.add_rules(body.ids, body.outcome, body.message, body.times)
    return web.json_response({"rules": len(sink.state.rules)})


async def _delete_rules(request: web.Request) -> web.Response:
    _sink(request).state.rules.clear()
    return web.json_response({"rules": 0})


async def _get_received(request: web.Request) -> web.Response:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _error(400, "since must be a sequence number")
    records = [asdict(r) for r in _sink(request).state.received if r.seq > since]
    return web.Response(body=orjson.dumps({"requests": records}), content_type="application/json")


async def _get_events(request: web.Request) -> web.Response:
    state = _sink(request).state
    wanted = request.query.get("event_type")
    events = [
        {**event, "times_accepted": state.times_accepted[event_id]}
        for event_id, event in state.events.items()
        if wanted is None or event["event_type"] == wanted
    ]
    return web.Response(body=orjson.dumps({"events": events}), content_type="application/json")


async def _get_stats(request: web.Request) -> web.Response:
    return web.json_response(_sink(request).stats())


async def _post_reset(request: web.Request) -> web.Response:
    await _sink(request).reset()
    return web.json_response({"reset": True})


# -- command line --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate billing-sink",
        description="A local billing server for demos and tests; see /_sink/ for its control API.",
    )
    parser.add_argument("--host", default=os.environ.get("TOLLGATE_BILLING_SINK_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(BILLING_SINK_PORT_ENV, "") or BILLING_SINK_DEFAULT_PORT),
    )
    parser.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="port of the control API that stays up while refusing (default: port + 1; 0: none)",
    )
    parser.add_argument(
        "--license-key", default=None, help="accept only this Coder-License-Key (default: any)"
    )
    parser.add_argument(
        "--max-records", type=int, default=50_000, help="requests kept for /_sink/received"
    )
    parser.add_argument("--log-level", default=os.environ.get("TOLLGATE_LOG_LEVEL", "info"))
    return parser


async def _serve(sink: BillingSink) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await sink.start()
    try:
        await stop.wait()
    finally:
        await sink.stop()
        log.info("billing_sink_stopped")


def main(argv: Sequence[str]) -> int:
    """`tollgate billing-sink [--port 8090] [--control-port 8091] ...`."""
    args = _parser().parse_args(list(argv))
    fmt: Literal["json", "console"] = (
        "console" if os.environ.get("TOLLGATE_LOG_FORMAT", "console") == "console" else "json"
    )
    configure_logging(args.log_level, fmt, service="billing-sink")
    control = args.port + 1 if args.control_port is None else args.control_port
    sink = BillingSink(
        host=args.host,
        port=args.port,
        control_port=control or None,
        control_port_optional=args.control_port is None,
        license_key=args.license_key,
        max_records=args.max_records,
    )
    try:
        asyncio.run(_serve(sink))
    except OSError as exc:
        print(f"tollgate billing-sink: cannot listen: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0
