"""Ingest: validates, prices and logs usage events."""

from libs.service.spec import ServiceSpec

SERVICE = ServiceSpec(
    "ingest",
    default_port=8081,
    default_metrics_port=9081,
    summary="validates, prices and logs usage events",
)
