"""PostgreSQL access shared by the services: the pool and the ordered SQL migrations."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger(__name__)

#: A connection as handlers receive it: plain, or borrowed from a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

MIGRATIONS_DIR = Path(
    os.environ.get(
        "TOLLGATE_MIGRATIONS_DIR", Path(__file__).resolve().parents[2] / "deploy" / "migrations"
    )
)

# Any 64-bit number that other applications sharing the database will not use.
_MIGRATION_LOCK = 0x7011_6A7E

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def create_pool(dsn: str, *, max_size: int = 10, min_size: int = 1) -> asyncpg.Pool:
    """A pool whose connections give up quickly, so a dead database shows as 503, not a hang."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=5,
        command_timeout=30,
        max_inactive_connection_lifetime=60,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def pool_context(dsn: str, *, max_size: int = 10) -> AsyncIterator[asyncpg.Pool]:
    """A pool that is closed however the block ends."""
    pool = await create_pool(dsn, max_size=max_size)
    try:
        yield pool
    finally:
        await pool.close()


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every `*.sql` file not applied yet, in name order, each in its own transaction.

    An advisory lock makes concurrent callers (a Helm hook and a `make run`) take turns.
    A file that changed after it was applied is an error: migrations are append-only.
    """
    files = sorted(directory.glob("*.sql"))  # noqa: ASYNC240  # a few small files, once at start
    applied: list[str] = []
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            done = {
                r["name"]: r["checksum"]
                for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
            }
            for path in files:
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if path.name in done:
                    if done[path.name] != checksum:
                        raise RuntimeError(
                            f"migration {path.name} changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                        path.name,
                        checksum,
                    )
                applied.append(path.name)
                log.info("migration_applied", migration=path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
