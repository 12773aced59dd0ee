"""The publisher's Prometheus collectors, built against the registry the app owns.

The names are fixed: dashboards and alerts use them. The gauges read the shared queue, so
every replica reports the same value; aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.publisher.domain import BILLING_EVENT_TYPES, SEND_CAUSES, OutcomeKind
from services.publisher.storage import QueueStatus

#: What became of a sent event (`tollgate_publisher_events_total{result}`), or of an unsent one.
RESULTS = (*get_args(OutcomeKind), "expired")


@dataclass(frozen=True)
class PublisherMetrics:
    """Counters this replica updates and gauges refreshed from the queue."""

    events: Counter
    send_errors: Counter
    expired: Counter
    pending: Gauge
    oldest_pending_age: Gauge
    consecutive_failures: Gauge
    configured: Gauge
    last_success: Gauge
    request_seconds: Histogram
    heartbeat_seats: Gauge
    agent_hours: Counter
    agent_time_late_events: Counter
    agent_time_late_ms: Counter
    agent_time_last_hour: Gauge

    @classmethod
    def build(cls, registry: CollectorRegistry) -> PublisherMetrics:
        """Register every collector on `registry`, with every label value present from start."""
        metrics = cls(
            events=Counter(
                "tollgate_publisher_events_total",
                "Billing events by type and result (accepted|rejected|retry|expired)",
                ["event_type", "result"],
                registry=registry,
            ),
            send_errors=Counter(
                "tollgate_publisher_send_errors_total",
                "Requests to the billing server that failed as a whole, by cause",
                ["cause"],
                registry=registry,
            ),
            expired=Counter(
                "tollgate_publisher_expired_total",
                "Billing events that grew older than PUBLISH_MAX_AGE unsent",
                registry=registry,
            ),
            pending=Gauge(
                "tollgate_publisher_pending",
                "Billing events waiting to be sent (the shared queue)",
                registry=registry,
            ),
            oldest_pending_age=Gauge(
                "tollgate_publisher_oldest_pending_age_seconds",
                "Age of the oldest pending billing event (0 when none)",
                registry=registry,
            ),
            consecutive_failures=Gauge(
                "tollgate_publisher_consecutive_failures",
                "Failed requests since the last successful one (durable, shared by replicas)",
                registry=registry,
            ),
            configured=Gauge(
                "tollgate_publisher_configured",
                "1 when BILLING_URL and LICENSE_KEY are set; 0 means queue-only",
                registry=registry,
            ),
            last_success=Gauge(
                "tollgate_publisher_last_success_timestamp_seconds",
                "Unix time of the last request the billing server answered (0 when never)",
                registry=registry,
            ),
            request_seconds=Histogram(
                "tollgate_publisher_request_seconds",
                "Duration of one request to the billing server, failed ones included",
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            heartbeat_seats=Gauge(
                "tollgate_publisher_ai_seats",
                "The seat count of the last AI seats heartbeat this replica queued",
                registry=registry,
            ),
            agent_hours=Counter(
                "tollgate_publisher_agent_time_hours_total",
                "Agent Time hours this replica queued, or skipped because their sum was invalid",
                ["result"],
                registry=registry,
            ),
            agent_time_late_events=Counter(
                "tollgate_publisher_agent_time_late_events_total",
                "Chat usage events whose runtime arrived after their hour was reported (not sent)",
                registry=registry,
            ),
            agent_time_late_ms=Counter(
                "tollgate_publisher_agent_time_late_runtime_ms_total",
                "Runtime that arrived after its hour was reported, in milliseconds (not sent)",
                registry=registry,
            ),
            agent_time_last_hour=Gauge(
                "tollgate_publisher_agent_time_last_hour_timestamp_seconds",
                "Unix time of the start of the latest hour with Agent Time queued (0 when none)",
                registry=registry,
            ),
        )
        for event_type in BILLING_EVENT_TYPES:
            for result in RESULTS:
                metrics.events.labels(event_type, result)
        for cause in SEND_CAUSES:
            metrics.send_errors.labels(cause)
        for result in ("queued", "skipped"):
            metrics.agent_hours.labels(result)
        return metrics

    def observe_status(self, status: QueueStatus) -> None:
        """Refresh the gauges from what the queue says now."""
        self.pending.set(status.pending)
        self.oldest_pending_age.set(status.oldest_pending_age_s or 0.0)
        self.consecutive_failures.set(status.health.consecutive_failures)
        success = status.health.last_success_at
        self.last_success.set(success.timestamp() if success is not None else 0.0)
