"""`tollgate serve limits`: run the limits service."""

import sys

from libs.service.runtime import serve
from services.limits.app import build_app
from services.limits.config import LimitsSettings

SWITCH_INTERVAL_S = 0.0005


def main() -> None:
    """Serve limits with settings from the environment."""
    settings = LimitsSettings.from_env()
    # Snapshots are encoded in a thread; while it runs Python code, the event loop waits for
    # the interpreter lock up to this long (5 ms by default) whenever a check comes in.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    serve(
        build_app(settings, freeze_heap=True),
        service="limits",
        settings=settings,
        port=settings.port,
        metrics_port=settings.metrics_port,
    )


if __name__ == "__main__":
    main()
