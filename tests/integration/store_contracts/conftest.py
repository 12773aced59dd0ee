"""The fixture every store suite is parametrised over: the in-memory fakes, then PostgreSQL.

A suite asks for `pool` and builds its store from it: `None` means the in-memory fake, a pool
the PostgreSQL implementation on the test session's database (that case is marked
`integration`). So each behaviour is written once and both implementations must show it;
where they differ, the PostgreSQL store is the truth and the fake is mended.

The database is shared by the whole session: a suite keeps to ids of its own (`unique`),
asserts on its own rows only, and puts back whatever global setting it changes.
"""

from __future__ import annotations

import asyncpg
import pytest

MEMORY = "memory"
POSTGRES = "postgres"


@pytest.fixture(params=[MEMORY, pytest.param(POSTGRES, marks=pytest.mark.integration)])
def pool(request: pytest.FixtureRequest) -> asyncpg.Pool | None:
    """None for the in-memory fake, the session's PostgreSQL pool for its twin."""
    if request.param == MEMORY:
        return None
    db: asyncpg.Pool = request.getfixturevalue("db")
    return db
