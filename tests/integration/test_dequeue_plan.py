"""A dequeue on the SQL queues reads due tasks alone, however many wait for later.

It walked the index of every Queued task in order and skipped those scheduled for later one by
one: 50,000 of them ahead of a due task made a dequeue 12 ms on SQLite and 13 ms on PostgreSQL,
against 0.3 and 0.6 ms (``bench/scheduled_ahead.py`` measures it). Since migration 0007 such a
task is in the order's index only once due (``promoted``); these tests read each statement's
plan from the database itself, with the queue full of waiting tasks, so that a change of the
statements or the indexes that brought the walk back fails here.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskplatform.backends import open_backends, prepare_schema
from taskplatform.backends.postgres import QUERIES, PostgresQueue, positional
from taskplatform.backends.sqlite import SQL
from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import now_ms
from taskplatform.settings import Settings
from tests.integration.test_contract import _id, _task
from tests.support.backends import backend_env, settings_kwargs

_PARAMETERS = {
    "queue": "default",
    "most": 1,
    "lease_token": "t",
    "lease_expires_at": None,
    "dispatched": False,
}


async def _filled(store: str, tmp_path: Path) -> Settings:
    """A database whose queue holds 2,000 tasks scheduled an hour ahead and one due task."""
    settings = Settings(**settings_kwargs(backend_env(store, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    backends = open_backends(settings)
    try:
        later = now_ms() + 3_600_000
        waiting = [_task(_id(n)) for n in range(1, 2001)]
        for task in waiting:
            task.scheduled_at = later
        await backends.queue.enqueue_many([*waiting, _task(_id(3000))])
    finally:
        await backends.close()
    return settings


async def test_sqlite_reads_the_index_of_due_tasks_alone(tmp_path: Path) -> None:
    settings = await _filled("sqlite", tmp_path)
    path = settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("ANALYZE")
        parameters = {**_PARAMETERS, "now": now_ms()}
        for name, index in [
            ("promote_due", "ix_queued_tasks_waiting"),
            ("dequeue_many", "ix_queued_tasks_ready_order"),
        ]:
            plan = " ".join(
                str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {SQL[name]}", parameters)
            )
            assert f"USING INDEX {index}" in plan, (name, plan)
            assert "TEMP B-TREE" not in plan, (name, plan)  # no sort of what it read


async def test_postgres_reads_the_index_of_due_tasks_alone(tmp_path: Path) -> None:
    settings = await _filled("postgres", tmp_path)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("ANALYZE queued_tasks")
        parameters = {**_PARAMETERS, "now": now_ms()}
        for name, index in [
            ("promote_due", "ix_queued_tasks_waiting"),
            ("dequeue_next", "ix_queued_tasks_ready_order"),
        ]:
            statement, names = positional(QUERIES[name])
            rows = await conn.fetch(f"EXPLAIN {statement}", *[parameters[n] for n in names])
            plan = "\n".join(row[0] for row in rows)
            assert f"using {index}" in plan, (name, plan)
            assert "Sort" not in plan, (name, plan)
    finally:
        await conn.close()


async def test_postgres_returns_what_moved_when_its_top_up_fails(tmp_path: Path) -> None:
    """A batch dequeue that found fewer due tasks than it asked for promotes and tops up; when
    that second step fails, a dispatcher's claim gets the tasks the first moved (Dequeued
    under its lease) rather than an error, which lost sight of them until the lease ran out
    (found in review). A pull still raises: its caller gives back all that moved under its
    token, a top-up that committed without an answer too (leases off, nothing else would)."""
    settings = Settings(**settings_kwargs(backend_env("postgres", tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    backends = open_backends(settings)
    try:
        queue = backends.queue
        assert isinstance(queue, PostgresQueue)
        await queue.enqueue_many([_task(_id(n)) for n in range(2)])
        now = now_ms()
        queue._promote_at["default"] = time.monotonic() + 3600  # as if promoted just now
        real = queue.database.fetch

        async def top_up_fails(sql: str, params: Mapping[str, Any]) -> list[Any]:
            if sql == QUERIES["promote_due"]:
                raise BackendUnavailable("the connection was reset (injected)")
            return await real(sql, params)

        queue.database.fetch = top_up_fails  # type: ignore[method-assign]
        # A pull raises: its caller gives back whatever moved under its token (all of it).
        with pytest.raises(BackendUnavailable):
            await queue.transfer_many(backends.store, now=now, most=5, lease_token="M")
        under = await backends.store.dequeued_under("M")
        assert sorted(task.task_id for task in under) == [_id(0), _id(1)]
        await queue.enqueue_many([_task(_id(n)) for n in range(2, 4)])
        claimed = await queue.transfer_many(
            backends.store, now=now, most=5, lease_token="L", dispatched=True
        )
        assert [task.task_id for task in claimed] == [_id(2), _id(3)]
        with pytest.raises(BackendUnavailable):  # nothing moved: the failure is the answer
            await queue.transfer_many(
                backends.store, now=now, most=5, lease_token="N", dispatched=True
            )
    finally:
        await backends.close()
