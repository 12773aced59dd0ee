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

#: What "the database is unavailable" looks like, whichever call met it: no route to it or a
#: dropped connection (`OSError`), no answer in time, a pool or connection already closed
#: (`InterfaceError`), a lost connection (`PostgresConnectionError`), a server that refuses
#: work for now (`OperatorInterventionError`: starting, shutting down, a statement cancelled by
#: its timeout), one out of resources (`InsufficientResourcesError`: too many clients, a full
#: disk) or failing below SQL (`PostgresSystemError`). Retrying later can succeed; the request
#: or event was not at fault. The error middleware answers these with 503 (handlers never
#: catch them), consumers retry the batch, and background loops keep their last state.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.PostgresSystemError,
)

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


# What the services do with the tables migrations create: rows only, never DDL (their
# temporary staging tables need only TEMPORARY on the database, which PUBLIC has by default).
GRANT_SCHEMA = "GRANT USAGE ON SCHEMA {schema} TO {role}"
GRANT_TABLES = "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
GRANT_SEQUENCES = "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted so that any name (even one with quotes) is taken as is."""
    if not name or "\x00" in name:
        raise ValueError(f"not a usable role name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def migrate(
    dsn: str, directory: Path = MIGRATIONS_DIR, *, grant_to: str | None = None
) -> list[str]:
    """Apply every `*.sql` file not applied yet, in name order, each in its own transaction.

    An advisory lock makes concurrent callers (a Helm hook and a `make run`) take turns.
    A file that changed after it was applied is an error: migrations are append-only.
    With `grant_to`, migrations run as their own role (which owns the schema's tables) and
    then give that role data privileges on every table and sequence, every time, so that
    tables added by later migrations are covered too.
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
            if grant_to:
                await _grant(conn, grant_to)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


async def _grant(conn: asyncpg.Connection, role: str) -> None:
    schema = quote_ident(await conn.fetchval("SELECT current_schema()"))
    names = {"schema": schema, "role": quote_ident(role)}
    async with conn.transaction():
        for statement in (GRANT_SCHEMA, GRANT_TABLES, GRANT_SEQUENCES):
            await conn.execute(statement.format(**names))
    log.info("migration_privileges_granted", role=role, schema=schema)
