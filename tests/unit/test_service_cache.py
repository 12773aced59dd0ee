"""The versioned cache that ingest's prices and limits' configuration share."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from libs.service.cache import VersionedCache


@dataclass
class Table:
    """A stored table with a version counter, a load counter and an outage switch."""

    version: int = 1
    rows: dict[str, int] = field(default_factory=lambda: {"a": 1})
    loads: int = 0
    down: bool = False
    #: How many versions behind a load answers (a replica reading before a change committed).
    lag: int = 0

    async def read_version(self) -> int:
        """The stored version, unless the database is away."""
        if self.down:
            raise OSError("the database does not answer")
        return self.version

    async def load(self) -> tuple[int, dict[str, int]]:
        """The rows with the version they belong to."""
        self.loads += 1
        return self.version - self.lag, dict(self.rows)


def _cache(
    table: Table, seen: list[int] | None = None
) -> VersionedCache[tuple[int, dict[str, int]]]:
    return VersionedCache(
        "things",
        version=table.read_version,
        load=table.load,
        version_of=lambda loaded: loaded[0],
        interval_s=0.01,
        on_load=None if seen is None else lambda loaded: seen.append(loaded[0]),
    )


async def test_the_table_is_loaded_once_per_version() -> None:
    """An unchanged version costs one small read, never a reload; a moved one reloads."""
    table, seen = Table(), list[int]()
    cache = _cache(table, seen)
    assert not cache.loaded
    assert await cache.refresh() is True
    assert await cache.refresh() is False
    assert (table.loads, cache.value, cache.loaded) == (1, (1, {"a": 1}), True)
    table.version, table.rows = 2, {"a": 2}
    assert await cache.refresh() is True
    assert (table.loads, cache.version, seen) == (2, 2, [1, 2])


async def test_an_older_copy_from_a_slower_refresh_is_never_put_back() -> None:
    """A load that returns an older version than the one in force leaves the newer in force."""
    table = Table(version=5, rows={"a": 5})
    cache = _cache(table)
    await cache.refresh()
    table.version, table.rows, table.lag = 6, {"a": 4}, 2
    assert await cache.refresh() is False
    assert (cache.version, cache.value) == (5, (5, {"a": 5}))


async def test_an_outage_keeps_the_copy_and_is_logged_once_until_it_recovers() -> None:
    """While the database is away the last copy stays in force and `reachable` is false."""
    table = Table()
    cache = _cache(table)
    await cache.refresh()
    table.down = True
    with capture_logs() as logs:
        task = asyncio.create_task(cache.refresh_forever())
        await asyncio.sleep(0.1)
        assert (cache.reachable, cache.value) == (False, (1, {"a": 1}))
        table.down = False
        for _ in range(100):
            if cache.reachable:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    events = [entry["event"] for entry in logs]
    assert events.count("things_refresh_failed") == 1
    assert events.count("things_refresh_recovered") == 1
    assert cache.reachable


async def test_without_version_of_the_version_read_before_loading_counts() -> None:
    """A table whose rows carry no version is recorded with the version read just before."""
    table = Table(version=7)

    async def rows() -> dict[str, int]:
        return dict(table.rows)

    cache = VersionedCache("plain", version=table.read_version, load=rows, interval_s=1)
    await cache.refresh()
    assert (cache.version, cache.value) == (7, {"a": 1})
    table.down = True
    with pytest.raises(OSError, match="does not answer"):
        await cache.refresh()
    assert cache.value == {"a": 1}
