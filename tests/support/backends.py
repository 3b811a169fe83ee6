"""The backend combinations every parametrized test runs on, each isolated per use.

PostgreSQL gets a fresh database per use and Redis a fresh key prefix in DB 15; both are removed
when the session ends. Nothing is flushed wholesale, so test runs on one machine at the same time
(a developer's and CI's) cannot wipe each other's data. The servers come from ``TEST_POSTGRES_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``) and ``TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/15``). A server that cannot be reached skips its combinations with the
reason shown; with ``CI`` set it fails them instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
import redis.asyncio as aioredis

T = TypeVar("T")

BACKENDS = ["sqlite", "postgres", "redis+postgres", "redis+sqlite"]
"""Names of the combinations; each test over backends runs once per name."""

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

_created_databases: list[str] = []
_created_prefixes: list[str] = []


def _run(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run ``coroutine()`` to completion on a fresh loop in another thread (safe inside a loop)."""

    async def main() -> T:
        return await coroutine()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


@functools.cache
def _unreachable(service: str) -> str | None:
    """Return why ``service`` cannot be used, or None when it answers."""

    async def check_postgres() -> None:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await connection.close()

    async def check_redis() -> None:
        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        _run(check_postgres if service == "postgres" else check_redis)
    except Exception as exc:
        url = POSTGRES_URL if service == "postgres" else REDIS_URL
        return f"{service} at {url} is not reachable: {exc}"
    return None


def in_ci() -> bool:
    """Whether ``CI`` is set to a true value (``1``, ``true``, ``yes``): a missing service then
    fails its tests instead of skipping them. ``.ci/run`` sets it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(name: str) -> None:
    """Skip (locally) or fail (in CI, :func:`in_ci`) unless combination ``name``'s servers
    answer."""
    for service in ("postgres", "redis"):
        if service in name:
            reason = _unreachable(service)
            if reason:
                if in_ci():
                    pytest.fail(reason)
                pytest.skip(reason)


def _new_postgres_database() -> str:
    name = f"taskplatform_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    _run(create)
    _created_databases.append(name)
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


def drop_created_databases() -> None:
    """Drop every database and delete every Redis key prefix this session created."""

    async def drop() -> None:
        # Each DROP DATABASE waits for a checkpoint (0.14 s here); drops in flight together
        # share one, so a session's hundred-odd databases go in 2 s rather than 17.
        slots = asyncio.Semaphore(8)

        async def drop_one(name: str) -> None:
            async with slots:
                connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
                try:
                    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await connection.close()

        await asyncio.gather(*(drop_one(name) for name in _created_databases))

    async def delete_keys() -> None:
        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            for prefix in _created_prefixes:
                keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
        finally:
            await client.aclose()

    if _created_databases:
        _run(drop)
        _created_databases.clear()
    if _created_prefixes:
        _run(delete_keys)
        _created_prefixes.clear()


def backend_env(name: str, workdir: Path) -> dict[str, str]:
    """Return the ``TASKPLATFORM_*`` variables of combination ``name``, isolated from all others.

    Skips or fails the calling test when a server it needs is not reachable (see :func:`require`).
    """
    require(name)
    sqlite = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{workdir / 'taskplatform.db'}"}
    redis: dict[str, str] = {}
    if "redis" in name:
        prefix = f"{{tp-{uuid.uuid4().hex[:12]}}}"
        _created_prefixes.append(prefix)
        redis = {"TASKPLATFORM_QUEUE_URL": REDIS_URL, "TASKPLATFORM_REDIS_KEY_PREFIX": prefix}
    if name == "sqlite":
        return sqlite
    if name == "postgres":
        return {"TASKPLATFORM_DATABASE_URL": _new_postgres_database()}
    if name == "redis+postgres":
        return {"TASKPLATFORM_DATABASE_URL": _new_postgres_database(), **redis}
    if name == "redis+sqlite":
        return {**sqlite, **redis}
    raise ValueError(f"unknown backend combination {name!r}")


def settings_kwargs(env: dict[str, str]) -> dict[str, str]:
    """Turn ``TASKPLATFORM_*`` variables into ``Settings`` keyword arguments."""
    return {key.removeprefix("TASKPLATFORM_").lower(): value for key, value in env.items()}
