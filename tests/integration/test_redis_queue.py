"""Behaviour only the Redis queue has: surviving dropped connections without adding a task twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.backends.redis import RedisQueue, _text
from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import Status, now_ms
from taskplatform.settings import Settings
from tests.integration.test_contract import _id, _task
from tests.support.backends import REDIS_URL, backend_env, settings_kwargs


@pytest.fixture
async def redis_backends(tmp_path: Path) -> AsyncIterator[Backends]:
    settings = Settings(**settings_kwargs(backend_env("redis+sqlite", tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    yield opened
    await opened.close()


@pytest.fixture(params=["redis+sqlite", "redis+postgres"])
async def both_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """The Redis queue over each store, for what depends on the store's batch insert."""
    env = backend_env(request.param, tmp_path) | {"TASKPLATFORM_FAULTS": "after_reserve=fail:1"}
    settings = Settings(**settings_kwargs(env))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    yield opened
    await opened.close()


@pytest.fixture
def redis_queue(redis_backends: Backends) -> RedisQueue:
    assert isinstance(redis_backends.queue, RedisQueue)
    return redis_backends.queue


async def test_a_connection_redis_dropped_is_retried(redis_queue: RedisQueue) -> None:
    """Redis dropping a pooled connection (a restart, a proxy, an idle timeout) costs no error."""
    await redis_queue.enqueue(_task(_id(1)))
    pooled_id = await redis_queue.client.client_id()
    admin = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await admin.client_kill_filter(_id=str(pooled_id)) == 1
    finally:
        await admin.aclose()
    await redis_queue.enqueue(_task(_id(2)))
    assert await redis_queue.depth() == 2


async def test_enqueue_run_twice_for_one_task_adds_it_once(redis_queue: RedisQueue) -> None:
    """A retried enqueue whose first reply was lost must not put the task in the queue twice."""
    task = _task(_id(1))
    await redis_queue.enqueue(task)
    await redis_queue.enqueue(task)
    assert await redis_queue.depth() == 1
    assert await redis_queue.client.zcard(f"{redis_queue._prefix}:ready:default") == 1


async def test_tasks_queued_before_named_queues_move_to_the_default_queue(
    redis_queue: RedisQueue, redis_backends: Backends
) -> None:
    """A ready set left by a version without named queues is taken over by the default queue."""
    task = _task(_id(1))
    await redis_queue.enqueue(task)
    prefix = redis_queue._prefix
    await redis_queue.client.rename(f"{prefix}:ready:default", f"{prefix}:ready")
    await redis_queue.client.hdel(f"{prefix}:task:{task.task_id}", "queue")
    assert await redis_queue.client.zcard(f"{prefix}:ready:default") == 0
    await redis_queue.recover(redis_backends.store, now=0)
    assert await redis_queue.client.exists(f"{prefix}:ready") == 0
    assert await redis_queue.client.zcard(f"{prefix}:ready:default") == 1
    moved = await redis_queue.transfer(redis_backends.store, now=now_ms())
    assert moved is not None
    assert moved.task_id == task.task_id
    assert moved.queue == "default"


async def _scripts_run(client: aioredis.Redis) -> int:
    """Scripts Redis has run so far (a first call that only finds the script not loaded yet,
    NOSCRIPT, is a failed call and not counted)."""
    stats = await client.info("commandstats")
    run = 0
    for name in ("evalsha", "eval"):
        counts = stats.get(f"cmdstat_{name}", {})
        run += int(counts.get("calls", 0)) - int(counts.get("failed_calls", 0))
    return run


async def test_a_batch_claim_takes_three_round_trips_and_never_a_stored_task(
    both_stores: Backends,
) -> None:
    """A batch claim reserves in one script, inserts in one store call and acks in one script;
    a task the store has already (a recovered reservation that raced its owner) is acked, not
    handed out, and the batch is topped up. A failed insert puts the whole batch back in place."""
    queue, store = both_stores.queue, both_stores.store
    assert isinstance(queue, RedisQueue)
    for n in range(40):
        await queue.enqueue(_task(_id(n), priority=n % 2))  # odd ids first, then even
    order = [_id(n) for n in range(1, 40, 2)] + [_id(n) for n in range(0, 40, 2)]

    # The store fails once (the fault): nothing moves, and every member is back in place.
    with pytest.raises(BackendUnavailable):
        await queue.transfer_many(store, now=now_ms(), most=10)
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    assert await queue.depth() == 40
    ready = await queue.client.zrange(f"{queue._prefix}:ready:default", 0, -1)
    assert [_text(member)[17:] for member in ready] == order

    before = await _scripts_run(queue.client)
    first = await queue.transfer_many(store, now=now_ms(), most=10)
    assert await _scripts_run(queue.client) - before == 2  # reserve, ack
    assert [task.task_id for task in first] == order[:10]

    stored_already = (await queue.get(order[11]), await queue.get(order[13]))
    for task in stored_already:
        assert task is not None
        task.status = Status.DEQUEUED
    assert await store.insert_dequeued([t for t in stored_already if t]) == {order[11], order[13]}
    before = await _scripts_run(queue.client)
    second = await queue.transfer_many(store, now=now_ms(), most=10)
    assert await _scripts_run(queue.client) - before == 4  # a second batch tops it up
    assert [task.task_id for task in second] == [
        task_id for task_id in order[10:22] if task_id not in (order[11], order[13])
    ]
    assert await queue.depth() == 40 - 22
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    assert (await store.count_by_status()) == {Status.DEQUEUED: 22}


async def test_replies_are_parsed_by_hiredis(redis_queue: RedisQueue) -> None:
    """The redis extra brings hiredis, whose C parser is most of the dispatcher's speed on a Redis
    queue (bench/README: 764-794 against 1,339 tasks/s); losing it must not go unseen."""
    await redis_queue.ping()
    connection = await redis_queue.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert type(connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await redis_queue.client.connection_pool.release(connection)
