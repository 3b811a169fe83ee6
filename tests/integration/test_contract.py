"""The queue/store contract every backend keeps: order, atomic transfer, compare-and-set."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from taskplatform.backends import Backends, TaskChanges
from taskplatform.backends.base import IdempotencyClaim, IdempotentReplay
from taskplatform.backends.postgres import PostgresDatabase, PostgresQueue
from taskplatform.backends.redis import RedisQueue
from taskplatform.models import ExecutionRecord, Status, TaskRecord, now_ms


def _task(task_id: str, priority: int = 0, data: bytes = b'{"n": 1}') -> TaskRecord:
    now = now_ms()
    return TaskRecord(
        task_id=task_id,
        status=Status.QUEUED,
        priority=priority,
        task_data=data,
        callback_url="http://127.0.0.1:9/x",
        max_retries=1,
        timeout_seconds=5.0,
        created_at=now,
        updated_at=now,
    )


def _id(n: int) -> str:
    return f"01900000-0000-7000-8000-{n:012d}"


async def test_enqueue_get_and_depth(backends: Backends) -> None:
    task = _task(_id(1), data=b'{"nul": "\\u0000", "k": [1, 2.50]}')
    await backends.queue.enqueue(task)
    stored = await backends.queue.get(_id(1))
    assert stored is not None
    assert stored.status is Status.QUEUED
    assert stored.task_data == b'{"nul": "\\u0000", "k": [1, 2.50]}'
    assert await backends.queue.depth() == 1
    assert await backends.queue.get(_id(2)) is None


async def test_transfer_order_is_priority_then_fifo(backends: Backends) -> None:
    priorities = [0, 5, -(2**31), 2**31 - 1, 5, 2**31 - 2, 0]
    for n, priority in enumerate(priorities):
        await backends.queue.enqueue(_task(_id(n), priority))
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    assert order == [_id(3), _id(5), _id(1), _id(4), _id(0), _id(6), _id(2)]
    assert await backends.queue.depth() == 0


async def test_transfer_moves_the_task_into_the_store_atomically(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    moved = await backends.queue.transfer(backends.store, now=12345)
    assert moved is not None
    assert moved.status is Status.DEQUEUED
    assert moved.dequeued_at == 12345
    assert await backends.queue.get(_id(1)) is None
    stored = await backends.store.get(_id(1))
    assert stored is not None
    assert stored.status is Status.DEQUEUED
    assert stored.task_data == b'{"n": 1}'


async def test_concurrent_transfers_hand_out_each_task_once(backends: Backends) -> None:
    for n in range(30):
        await backends.queue.enqueue(_task(_id(n)))
    results = await asyncio.gather(
        *(backends.queue.transfer(backends.store, now=now_ms()) for _ in range(60))
    )
    taken = [task.task_id for task in results if task is not None]
    assert sorted(taken) == [_id(n) for n in range(30)]
    assert results.count(None) == 30


async def test_transfer_many_takes_a_batch_in_order_and_each_task_once(
    backends: Backends,
) -> None:
    """A dispatcher's batch claim: priority then FIFO within and across batches, and
    concurrent batches never hand out a task twice."""
    priorities = [0, 5, -3, 5, 9, 0, 1]
    for n, priority in enumerate(priorities):
        await backends.queue.enqueue(_task(_id(n), priority))
    first = await backends.queue.transfer_many(
        backends.store, now=now_ms(), most=3, lease_token="batch", dispatched=True
    )
    assert [task.task_id for task in first] == [_id(4), _id(1), _id(3)]
    assert all(task.status is Status.DEQUEUED and task.dispatched for task in first)
    assert all(task.lease_token == "batch" for task in first)
    rest = await backends.queue.transfer_many(backends.store, now=now_ms(), most=10)
    assert [task.task_id for task in rest] == [_id(6), _id(0), _id(5), _id(2)]
    assert await backends.queue.transfer_many(backends.store, now=now_ms(), most=5) == []
    for n in range(100, 160):
        await backends.queue.enqueue(_task(_id(n)))
    batches = await asyncio.gather(
        *(backends.queue.transfer_many(backends.store, now=now_ms(), most=7) for _ in range(12))
    )
    taken = [task.task_id for batch in batches for task in batch]
    assert sorted(taken) == [_id(n) for n in range(100, 160)]
    assert await backends.queue.depth() == 0


async def test_compare_and_set_many_moves_each_matching_task_on_its_own(
    backends: Backends,
) -> None:
    for n in range(4):
        await backends.queue.enqueue(_task(_id(n)))
    await backends.queue.transfer_many(backends.store, now=now_ms(), most=4)
    # _id(3) has moved on already, and _id(9) does not exist: both are left out.
    await backends.store.compare_and_set(
        _id(3), expected={Status.DEQUEUED}, target=Status.PROCESSING, now=now_ms()
    )
    moved = await backends.store.compare_and_set_many(
        [_id(0), _id(1), _id(2), _id(3), _id(9)],
        expected={Status.DEQUEUED},
        target=Status.PROCESSING,
        now=now_ms(),
        changes=TaskChanges(increment_attempts=True, lease_token="claim", lease_expires_at=99),
        require_attempts_left=True,
    )
    assert sorted(task.task_id for task in moved) == [_id(0), _id(1), _id(2)]
    for task in moved:
        assert (task.status, task.attempts, task.lease_token) == (Status.PROCESSING, 1, "claim")
        assert task.lease_expires_at == 99
    untouched = await backends.store.get(_id(3))
    assert untouched is not None
    assert untouched.attempts == 0
    # Racing claims of the same tasks: each task is won exactly once.
    for n in range(10, 30):
        await backends.queue.enqueue(_task(_id(n)))
    await backends.queue.transfer_many(backends.store, now=now_ms(), most=20)
    ids = [_id(n) for n in range(10, 30)]
    results = await asyncio.gather(
        *(
            backends.store.compare_and_set_many(
                ids[k:] + ids[:k],
                expected={Status.DEQUEUED},
                target=Status.PROCESSING,
                now=now_ms(),
                changes=TaskChanges(increment_attempts=True),
            )
            for k in range(0, 20, 4)
        )
    )
    won = [task.task_id for batch in results for task in batch]
    assert sorted(won) == ids
    with pytest.raises(ValueError, match="at least one status"):
        await backends.store.compare_and_set_many(
            ids, expected=set(), target=Status.PROCESSING, now=now_ms()
        )


async def test_compare_and_set_has_one_winner(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    await backends.queue.transfer(backends.store, now=now_ms())
    results = await asyncio.gather(
        *(
            backends.store.compare_and_set(
                _id(1),
                expected={Status.DEQUEUED},
                target=Status.PROCESSING,
                now=now_ms(),
                changes=TaskChanges(increment_attempts=True, lease_token=f"token-{n}"),
            )
            for n in range(10)
        )
    )
    winners = [task for task in results if task is not None]
    assert len(winners) == 1
    assert winners[0].attempts == 1
    assert winners[0].status is Status.PROCESSING


async def test_lease_token_fences_the_outcome(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    await backends.queue.transfer(backends.store, now=now_ms())
    await backends.store.compare_and_set(
        _id(1),
        expected={Status.DEQUEUED},
        target=Status.PROCESSING,
        now=now_ms(),
        changes=TaskChanges(increment_attempts=True, lease_token="right"),
    )
    execution = ExecutionRecord(
        task_id=_id(1),
        attempt=1,
        started_at=1,
        finished_at=2,
        duration_ms=1,
        http_status=200,
        result=b'{"ok": true}',
        error=None,
    )
    stale = await backends.store.compare_and_set(
        _id(1),
        expected={Status.PROCESSING},
        target=Status.COMPLETED,
        now=now_ms(),
        lease_token="wrong",
        execution=execution,
    )
    assert stale is None
    assert await backends.store.executions(_id(1)) == []
    done = await backends.store.compare_and_set(
        _id(1),
        expected={Status.PROCESSING},
        target=Status.COMPLETED,
        now=now_ms(),
        lease_token="right",
        changes=TaskChanges(result=b'{"ok": true}', lease_token=None),
        execution=execution,
    )
    assert done is not None
    assert done.result == b'{"ok": true}'
    assert done.lease_token is None
    assert await backends.store.executions(_id(1)) == [execution]


async def test_concurrent_outcomes_each_apply_once_under_their_own_lease(
    backends: Backends,
) -> None:
    """Outcomes of the service's shape (which PostgreSQL writes together): each task moves and
    logs its attempt once; a stale lease or a second outcome of the same attempt does neither;
    unset columns keep their values."""
    for n in range(12):
        await backends.queue.enqueue(_task(_id(n)))
    await backends.queue.transfer_many(backends.store, now=now_ms(), most=12)
    for n in range(12):
        await backends.store.compare_and_set(
            _id(n),
            expected={Status.DEQUEUED},
            target=Status.PROCESSING,
            now=now_ms(),
            changes=TaskChanges(
                increment_attempts=True, lease_token=f"lease-{n}", next_attempt_at=None
            ),
        )

    def outcome(n: int, lease: str, *, ok: bool) -> Any:
        execution = ExecutionRecord(
            task_id=_id(n),
            attempt=1,
            started_at=1000 + n,
            finished_at=2000 + n,
            duration_ms=1000,
            http_status=200 if ok else 500,
            result=f'{{"n": {n}}}'.encode() if ok else None,
            error=None if ok else f"HTTP 500 ({n})",
        )
        changes = TaskChanges(
            lease_token=None,
            lease_expires_at=None,
            result=execution.result,
            error=execution.error,
            next_attempt_at=None if ok else 5000 + n,
            completed_at=2000 + n if ok else msgspec.UNSET,
            dead_letter=msgspec.UNSET if ok else n == 11,
        )
        return backends.store.compare_and_set(
            _id(n),
            expected={Status.PROCESSING},
            target=Status.COMPLETED if ok else Status.RETRY,
            now=now_ms(),
            changes=changes,
            lease_token=lease,
            execution=execution,
        )

    results = await asyncio.gather(
        *(outcome(n, f"lease-{n}", ok=n % 2 == 0) for n in range(11)),
        outcome(11, f"lease-{11}", ok=False),
        outcome(3, "stale", ok=True),  # a lost lease: neither moves nor logs
        outcome(4, "lease-4", ok=True),  # the same outcome twice: applies once
    )
    assert all(results[n] is not None for n in range(12) if n != 4)
    assert results[12] is None
    assert (results[4] is None) != (results[13] is None)
    for n in range(12):
        task = await backends.store.get(_id(n))
        assert task is not None
        assert task.lease_token is None
        assert task.lease_expires_at is None
        if n % 2 == 0 and n != 11:
            assert (task.status, task.completed_at, task.result) == (
                Status.COMPLETED,
                2000 + n,
                f'{{"n": {n}}}'.encode(),
            )
            assert task.next_attempt_at is None
            assert task.dead_letter is False
        else:
            assert (task.status, task.error, task.next_attempt_at) == (
                Status.RETRY,
                f"HTTP 500 ({n})",
                5000 + n,
            )
            assert task.completed_at is None
            assert task.dead_letter is (n == 11)
        logged = await backends.store.executions(_id(n))
        assert [(e.attempt, e.started_at, e.http_status) for e in logged] == [
            (1, 1000 + n, 200 if n % 2 == 0 and n != 11 else 500)
        ]


async def test_attempts_left_guard(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))  # max_retries 1: two attempts
    await backends.queue.transfer(backends.store, now=now_ms())
    source = {Status.DEQUEUED, Status.FAILED}
    for expected_attempts in (1, 2):
        task = await backends.store.compare_and_set(
            _id(1),
            expected=source,
            target=Status.FAILED,
            now=now_ms(),
            changes=TaskChanges(increment_attempts=True),
            require_attempts_left=True,
        )
        assert task is not None
        assert task.attempts == expected_attempts
    third = await backends.store.compare_and_set(
        _id(1),
        expected=source,
        target=Status.FAILED,
        now=now_ms(),
        changes=TaskChanges(increment_attempts=True),
        require_attempts_left=True,
    )
    assert third is None


async def test_insert_dequeued_is_idempotent(backends: Backends) -> None:
    tasks = [_task(_id(n)) for n in range(3)]
    for task in tasks:
        task.status = Status.DEQUEUED
    assert await backends.store.insert_dequeued(tasks[:2]) == {_id(0), _id(1)}
    # A repeat inserts only what is new, and leaves what is stored as it was.
    tasks[0].priority = 99
    assert await backends.store.insert_dequeued(tasks) == {_id(2)}
    assert await backends.store.insert_dequeued(tasks) == set()
    assert await backends.store.insert_dequeued([]) == set()
    assert (await backends.store.count_by_status()) == {Status.DEQUEUED: 3}
    stored = await backends.store.get(_id(0))
    assert stored is not None
    assert stored.priority == 0


async def test_list_pages_by_id_descending(backends: Backends) -> None:
    for n in range(5):
        await backends.queue.enqueue(_task(_id(n)))
    first = await backends.queue.list_tasks(before=None, limit=2)
    assert [t.task_id for t in first] == [_id(4), _id(3)]
    rest = await backends.queue.list_tasks(before=_id(3), limit=10)
    assert [t.task_id for t in rest] == [_id(2), _id(1), _id(0)]
    for _ in range(3):
        await backends.queue.transfer(backends.store, now=now_ms())
    stored = await backends.store.list_tasks(status=Status.DEQUEUED, before=None, limit=10)
    assert [t.task_id for t in stored] == [_id(2), _id(1), _id(0)]
    assert await backends.store.list_tasks(status=Status.FAILED, before=None, limit=10) == []


async def test_compare_and_set_needs_an_expected_status(backends: Backends) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await backends.store.compare_and_set(
            _id(1), expected=set(), target=Status.PROCESSING, now=0
        )


async def test_one_thousand_equal_priorities_stay_fifo(backends: Backends) -> None:
    ids = [_id(n) for n in range(1000)]
    for task_id in ids:
        await backends.queue.enqueue(_task(task_id, priority=2**31 - 1))
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    assert order == ids


async def test_recover_with_nothing_half_done_returns_nothing(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    assert await backends.queue.recover(backends.store, now=now_ms() + 3_600_000) == 0
    assert await backends.queue.depth() == 1


async def _dequeue_with_lease(backends: Backends, token: str, expires: int) -> TaskRecord:
    task = await backends.queue.transfer(
        backends.store, now=now_ms(), lease_token=token, lease_expires_at=expires
    )
    assert task is not None
    return task


async def test_requeue_returns_a_task_to_its_original_position(backends: Backends) -> None:
    for n in range(3):
        await backends.queue.enqueue(_task(_id(n), priority=1))
    first = await _dequeue_with_lease(backends, "lease-0", expires=1)
    assert first.task_id == _id(0)
    expired = await backends.store.expired_leases(Status.DEQUEUED, now=now_ms(), limit=10)
    assert [task.task_id for task in expired] == [_id(0)]
    assert await backends.queue.requeue(backends.store, expired[0], now=now_ms(), note="back")
    # A second reaper holding the same (stale) view moves nothing.
    assert not await backends.queue.requeue(backends.store, expired[0], now=now_ms(), note="x")
    requeued = await backends.queue.get(_id(0))
    assert requeued is not None
    assert requeued.error == "back"
    assert await backends.store.get(_id(0)) is None
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    assert order == [_id(0), _id(1), _id(2)]


async def test_requeue_is_fenced_by_the_lease(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    task = await _dequeue_with_lease(backends, "lease-a", expires=1)
    executing = await backends.store.compare_and_set(
        _id(1),
        expected={Status.DEQUEUED},
        target=Status.PROCESSING,
        now=now_ms(),
        changes=TaskChanges(lease_token="lease-b"),
    )
    assert executing is not None
    assert not await backends.queue.requeue(backends.store, task, now=now_ms(), note="late")
    assert await backends.queue.get(_id(1)) is None
    stored = await backends.store.get(_id(1))
    assert stored is not None
    assert stored.status is Status.PROCESSING


async def test_unexpired_leases_are_not_reaped(backends: Backends) -> None:
    await backends.queue.enqueue(_task(_id(1)))
    await _dequeue_with_lease(backends, "lease", expires=now_ms() + 60_000)
    assert await backends.store.expired_leases(Status.DEQUEUED, now=now_ms(), limit=10) == []


async def test_idempotency_claims_admit_one_task(backends: Backends) -> None:
    claim = IdempotencyClaim("key-1", "hash-a", now_ms() + 60_000)
    outcomes = await asyncio.gather(
        *(backends.queue.enqueue(_task(_id(n)), claim=claim) for n in range(10))
    )
    created = [n for n, outcome in enumerate(outcomes) if outcome is None]
    assert len(created) == 1
    winner = _id(created[0])
    assert all(
        outcome == IdempotentReplay(task_id=winner, request_hash="hash-a")
        for outcome in outcomes
        if outcome is not None
    )
    assert await backends.queue.depth() == 1


async def test_an_expired_idempotency_key_can_be_claimed_again(backends: Backends) -> None:
    expired = IdempotencyClaim("key-2", "hash-a", now_ms() - 1)
    assert await backends.queue.enqueue(_task(_id(1)), claim=expired) is None
    await asyncio.sleep(0.01)  # Redis keeps even an expired claim for its 1 ms TTL
    await backends.queue.purge_expired(now=now_ms())
    fresh = IdempotencyClaim("key-2", "hash-b", now_ms() + 60_000)
    assert await backends.queue.enqueue(_task(_id(2)), claim=fresh) is None
    assert await backends.queue.depth() == 2


async def test_listen_signals_enqueues_from_another_client(backends: Backends) -> None:
    arrived = asyncio.Event()
    listener = asyncio.create_task(backends.queue.listen(arrived.set))
    try:
        await asyncio.sleep(0.3)  # let a subscription settle
        if listener.done():
            assert listener.exception() is None
            pytest.skip("this queue backend has no cross-process signal (polling covers it)")
        await backends.queue.enqueue(_task(_id(1)))
        await asyncio.wait_for(arrived.wait(), 5)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


async def test_a_scheduled_task_is_not_due_before_its_time(backends: Backends) -> None:
    """Issue 6: a task with ``scheduled_at`` in the future is not handed out until then."""
    now = now_ms()
    later = _task(_id(1), priority=9)
    later.scheduled_at = now + 60_000
    await backends.queue.enqueue(later)
    await backends.queue.enqueue(_task(_id(2)))
    first = await backends.queue.transfer(backends.store, now=now)
    assert first is not None
    assert first.task_id == _id(2)
    assert await backends.queue.transfer(backends.store, now=now) is None
    due = await backends.queue.transfer(backends.store, now=now + 60_000)
    assert due is not None
    assert due.task_id == _id(1)
    assert due.scheduled_at == now + 60_000


async def test_due_tasks_go_by_priority_however_many_came_due(backends: Backends) -> None:
    """The Redis queue moved at most 100 due tasks from its scheduled set per dequeue, earliest
    first: a task of a higher priority that came due a moment after 150 others waited behind
    them all, where the SQL queues (and the README: highest priority first) hand it out first."""
    now = now_ms()
    early = [_task(_id(n)) for n in range(1, 151)]
    for n, task in enumerate(early):
        task.scheduled_at = now + 1_000 + n
    urgent = _task(_id(200), priority=9)
    urgent.scheduled_at = now + 2_000
    await backends.queue.enqueue_many([*early, urgent])
    first = await backends.queue.transfer(backends.store, now=now + 3_000)
    assert first is not None
    assert first.task_id == _id(200)
    second = await backends.queue.transfer(backends.store, now=now + 3_000)
    assert second is not None
    assert second.task_id == _id(1)  # then FIFO within the priority


async def test_a_task_that_came_due_takes_its_place_among_the_due(backends: Backends) -> None:
    """A task scheduled for later joins the due ones at its place (priority, then creation
    order) once its time has come, however many tasks wait behind or ahead of it for later
    (the SQL queues keep those out of the order a dequeue reads: migration 0007)."""
    now = now_ms()
    waiting = [_task(_id(n)) for n in range(1, 301)]
    for task in waiting:
        task.scheduled_at = now + 3_600_000
    soon = _task(_id(400))
    soon.scheduled_at = now + 1_000
    await backends.queue.enqueue_many([*waiting[:150], soon, *waiting[150:], _task(_id(500))])
    first = await backends.queue.transfer(backends.store, now=now)
    assert first is not None
    assert first.task_id == _id(500)  # the only one due
    assert await backends.queue.transfer(backends.store, now=now) is None
    await backends.queue.enqueue(_task(_id(600)))
    await asyncio.sleep(0.06)  # past the PostgreSQL queue's promotion interval (50 ms)
    taken = await backends.queue.transfer_many(backends.store, now=now + 2_000, most=5)
    assert [task.task_id for task in taken] == [_id(400), _id(600)]  # by creation order
    assert await backends.queue.depth() == 300


async def test_a_batch_that_finds_fewer_than_it_asks_for_looks_for_tasks_that_came_due(
    backends: Backends,
) -> None:
    """Right after a dequeue (within the PostgreSQL queue's 50 ms between promotions) a batch of
    two found the one due task of the order and stopped there, though a task scheduled for
    later had come due meanwhile: a caller of a grouped dequeue was told the queue is empty."""
    now = now_ms()
    soon = _task(_id(1))
    soon.scheduled_at = now + 1_000
    await backends.queue.enqueue_many([soon, _task(_id(2)), _task(_id(3))])
    first = await backends.queue.transfer(backends.store, now=now)  # promotes what is due
    assert first is not None
    assert first.task_id == _id(2)
    taken = await backends.queue.transfer_many(backends.store, now=now + 2_000, most=2)
    assert [task.task_id for task in taken] == [_id(1), _id(3)]


async def test_named_queues_are_separate(backends: Backends) -> None:
    """Issue 6: transfer takes only from the named queue; counts and lists are per queue."""
    emails = _task(_id(1))
    emails.queue = "emails"
    await backends.queue.enqueue(emails)
    await backends.queue.enqueue(_task(_id(2)))
    counts = await backends.queue.queue_counts(now=now_ms())
    assert {name: count.depth for name, count in counts.items()} == {"emails": 1, "default": 1}
    assert [
        t.task_id for t in await backends.queue.list_tasks(before=None, limit=9, queue="emails")
    ] == [_id(1)]
    taken = await backends.queue.transfer(backends.store, now=now_ms(), queue="emails")
    assert taken is not None
    assert taken.task_id == _id(1)
    assert taken.queue == "emails"
    assert await backends.queue.transfer(backends.store, now=now_ms(), queue="emails") is None


async def test_enqueue_many_and_cancel(backends: Backends) -> None:
    """Issue 6: a batch enqueues in order; cancel moves a Queued task into the store, once."""
    await backends.queue.enqueue_many([_task(_id(n)) for n in range(1, 4)])
    assert await backends.queue.depth() == 3
    cancelled = await backends.queue.cancel(backends.store, _id(2), now=now_ms())
    assert cancelled is not None
    assert cancelled.status is Status.CANCELLED
    assert await backends.queue.cancel(backends.store, _id(2), now=now_ms()) is None
    stored = await backends.store.get(_id(2))
    assert stored is not None
    assert stored.status is Status.CANCELLED
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    assert order == [_id(1), _id(3)]


async def test_a_large_batch_keeps_priority_then_fifo_across_its_chunks(
    backends: Backends,
) -> None:
    """Issue 7: SQLite writes a batch 500 rows per INSERT; 1,234 tasks span three of them, after
    a single enqueue, and every task keeps its place: sequences rise in batch order, and the
    dequeue order is priority, then batch order."""
    await backends.queue.enqueue(_task(_id(0), priority=1))
    batch = [_task(_id(n), priority=n % 3) for n in range(1, 1235)]
    await backends.queue.enqueue_many(batch)
    sequences = [task.sequence for task in batch]
    assert all(isinstance(s, int) for s in sequences)
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(batch)
    assert await backends.queue.depth() == 1235
    stored = await backends.queue.get(_id(777))
    assert stored is not None
    assert stored.priority == 777 % 3
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    everything = [(1, 0), *((n % 3, n) for n in range(1, 1235))]
    expected = [_id(n) for _, n in sorted(everything, key=lambda pn: (-pn[0], pn[1]))]
    assert order == expected


async def test_concurrent_single_enqueues_are_each_stored_once(backends: Backends) -> None:
    """Issue 7: PostgreSQL writes concurrent enqueues in one commit (group commit); every one
    is stored once, with a sequence of its own, in the order each call's sequence says."""
    tasks = [_task(_id(n)) for n in range(300)]
    await asyncio.gather(*(backends.queue.enqueue(task) for task in tasks))
    sequences = [task.sequence for task in tasks]
    assert len(set(sequences)) == 300
    assert await backends.queue.depth() == 300
    order = []
    while (task := await backends.queue.transfer(backends.store, now=now_ms())) is not None:
        order.append(task.task_id)
    by_sequence = [task.task_id for task in sorted(tasks, key=lambda t: t.sequence or 0)]
    assert order == by_sequence


async def test_redrive_returns_a_failed_task_with_no_attempts(backends: Backends) -> None:
    """Issue 6: a re-drive moves a Failed task back to the queue, attempts reset."""
    await backends.queue.enqueue(_task(_id(1)))
    moved = await backends.queue.transfer(backends.store, now=now_ms())
    assert moved is not None
    failed = await backends.store.compare_and_set(
        _id(1),
        expected={Status.DEQUEUED},
        target=Status.FAILED,
        now=now_ms(),
        changes=TaskChanges(increment_attempts=True, dead_letter=True),
    )
    assert failed is not None
    assert failed.dead_letter
    assert await backends.store.list_tasks(
        status=Status.FAILED, before=None, limit=9, dead_letter=True
    )
    assert await backends.queue.requeue(
        backends.store, failed, now=now_ms(), note="re-driven", redrive=True
    )
    back = await backends.queue.get(_id(1))
    assert back is not None
    assert back.attempts == 0
    assert await backends.store.get(_id(1)) is None


async def test_pause_flags_are_shared(backends: Backends) -> None:
    """Issue 6: pausing a queue is recorded in the store for every process to read."""
    await backends.store.set_paused("emails", True, now=now_ms())
    assert await backends.store.paused_queues() == {"emails"}
    await backends.store.set_paused("emails", False, now=now_ms())
    assert await backends.store.paused_queues() == set()


async def test_dispatch_tokens_are_shared_and_refill_at_the_rate(backends: Backends) -> None:
    """Issue 6: a queue's dispatch bucket holds ``burst`` tokens and refills at ``rate`` per s,
    whoever takes from it (the store keeps it for every dispatcher)."""
    store, now = backends.store, 1_000_000
    taken = [await store.take_dispatch_token("q", rate=2, burst=2, now=now) for _ in range(3)]
    assert taken == [True, True, False]
    assert not await store.take_dispatch_token("q", rate=2, burst=2, now=now + 400)
    assert await store.take_dispatch_token("q", rate=2, burst=2, now=now + 600)
    await store.give_back_dispatch_token("q", burst=2)
    assert await store.take_dispatch_token("q", rate=2, burst=2, now=now + 600)
    assert not await store.take_dispatch_token("q", rate=2, burst=2, now=now + 600)
    assert await store.take_dispatch_token("other", rate=2, burst=2, now=now)


async def test_a_claim_of_a_retry_holds_only_while_it_is_due(backends: Backends) -> None:
    """Issue 6: a dispatcher that read a Retry task as due must not claim it after another
    dispatcher ran it and put it back to wait (a stale due list); ``due_by`` fences that."""
    await backends.queue.enqueue(_task(_id(1)))
    assert await backends.queue.transfer(backends.store, now=now_ms()) is not None
    now = now_ms()
    for source, target in ((Status.DEQUEUED, Status.PROCESSING), (Status.PROCESSING, Status.RETRY)):
        moved = await backends.store.compare_and_set(
            _id(1),
            expected={source},
            target=target,
            now=now,
            changes=TaskChanges(next_attempt_at=now + 60_000),
        )
        assert moved is not None
    early = await backends.store.compare_and_set(
        _id(1), expected={Status.RETRY}, target=Status.PROCESSING, now=now, due_by=now
    )
    assert early is None
    due = await backends.store.compare_and_set(
        _id(1), expected={Status.RETRY}, target=Status.PROCESSING, now=now, due_by=now + 60_000
    )
    assert due is not None


async def test_a_lease_from_each_tasks_own_timeout_in_one_statement(backends: Backends) -> None:
    """``lease_grace_seconds``: each task's lease ends its own timeout plus the grace after
    the update, in one compare-and-set over tasks of different timeouts; and the batch form
    holds ``due_by`` as the single one does."""
    timeouts = {_id(0): 5.0, _id(1): 0.25, _id(2): 3600.0, _id(3): 5.0}
    for task_id, timeout in timeouts.items():
        task = _task(task_id)
        task.timeout_seconds = timeout
        await backends.queue.enqueue(task)
    await backends.queue.transfer_many(backends.store, now=now_ms(), most=4)
    now = now_ms()
    moved = await backends.store.compare_and_set_many(
        list(timeouts),
        expected={Status.DEQUEUED},
        target=Status.PROCESSING,
        now=now,
        changes=TaskChanges(lease_token="claim", lease_grace_seconds=1.5),
    )
    assert len(moved) == 4
    for task in moved:
        assert task.lease_expires_at == now + round((timeouts[task.task_id] + 1.5) * 1000)
        stored = await backends.store.get(task.task_id)
        assert stored is not None
        assert stored.lease_expires_at == task.lease_expires_at
    single = await backends.store.compare_and_set(
        _id(1),
        expected={Status.PROCESSING},
        target=Status.RETRY,
        now=now,
        changes=TaskChanges(next_attempt_at=now + 60_000, lease_token=None, lease_expires_at=None),
    )
    assert single is not None
    assert single.lease_expires_at is None
    for due_by, expected_moves in ((now, 0), (now + 60_000, 1)):
        retried = await backends.store.compare_and_set_many(
            [_id(1)],
            expected={Status.RETRY},
            target=Status.PROCESSING,
            now=now,
            changes=TaskChanges(lease_grace_seconds=0),
            due_by=due_by,
        )
        assert len(retried) == expected_moves
    with pytest.raises(ValueError, match="not both"):
        TaskChanges(lease_expires_at=1, lease_grace_seconds=1)


def _start_changes() -> TaskChanges:
    """The changes of the start of an attempt, as the service makes them (a fresh token)."""
    return TaskChanges(
        increment_attempts=True,
        lease_token=str(uuid.uuid4()),
        lease_grace_seconds=5.0,
        next_attempt_at=None,
    )


@contextlib.contextmanager
def _statements(backends: Backends) -> Iterator[list[str]]:
    """The statements the PostgreSQL hot path sends while the block runs (empty elsewhere)."""
    sent: list[str] = []
    database = getattr(backends.store, "database", None)
    fetch = getattr(database, "fetch", None)
    if not isinstance(database, PostgresDatabase) or fetch is None:
        yield sent
        return

    async def counted(sql: str, params: Any) -> Any:
        sent.append(sql)
        return await fetch(sql, params)

    database.fetch = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        del database.fetch  # the class's method again


async def test_concurrent_dequeues_take_the_first_tasks_each_once(backends: Backends) -> None:
    """Issue 7: concurrent dequeues (on PostgreSQL and Redis, grouped into shared statements
    and scripts) take the first tasks in queue order, each exactly once."""
    await backends.queue.enqueue_many([_task(_id(n), priority=n % 3) for n in range(60)])
    reserves: list[object] = []
    if isinstance(backends.queue, RedisQueue):
        reserve = backends.queue._reserve

        async def counted(**arguments: Any) -> Any:
            reserves.append(arguments)
            return await reserve(**arguments)

        backends.queue._reserve = counted  # type: ignore[assignment]
    with _statements(backends) as sent:
        taken = await asyncio.gather(
            *(backends.queue.transfer(backends.store, now=now_ms()) for _ in range(30))
        )
    if isinstance(backends.queue, RedisQueue):
        assert 0 < len(reserves) < 30  # shared reserve scripts, not one each
    ids = [task.task_id for task in taken if task is not None]
    assert len(ids) == 30
    assert len(set(ids)) == 30
    first = sorted(range(60), key=lambda n: (-(n % 3), n))[:30]
    assert set(ids) == {_id(n) for n in first}
    for task in taken:
        assert task is not None
        assert task.status is Status.DEQUEUED
        assert (await backends.store.get(task.task_id)) is not None
    if isinstance(backends.queue, PostgresQueue):
        assert 0 < len(sent) < 30  # shared statements, not one each
    empty = await asyncio.gather(
        *(backends.queue.transfer(backends.store, now=now_ms()) for _ in range(40))
    )
    assert len([task for task in empty if task is not None]) == 30  # the rest, then nothing


async def test_concurrent_starts_move_each_task_once(backends: Backends) -> None:
    """Issue 7: two concurrent starts of each of 20 tasks: exactly one of each pair moves it
    to Processing (on PostgreSQL, starts share statements, but never two of one task)."""
    await backends.queue.enqueue_many([_task(_id(n)) for n in range(20)])
    for _ in range(20):
        assert await backends.queue.transfer(backends.store, now=now_ms()) is not None
    with _statements(backends) as sent:
        started = await asyncio.gather(
            *(
                backends.store.compare_and_set(
                    _id(n % 20),
                    expected={Status.DEQUEUED, Status.RETRY},
                    target=Status.PROCESSING,
                    now=now_ms(),
                    changes=_start_changes(),
                    require_attempts_left=True,
                )
                for n in range(40)
            )
        )
    moved = [task for task in started if task is not None]
    assert sorted(task.task_id for task in moved) == sorted(_id(n) for n in range(20))
    for task in moved:
        stored = await backends.store.get(task.task_id)
        assert stored is not None
        assert stored.status is Status.PROCESSING
        assert stored.attempts == 1
        assert stored.lease_token == task.lease_token  # the token that fences its outcome
        assert stored.lease_expires_at is not None
        assert stored.lease_expires_at >= now_ms() + 9_000  # 5 s timeout + 5 s grace
    if isinstance(getattr(backends.store, "database", None), PostgresDatabase):
        assert 0 < len(sent) < 40


async def test_the_oldest_age_counts_due_tasks_only(backends: Backends) -> None:
    """A task scheduled for later is not waiting yet: a queue of only such tasks has a depth
    and no oldest due time (an alert on the oldest age fired for work planned ahead). A due
    task counts from its creation, or from its scheduled time when that came later; of several,
    the one due longest."""
    now = now_ms()
    later = _task(_id(1))
    later.queue, later.created_at, later.scheduled_at = "planned", now - 60_000, now + 3_600_000
    await backends.queue.enqueue(later)
    counts = await backends.queue.queue_counts(now=now)
    assert (counts["planned"].depth, counts["planned"].oldest_due_at) == (1, None)

    came_due = _task(_id(2))  # created 50 s ago, due since 20 s ago
    came_due.queue, came_due.created_at, came_due.scheduled_at = (
        "planned",
        now - 50_000,
        now - 20_000,
    )
    await backends.queue.enqueue(came_due)
    counts = await backends.queue.queue_counts(now=now)
    assert (counts["planned"].depth, counts["planned"].oldest_due_at) == (2, now - 20_000)

    plain = _task(_id(3))  # created 30 s ago, due at once: it has waited longest
    plain.queue, plain.created_at = "planned", now - 30_000
    await backends.queue.enqueue(plain)
    counts = await backends.queue.queue_counts(now=now)
    assert (counts["planned"].depth, counts["planned"].oldest_due_at) == (3, now - 30_000)
    # An hour on, the first is due too, since its scheduled time: still not the longest.
    counts = await backends.queue.queue_counts(now=now + 3_600_000)
    assert counts["planned"].oldest_due_at == now - 30_000


async def test_expired_idempotency_keys_are_forgotten_in_bounded_statements(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A purge forgets expired keys in statements of at most PURGE_BATCH_KEYS, at most
    PURGE_BATCHES a call: one unbounded DELETE after a burst of keyed creates held the
    writer long, and on PostgreSQL could outlast the statement timeout on every round, so the
    backlog never went (found in review). Live keys stay."""
    from taskplatform.backends import postgres, sqlite

    queue = backends.queue
    if isinstance(queue, postgres.PostgresQueue):

        async def keys() -> int:
            row = await queue.database.fetchrow("SELECT count(*) FROM idempotency_keys", {})
            assert row is not None
            return int(row[0])

    elif isinstance(queue, sqlite.SQLiteQueue):

        async def keys() -> int:
            def count(conn: Any) -> int:
                return int(conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0])

            return await queue.database.read(count)

    else:
        pytest.skip("Redis forgets a key by its TTL")
    for module in (postgres, sqlite):
        monkeypatch.setattr(module, "PURGE_BATCH_KEYS", 3)
        monkeypatch.setattr(module, "PURGE_BATCHES", 2)
    for n in range(10):
        expired = IdempotencyClaim(f"old-{n}", "hash", now_ms() - 1)
        assert await queue.enqueue(_task(_id(n)), claim=expired) is None
    live = IdempotencyClaim("live", "hash", now_ms() + 60_000)
    assert await queue.enqueue(_task(_id(10)), claim=live) is None
    assert await keys() == 11
    await queue.purge_expired(now=now_ms())
    assert await keys() == 11 - 6  # two statements of three
    await queue.purge_expired(now=now_ms())
    assert await keys() == 1  # the live one
