"""Two server processes on one PostgreSQL database, whose group commits lock the same rows:
never in opposite orders, which PostgreSQL ends by aborting one group (every request in it a
503 after ``deadlock_timeout``). Found in review; each test failed 5 runs of 5 before.

Each ``opened_service`` here has its own backends (its own connection pool and its own group
commits), exactly as a second ``taskplatform serve`` process on the same database has.

Two statements must overlap in time for the race to show. Left to chance they do in about
half the runs; so a third connection (a third process's request, as far as PostgreSQL can
tell) holds one row in the middle for half a second while both statements start, which lines
them up every time; the row is then released unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg

from taskplatform.exceptions import BackendUnavailable, TaskConflict
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create
from tests.support.backends import backend_env, require, settings_kwargs
from tests.support.service import opened_service

KEYS = 200


def _body(n: int) -> bytes:
    return json.dumps({"taskData": {"n": n}, "callbackUrl": "http://127.0.0.1:9/cb"}).encode()


async def _keyed_create(service: TaskService, n: int) -> Any:
    """A create with ``Idempotency-Key: key-<n>``, as the route makes it; the exception if any."""
    body = _body(n)
    try:
        task, replayed = await service.create(
            parse_task_create(body, max_depth=64, max_url_length=2048),
            idempotency_key=f"key-{n}",
            request_hash=hashlib.sha256(body).hexdigest(),
        )
    except Exception as exc:
        return exc
    return task.task_id, replayed


def _postgres_settings(tmp_path: Path) -> Settings:
    require("postgres")
    return Settings(**settings_kwargs(backend_env("postgres", tmp_path)))  # type: ignore[arg-type]


async def test_same_keys_on_two_servers_in_another_order_never_answer_503(
    tmp_path: Path,
) -> None:
    """Clients resend keyed creates (as the Python client and ``tasks import`` do) and a load
    balancer spreads them over two servers, which see the same keys in different orders.

    Every create must answer: one task per key, the other server's request a replay of it
    (README, Idempotent create: "ten identical requests at once create one task"). A 503
    ``backend_unavailable`` says "the database or queue cannot be reached", and it can.

    On PostgreSQL each server's concurrent keyed creates share one statement
    (``enqueue_claimed_rows``), which inserted the keys in arrival order: two such statements
    with overlapping keys in opposite orders deadlocked, and every create of the group
    PostgreSQL aborted was answered 503. It claims them in key order now.
    """
    settings = _postgres_settings(tmp_path)
    async with opened_service(settings) as one, opened_service(settings) as two:
        # Both processes have been serving for a while: their pools hold open connections.
        await asyncio.gather(_keyed_create(one, -1), _keyed_create(two, -2))
        third = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
        try:
            held = third.transaction()
            await held.start()
            await third.execute(
                "INSERT INTO idempotency_keys (key, request_hash, task_id, expires_at)"
                " VALUES ($1, 'x', 'x', $2)",
                f"key-{KEYS // 2}",
                2**62,
            )
            forward = [_keyed_create(one, n) for n in range(KEYS)]
            backward = [_keyed_create(two, n) for n in reversed(range(KEYS))]
            answering = asyncio.gather(*forward, *backward)
            await asyncio.sleep(0.5)  # both statements have begun and wait on that key
            await held.rollback()  # that request failed: it never claimed the key
            answers = await asyncio.wait_for(answering, 30)
        finally:
            await third.close()
        failed = [answer for answer in answers if isinstance(answer, BaseException)]
        assert not failed, f"{len(failed)} of {2 * KEYS} creates failed: {failed[0]!r}"
        by_key: dict[int, set[str]] = {}
        numbers = [*range(KEYS), *reversed(range(KEYS))]
        for n, (task_id, _) in zip(numbers, answers, strict=True):
            by_key.setdefault(n, set()).add(task_id)
        assert all(len(ids) == 1 for ids in by_key.values())
        queued = await one.queue.list_tasks(before=None, limit=10 * KEYS)
        assert len(queued) == KEYS + 2


async def test_executes_of_the_same_tasks_on_two_servers_answer_409_not_503(
    tmp_path: Path,
) -> None:
    """Two servers get executes of the same Dequeued tasks at once (clients retrying through a
    load balancer, or two workers racing), in different orders. API.md: "two concurrent
    execute calls on one task make exactly one callback; the other gets 409".

    On PostgreSQL each server's concurrent starts share one ``UPDATE … FROM unnest(ids)``
    (``_start_group``), which locked the rows in the order the requests arrived (the plan is a
    hash join probed in the array's order). Two starts over the same rows in opposite orders
    deadlocked, and every execute of the aborted group was answered 503 instead of starting
    (or 409). The ids go in task id order now, as the outcomes' always did.
    """
    settings = _postgres_settings(tmp_path)
    async with opened_service(settings) as one, opened_service(settings) as two:
        await one.create_many(
            [
                parse_task_create(_body(n), max_depth=64, max_url_length=2048, batch_item=True)
                for n in range(KEYS)
            ],
            [None] * KEYS,
        )
        ids = [task.task_id for task in await asyncio.gather(*(one.dequeue() for _ in range(KEYS)))]

        async def start(service: TaskService, task_id: str) -> Any:
            try:
                return (await service.start_execute(task_id)).status
            except (TaskConflict, BackendUnavailable) as exc:
                return exc

        third = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
        try:
            held = third.transaction()
            await held.start()
            await third.execute("SELECT 1 FROM tasks WHERE task_id = $1 FOR UPDATE", ids[KEYS // 2])
            answering = asyncio.gather(
                *(start(one, task_id) for task_id in ids),
                *(start(two, task_id) for task_id in reversed(ids)),
            )
            await asyncio.sleep(0.5)  # both statements have begun and wait on that row
            await held.commit()  # unchanged
            answers = await asyncio.wait_for(answering, 30)
        finally:
            await third.close()
        unavailable = [answer for answer in answers if isinstance(answer, BackendUnavailable)]
        assert not unavailable, f"{len(unavailable)} executes answered 503: {unavailable[0]!r}"
        started = [answer for answer in answers if not isinstance(answer, BaseException)]
        assert len(started) == KEYS  # each task started once, the other execute a 409
