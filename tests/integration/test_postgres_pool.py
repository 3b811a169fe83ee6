"""The PostgreSQL pool after the database drops every connection (a restart, a failover): as on
SQLAlchemy's own path, one request fails and the next get new connections, rather than one
failure per pooled connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from taskplatform.backends.postgres import PostgresDatabase
from taskplatform.exceptions import BackendUnavailable
from tests.support.backends import POSTGRES_URL, backend_env, require


async def test_after_every_connection_is_dropped_at_most_one_request_fails(
    tmp_path: Path,
) -> None:
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    database = PostgresDatabase(url, pool_size=5, pool_overflow=0)
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        # Five pooled connections, all idle in the pool afterwards.
        await asyncio.gather(*(database.fetch("SELECT pg_sleep(0.2)", {}) for _ in range(5)))
        name = url.rpartition("/")[2]
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            name,
        )
        assert dropped == 5
        await asyncio.sleep(0.3)
        failures = 0
        for _ in range(6):
            try:
                assert await database.fetchrow("SELECT 1", {}) is not None
            except BackendUnavailable:
                failures += 1
        assert failures <= 1
    finally:
        await admin.close()
        await database.close()


async def test_a_refused_connection_is_backend_unavailable() -> None:
    """The server refusing a connection at the pool's checkout (here a database that does not
    exist; in production "the database system is starting up" or "too many clients") is a 503
    to the caller, not a 500, and does not end the dispatcher."""
    require("postgres")
    base, _, _ = POSTGRES_URL.rpartition("/")
    database = PostgresDatabase(f"{base}/taskplatform_no_such_db", pool_size=1, pool_overflow=0)
    try:
        with pytest.raises(BackendUnavailable):
            await database.fetch("SELECT 1", {})
    finally:
        await database.close()


async def test_a_cancelled_or_failed_statement_returns_a_sound_connection(tmp_path: Path) -> None:
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    database = PostgresDatabase(url, pool_size=2, pool_overflow=0)
    try:
        call = asyncio.create_task(database.fetch("SELECT pg_sleep(5)", {}))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(BackendUnavailable):
            await database.fetch("SELECT 1/0", {})
        for _ in range(20):
            assert [tuple(row) for row in await database.fetch("SELECT 1", {})] == [(1,)]
        assert database.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await database.close()


async def test_a_value_the_driver_cannot_encode_keeps_the_pool(tmp_path: Path) -> None:
    """A value asyncpg cannot encode for its parameter fails that statement only: the same
    connection serves the next one. (asyncpg raises it as a DataError, not as the InterfaceError
    family that also means a dead connection and makes the pool start over.)"""
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    database = PostgresDatabase(url, pool_size=2, pool_overflow=0)
    try:
        backend_pid = "SELECT pg_backend_pid()"
        before = [tuple(row) for row in await database.fetch(backend_pid, {})]
        with pytest.raises(BackendUnavailable, match="invalid input for query argument"):
            await database.fetch("SELECT length(CAST(:n AS text))", {"n": 5})
        assert [tuple(row) for row in await database.fetch(backend_pid, {})] == before
        assert database.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await database.close()
