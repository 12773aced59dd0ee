"""Running one service process: the event loop, logging, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import structlog
from aiohttp import web

from libs.service.logging import configure_logging
from libs.service.settings import CommonSettings
from libs.service.web import create_metrics_app

log = structlog.get_logger(__name__)

#: Seconds a stopping service waits for requests in flight before its resources close; the
#: chart's terminationGracePeriodSeconds must cover it (tests/deploy check that).
SHUTDOWN_TIMEOUT_S = 10


def serve(
    app: web.Application,
    *,
    service: str,
    settings: CommonSettings,
    port: int,
    metrics_port: int,
) -> None:
    """Configure logging and serve the app until SIGINT/SIGTERM, then shut down cleanly.

    The API answers on `port`; `/metrics` answers on `metrics_port` only.
    """
    configure_logging(settings.log_level, settings.log_format, service=service)
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415  # optional speed-up

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    log.info("service_starting", host=settings.host, port=port, metrics_port=metrics_port)
    expose_metrics(app, host=settings.host, port=metrics_port)
    web.run_app(
        app,
        host=settings.host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handle_signals=True,
    )
    log.info("service_stopped")


def expose_metrics(app: web.Application, *, host: str, port: int) -> None:
    """Serve `app`'s `/metrics` on `port` from before its resources start until after they stop.

    A replica that is still starting (limits replaying the log) is then already visible to
    Prometheus, with `tollgate_ready` at 0.
    """

    async def metrics_server(_: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(create_metrics_app(app), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.insert(0, metrics_server)


@contextlib.asynccontextmanager
async def background(
    coro: Coroutine[Any, Any, None], *, name: str
) -> AsyncIterator[asyncio.Task[None]]:
    """A task for a `cleanup_ctx`: started on entry, cancelled and awaited on exit."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
