"""Ingest's HTTP handlers: the event batch API and the pricing API."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from libs.events.client import EMIT_PATH
from libs.events.codec import EventValidationError, encode, parse_event
from libs.events.models import ChatUsageRecorded, Envelope
from libs.events.pricing import CostTooHighError, ModelPrice, price_event
from libs.events.registry import EVENT_TYPES
from libs.events.rejections import RejectReason
from libs.service.errors import DependencyUnavailable, NotFound, Unprocessable
from libs.service.kafka import BrokerUnavailableError
from libs.service.routes import Role, Route
from libs.service.web import json_response, read_json, read_model, storable_text
from services.ingest.config import IngestSettings
from services.ingest.domain import Rejection, check_time
from services.ingest.metrics import IngestMetrics
from services.ingest.prices import PriceCache
from services.ingest.producer import EventLog
from services.ingest.storage import PriceStore

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("ingest_settings", IngestSettings)
EVENT_LOG = web.AppKey("event_log", EventLog)
PRICES = web.AppKey("prices", PriceCache)
PRICE_STORE = web.AppKey("price_store", PriceStore)
METRICS = web.AppKey("ingest_metrics", IngestMetrics)

_KNOWN_TYPES = frozenset(EVENT_TYPES)

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class EventBatch(BaseModel):
    """`POST /api/v1/events` body (documentation only: events are validated one by one)."""

    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, object]] = Field(min_length=1, max_length=1000)


class Rejected(BaseModel):
    """One refused event."""

    id: str | None
    index: int
    message: str = Field(description="What is wrong, naming the field")
    permanent: bool
    reason: RejectReason = Field(description="Why, as a stable code to match on")


class BatchResult(BaseModel):
    """Which events the broker has, and which were refused and why."""

    accepted: list[str]
    rejected: list[Rejected]


class PricedModel(ModelPrice):
    """A model's price as the API lists it."""

    model: str
    updated_at: datetime


class PriceList(BaseModel):
    """Every priced model."""

    models: list[PricedModel]


def _type_label(obj: object) -> str:
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) and kind in _KNOWN_TYPES else "unknown"


def _batch_of(body: object, max_events: int) -> list[object]:
    if not isinstance(body, dict) or "events" not in body:
        raise Unprocessable('body: expected an object with an "events" array')
    extra = sorted(set(body) - {"events"})
    if extra:
        raise Unprocessable(f"body: unknown field(s) {', '.join(map(repr, extra))}")
    raw_events = body["events"]
    if not isinstance(raw_events, list):
        raise Unprocessable("events: expected an array of events")
    if not 1 <= len(raw_events) <= max_events:
        raise Unprocessable(
            f"events: send between 1 and {max_events} events, got {len(raw_events)}"
        )
    return raw_events


