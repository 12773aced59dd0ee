"""The notifier's Prometheus collectors, built against the registry reports owns.

Counters count what this replica did (aggregate with `sum`); the pending gauges read the
shared outbox (aggregate with `max`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.reports.notifications.domain import CHANNELS


@dataclass(frozen=True)
class NotificationMetrics:
    """Due, delivered, failed, attempts, errors, pending and age, per channel; pruned."""

    due: Counter
    delivered: Counter
    failed: Counter
    attempts: Counter
    errors: Counter
    pending: Gauge
    oldest_pending_age: Gauge
    attempt_seconds: Histogram
    pruned: Counter

    @classmethod
    def build(cls, registry: CollectorRegistry) -> NotificationMetrics:
        """Register every collector on `registry`, each channel's series at 0."""
        metrics = cls(
            due=Counter(
                "tollgate_notifications_due_total",
                "Deliveries that became due (one per endpoint or recipient of a notification)",
                ["channel"],
                registry=registry,
            ),
            delivered=Counter(
                "tollgate_notifications_delivered_total",
                "Deliveries that got through (a 2xx answer, an accepted email)",
                ["channel"],
                registry=registry,
            ),
            failed=Counter(
                "tollgate_notifications_failed_total",
                "Deliveries given up: retried for the whole retry window, refused for good, "
                "or to an endpoint that answered 410 Gone",
                ["channel"],
                registry=registry,
            ),
            attempts=Counter(
                "tollgate_notification_attempts_total",
                "Delivery attempts by result (delivered|retry|failed)",
                ["channel", "result"],
                registry=registry,
            ),
            errors=Counter(
                "tollgate_notification_attempt_errors_total",
                "Attempts that did not deliver, by cause",
                ["channel", "cause"],
                registry=registry,
            ),
            pending=Gauge(
                "tollgate_notifications_pending",
                "Deliveries waiting to be sent or retried (the shared outbox: use max)",
                ["channel"],
                registry=registry,
            ),
            oldest_pending_age=Gauge(
                "tollgate_notifications_oldest_pending_age_seconds",
                "Age of the oldest pending delivery, 0 when none (the shared outbox: use max)",
                ["channel"],
                registry=registry,
            ),
            attempt_seconds=Histogram(
                "tollgate_notification_attempt_seconds",
                "Time one delivery attempt took",
                ["channel"],
                registry=registry,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            pruned=Counter(
                "tollgate_notifications_pruned_total",
                "Notifications forgotten with their deliveries after TOLLGATE_NOTIFY_RETENTION",
                registry=registry,
            ),
        )
        for channel in CHANNELS:
            for counter in (metrics.due, metrics.delivered, metrics.failed):
                counter.labels(channel)
            for result in ("delivered", "retry", "failed"):
                metrics.attempts.labels(channel, result)
            metrics.pending.labels(channel).set(0)
            metrics.oldest_pending_age.labels(channel).set(0)
        return metrics
