"""The publisher's HTTP API: its status and the Agent Time report, for operators and alerts."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from libs.service.durations import format_duration
from libs.service.routes import Role, Route
from libs.service.web import json_response
from services.publisher.agent_time import AgentTimeHeartbeat
from services.publisher.config import PublisherSettings
from services.publisher.domain import HB_AGENT_RUNTIME, log_watermark
from services.publisher.metrics import PublisherMetrics
from services.publisher.storage import AgentHourReport, BillingQueue, QueueStatus, Status

SETTINGS = web.AppKey("publisher_settings", PublisherSettings)
QUEUE = web.AppKey("publisher_queue", BillingQueue)
METRICS = web.AppKey("publisher_metrics", PublisherMetrics)
AGENT_TIME = web.AppKey("publisher_agent_time", AgentTimeHeartbeat)


class PublisherStatus(BaseModel):
    """`GET /api/v1/publisher/status`: the queue and the sender's durable health."""

    configured: bool
    message: str
    queue: str
    deployment_id: str
    billing_url: str | None
    interval: str
    max_age: str
    pending: int
    due: int
    oldest_pending_created_at: datetime | None
    oldest_pending_age_seconds: float | None
    last_success_at: datetime | None
    last_attempt_at: datetime | None
    consecutive_failures: int
    failing_since: datetime | None
    last_error: str | None
    last_error_cause: str | None
    last_error_at: datetime | None
    published: int
    rejected: int
    expired: int


def _message(settings: PublisherSettings, status: QueueStatus) -> str:
    if not settings.configured:
        return (
            f"queue only: {' and '.join(settings.missing)} not set; billing events are kept "
            "until the publisher is configured or exported with `tollgate publisher export`"
        )
    health = status.health
    if health.consecutive_failures:
        kept = "events are kept and retried" if status.pending else "nothing is pending"
        return (
            f"failing: {health.consecutive_failures} consecutive failed requests "
            f"({health.last_error_cause}); {kept}"
        )
    if health.last_success_at is None:
        return "configured; nothing sent yet"
    return "ok"


def status_body(settings: PublisherSettings, status: QueueStatus) -> PublisherStatus:
    """The status document from the settings and what the queue says."""
    health = status.health
    return PublisherStatus(
        configured=settings.configured,
        message=_message(settings, status),
        queue=settings.queue,
        deployment_id=settings.deployment_id or health.deployment_id,
        billing_url=settings.public_billing_url,
        interval=format_duration(settings.interval),
        max_age=format_duration(settings.max_age),
        pending=status.pending,
        due=status.due,
        oldest_pending_created_at=status.oldest_pending_created_at,
        oldest_pending_age_seconds=status.oldest_pending_age_s,
        last_success_at=health.last_success_at,
        last_attempt_at=health.last_attempt_at,
        consecutive_failures=health.consecutive_failures,
        failing_since=health.failing_since,
        last_error=health.last_error,
        last_error_cause=health.last_error_cause,
        last_error_at=health.last_error_at,
        published=health.published_total,
        rejected=health.rejected_total,
        expired=health.expired_total,
    )


async def get_status(request: web.Request) -> web.Response:
    """Pending events, their age, and the sender's health (durable across restarts)."""
    status = await request.app[QUEUE].status()
    request.app[METRICS].observe_status(status)
    body = status_body(request.app[SETTINGS], status)
    return json_response(body.model_dump())


class AgentHour(BaseModel):
    """One UTC hour of Agent Time: what was reported and what the log holds for it now."""

    hour: datetime
    id: str
    status: Status | None = Field(description="The heartbeat's status; null while the hour is open")
    reported_runtime_ms: int | None = Field(description="runtime_ms as queued; null while open")
    runtime_ms: int = Field(description="Runtime of the hour's chat usage received so far")
    late_runtime_ms: int = Field(description="Runtime that arrived after the hour was reported")


class AgentTimeReport(BaseModel):
    """`GET /api/v1/publisher/agent-time`: every hour of the window with runtime or a heartbeat."""

    event_type: str
    lag: str
    window: str
    window_start: datetime
    log_read_until: datetime | None = Field(
        description="Every partition of the log was read to its end at this time or later"
    )
    hours: list[AgentHour]
    late_runtime_ms: int


def _hour(item: AgentHourReport) -> AgentHour:
    return AgentHour(
        hour=item.hour,
        id=item.id,
        status=item.status,
        reported_runtime_ms=item.reported_ms,
        runtime_ms=item.counted_ms,
        late_runtime_ms=item.late_ms,
    )


async def get_agent_time(request: web.Request) -> web.Response:
    """The hours of the Agent Time window: reported runtime beside what has arrived since."""
    settings, queue = request.app[SETTINGS], request.app[QUEUE]
    start = request.app[AGENT_TIME].window_start()
    hours = [_hour(h) for h in await queue.agent_time_report(start)]
    watermark = log_watermark(await queue.log_progress(settings.events_topic))
    body = AgentTimeReport(
        event_type=HB_AGENT_RUNTIME,
        lag=format_duration(settings.agent_time_lag),
        window=format_duration(settings.agent_time_window),
        window_start=start,
        log_read_until=watermark,
        hours=hours,
        late_runtime_ms=sum(h.late_runtime_ms for h in hours),
    )
    return json_response(body.model_dump())


#: The publisher's API.
ROUTES = (
    Route(
        "GET",
        "/api/v1/publisher/agent-time",
        get_agent_time,
        "Agent Time per UTC hour: reported, received since, and late",
        role=Role.ADMIN,
        responses={200: AgentTimeReport, 503: None},
        tag="publisher",
    ),
    Route(
        "GET",
        "/api/v1/publisher/status",
        get_status,
        "Pending billing events and the sender's health",
        role=Role.ADMIN,
        responses={200: PublisherStatus, 503: None},
        tag="publisher",
    ),
)
