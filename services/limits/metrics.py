"""Limits' Prometheus collectors, built against the registry the app owns.

The names are what the dashboards and alert rules query; every replica reads the whole log,
so dashboards aggregate these with `max`, never `sum`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from libs.events.vocabulary import BUDGET_NOTIFICATIONS

CHECK_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)


class TopUsers(Collector):
    """`tollgate_limits_top_user_spend_micros{user_id}`: a bounded top list, read at scrape.

    Finding the top spenders walks every user of the period, so the answer is reused for
    `max_age_s` however many scrapers ask.
    """

    def __init__(
        self,
        source: Callable[[], Iterable[tuple[str, int]]],
        *,
        max_age_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.max_age_s = max_age_s
        self.clock = clock
        self._cached: list[tuple[str, int]] = []
        self._at: float | None = None

    def collect(self) -> Iterable[Metric]:
        """One gauge per top spender of the current limit period."""
        now = self.clock()
        if self._at is None or now - self._at >= self.max_age_s:
            self._cached = list(self.source())
            self._at = now
        family = GaugeMetricFamily(
            "tollgate_limits_top_user_spend_micros",
            "Spend of the highest-spending users in the current limit period (bounded list)",
            labels=["user_id"],
        )
        for user_id, spent in self._cached:
            family.add_metric([user_id], spent)
        yield family


@dataclass(frozen=True)
class LimitsMetrics:
    """Counters, histograms and gauges limits update or compute at scrape time."""

    checks: Counter
    check_seconds: Histogram
    ready: Gauge
    snapshot_age: Gauge
    users_tracked: Gauge
    spend_micros: Counter
    events_applied: Counter
    duplicates: Counter
    snapshot_seconds: Histogram
    snapshot_bytes: Gauge
    dedup_ids: Gauge
    crossings_recorded: Counter
    crossings_pending: Gauge
    crossing_write_failures: Counter
    # The series a check counts in, looked up once: `labels()` locks and checks its arguments
    # on every call, a noticeable share of a check's time.
    checks_allowed: Counter = field(init=False)
    checks_blocked: Counter = field(init=False)
    checks_unlimited: Counter = field(init=False)

    def __post_init__(self) -> None:
        for result in ("allowed", "blocked", "unlimited"):
            object.__setattr__(self, f"checks_{result}", self.checks.labels(result))

    @classmethod
    def build(cls, registry: CollectorRegistry) -> LimitsMetrics:
        """Register every collector on `registry`."""
        metrics = cls(
            checks=Counter(
                "tollgate_limit_checks_total",
                "Limit checks answered, by result (allowed|blocked|unlimited)",
                ["result"],
                registry=registry,
            ),
            check_seconds=Histogram(
                "tollgate_limit_check_duration_seconds",
                "Time to answer a limit check inside the service (parse, decide, encode)",
                registry=registry,
                buckets=CHECK_BUCKETS,
            ),
            ready=Gauge(
                "tollgate_limits_ready",
                "1 once this replica has caught up with the log and loaded the configuration",
                registry=registry,
            ),
            snapshot_age=Gauge(
                "tollgate_limits_snapshot_age_seconds",
                "Seconds since the newest snapshot this replica wrote or loaded "
                "(since start when there is none)",
                registry=registry,
            ),
            users_tracked=Gauge(
                "tollgate_limits_users_tracked",
                "Users with spend in the current limit period",
                registry=registry,
            ),
            spend_micros=Counter(
                "tollgate_limits_spend_micros_total",
                "Chat spend applied to the ledger, in micro-dollars, by model",
                ["model"],
                registry=registry,
            ),
            events_applied=Counter(
                "tollgate_limits_events_applied_total",
                "Chat usage and group events that changed the ledger",
                registry=registry,
            ),
            duplicates=Counter(
                "tollgate_limits_duplicate_events_total",
                "Chat usage events skipped because their id was already counted",
                registry=registry,
            ),
            snapshot_seconds=Histogram(
                "tollgate_limits_snapshot_seconds",
                "Time to serialise, compress and store one snapshot",
                registry=registry,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            snapshot_bytes=Gauge(
                "tollgate_limits_snapshot_bytes",
                "Compressed size of the newest snapshot this replica wrote",
                registry=registry,
            ),
            dedup_ids=Gauge(
                "tollgate_limits_dedup_ids",
                "Event ids held in the deduplication window",
                registry=registry,
            ),
            crossings_recorded=Counter(
                "tollgate_limits_notifications_recorded_total",
                "Budget notifications this replica was the first to record, by type "
                "(replicas record disjoint sets: aggregate with sum)",
                ["type"],
                registry=registry,
            ),
            crossings_pending=Gauge(
                "tollgate_limits_notifications_unrecorded",
                "Budget notifications found due and not yet written to PostgreSQL",
                registry=registry,
            ),
            crossing_write_failures=Counter(
                "tollgate_limits_notification_write_failures_total",
                "Failed attempts to record due budget notifications (retried)",
                registry=registry,
            ),
        )
        for kind in BUDGET_NOTIFICATIONS:
            metrics.crossings_recorded.labels(kind)
        return metrics
