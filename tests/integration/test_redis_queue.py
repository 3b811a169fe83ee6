"""Behaviour only the Redis queue has: surviving dropped connections without adding a task twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from taskplatform.backends import open_backends, prepare_schema
from taskplatform.backends.redis import RedisQueue
from taskplatform.settings import Settings
from tests.integration.test_contract import _id, _task
from tests.support.backends import REDIS_URL, backend_env, settings_kwargs


@pytest.fixture
async def redis_queue(tmp_path: Path) -> AsyncIterator[RedisQueue]:
    settings = Settings(**settings_kwargs(backend_env("redis+sqlite", tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    assert isinstance(opened.queue, RedisQueue)
    yield opened.queue
    await opened.close()


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
