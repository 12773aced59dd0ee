"""Ingest's Prometheus collectors, built against the registry the app owns."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class IngestMetrics:
    """Counters and histograms ingest updates."""

    events: Counter
    producer_errors: Counter
    batch_events: Histogram
    produce_seconds: Histogram
    cost_micros: Counter
    unpriced: Counter

    @classmethod
    def build(cls, registry: CollectorRegistry) -> IngestMetrics:
        """Register every collector on `registry`."""
        return cls(
            events=Counter(
                "tollgate_ingest_events_total",
                "Events received, by type, result (accepted|rejected) and reason",
                ["type", "result", "reason"],
                registry=registry,
            ),
            producer_errors=Counter(
                "tollgate_ingest_producer_errors_total",
                "Batches the broker did not acknowledge in time",
                registry=registry,
            ),
            batch_events=Histogram(
                "tollgate_ingest_batch_events",
                "Events per request",
                registry=registry,
                buckets=(1, 10, 50, 100, 250, 500, 1000),
            ),
            produce_seconds=Histogram(
                "tollgate_ingest_produce_seconds",
                "Time from produce to the broker's acknowledgement of a whole batch",
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            ),
            cost_micros=Counter(
                "tollgate_ingest_cost_micros_total",
                "Chat cost accepted, in micro-dollars, by model (title generation excluded)",
                ["model"],
                registry=registry,
            ),
            unpriced=Counter(
                "tollgate_ingest_unpriced_events_total",
                "Chat usage accepted without a cost because the model has no price",
                ["model"],
                registry=registry,
            ),
        )
