"""The fixture every store suite is parametrised over: the in-memory fakes, then PostgreSQL.

A suite asks for `pool` and builds its store from it: `None` means the in-memory fake, a pool
the PostgreSQL implementation on the test session's database (that case is marked
`integration`). So each behaviour is written once and both implementations must show it;
where they differ, the PostgreSQL store is the truth and the fake is mended.

The database is shared by the whole session: a suite keeps to ids of its own (`unique`),
asserts on its own rows only, and puts back whatever global setting it changes. Stores of
notifications and webhook endpoints take `own_pool` instead: a database of the module's own,
so that no other test's notifier acts on their rows, nor their endpoints on other tests'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import Infra, database_pool

MEMORY = "memory"
POSTGRES = "postgres"
IMPLEMENTATIONS = [MEMORY, pytest.param(POSTGRES, marks=pytest.mark.integration)]


def _implementation(request: pytest.FixtureRequest, database: str) -> asyncpg.Pool | None:
    """None for the in-memory case, else the pool of the `database` fixture."""
    if request.param == MEMORY:
        return None
    found: asyncpg.Pool = request.getfixturevalue(database)
    return found


@pytest.fixture(params=IMPLEMENTATIONS)
def pool(request: pytest.FixtureRequest) -> asyncpg.Pool | None:
    """None for the in-memory fake, the session's PostgreSQL pool for its twin."""
    return _implementation(request, "db")


@pytest.fixture(scope="module")
async def module_database(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated database of this module's own."""
    async with database_pool(infra, "contracts", max_size=4) as own:
        yield own


@pytest.fixture(params=IMPLEMENTATIONS)
def own_pool(request: pytest.FixtureRequest) -> asyncpg.Pool | None:
    """Like `pool`, but PostgreSQL is a database of the module's own."""
    return _implementation(request, "module_database")
