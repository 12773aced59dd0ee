"""Running one service process: the event loop, logging, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer

from libs.service.db import create_pool
from libs.service.kafka import bounded, make_producer
from libs.service.logging import configure_logging
from libs.service.settings import CommonSettings
from libs.service.web import create_metrics_app

log = structlog.get_logger(__name__)

T = TypeVar("T")
CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

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


class Resources:
    """What a service holds while it runs: entered in order, closed in reverse when it stops.

    A thin face on an `AsyncExitStack` for the parts every composition root starts (a pool,
    a producer, background tasks), so that each is closed however the start or the stop goes.
    """

    def __init__(self, stack: AsyncExitStack) -> None:
        self.stack = stack

    async def pool(self, dsn: str, *, max_size: int, min_size: int = 1) -> asyncpg.Pool:
        """A PostgreSQL pool, closed at the stop."""
        pool = await create_pool(dsn, max_size=max_size, min_size=min_size)
        self.stack.push_async_callback(pool.close)
        return pool

    async def producer(
        self,
        bootstrap: str,
        *,
        idempotent: bool,
        timeout_s: float,
        request_timeout_s: float = 5.0,
    ) -> AIOKafkaProducer:
        """A started `acks=all` producer, stopped (within `timeout_s`) at the stop."""
        producer = make_producer(
            bootstrap, idempotent=idempotent, request_timeout_s=request_timeout_s
        )
        await bounded(producer.start(), timeout_s * 3, "producer start")
        self.stack.push_async_callback(lambda: asyncio.wait_for(producer.stop(), timeout_s))
        return producer

    async def background(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `coro` as a task until the stop, when it is cancelled and awaited."""
        await self.stack.enter_async_context(background(coro, name=name))

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """Enter `context`; it exits at the stop."""
        return await self.stack.enter_async_context(context)

    def at_stop(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Await `callback` at the stop, before what was entered before this call closes."""
        self.stack.push_async_callback(callback)


def lifecycle(start: Callable[[web.Application, Resources], Awaitable[None]]) -> CleanupCtx:
    """The `cleanup_ctx` of a composition root: `start` enters what the app holds into its
    `Resources`, and all of it is closed in reverse order when the app stops."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await start(app, Resources(stack))
            yield

    return ctx
