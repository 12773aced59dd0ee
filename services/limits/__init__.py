"""Limits: per-user spend in memory and the check before every chat message."""

from libs.service.spec import ServiceSpec

SERVICE = ServiceSpec(
    "limits",
    default_port=8082,
    default_metrics_port=9082,
    summary="spend per user and the check before every chat message",
)
