"""Reports: the usage log projected into PostgreSQL, and the Activity, cost and chargeback APIs."""

from libs.service.spec import ServiceSpec

SERVICE = ServiceSpec(
    "reports",
    default_port=8083,
    default_metrics_port=9083,
    summary="Activity, cost and chargeback APIs and the Spend console",
)
