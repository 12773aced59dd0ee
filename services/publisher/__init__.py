"""The publisher: billable usage into a durable queue, and a sender to the billing server."""

from libs.service.spec import ServiceSpec, ToolSpec

SERVICE = ServiceSpec(
    "publisher",
    default_port=8084,
    default_metrics_port=9084,
    summary="billable usage to the billing server",
    tools=(
        ToolSpec(
            "publisher",
            "services.publisher.tools:main",
            "the billing queue: status, export, import-receipts, retry-now",
        ),
    ),
)
