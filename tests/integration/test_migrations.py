"""Migrations apply once, in order, and refuse edited history."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from libs.service.db import migrate
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
