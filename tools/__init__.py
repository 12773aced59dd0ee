"""Development tools: the usage simulator and the local billing sink.

Nothing here runs in production and nothing in `libs` or `services` imports it; the `tollgate`
command finds these tools through `TOOLS` below (see `libs.service.spec`). The production image
leaves this package out.
"""

from libs.service.spec import ToolSpec

#: Where `tollgate run --with-billing-sink` starts the local billing sink by default.
BILLING_SINK_PORT_ENV = "TOLLGATE_BILLING_SINK_PORT"
BILLING_SINK_DEFAULT_PORT = 8090

TOOLS = (
    ToolSpec(
        "billing-sink",
        "tools.billing_sink:main",
        "a local billing server for demos and tests that can be told to fail",
        port_env=BILLING_SINK_PORT_ENV,
        default_port=BILLING_SINK_DEFAULT_PORT,
    ),
    ToolSpec(
        "simulate",
        "tools.simulator.cli:main",
        "seeded usage: generate, send, and verify what the services answer",
    ),
)
