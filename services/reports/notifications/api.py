"""The notifications admin API: webhook endpoints, test events, deliveries and status."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Unprocessable,
)
from libs.service.routes import Param, Role, Route
from libs.service.web import (
    json_response,
    read_json,
    storable_text,
    validation_message,
)
from services.reports.notifications.domain import (
    CHANNELS,
    MAX_DESCRIPTION_LENGTH,
    MAX_URL_LENGTH,
    STATUSES,
    AddressPolicy,
    Channel,
    Status,
    check_description,
    check_webhook_url,
    trial_body,
)
from services.reports.notifications.storage import NotificationAdmin

#: Most endpoints at once: each notification fans out to every one.
MAX_WEBHOOKS: Final = 100
MAX_DELIVERIES_PAGE: Final = 500
DEFAULT_DELIVERIES_PAGE: Final = 50
_ID_LENGTH: Final = 128
#: How long a rotated secret keeps signing beside the new one.
SECRET_OVERLAP_S: Final = 24 * 3600.0
_DELIVERY_ID: Final = re.compile(r"msg_([0-9a-f]{32})")


@dataclass(frozen=True)
class NotificationsApi:
    """What the handlers need: the store, where webhooks may go, and what the notifier does."""

    store: NotificationAdmin
    policy: AddressPolicy
    email_from: str | None
    admin_emails: int
    delivering: bool
    retry_for_s: float
    retention_s: float


NOTIFICATIONS = web.AppKey("notifications_api", NotificationsApi)


class WebhookCreate(BaseModel):
    """`POST /api/v1/notifications/webhooks`."""

    model_config = ConfigDict(extra="forbid", strict=True)
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    description: str = Field("", max_length=MAX_DESCRIPTION_LENGTH)


class WebhookView(BaseModel):
    """An endpoint as listed (never its secret)."""

    id: str
    url: str
    description: str
    created_at: datetime
    disabled_at: datetime | None
    disabled_reason: str | None


class WebhookCreated(BaseModel):
    """The new endpoint with its secret: the only time the secret is shown."""

    id: str
    url: str
    description: str
    secret: str
    created_at: datetime


class WebhookList(BaseModel):
    """Every endpoint."""

    webhooks: list[WebhookView]


class TrialQueued(BaseModel):
    """A test event waiting in the outbox for one endpoint."""

    id: str
    webhook_id: str
    type: str


class WebhookRotated(BaseModel):
    """An endpoint's new secret, shown this once, and until when the old one signs too."""

    id: str
    secret: str
    previous_secret_expires_at: datetime


class DeliveryRequeued(BaseModel):
    """A failed delivery waiting to be sent again, under the same `webhook-id`."""

    id: str
    status: Status


class DeliveryView(BaseModel):
    """One delivery (`id` is what the endpoint receives as `webhook-id`)."""

    id: str
    webhook_id: str | None
    type: str
    status: Status
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    channel: Channel
    recipient: str | None
    audience: str
    user_id: str | None
    notification_id: str
    last_status: int | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None


class DeliveryList(BaseModel):
    """The newest deliveries first."""

    deliveries: list[DeliveryView]


class ChannelPending(BaseModel):
    """Pending deliveries of one channel."""

    pending: int
    oldest_pending_age_seconds: float | None


class NotificationsStatus(BaseModel):
    """What is configured and what waits."""

    delivering: bool
    webhooks: int
    email_configured: bool
    email_from: str | None
    admin_emails: int
    retry_for_seconds: float
    retention_seconds: float
    channels: dict[str, ChannelPending]


def _webhook_id(request: web.Request) -> str:
    return storable_text(request.match_info["webhook_id"], "webhook_id", max_length=_ID_LENGTH)


async def add_webhook(request: web.Request) -> web.Response:
    """Register an endpoint; the answer holds its signing secret, shown this once."""
    api = request.app[NOTIFICATIONS]
    body = await read_json(request)
    try:
        create = WebhookCreate.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(
            validation_message(exc), detail=exc.errors(include_url=False, include_context=False)
        ) from exc
    try:
        url = check_webhook_url(create.url, api.policy)
    except ValueError as exc:
        raise Unprocessable(f"url: {exc}", detail={"field": "url"}) from exc
    try:
        description = check_description(create.description)
    except ValueError as exc:
        raise Unprocessable(f"description: {exc}", detail={"field": "description"}) from exc
    if len(await api.store.webhooks()) >= MAX_WEBHOOKS:
        raise Conflict(f"at most {MAX_WEBHOOKS} webhook endpoints; delete one first")
    hook = await api.store.add_webhook(url, description)
    return json_response(
        {
            "id": hook.id,
            "url": hook.url,
            "description": hook.description,
            "secret": hook.secret,
            "created_at": hook.created_at,
        },
        status=201,
    )


