"""`tollgate serve ingest`: run the ingest service."""

from libs.service.runtime import serve
from services.ingest.app import build_app
from services.ingest.config import IngestSettings


def main() -> None:
    """Serve ingest with settings from the environment."""
    settings = IngestSettings.from_env()
    serve(
        build_app(settings),
        service="ingest",
        settings=settings,
        port=settings.port,
        metrics_port=settings.metrics_port,
    )


if __name__ == "__main__":
    main()
