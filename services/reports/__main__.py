"""`tollgate serve reports`: run the reports service."""

from libs.service.runtime import serve
from services.reports.app import build_app
from services.reports.config import ReportsSettings


def main() -> None:
    """Serve reports with settings from the environment."""
    settings = ReportsSettings.from_env()
    serve(
        build_app(settings),
        service="reports",
        settings=settings,
        port=settings.port,
        metrics_port=settings.metrics_port,
    )


if __name__ == "__main__":
    main()
