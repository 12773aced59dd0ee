"""Migrations apply once, in order, and refuse edited history."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from libs.events.pricing import ModelPrice
from libs.service.db import MIGRATIONS_DIR, create_pool, migrate, quote_ident
from services.ingest.storage import PostgresPriceStore
from tests.support import Infra, unique

pytestmark = pytest.mark.integration


async def test_migrations_apply_once_and_refuse_changed_files(infra: Infra, tmp_path: Path) -> None:
    """New files are applied in name order, applied ones are skipped, and an edited one is an error."""
    conn = await asyncpg.connect(infra.database_url)
    db = unique("db").replace("-", "_")
    await conn.execute(f"CREATE DATABASE {db}")
    await conn.close()
    url = infra.database_url.replace("/postgres?", f"/{db}?")
    (tmp_path / "0002_b.sql").write_text("CREATE TABLE b (x int REFERENCES a (x));")
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int PRIMARY KEY);")
    assert await migrate(url, tmp_path) == ["0001_a.sql", "0002_b.sql"]
    assert await migrate(url, tmp_path) == []
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint PRIMARY KEY);")
    with pytest.raises(RuntimeError, match=r"0001_a\.sql changed"):
        await migrate(url, tmp_path)


async def test_project_migrations_are_applied_in_the_session_database(infra: Infra) -> None:
    """Every SQL file under deploy/migrations is recorded as applied."""
    conn = await asyncpg.connect(infra.database_url)
    try:
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
    finally:
        await conn.close()
    files = {p.name for p in (Path(__file__).parents[2] / "deploy" / "migrations").glob("*.sql")}
    assert files <= applied


def _as_role(url: str, role: str, database: str) -> str:
    """The session URL with another login role and database (the embedded server trusts local roles)."""
    parts = urlsplit(url)
    netloc = parts.netloc.split("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{netloc}", path=f"/{database}"))


async def test_migrations_run_as_their_own_role_and_grant_the_services_role(infra: Infra) -> None:
    """With a migration role, it owns the tables; the services' role reads and writes every table and sequence but changes no schema."""
    suffix = unique("r").replace("-", "_")
    db, migrator, app = f"db_{suffix}", f"mig_{suffix}", f"app_{suffix}"
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f"CREATE ROLE {migrator} LOGIN")
        await conn.execute(f"CREATE ROLE {app} LOGIN")
        await conn.execute(f"CREATE DATABASE {db} OWNER {migrator}")
    finally:
        await conn.close()
    migrator_url = _as_role(infra.database_url, migrator, db)
    app_url = _as_role(infra.database_url, app, db)
    files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert await migrate(migrator_url) == files
    conn = await asyncpg.connect(app_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM model_prices")
    finally:
        await conn.close()

    assert await migrate(migrator_url, grant_to=app) == []
    conn = await asyncpg.connect(app_url)
    try:
        tables = await conn.fetch(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = current_schema()"
        )
        assert {t["tableowner"] for t in tables} == {migrator}
        for table in tables:
            name = table["tablename"]
            assert await conn.fetchval(
                "SELECT has_table_privilege($1, $2, 'SELECT, INSERT, UPDATE, DELETE')", app, name
            ), name
        sequences = await conn.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()"
        )
        assert sequences, "bigserial columns have sequences"
        for sequence in sequences:
            assert await conn.fetchval(
                "SELECT has_sequence_privilege($1, $2, 'USAGE, UPDATE')", app, sequence[0]
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE TABLE not_allowed (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DROP TABLE model_prices")
    finally:
        await conn.close()
    pool = await create_pool(app_url, max_size=2)
    try:
        store = PostgresPriceStore(pool)
        before = await store.version()
        await store.put("m", ModelPrice(input_price_per_million="1", output_price_per_million="2"))
        assert await store.version() == before + 1
        assert await store.delete("m")
        async with pool.acquire() as staging:
            await staging.execute("CREATE TEMP TABLE staging (x int)")
    finally:
        await pool.close()


def test_role_names_are_quoted_as_identifiers() -> None:
    """A role name is quoted whole, inner quotes doubled; an empty name or NUL is refused."""
    assert quote_ident("tollgate_app") == '"tollgate_app"'
    assert quote_ident('a"; DROP TABLE x; --') == '"a""; DROP TABLE x; --"'
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError, match="not a usable role name"):
            quote_ident(bad)


MIGRATIONS = Path(__file__).parents[2] / "deploy" / "migrations"


async def test_upgrading_the_publisher_keeps_sent_heartbeat_ids_and_every_ai_user(
    infra: Infra, tmp_path: Path
) -> None:
    """0420 renames only never-sent seat heartbeats to Coder's id form and keeps every AI user."""
    conn = await asyncpg.connect(infra.database_url)
    db = unique("db").replace("-", "_")
    await conn.execute(f"CREATE DATABASE {db}")
    await conn.close()
    url = infra.database_url.replace("/postgres?", f"/{db}?")
    for path in MIGRATIONS.glob("*.sql"):
        if path.name < "0420":
            (tmp_path / path.name).write_text(path.read_text())
    await migrate(url, tmp_path)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            INSERT INTO publisher_events (queue, id, event_type, event_data, created_at,
                                          status, attempts)
            VALUES ('q', 'hb_ai_seats_v1:2026-11-02T08:00:00Z', 'hb_ai_seats_v1',
                    '{"count": 3}', '2026-11-02T08:00:00Z', 'pending', 0),
                   ('q', 'hb_ai_seats_v1:2026-11-02T12:00:00Z', 'hb_ai_seats_v1',
                    '{"count": 3}', '2026-11-02T12:00:00Z', 'pending', 2),
                   ('q', 'hb_ai_seats_v1:2026-11-01T20:00:00Z', 'hb_ai_seats_v1',
                    '{"count": 2}', '2026-11-01T20:00:00Z', 'published', 1),
                   ('q', 'build-1', 'dc_managed_agents_v1',
                    '{"count": 1}', '2026-11-02T08:00:00Z', 'pending', 0);
            INSERT INTO publisher_ai_chat_users (queue, month, user_id, first_used_at)
            VALUES ('q', '2026-10-01', 'u-1', '2026-10-20T10:00:00Z'),
                   ('q', '2026-11-01', 'u-1', '2026-11-01T09:00:00Z'),
                   ('q', '2026-11-01', 'u-2', '2026-11-02T07:00:00Z');
            """
        )
        for path in MIGRATIONS.glob("*.sql"):
            (tmp_path / path.name).write_text(path.read_text())
        assert {
            "0420_publisher_heartbeat_ids_and_seats.sql",
            "0421_publisher_agent_time.sql",
        } <= set(await migrate(url, tmp_path))
        ids = {
            r["id"] for r in await conn.fetch("SELECT id FROM publisher_events WHERE queue = 'q'")
        }
        assert ids == {
            "hb_ai_seats_v1:2026-11-02_08:00:00",
            "hb_ai_seats_v1:2026-11-02T12:00:00Z",
            "hb_ai_seats_v1:2026-11-01T20:00:00Z",
            "build-1",
        }
        seats = await conn.fetch(
            "SELECT user_id, first_used_at FROM publisher_ai_seats WHERE queue = 'q' ORDER BY 1"
        )
        assert [(r["user_id"], r["first_used_at"].isoformat()) for r in seats] == [
            ("u-1", "2026-10-20T10:00:00+00:00"),
            ("u-2", "2026-11-02T07:00:00+00:00"),
        ]
    finally:
        await conn.close()
