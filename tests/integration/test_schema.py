"""The schema the migrations leave: no object named for a step of a migration, and a store
made by an older revision mended."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

import taskplatform.service as service_module
from taskplatform.backends import migrate, prepare_schema
from taskplatform.models import Status, now_ms
from taskplatform.settings import Settings
from tests.support.backends import backend_env, settings_kwargs
from tests.support.service import opened_service


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


async def _at_revision_with(settings: Settings, revision: str, insert: str) -> None:
    """Make the store of ``settings`` as an older release left it: its schema at ``revision``,
    with the row ``insert`` (SQL) written as that release wrote it."""
    await migrate.upgrade(settings.database_url, revision=revision)
    if settings.database_url.startswith("sqlite"):
        with sqlite3.connect(settings.database_url.removeprefix("sqlite:///")) as connection:
            connection.execute(insert)
        return
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(insert)
    finally:
        await conn.close()


TASK = "01a23e21-6fef-7684-bebd-cdcb94751e87"
# A Failed task with 4 attempts of 3 retries, as revision 0002's tasks table holds it.
_OUT_OF_ATTEMPTS = (
    "INSERT INTO tasks VALUES ('" + TASK + "', 1, 'Failed', 0, '{}', 'http://127.0.0.1:9/x',"
    " 3, 30, 4, NULL, NULL, NULL, NULL, 'boom', 1, 2, 1, NULL)"
)


async def test_postgres_upgraded_from_0002_logs_new_attempts(tmp_path: Path) -> None:
    """Revision 0003 rebuilt ``task_executions`` with an id sequence starting at 1 again, the
    copied attempts keeping their ids: after the upgrade, outcomes collided with them
    ("duplicate key ... task_executions_pkey", a 503 after the callback was made, the task left
    Processing) until the sequence was drawn past them (found in review). Revision 0009."""
    settings = Settings(**settings_kwargs(backend_env("postgres", tmp_path)))  # type: ignore[arg-type]
    await migrate.upgrade(settings.database_url, revision="0002")
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(_OUT_OF_ATTEMPTS)
        for attempt in (1, 2, 3, 4):
            await conn.execute(
                "INSERT INTO task_executions (task_id, attempt, started_at, finished_at,"
                " duration_ms, http_status, error) VALUES ($1, $2, 1, 2, 1, 500, 'e')",
                TASK,
                attempt,
            )
    finally:
        await conn.close()
    await prepare_schema(settings)  # what db upgrade and serve do
    conn = await asyncpg.connect(settings.database_url)
    try:
        logged = await conn.fetchval(
            "INSERT INTO task_executions (task_id, attempt, started_at, finished_at,"
            " duration_ms, http_status, error) VALUES ($1, 5, 10, 20, 1, 500, 'e') RETURNING id",
            TASK,
        )
    finally:
        await conn.close()
    assert logged == 5


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_task_out_of_attempts_before_0003_is_a_dead_letter_after_it(
    store: str, tmp_path: Path
) -> None:
    """Revision 0003 added ``dead_letter`` as false for every task already there: a Failed
    task out of attempts was listed as no dead letter and not re-driven with them (found in
    review). Revision 0009."""
    settings = Settings(**settings_kwargs(backend_env(store, tmp_path)))  # type: ignore[arg-type]
    await _at_revision_with(settings, "0002", _OUT_OF_ATTEMPTS)
    async with opened_service(settings) as service:
        task = await service.get(TASK)
        assert (task.status, task.attempts, task.attempts_left()) == (Status.FAILED, 4, False)
        assert task.dead_letter
        assert await service.redrive_dead_letters(queue=None, limit=1000) == [TASK]


UNLEASED = "01a23e21-6fef-7684-bebd-cdcb94751e88"
# A task revision 0001 dequeued: no lease token, no lease deadline.
_DEQUEUED_UNLEASED = (
    "INSERT INTO tasks VALUES ('" + UNLEASED + "', 2, 'Dequeued', 0, '{}', "
    "'http://127.0.0.1:9/x', 3, 30, 0, NULL, NULL, NULL, NULL, NULL, 1, 2, 2, NULL)"
)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_task_dequeued_before_0002_gets_a_lease_the_reaper_ends(
    store: str, tmp_path: Path
) -> None:
    """Revision 0001 dequeued without a lease; the reaper returns only Dequeued tasks whose
    lease ran out, so such a task stayed Dequeued for ever after the upgrade (found in review).
    Revision 0010 gives it the default dequeue lease, from the upgrade."""
    settings = Settings(**settings_kwargs(backend_env(store, tmp_path)))  # type: ignore[arg-type]
    await _at_revision_with(settings, "0001", _DEQUEUED_UNLEASED)
    upgraded_at = now_ms()
    async with opened_service(settings) as service:
        task = await service.get(UNLEASED)
        assert task.status is Status.DEQUEUED
        assert task.lease_token == UNLEASED
        assert task.lease_expires_at is not None
        assert 0 <= task.lease_expires_at - upgraded_at - 300_000 < 60_000
        expired = await service.store.expired_leases(
            Status.DEQUEUED, now=task.lease_expires_at + 1, limit=10
        )
        assert [found.task_id for found in expired] == [UNLEASED]


async def test_leases_off_keep_a_task_dequeued_before_0002_with_its_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TASKPLATFORM_DEQUEUE_LEASE_SECONDS=0 "keeps a pulled task Dequeued forever": revision
    0010 gave a task an old release dequeued a 300 s lease whatever the setting, and the reaper
    then returned it to the queue (found in review). It follows the upgrading server's setting."""
    kwargs = settings_kwargs(backend_env("sqlite", tmp_path))
    settings = Settings(**kwargs, dequeue_lease_seconds=0)  # type: ignore[arg-type]
    await _at_revision_with(settings, "0001", _DEQUEUED_UNLEASED)
    async with opened_service(settings) as service:
        task = await service.get(UNLEASED)
        assert (task.lease_token, task.lease_expires_at) == (UNLEASED, None)
        later = now_ms() + 3_600_000
        monkeypatch.setattr(service_module, "now_ms", lambda: later)
        await service.reap()
        assert (await service.get(UNLEASED)).status is Status.DEQUEUED
