"""Forwarding API calls to the service that owns them, so one origin answers every `/api/v1/...`.

Which service owns a path is decided here once (`owner_of`). The console's own calls and, in
`make run`, every public API call on the reports port go through `forward`: the request's method,
query, body and a few headers go to the owner, and its status, headers that matter and body
(streamed, so a whole CSV never sits in memory) come back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from libs.service.errors import DependencyUnavailable, PayloadTooLarge

log = structlog.get_logger(__name__)

#: Path prefixes of each service's public API (reports serves the rest itself).
OWNERS: Final = (
    ("/api/v1/events", "ingest"),
    ("/api/v1/pricing", "ingest"),
    ("/api/v1/limits", "limits"),
    ("/api/v1/publisher", "publisher"),
    ("/api/v1/metrics", "reports"),
    ("/api/v1/costs", "reports"),
    ("/api/v1/chargeback", "reports"),
    ("/api/v1/directory", "reports"),
    ("/api/v1/portal", "reports"),
    ("/api/v1/notifications", "reports"),
)

_REQUEST_HEADERS: Final = ("Content-Type", "Accept", "X-Request-Id")
_RESPONSE_HEADERS: Final = ("Content-Type", "Content-Disposition", "Retry-After")


def owner_of(path: str) -> str | None:
    """The service whose API this path is, or None when no service has it."""
    for prefix, service in OWNERS:
        if path == prefix or path.startswith(prefix + "/"):
            return service
    return None


@dataclass(frozen=True)
class Upstreams:
    """Base URLs of the services calls are forwarded to (a missing one answers 503)."""

    urls: Mapping[str, str | None]

    def url(self, service: str) -> str:
        """The base URL of a service, or 503 when it is not configured."""
        base = self.urls.get(service)
        if not base:
            raise DependencyUnavailable(
                f"the {service} service is not configured here "
                f"(set TOLLGATE_{service.upper()}_URL)",
                retry_after_s=30,
            )
        return base.rstrip("/")


async def forward(
    request: web.Request,
    session: aiohttp.ClientSession,
    *,
    base_url: str,
    service: str,
    path: str,
    authorization: str | None,
    max_body_bytes: int,
    timeout_s: float,
) -> web.StreamResponse:
    """Send the request to `base_url + path` (path and query as the client encoded them) and
    stream the answer back."""
    if request.content_length is not None and request.content_length > max_body_bytes:
        raise PayloadTooLarge(f"request body too large: the limit is {max_body_bytes} bytes")
    body = await request.read() if request.can_read_body else None
    headers = {k: request.headers[k] for k in _REQUEST_HEADERS if k in request.headers}
    if authorization is not None:
        headers["Authorization"] = authorization
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    query = request.rel_url.raw_query_string
    url = URL(f"{base_url}{path}" + (f"?{query}" if query else ""), encoded=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(5.0, timeout_s))
    try:
        upstream = await session.request(
            request.method,
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
        )
    except TimeoutError as exc:
        raise DependencyUnavailable(f"the {service} service did not answer in time") from exc
    except aiohttp.ClientError as exc:
        log.warning("forward_failed", service=service, error=type(exc).__name__)
        raise DependencyUnavailable(f"the {service} service is unreachable; retry shortly") from exc
    async with upstream:
        response = web.StreamResponse(status=upstream.status)
        for name in _RESPONSE_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        response.headers["Cache-Control"] = "no-store"
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError):
            # Headers are sent: all that is left is to cut the answer short.
            log.warning("forward_interrupted", service=service)
            return response
        await response.write_eof()
        return response
