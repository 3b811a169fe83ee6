"""Behaviour only the Redis queue has: surviving dropped connections without adding a task twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.backends.redis import RedisQueue
from taskplatform.models import now_ms
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
