"""Idempotency keys on the items of a batch create (``TaskService.create_many``), on every
backend: a resent item comes back instead of being created again, another item under a used key
is refused, and when the queue fails part way a resend of the whole batch makes each task once.

The service is called as the batch route calls it: each item parsed from its exact bytes, with
the SHA-256 of those bytes for the items that carry a key."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskplatform.exceptions import BackendUnavailable, IdempotencyKeyReused, RequestError
from taskplatform.models import TaskRecord
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create
from tests.support.backends import backend_env, require, settings_kwargs
from tests.support.service import opened_service

Result = tuple[TaskRecord, bool] | RequestError


def _item(n: int, key: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"taskData": {"n": n}, "callbackUrl": "http://127.0.0.1:9/cb", **extra}
    if key is not None:
        body["idempotencyKey"] = key
    return json.dumps(body).encode()


async def _batch(service: TaskService, items: list[bytes]) -> list[Result]:
    parsed = [
        parse_task_create(item, max_depth=64, max_url_length=2048, batch_item=True)
        for item in items
    ]
    hashes = [
        None if request.idempotency_key is None else hashlib.sha256(item).hexdigest()
        for request, item in zip(parsed, items, strict=True)
    ]
    return await service.create_many(parsed, hashes)


def _ids(results: list[Result]) -> list[str]:
    ids = []
    for result in results:
        assert isinstance(result, tuple), result
        ids.append(result[0].task_id)
    return ids


async def _queued_numbers(service: TaskService) -> list[int]:
    tasks = await service.queue.list_tasks(before=None, limit=1000)
    return sorted(json.loads(task.task_data)["n"] for task in tasks)


async def test_a_resent_batch_gives_back_its_keyed_items(service: TaskService) -> None:
    """The same items with the same keys: the same tasks, replayed; one task each in the queue.
    An item without a key is created again, as the documentation says."""
    items = [_item(1, "order-1"), _item(2, "order-2"), _item(3)]
    first = await _batch(service, items)
    assert [replayed for _, replayed in first] == [False, False, False]  # type: ignore[misc]
    again = await _batch(service, items)
    assert _ids(again)[:2] == _ids(first)[:2]
    assert [replayed for _, replayed in again] == [True, True, False]  # type: ignore[misc]
    assert _ids(again)[2] != _ids(first)[2]
    assert await _queued_numbers(service) == [1, 2, 3, 3]


async def test_a_used_key_with_another_item_is_refused_for_that_item_alone(
    service: TaskService,
) -> None:
    [first] = _ids(await _batch(service, [_item(1, "k")]))
    results = await _batch(service, [_item(9, "k"), _item(2, "k2"), _item(1, "k", priority=0)])
    assert isinstance(results[0], IdempotencyKeyReused)
    assert results[0].task_id == first  # the problem names the task the key holds
    assert isinstance(results[1], tuple)
    assert not results[1][1]
    # The same task, other bytes (a field spelled out): not the same item, as for a create.
    assert isinstance(results[2], IdempotencyKeyReused)
    assert await _queued_numbers(service) == [1, 2]


async def test_one_key_twice_in_a_batch_makes_one_task(service: TaskService) -> None:
    same = await _batch(service, [_item(1, "twice"), _item(1, "twice")])
    assert _ids(same)[0] == _ids(same)[1]
    assert sorted(replayed for _, replayed in same) == [False, True]  # type: ignore[misc]
    other = await _batch(service, [_item(2, "twice-2"), _item(3, "twice-2")])
    assert sum(isinstance(result, IdempotencyKeyReused) for result in other) == 1
    assert await _queued_numbers(service) in ([1, 2], [1, 3])


async def test_a_queue_failure_part_way_then_a_resend_makes_each_task_once(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue fails on the second keyed item: the batch is a 503, no unkeyed item was
    created (they go last, all or none), and resending the whole batch makes every task once."""
    real = service.queue.enqueue
    calls = 0

    async def fail_the_second(task: TaskRecord, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BackendUnavailable("the queue failed (test)")
        return await real(task, **kwargs)

    monkeypatch.setattr(service.queue, "enqueue", fail_the_second)
    items = [_item(1, "a"), _item(2, "b"), _item(3, "c"), _item(4), _item(5)]
    with pytest.raises(BackendUnavailable):
        await _batch(service, items)
    assert 4 not in await _queued_numbers(service)
    assert 5 not in await _queued_numbers(service)
    monkeypatch.setattr(service.queue, "enqueue", real)

    results = await _batch(service, items)
    assert all(isinstance(result, tuple) for result in results)
    assert await _queued_numbers(service) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("earlier", ["none", "expired"])
async def test_a_key_claimed_by_another_statement_while_a_group_waits_is_given_back(
    tmp_path: Path, earlier: str
) -> None:
    """PostgreSQL groups keyed creates into one statement, which reads the claims that held
    their keys from its own snapshot. A claim that another connection commits after the
    statement began, on a key the statement is waiting to insert (a new key, or the takeover of
    an expired claim), is not in that snapshot: the create must still answer with that claim,
    not with nothing, not with the expired claim, and must enqueue no task."""
    require("postgres")
    settings = Settings(**settings_kwargs(backend_env("postgres", tmp_path)))  # type: ignore[arg-type]
    async with opened_service(settings) as service:
        url = settings.database_url.replace("+asyncpg", "")
        other = await asyncpg.connect(url)
        try:
            if earlier == "expired":
                await other.execute(
                    "INSERT INTO idempotency_keys (key, request_hash, task_id, expires_at)"
                    " VALUES ('raced', 'old-hash', 'old-task', 1)"
                )
            transaction = other.transaction()
            await transaction.start()
            await other.execute(
                "INSERT INTO idempotency_keys (key, request_hash, task_id, expires_at)"
                " VALUES ('raced', 'other-hash', 'other-task', $1) ON CONFLICT (key) DO UPDATE"
                " SET request_hash = excluded.request_hash, task_id = excluded.task_id,"
                " expires_at = excluded.expires_at",
                2**62,
            )
            create = asyncio.create_task(_batch(service, [_item(1, "raced")]))
            await asyncio.sleep(0.5)  # the statement has begun, and waits on the key's row
            assert not create.done()
            await transaction.commit()
            [result] = await asyncio.wait_for(create, 10)
        finally:
            await other.close()
        # Another body's claim: the item is refused, naming the task that holds the key now.
        assert isinstance(result, IdempotencyKeyReused)
        assert result.task_id == "other-task"
        assert await _queued_numbers(service) == []
