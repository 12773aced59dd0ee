"""A table kept in memory on every replica, reloaded whenever its version moves.

Ingest's prices and limits' configuration are read on every request and changed rarely, from
any replica: each replica polls a cheap version number and reloads the whole table only when
the number moved. While the database is away the last copy stays in force.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


class VersionedCache(Generic[T]):  # Python 3.11 has no `class C[T]`
    """The last loaded copy of a versioned table, within one poll of the stored one.

    `name` starts its log events (`<name>_refresh_failed`, `<name>_refresh_recovered`).
    `version` reads the stored version; `load` reads the table, and `version_of` the version a
    loaded copy carries (without it, the version read just before loading). A copy older than
    the one in force (a slower concurrent refresh) is never put back. `on_load` runs with every
    newer copy put in force.
    """

    def __init__(  # each part of the table is its own callable
        self,
        name: str,
        *,
        version: Callable[[], Awaitable[int]],
        load: Callable[[], Awaitable[T]],
        interval_s: float,
        version_of: Callable[[T], int] | None = None,
        on_load: Callable[[T], None] | None = None,
    ) -> None:
        self.name = name
        self._failed_event = f"{name}_refresh_failed"
        self._recovered_event = f"{name}_refresh_recovered"
        self.interval_s = interval_s
        self._version = version
        self._load = load
        self._version_of = version_of
        self._on_load = on_load
        self.value: T | None = None
        self.version: int | None = None
        #: Whether the last read of the version reached the database.
        self.reachable = False

    @property
    def loaded(self) -> bool:
        """Whether a copy was ever loaded."""
        return self.version is not None

    async def refresh(self) -> bool:
        """Reload when the version moved; True when a newer copy was put in force."""
        version = await self._version()
        self.reachable = True
        if version == self.version:
            return False
        value = await self._load()
        if self._version_of is not None:
            version = self._version_of(value)
        if self.version is not None and version < self.version:
            return False
        self.value = value
        self.version = version
        if self._on_load is not None:
            self._on_load(value)
        return True

    async def refresh_forever(self) -> None:
        """Poll the version; an outage keeps the copy in force, logged once until it recovers."""
        failing = False
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                self.reachable = False
                if not failing:
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning(self._failed_event, error=error)
                failing = True
            else:
                if failing:
                    log.info(self._recovered_event)
                failing = False
            await asyncio.sleep(self.interval_s)
