"""The schema the migrations leave: no object named for a step of a migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from taskplatform.backends import prepare_schema
from taskplatform.settings import Settings
from tests.support.backends import backend_env, settings_kwargs


async def _migrated(store: str, tmp_path: Path) -> Settings:
    settings = Settings(**settings_kwargs(backend_env(store, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    return settings


async def test_sqlite_keeps_no_object_of_a_migration_step(tmp_path: Path) -> None:
    settings = await _migrated("sqlite", tmp_path)
    with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    assert "tasks" in names
    assert [name for name in names if "alembic_tmp" in name] == []


async def test_postgres_keeps_no_object_of_a_migration_step(tmp_path: Path) -> None:
    """Revision 0003's rebuild of ``task_executions`` left its sequence named
    ``_alembic_tmp_task_executions_id_seq``, which reads as a migration that failed halfway;
    revision 0008 renames it."""
    settings = await _migrated("postgres", tmp_path)
    conn = await asyncpg.connect(settings.database_url)
    try:
        names = [
            row[0]
            for row in await conn.fetch(
                "SELECT relname FROM pg_class JOIN pg_namespace ON pg_namespace.oid = relnamespace"
                " WHERE nspname = 'public'"
            )
        ]
        serial = await conn.fetchval("SELECT pg_get_serial_sequence('task_executions', 'id')")
    finally:
        await conn.close()
    assert "task_executions" in names
    assert [name for name in names if "alembic_tmp" in name] == []
    assert serial == "public.task_executions_id_seq"
