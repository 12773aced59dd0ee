"""`tollgate serve limits`: run the limits service."""

from libs.service.runtime import serve
from services.limits.app import build_app
from services.limits.config import LimitsSettings


def main() -> None:
    """Serve limits with settings from the environment."""
    settings = LimitsSettings.from_env()
    serve(build_app(settings), service="limits", settings=settings, port=settings.port)


if __name__ == "__main__":
    main()
