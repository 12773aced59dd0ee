"""`tollgate serve publisher`: run the publisher service."""

from libs.service.runtime import serve
from services.publisher.app import build_app
from services.publisher.config import PublisherSettings


def main() -> None:
    """Serve the publisher with settings from the environment."""
    settings = PublisherSettings.from_env()
    serve(
        build_app(settings),
        service="publisher",
        settings=settings,
        port=settings.port,
        metrics_port=settings.metrics_port,
    )


if __name__ == "__main__":
    main()
