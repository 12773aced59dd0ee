"""A user's usage limit status from the limits service, for the cost detail view.

The detail view must not wait on, or fail with, the limits service: the call has a short
deadline and any failure, like a user without a limit, gives None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import ValidationError

from libs.events.limits import LIMIT_STATUS_PATH, LimitStatus

__all__ = ["HttpLimitsClient", "LimitsClient", "NoLimits"]

log = structlog.get_logger(__name__)


class LimitsClient(Protocol):
    """Reads a user's limit status."""

    async def status(self, user_id: str) -> LimitStatus | None:
        """The status when a limit applies to the user; None when none does or on any error."""
        ...


class NoLimits:
    """No limits service configured: nobody has a limit to show."""

    async def status(self, user_id: str) -> LimitStatus | None:  # noqa: ARG002
        """Always None."""
        return None


class HttpLimitsClient:
    """`GET {base_url}/api/v1/limits/status/{user_id}` with a deadline."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: str | None,
        timeout_s: float,
        on_error: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.on_error = on_error

    async def status(self, user_id: str) -> LimitStatus | None:
        """The limits service's answer when the user is limited, else None."""
        url = f"{self.base_url}{LIMIT_STATUS_PATH.format(user_id=quote(user_id, safe=''))}"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.session.get(url, headers=self.headers) as resp:
                    if resp.status != 200:
                        self._failed(f"status {resp.status}")
                        return None
                    body = LimitStatus.model_validate_json(await resp.read())
        except TimeoutError:
            self._failed("timeout")
            return None
        except (aiohttp.ClientError, OSError):
            self._failed("unreachable")
            return None
        except ValidationError:
            self._failed("invalid body")
            return None
        return body if body.is_limited else None

    def _failed(self, reason: str) -> None:
        log.info("limits_status_unavailable", reason=reason)
        self.on_error(reason)