async def list_webhooks(request: web.Request) -> web.Response:
    """Every endpoint, without secrets."""
    api = request.app[NOTIFICATIONS]
    hooks = await api.store.webhooks()
    return json_response({"webhooks": [h.view() for h in hooks]})


async def delete_webhook(request: web.Request) -> web.Response:
    """Stop sending to an endpoint; what was pending for it fails."""
    api = request.app[NOTIFICATIONS]
    webhook_id = _webhook_id(request)
    if not await api.store.delete_webhook(webhook_id):
        raise NotFound(f"webhook {webhook_id!r} does not exist")
    return web.Response(status=204)


async def send_trial(request: web.Request) -> web.Response:
    """Queue a signed test event for one endpoint, delivered like any notification."""
    api = request.app[NOTIFICATIONS]
    webhook_id = _webhook_id(request)
    delivery_id = await api.store.queue_trial(webhook_id, trial_body(webhook_id, datetime.now(UTC)))
    if delivery_id is None:
        raise NotFound(f"webhook {webhook_id!r} does not exist or is disabled")
    return json_response(
        {"id": f"msg_{delivery_id.hex}", "webhook_id": webhook_id, "type": "webhook.test"},
        status=202,
    )


async def rotate_secret(request: web.Request) -> web.Response:
    """Give an endpoint a new secret; the old one keeps signing beside it for a day."""
    api = request.app[NOTIFICATIONS]
    webhook_id = _webhook_id(request)
    hook = await api.store.rotate_secret(webhook_id, overlap_s=SECRET_OVERLAP_S)
    if hook is None:
        raise NotFound(f"webhook {webhook_id!r} does not exist")
    return json_response(
        {
            "id": hook.id,
            "secret": hook.secret,
            "previous_secret_expires_at": hook.previous_secret_until,
        }
    )


async def enable_webhook(request: web.Request) -> web.Response:
    """Send to an endpoint again after it answered 410 Gone (failed deliveries stay failed)."""
    api = request.app[NOTIFICATIONS]
    webhook_id = _webhook_id(request)
    hook = await api.store.enable_webhook(webhook_id)
    if hook is None:
        raise NotFound(f"webhook {webhook_id!r} does not exist")
    return json_response(hook.view())


def _delivery_id(request: web.Request) -> uuid.UUID:
    raw = storable_text(request.match_info["delivery_id"], "delivery_id", max_length=_ID_LENGTH)
    found = _DELIVERY_ID.fullmatch(raw)
    if found is None:
        raise Unprocessable(
            "delivery_id: expected msg_ and 32 hexadecimal digits, as deliveries are listed",
            detail={"field": "delivery_id"},
        )
    return uuid.UUID(found.group(1))


_NOT_RETRIED: Final = {
    "not_failed": "only a failed delivery can be sent again; this one is pending or delivered",
    "endpoint_gone": "its webhook endpoint was deleted or disabled; enable it first",
    "email_off": "email is not configured (TOLLGATE_SMTP_URL)",
}


async def retry_delivery(request: web.Request) -> web.Response:
    """Send a failed delivery again: pending, due now, retried for a new window."""
    api = request.app[NOTIFICATIONS]
    delivery_id = _delivery_id(request)
    outcome = await api.store.retry_delivery(delivery_id, email=api.email_from is not None)
    shown = f"msg_{delivery_id.hex}"
    if outcome == "unknown":
        raise NotFound(f"delivery {shown!r} does not exist")
    if outcome != "queued":
        raise Conflict(f"{shown}: {_NOT_RETRIED[outcome]}")
    return json_response({"id": shown, "status": "pending"}, status=202)


_DELIVERY_PARAMS: Final = ("status", "channel", "user_id", "limit")


def _one(request: web.Request, name: str) -> str | None:
    found = request.rel_url.query.getall(name, [])
    if len(found) > 1:
        raise BadRequest(f"{name}: given {len(found)} times; give it once")
    value = found[0] if found else ""
    return value or None


async def list_deliveries(request: web.Request) -> web.Response:
    """The newest deliveries, optionally by status, channel and user."""
    api = request.app[NOTIFICATIONS]
    unknown = sorted(set(request.rel_url.query) - set(_DELIVERY_PARAMS))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
            f"this route takes {', '.join(_DELIVERY_PARAMS)}"
        )
    status = _one(request, "status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status: must be one of {', '.join(STATUSES)}")
    channel = _one(request, "channel")
    if channel is not None and channel not in CHANNELS:
        raise BadRequest(f"channel: must be one of {', '.join(CHANNELS)}")
    user_id = _one(request, "user_id")
    if user_id is not None:
        storable_text(user_id, "user_id", max_length=_ID_LENGTH, error=BadRequest)
    raw_limit = _one(request, "limit")
    limit = DEFAULT_DELIVERIES_PAGE
    if raw_limit is not None:
        if not raw_limit.isdigit() or len(raw_limit) > 6:
            raise BadRequest(f"limit: must be a whole number from 1 to {MAX_DELIVERIES_PAGE}")
        limit = int(raw_limit)
        if not 1 <= limit <= MAX_DELIVERIES_PAGE:
            raise BadRequest(f"limit: must be a whole number from 1 to {MAX_DELIVERIES_PAGE}")
    found = await api.store.deliveries(
        status=status,
        channel=channel,
        user_id=user_id,
        limit=limit,
    )
    return json_response({"deliveries": [d.view() for d in found]})


