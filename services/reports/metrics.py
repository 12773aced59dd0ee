"""Reports' Prometheus collectors, built against the registry the app owns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.reports.projection import ProjectionOutcome

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10)


@dataclass
class ReportsMetrics:
    """Counters, gauges and histograms reports updates."""

    projected: Counter
    duplicates: Counter
    lag_seconds: Gauge
    batch_commit: Histogram
    query_seconds: Histogram
    cost_micros: Counter
    clamped_sessions: Counter
    limits_errors: Counter
    newest_log_ms: int | None = None
    caught_up: Callable[[], bool] = lambda: False

    @classmethod
    def build(cls, registry: CollectorRegistry) -> ReportsMetrics:
        """Register every collector on `registry`."""
        metrics = cls(
            projected=Counter(
                "tollgate_reports_events_projected_total",
                "Events newly projected (first time their id was seen), by type",
                ["type"],
                registry=registry,
            ),
            duplicates=Counter(
                "tollgate_reports_duplicate_events_total",
                "Events skipped because their id was already projected, by type",
                ["type"],
                registry=registry,
            ),
            lag_seconds=Gauge(
                "tollgate_reports_projection_lag_seconds",
                "Seconds between now and the log timestamp of the newest projected event "
                "(0 once the consumer has nothing left to read)",
                registry=registry,
            ),
            batch_commit=Histogram(
                "tollgate_reports_batch_commit_seconds",
                "Time to write one batch and its offsets and commit",
                registry=registry,
                buckets=_LATENCY_BUCKETS,
            ),
            query_seconds=Histogram(
                "tollgate_reports_query_duration_seconds",
                "Time to answer a report query, by endpoint",
                ["endpoint"],
                registry=registry,
                buckets=_LATENCY_BUCKETS,
            ),
            cost_micros=Counter(
                "tollgate_reports_cost_micros_total",
                "Chat cost projected, in micro-dollars, by model (title generation excluded)",
                ["model"],
                registry=registry,
            ),
            clamped_sessions=Counter(
                "tollgate_reports_sessions_clamped_total",
                "Activity sessions longer than TOLLGATE_REPORTS_MAX_SESSION_HOURS, counted as "
                "that long",
                registry=registry,
            ),
            limits_errors=Counter(
                "tollgate_reports_limits_errors_total",
                "Limit status lookups that failed (the detail view shows usage_limit null)",
                ["reason"],
                registry=registry,
            ),
        )
        metrics.lag_seconds.set_function(metrics.lag)
        return metrics

    def lag(self) -> float:
        """Behind the newest projected event; nothing to read means no lag."""
        if self.newest_log_ms is None or self.caught_up():
            return 0.0
        return max(0.0, time.time() - self.newest_log_ms / 1000)

    def record(self, outcome: ProjectionOutcome, seconds: float) -> None:
        """Count what a committed batch did."""
        self.batch_commit.observe(seconds)
        for kind, n in outcome.fresh.items():
            self.projected.labels(kind).inc(n)
        for kind, n in outcome.duplicates.items():
            self.duplicates.labels(kind).inc(n)
        for model, micros in outcome.cost_by_model.items():
            self.cost_micros.labels(model).inc(micros)
        if outcome.clamped_sessions:
            self.clamped_sessions.inc(outcome.clamped_sessions)
        if outcome.newest_log_ms is not None and (
            self.newest_log_ms is None or outcome.newest_log_ms > self.newest_log_ms
        ):
            self.newest_log_ms = outcome.newest_log_ms