def _validate(
    raw_events: list[object],
    *,
    settings: IngestSettings,
    prices: dict[str, ModelPrice],
    metrics: IngestMetrics,
) -> tuple[list[tuple[int, Envelope]], list[Rejection]]:
    """Split a batch into priced valid events (with their index) and rejections naming the field."""
    now = datetime.now(UTC)
    accepted: list[tuple[int, Envelope]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()

    def reject(rejection: Rejection, event_type: str) -> None:
        rejected.append(rejection)
        metrics.events.labels(event_type, "rejected", rejection.reason).inc()

    for index, raw in enumerate(raw_events):
        try:
            event: Envelope = parse_event(raw)
        except EventValidationError as exc:
            reject(Rejection(index, exc.event_id, exc.message, exc.code), _type_label(raw))
            continue
        problem = check_time(event, now, settings.max_future_skew)
        if problem is not None:
            reject(Rejection(index, event.id, problem, RejectReason.FUTURE), event.type)
            continue
        if event.identity in seen:
            # The same id for another user or as another type is another event (see
            # `Envelope.identity`); the same event twice in one batch is a mistake.
            problem = (
                "id: this event (same type, subject and id) appears more than once in this batch"
            )
            reject(Rejection(index, event.id, problem, RejectReason.DUPLICATE_IN_BATCH), event.type)
            continue
        if isinstance(event, ChatUsageRecorded):
            try:
                event = price_event(event, prices)
            except CostTooHighError as exc:
                reason = RejectReason.COST_TOO_HIGH
                reject(Rejection(index, event.id, str(exc), reason), event.type)
                continue
        seen.add(event.identity)
        accepted.append((index, event))
    return accepted, rejected


def _encoded(
    events: list[tuple[int, Envelope]], rejected: list[Rejection], metrics: IngestMetrics
) -> tuple[list[Envelope], list[tuple[bytes, bytes]]]:
    """Each accepted event as a log record; one that cannot be encoded is refused on its own.

    The bounds make this unreachable for validated events, but a batch must never fail as a
    whole because of one of its events.
    """
    kept: list[Envelope] = []
    records: list[tuple[bytes, bytes]] = []
    for index, event in events:
        try:
            records.append((event.partition_key.encode(), encode(event)))
        except (TypeError, ValueError, UnicodeError) as exc:
            message = f"event cannot be encoded for the log: {exc}"
            rejected.append(Rejection(index, event.id, message, RejectReason.UNENCODABLE))
            metrics.events.labels(event.type, "rejected", RejectReason.UNENCODABLE).inc()
            continue
        kept.append(event)
    return kept, records


def _count_accepted(metrics: IngestMetrics, accepted: list[Envelope]) -> None:
    for e in accepted:
        metrics.events.labels(e.type, "accepted", "").inc()
        if isinstance(e, ChatUsageRecorded) and e.data.purpose == "chat":
            if e.data.cost_micros is None:
                metrics.unpriced.labels(e.data.model).inc()
            else:
                metrics.cost_micros.labels(e.data.model).inc(e.data.cost_micros)


async def post_events(request: web.Request) -> web.Response:
    """Validate each event, price chat usage, and answer once the broker has the valid ones."""
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    raw_events = _batch_of(await read_json(request), settings.max_batch_events)
    metrics.batch_events.observe(len(raw_events))
    valid, rejected = _validate(
        raw_events, settings=settings, prices=request.app[PRICES].prices, metrics=metrics
    )
    accepted, records = _encoded(valid, rejected, metrics)
    if accepted:
        started = time.perf_counter()
        try:
            await request.app[EVENT_LOG].append(records)
        except BrokerUnavailableError as exc:
            metrics.producer_errors.inc()
            raise DependencyUnavailable(
                "the event log is unavailable; nothing in this batch was accepted, "
                "resend it (same ids) later",
                detail=str(exc),
                retry_after_s=2,
            ) from exc
        metrics.produce_seconds.observe(time.perf_counter() - started)
        _count_accepted(metrics, accepted)
    if rejected:
        log.info("events_rejected", count=len(rejected), first=rejected[0].message)
    return json_response(
        {
            "accepted": [e.id for e in accepted],
            "rejected": [r.as_json() for r in sorted(rejected, key=lambda r: r.index)],
        }
    )


def _priced(model: str, price: ModelPrice, updated_at: datetime) -> dict[str, object]:
    return {"model": model, **price.as_json(), "updated_at": updated_at}


def _model_name(request: web.Request) -> str:
    return storable_text(request.match_info["model"], "model", max_length=256)


async def list_prices(request: web.Request) -> web.Response:
    """Every model's price, by name."""
    table = await request.app[PRICE_STORE].load()
    return json_response({"models": [_priced(m, p, at) for m, (p, at) in sorted(table.items())]})


async def get_price(request: web.Request) -> web.Response:
    """One model's price."""
    model = _model_name(request)
    table = await request.app[PRICE_STORE].load()
    if model not in table:
        raise NotFound(f"model {model!r} has no price")
    price, at = table[model]
    return json_response(_priced(model, price, at))


async def put_price(request: web.Request) -> web.Response:
    """Set a model's price; every replica prices new events with it within a second."""
    model = _model_name(request)
    price = await read_model(request, ModelPrice)
    at = await request.app[PRICE_STORE].put(model, price)
    await request.app[PRICES].refresh()
    log.info("price_set", model=model, **price.as_json())
    return json_response(_priced(model, price, at))


async def delete_price(request: web.Request) -> web.Response:
    """Remove a model's price; its new usage is unpriced from then on."""
    model = _model_name(request)
    if not await request.app[PRICE_STORE].delete(model):
        raise NotFound(f"model {model!r} has no price")
    await request.app[PRICES].refresh()
    log.info("price_deleted", model=model)
    return web.Response(status=204)


#: Ingest's API.
ROUTES = (
    Route(
        "POST",
        EMIT_PATH,
        post_events,
        "Submit 1-1000 events; each is accepted or rejected on its own",
        request=EventBatch,
        responses={200: BatchResult, 503: None},
        tag="events",
    ),
    Route(
        "GET",
        "/api/v1/pricing/models",
        list_prices,
        "List model prices",
        role=Role.ADMIN,
        responses={200: PriceList},
        tag="pricing",
    ),
    Route(
        "GET",
        "/api/v1/pricing/models/{model}",
        get_price,
        "A model's price",
        role=Role.ADMIN,
        responses={200: PricedModel, 404: None},
        tag="pricing",
    ),
    Route(
        "PUT",
        "/api/v1/pricing/models/{model}",
        put_price,
        "Set a model's price",
        role=Role.ADMIN,
        request=ModelPrice,
        responses={200: PricedModel},
        tag="pricing",
    ),
    Route(
        "DELETE",
        "/api/v1/pricing/models/{model}",
        delete_price,
        "Remove a model's price",
        role=Role.ADMIN,
        responses={204: None, 404: None},
        tag="pricing",
    ),
)
