"""A queue switched from Redis back to the database's own: the tasks stored meanwhile carry
Redis's sequence numbers, which the database's queue had handed out (or would hand out) too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from taskplatform.backends import open_backends, prepare_schema
from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import Status, now_ms
from taskplatform.settings import Settings
from tests.integration.test_contract import _id, _task
from tests.support.backends import backend_env, settings_kwargs
from tests.support.service import opened_service


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
async def test_tasks_numbered_by_redis_go_back_into_the_database_queue(
    name: str, tmp_path: Path
) -> None:
    """Requeues and re-drives of tasks numbered by Redis, with numbers the database's queue has
    given out or has yet to give out, and creates after them: nothing collides, nothing is
    lost, and each takes its place by priority."""
    settings = Settings(**settings_kwargs(backend_env(name, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    backends = open_backends(settings)
    queue, store = backends.queue, backends.store
    try:
        await queue.enqueue(_task(_id(0)))  # seq 1 by the database's counter
        now = now_ms()
        # Stored while the queue was Redis (whose counter started again at 1).
        borrowed = [
            msgspec.structs.replace(
                _task(_id(n)), status=Status.DEQUEUED, sequence=number, lease_token=f"L{n}"
            )
            for n, number in ((1, 1), (2, 3), (3, 4))
        ]
        assert await store.insert_dequeued(borrowed) == {_id(1), _id(2), _id(3)}
        failed = await store.compare_and_set(
            _id(3),
            expected={Status.DEQUEUED},
            target=Status.FAILED,
            now=now,
            lease_token="L3",
        )
        assert failed is not None
        await backends.close()
        await prepare_schema(settings)  # the restart with the queue switched back
        backends = open_backends(settings)
        queue, store = backends.queue, backends.store

        for task in borrowed[:2]:  # number 1 is the queued task's
            assert await queue.requeue(store, task, now=now, note="lease ran out")
        assert await queue.requeue(store, failed, now=now, note="re-driven", redrive=True)
        for n in (4, 5, 6):  # past every borrowed number
            await queue.enqueue(_task(_id(n)))
        taken = await queue.transfer_many(store, now=now_ms(), most=10)
        assert sorted(task.task_id for task in taken) == [_id(n) for n in range(7)]
        assert len({task.sequence for task in taken}) == 7
        assert [task.task_id for task in taken][-3:] == [_id(4), _id(5), _id(6)]
    finally:
        await backends.close()


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
async def test_a_task_numbered_by_redis_past_the_counter_goes_back_while_servers_run(
    name: str, tmp_path: Path
) -> None:
    """Servers on the database queue keep running while servers on Redis store tasks with
    numbers past the database queue's counter (no restart moves it): a re-drive of one, then
    creates, collide with nothing."""
    settings = Settings(**settings_kwargs(backend_env(name, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    backends = open_backends(settings)
    queue, store = backends.queue, backends.store
    try:
        for n in range(3):
            await queue.enqueue(_task(_id(n)))  # numbers 1 to 3
        now = now_ms()
        borrowed = msgspec.structs.replace(
            _task(_id(9)), status=Status.DEQUEUED, sequence=5, lease_token="L"
        )
        assert await store.insert_dequeued([borrowed]) == {_id(9)}
        failed = await store.compare_and_set(
            _id(9), expected={Status.DEQUEUED}, target=Status.FAILED, now=now, lease_token="L"
        )
        assert failed is not None
        assert await queue.requeue(store, failed, now=now, note="re-driven", redrive=True)
        for n in range(10, 16):  # numbers 4 to 9 on PostgreSQL's counter: 5 is not taken
            await queue.enqueue(_task(_id(n)))
        taken = await queue.transfer_many(store, now=now_ms(), most=20)
        assert len({task.sequence for task in taken}) == len(taken) == 10
    finally:
        await backends.close()


@pytest.mark.parametrize("name", ["redis+sqlite", "redis+postgres"])
@pytest.mark.parametrize("follow", ["at start", "in recovery"])
async def test_a_task_dequeued_before_a_switch_to_redis_goes_back_ahead_of_newer_ones(
    name: str, follow: str, tmp_path: Path
) -> None:
    """The README's way up: the queue moves from the database to Redis, whose counter started
    at 1. A task dequeued before the switch, requeued after it (its lease ran out), went back
    behind every task of its priority created since, until Redis's counter reached its number.
    A process follows the database's counter first: at start (``TaskService.join``), or, if
    Redis did not answer then, in its first maintenance round (``recover``)."""
    env = backend_env(name, tmp_path)
    before = {key: value for key, value in env.items() if "REDIS" not in key and "QUEUE" not in key}
    database = Settings(**settings_kwargs(before))  # type: ignore[arg-type]
    await prepare_schema(database)
    backends = open_backends(database)
    try:
        await backends.queue.enqueue_many([_task(_id(n)) for n in range(10)])
        taken = await backends.queue.transfer_many(backends.store, now=now_ms(), most=10)
        assert [task.sequence for task in taken] == list(range(1, 11))
    finally:
        await backends.close()

    settings = Settings(**settings_kwargs(env))  # type: ignore[arg-type]
    async with opened_service(settings) as service:
        queue, store = service.queue, service.store
        if follow == "at start":
            await service.join()
        else:
            await queue.recover(store, now=now_ms())
        for n in (20, 21, 22):
            await queue.enqueue(_task(_id(n)))
        old = await store.get(_id(9))
        assert old is not None
        assert old.sequence == 10
        assert await queue.requeue(store, old, now=now_ms(), note="lease ran out")
        again = await queue.transfer_many(store, now=now_ms(), most=10)
        assert [task.task_id for task in again] == [_id(9), _id(20), _id(21), _id(22)]
        assert [task.sequence for task in again] == [10, 11, 12, 13]
        await service.shutdown(0)


async def _filled_database_queue(env: dict[str, str]) -> list[str]:
    """Tasks in the database's own queue, as a server before the switch left them: three of
    priority 0, one of 5, one scheduled an hour ahead, in that order of creation."""
    before = {key: value for key, value in env.items() if "REDIS" not in key and "QUEUE" not in key}
    settings = Settings(**settings_kwargs(before))  # type: ignore[arg-type]
    await prepare_schema(settings)
    backends = open_backends(settings)
    try:
        tasks = [_task(_id(n), priority=5 if n == 3 else 0) for n in range(5)]
        tasks[4].scheduled_at = now_ms() + 3_600_000
        await backends.queue.enqueue_many(tasks)
    finally:
        await backends.close()
    return [task.task_id for task in tasks]


@pytest.mark.parametrize("name", ["redis+sqlite", "redis+postgres"])
async def test_tasks_left_in_the_database_queue_move_into_redis_once(
    name: str, tmp_path: Path
) -> None:
    """Two processes start on the switched configuration at once: every task left in the
    database's queue moves into Redis exactly once, at its place, the scheduled one with its
    time, and a task created after them queues behind those of its priority."""
    env = backend_env(name, tmp_path)
    ids = await _filled_database_queue(env)
    settings = Settings(**settings_kwargs(env))  # type: ignore[arg-type]
    async with opened_service(settings) as one, opened_service(settings) as other:
        moved = await asyncio.gather(one.adopt_database_queue(), other.adopt_database_queue())
        assert sum(moved) == 5
        assert await one.adopt_database_queue() == 0
        assert (await one.get(ids[4])).scheduled_at is not None
        newer = _task(_id(9))
        await one.queue.enqueue(newer)
        taken = await one.queue.transfer_many(one.store, now=now_ms(), most=10)
        assert [task.task_id for task in taken] == [ids[3], ids[0], ids[1], ids[2], _id(9)]
        later = await one.queue.transfer_many(one.store, now=now_ms() + 3_600_001, most=10)
        assert [task.task_id for task in later] == [ids[4]]


@pytest.mark.parametrize("name", ["redis+sqlite", "redis+postgres"])
async def test_a_move_cut_off_after_the_hand_over_is_finished_by_the_reaper(
    name: str, tmp_path: Path
) -> None:
    """Redis fails (or the process dies) after tasks left the database's queue: they are in
    the store, Dequeued under the move's lease, and the reaper returns them to Redis once it
    runs out, at their places."""
    env = backend_env(name, tmp_path)
    ids = await _filled_database_queue(env)
    settings = Settings(
        **settings_kwargs(env),  # type: ignore[arg-type]
        queue_reservation_seconds=0.2,
    )
    async with opened_service(settings) as service:
        real = service.queue.requeue

        async def redis_down(*args: object, **kwargs: object) -> bool:
            raise BackendUnavailable("the Redis queue failed: injected")

        service.queue.requeue = redis_down  # type: ignore[method-assign]
        with pytest.raises(BackendUnavailable):
            await service.adopt_database_queue()
        service.queue.requeue = real  # type: ignore[method-assign]
        held = await service.get(ids[0])
        assert (held.status, held.lease_expires_at is not None) == (Status.DEQUEUED, True)
        await asyncio.sleep(0.3)
        await service.reap()
        taken = await service.queue.transfer_many(service.store, now=now_ms(), most=10)
        assert [task.task_id for task in taken] == [ids[3], ids[0], ids[1], ids[2]]