async def get_status(request: web.Request) -> web.Response:
    """Endpoints, email configuration and what waits in the outbox."""
    api = request.app[NOTIFICATIONS]
    hooks = await api.store.webhooks()
    pending = await api.store.pending()
    now = datetime.now(UTC)
    channels = {}
    for channel in CHANNELS:
        stats = pending.get(channel)
        oldest = stats.oldest_created_at if stats is not None else None
        channels[channel] = {
            "pending": stats.count if stats is not None else 0,
            "oldest_pending_age_seconds": (
                round(max(0.0, (now - oldest).total_seconds()), 3) if oldest else None
            ),
        }
    return json_response(
        {
            "delivering": api.delivering,
            "webhooks": len(hooks),
            "email_configured": api.email_from is not None,
            "email_from": api.email_from,
            "admin_emails": api.admin_emails,
            "retry_for_seconds": api.retry_for_s,
            "retention_seconds": api.retention_s,
            "channels": channels,
        }
    )


_BASE = "/api/v1/notifications"

#: The notifications admin API.
NOTIFICATION_ROUTES = (
    Route(
        "POST",
        f"{_BASE}/webhooks",
        add_webhook,
        "Register a webhook endpoint (its secret is in this answer only)",
        role=Role.ADMIN,
        request=WebhookCreate,
        responses={201: WebhookCreated, 409: None, 503: None},
        tag="notifications",
    ),
    Route(
        "GET",
        f"{_BASE}/webhooks",
        list_webhooks,
        "Webhook endpoints, without their secrets",
        role=Role.ADMIN,
        responses={200: WebhookList, 503: None},
        tag="notifications",
    ),
    Route(
        "DELETE",
        f"{_BASE}/webhooks/{{webhook_id}}",
        delete_webhook,
        "Delete a webhook endpoint",
        role=Role.ADMIN,
        responses={204: None, 404: None, 422: None, 503: None},
        tag="notifications",
    ),
    Route(
        "POST",
        f"{_BASE}/webhooks/{{webhook_id}}/test",
        send_trial,
        "Send a signed test event to one endpoint",
        role=Role.ADMIN,
        responses={202: TrialQueued, 404: None, 422: None, 503: None},
        tag="notifications",
    ),
    Route(
        "POST",
        f"{_BASE}/webhooks/{{webhook_id}}/rotate-secret",
        rotate_secret,
        "Give an endpoint a new signing secret (in this answer only); the old one signs "
        "beside it for 24 hours",
        role=Role.ADMIN,
        responses={200: WebhookRotated, 404: None, 422: None, 503: None},
        tag="notifications",
    ),
    Route(
        "POST",
        f"{_BASE}/webhooks/{{webhook_id}}/enable",
        enable_webhook,
        "Send to an endpoint again after it answered 410 Gone",
        role=Role.ADMIN,
        responses={200: WebhookView, 404: None, 422: None, 503: None},
        tag="notifications",
    ),
    Route(
        "POST",
        f"{_BASE}/deliveries/{{delivery_id}}/retry",
        retry_delivery,
        "Send a failed delivery again, with the same webhook-id and a new retry window",
        role=Role.ADMIN,
        responses={202: DeliveryRequeued, 404: None, 409: None, 422: None, 503: None},
        tag="notifications",
    ),
    Route(
        "GET",
        f"{_BASE}/deliveries",
        list_deliveries,
        "Recent deliveries: pending, delivered or failed, with attempts and last error",
        role=Role.ADMIN,
        parameters=(
            Param("status", values=tuple(STATUSES)),
            Param("channel", values=tuple(CHANNELS)),
            Param("user_id", schema={"maxLength": _ID_LENGTH}),
            Param(
                "limit",
                schema={"type": "integer", "minimum": 1, "maximum": MAX_DELIVERIES_PAGE},
            ),
        ),
        responses={200: DeliveryList, 400: None, 503: None},
        tag="notifications",
    ),
    Route(
        "GET",
        f"{_BASE}/status",
        get_status,
        "Notification channels: what is configured and what waits",
        role=Role.ADMIN,
        responses={200: NotificationsStatus, 503: None},
        tag="notifications",
    ),
)
