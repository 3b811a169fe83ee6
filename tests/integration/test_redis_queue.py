"""Behaviour only the Redis queue has: surviving dropped connections without adding a task twice,
and batch claims in three round trips that lose nothing when a step fails."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from yarl import URL

from taskplatform.backends import Backends, TaskChanges, open_backends, prepare_schema
from taskplatform.backends.base import IdempotencyClaim
from taskplatform.backends.redis import RedisQueue, _text
from taskplatform.exceptions import BackendUnavailable
from taskplatform.faults import Faults
from taskplatform.models import RetryPolicy, Status, TaskRecord, now_ms
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create
from tests.integration.test_contract import _id, _task
from tests.support.backends import REDIS_URL, backend_env, settings_kwargs
from tests.support.proxy import Proxy
from tests.support.service import opened_service


@contextlib.asynccontextmanager
async def _opened(name: str, tmp_path: Path) -> AsyncIterator[Backends]:
    settings = Settings(**settings_kwargs(backend_env(name, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def redis_backends(tmp_path: Path) -> AsyncIterator[Backends]:
    async with _opened("redis+sqlite", tmp_path) as opened:
        yield opened


@pytest.fixture(params=["redis+sqlite", "redis+postgres"])
async def redis_over(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """The Redis queue over each store, for what depends on the store's batch insert."""
    async with _opened(request.param, tmp_path) as opened:
        yield opened


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


class _ScriptCalls:
    """Counts the scripts one client runs (a call that only finds the script not loaded yet,
    NOSCRIPT, does not count). Counted on the client, not from Redis's INFO commandstats, which
    is server-wide and so counts other test processes' scripts too; the calls still go to Redis."""

    def __init__(self, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.run = 0
        evalsha = client.evalsha

        async def counted(*args: Any) -> Any:
            result = await evalsha(*args)
            self.run += 1
            return result

        monkeypatch.setattr(client, "evalsha", counted)


async def test_a_counter_redis_lost_starts_past_the_numbers_the_process_knows(
    redis_over: Backends,
) -> None:
    """Redis loses its data under a running process: its next create is numbered past the
    numbers the store and this process know, not from 1, which put it ahead of the tasks
    the store holds once they are requeued; recovery then follows the store again."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    await queue.follow_store(store)
    for n in range(3):
        await queue.enqueue(_task(_id(n)))
    assert len(await queue.transfer_many(store, now=now_ms(), most=3)) == 3
    await queue.flush()  # Redis restarted without its data
    fresh = _task(_id(3))
    await queue.enqueue(fresh)
    assert fresh.sequence == 4
    other = RedisQueue(REDIS_URL, key_prefix=queue._prefix)  # another process, knowing none
    try:
        await queue.flush()
        await queue.recover(store, now=now_ms())  # notices the loss: follows the store again
        later = _task(_id(4))
        await other.enqueue(later)
        assert later.sequence == 4
    finally:
        await other.close()


async def test_creates_that_arrive_together_are_one_script_call(redis_queue: RedisQueue) -> None:
    """Concurrent creates share one script call (group commit), a create on its own takes one
    too, and neither opens a pipeline (redis-py checks SCRIPT EXISTS before each one that runs a
    script). Each task gets its own sequence, and its hash holds the same text, field for field,
    as the single-task script writes for a create with an idempotency key."""
    client = redis_queue.client
    calls: list[str] = []
    execute: Callable[..., Awaitable[Any]] = client.execute_command

    async def counted(*args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await execute(*args, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "execute_command", counted)
        patch.setattr(client, "pipeline", None)  # any pipeline fails the test
        lone = _task(_id(1))
        await redis_queue.enqueue(lone)
        assert calls == ["EVALSHA"]
        together = [_task(_id(n), priority=n % 3) for n in range(2, 12)]
        together[0].scheduled_at = now_ms() + 60_000
        together[1].retry_policy = RetryPolicy(
            backoff_min_seconds=1.5, backoff_max_seconds=60, backoff_multiplier=2, retry_on=[503]
        )
        together[2].error = "a\u0000b é"
        await asyncio.gather(*(redis_queue.enqueue(task) for task in together))
        assert calls == ["EVALSHA", "EVALSHA"]  # all ten wait before the writer runs
    assert sorted(task.sequence for task in [lone, *together]) == list(range(1, 12))
    assert await redis_queue.depth() == 11

    # The same tasks through the single-task script (an idempotency key sends them there).
    for n, task in enumerate(together[:3]):
        copy = msgspec.structs.replace(task, task_id=_id(100 + n))
        claim = IdempotencyClaim(f"key-{task.task_id}", "hash", now_ms() + 60_000)
        assert await redis_queue.enqueue(copy, claim=claim) is None
        ours = await client.hgetall(redis_queue._task_key(task.task_id))
        theirs = await client.hgetall(redis_queue._task_key(copy.task_id))
        for field in (b"member", b"sequence"):
            del ours[field], theirs[field]
        assert ours == theirs
        assert await redis_queue.get(task.task_id) == msgspec.structs.replace(
            task, status=Status.QUEUED
        )


async def test_a_batch_claim_takes_three_round_trips_and_never_a_stored_task(
    redis_over: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch claim reserves in one script, inserts in one store call and acks in one script;
    a task the store has already (a recovered reservation that raced its owner) is acked, not
    handed out, and the batch is topped up. A failed insert puts the whole batch back in place."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    queue._faults = Faults("after_reserve=fail:1")
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

    scripts = _ScriptCalls(queue.client, monkeypatch)
    first = await queue.transfer_many(store, now=now_ms(), most=10)
    assert scripts.run == 2  # reserve, ack
    assert [task.task_id for task in first] == order[:10]

    stored_already = (await queue.get(order[11]), await queue.get(order[13]))
    for task in stored_already:
        assert task is not None
        task.status = Status.DEQUEUED
    assert await store.insert_dequeued([t for t in stored_already if t]) == {order[11], order[13]}
    scripts.run = 0
    second = await queue.transfer_many(store, now=now_ms(), most=10)
    assert scripts.run == 4  # a second batch tops it up
    assert [task.task_id for task in second] == [
        task_id for task_id in order[10:22] if task_id not in (order[11], order[13])
    ]
    assert await queue.depth() == 40 - 22
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    assert (await store.count_by_status()) == {Status.DEQUEUED: 22}


async def test_a_reserve_whose_reply_was_lost_takes_the_same_tasks_again(
    redis_over: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis runs the reserve script and the connection drops before its reply arrives (a
    failover, a proxy's idle cut, CLIENT KILL): redis-py runs it again on a new connection,
    which reserved the next task. The first, of the highest priority, was held in inflight for
    the reservation's 30 s, Queued to GET and passed over by every dequeue."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    await queue.enqueue(_task(_id(1), priority=10))
    await queue.enqueue(_task(_id(2)))
    real_read = AbstractConnection.read_response
    dropped: list[object] = []

    async def read_response(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        reply = await real_read(self, *args, **kwargs)
        if not dropped and isinstance(reply, list) and reply and _id(1).encode() in reply[0]:
            dropped.append(reply)  # the script ran; its answer never arrives
            raise redis.exceptions.ConnectionError("Connection reset by peer (injected)")
        return reply

    monkeypatch.setattr(AbstractConnection, "read_response", read_response)
    [taken] = await queue.transfer_many(store, now=now_ms(), most=1)
    assert dropped, "the reserve's reply was not dropped"
    assert taken.task_id == _id(1)
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    assert [task.task_id for task in await queue.list_tasks(before=None, limit=10)] == [_id(2)]
    assert [key async for key in queue.client.scan_iter(f"{queue._prefix}:reserve:*")] == []


async def test_replies_are_parsed_by_hiredis(redis_queue: RedisQueue) -> None:
    """The redis extra brings hiredis, whose C parser is most of the dispatcher's speed on a Redis
    queue (bench/README: 764-794 against 1,339 tasks/s); losing it must not go unseen."""
    await redis_queue.ping()
    connection = await redis_queue.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        assert type(connection._parser).__name__ == "_AsyncHiredisParser"
    finally:
        await redis_queue.client.connection_pool.release(connection)


async def test_an_ack_failure_after_the_insert_loses_no_claimed_task(redis_over: Backends) -> None:
    """The store has the batch when acking it in Redis fails: the batch is still handed out
    (Queue.transfer_many: what moved must not be lost from sight), and recovery acks it."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    for n in range(10):
        await queue.enqueue(_task(_id(n)))
    real_ack = queue._ack_members

    async def failing_ack(members: dict[str, str], call: str | None = None) -> None:
        raise BackendUnavailable("the Redis queue failed: injected")

    queue._ack_members = failing_ack  # type: ignore[method-assign]
    try:
        taken = await queue.transfer_many(store, now=now_ms(), most=5, lease_token="L")
    finally:
        queue._ack_members = real_ack  # type: ignore[method-assign]
    stored = await store.list_tasks(status=Status.DEQUEUED, before=None, limit=100)
    assert sorted(task.task_id for task in taken) == sorted(task.task_id for task in stored)
    assert len(taken) == 5
    assert await queue.recover(store, now=now_ms() + 3_600_000) == 0  # acked, not returned
    assert await queue.depth() == 5


_RESERVATION_MS = 30_000  # queue_reservation_seconds, its default


async def _claimed_with_a_failed_ack(backends: Backends, at: int) -> TaskRecord:
    """A dispatcher's claim of task 1 at ``at`` whose ack failed in Redis (a blip, or the
    process killed between its insert and its ack): the store has the task Dequeued, and Redis
    still holds its reservation, expiring with the claim's lease, and its hash."""
    queue, store = backends.queue, backends.store
    assert isinstance(queue, RedisQueue)
    await queue.enqueue(_task(_id(1)))
    queue._faults = Faults("after_insert=fail:1")
    [taken] = await queue.transfer_many(
        store,
        now=at,
        most=1,
        lease_token="L",
        lease_expires_at=at + _RESERVATION_MS,
        dispatched=True,
    )
    stored = await store.get(_id(1))
    assert stored is not None
    assert stored.status is Status.DEQUEUED
    return taken


async def _assert_delivered_once_more(backends: Backends) -> None:
    queue, store = backends.queue, backends.store
    assert await store.get(_id(1)) or await queue.get(_id(1)), "the task is lost"
    later = now_ms() + 10 * _RESERVATION_MS
    await queue.recover(store, now=later)
    again = await queue.transfer_many(store, now=later, most=5)
    assert [task.task_id for task in again] == [_id(1)]
    assert await queue.transfer_many(store, now=later, most=5) == []


async def test_a_recovery_between_a_requeues_steps_loses_no_task(redis_over: Backends) -> None:
    """Found in review: one server's reaper requeues a claimed task whose lease ran out while
    another's recovery settles the reservation its failed ack left (both expire together).
    Recovery, running after the requeue put the task back in Redis and before it deleted the
    store's row, found the row and acked: deleting the hash the requeue had just written, but
    not the member it had put in ready. The requeue then deleted the row: the task was gone
    from both (GET 404), and the member was dropped unseen at the next reserve."""
    queue, store = redis_over.queue, redis_over.store
    taken = await _claimed_with_a_failed_ack(redis_over, now_ms() - _RESERVATION_MS - 1_000)
    real_remove = store.remove_queued

    async def recovery_first(task_id: str, lease_token: str) -> bool:
        await queue.recover(store, now=now_ms())  # the other server, scheduled at this moment
        return await real_remove(task_id, lease_token)

    store.remove_queued = recovery_first  # type: ignore[method-assign]
    try:
        assert await queue.requeue(store, taken, now=now_ms(), note="lease expired")
    finally:
        store.remove_queued = real_remove  # type: ignore[method-assign]
    await _assert_delivered_once_more(redis_over)


async def test_a_recovery_around_a_whole_requeue_loses_no_task(redis_over: Backends) -> None:
    """The other interleaving: recovery reads the stored row (Dequeued) before the requeue,
    and acks the expired reservation after the requeue finished."""
    queue, store = redis_over.queue, redis_over.store
    taken = await _claimed_with_a_failed_ack(redis_over, now_ms() - _RESERVATION_MS - 1_000)
    real_get = store.get

    async def requeue_after_the_read(task_id: str) -> TaskRecord | None:
        found = await real_get(task_id)
        store.get = real_get  # type: ignore[method-assign]
        assert await queue.requeue(store, taken, now=now_ms(), note="lease expired")
        return found

    store.get = requeue_after_the_read  # type: ignore[method-assign]
    try:
        await queue.recover(store, now=now_ms())
    finally:
        store.get = real_get  # type: ignore[method-assign]
    await _assert_delivered_once_more(redis_over)


async def test_a_member_whose_hash_is_lost_leaves_no_trace(redis_over: Backends) -> None:
    """A member whose task hash was deleted by hand, in a batch whose insert fails, is not
    counted in the queue's depth forever."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    await queue.enqueue(_task(_id(1), priority=5))
    await queue.enqueue(_task(_id(2)))
    await queue.client.delete(queue._task_key(_id(1)))

    async def failing_insert(tasks: object) -> set[str]:
        raise BackendUnavailable("the store failed: injected")

    real_insert = store.insert_dequeued
    store.insert_dequeued = failing_insert  # type: ignore[method-assign]
    try:
        with pytest.raises(BackendUnavailable):
            await queue.transfer_many(store, now=now_ms(), most=2)
    finally:
        store.insert_dequeued = real_insert  # type: ignore[method-assign]
    moved = await queue.transfer_many(store, now=now_ms(), most=2)
    assert [task.task_id for task in moved] == [_id(2)]
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    assert await queue.depth() == 0


@pytest.mark.parametrize("scheduled", [False, True], ids=["ready", "scheduled"])
async def test_a_member_whose_hash_redis_evicted_is_dropped_with_a_warning(
    redis_over: Backends, scheduled: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis whose ``maxmemory-policy`` is not ``noeviction`` evicts task hashes: their tasks
    are lost, and the log says so for each one rather than dropping it without a word."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    lost = _task(_id(1), priority=5)
    if scheduled:  # held in the scheduled set until it is due
        lost.scheduled_at = lost.created_at + 1000
    await queue.enqueue(lost)
    await queue.enqueue(_task(_id(2)))
    await queue.client.delete(queue._task_key(_id(1)))  # what an eviction does
    with caplog.at_level(logging.WARNING, logger="taskplatform.backends.redis"):
        moved = await queue.transfer_many(store, now=lost.created_at + 2000, most=2)
    assert [task.task_id for task in moved] == [_id(2)]
    assert await queue.depth() == 0
    assert [record.getMessage() for record in caplog.records] == [
        f"task {_id(1)}: its queued entry in Redis has no task hash (evicted by Redis, whose "
        "maxmemory-policy must be noeviction, or deleted by hand): the task is lost, dropped"
    ]


async def test_a_cancel_of_a_task_a_dequeue_has_reserved_lets_the_store_decide(
    redis_over: Backends,
) -> None:
    """A cancel takes a task a dequeue has reserved but not stored yet (else it waited for the
    reservation's 30 s when that dequeue's process had died): both insert it, the store keeps
    one, and the dequeue that lost hands nothing out."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    await queue.enqueue(_task(_id(1)))
    real_insert = store.insert_dequeued
    reserved, go_on = asyncio.Event(), asyncio.Event()

    async def held_insert(tasks: list[TaskRecord]) -> set[str]:
        reserved.set()
        await go_on.wait()
        return await real_insert(tasks)

    store.insert_dequeued = held_insert  # type: ignore[method-assign]
    dequeue = asyncio.create_task(queue.transfer_many(store, now=now_ms(), most=1))
    await reserved.wait()
    store.insert_dequeued = real_insert  # type: ignore[method-assign]
    cancelled = await queue.cancel(store, _id(1), now=now_ms())
    go_on.set()
    assert await dequeue == []
    assert cancelled is not None
    assert cancelled.status is Status.CANCELLED
    stored = await store.get(_id(1))
    assert stored is not None
    assert stored.status is Status.CANCELLED
    assert await queue.depth() == 0
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0


async def test_cancellation_during_the_insert_puts_the_batch_back_in_order(
    redis_over: Backends,
) -> None:
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    for n in range(6):
        await queue.enqueue(_task(_id(n), priority=n % 2))
    order = [_id(n) for n in (1, 3, 5, 0, 2, 4)]
    started = asyncio.Event()

    async def slow_insert(tasks: object) -> set[str]:
        started.set()
        await asyncio.sleep(10)
        return set()

    real_insert = store.insert_dequeued
    store.insert_dequeued = slow_insert  # type: ignore[method-assign]
    call = asyncio.create_task(queue.transfer_many(store, now=now_ms(), most=4))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    store.insert_dequeued = real_insert  # type: ignore[method-assign]
    assert await queue.client.zcard(f"{queue._prefix}:inflight") == 0
    ready = await queue.client.zrange(f"{queue._prefix}:ready:default", 0, -1)
    assert [_text(member)[17:] for member in ready] == order
    moved = await queue.transfer_many(store, now=now_ms(), most=6)
    assert [task.task_id for task in moved] == order


async def test_a_batch_insert_revives_a_row_a_requeue_marked(redis_over: Backends) -> None:
    """A row left marked Queued by an interrupted requeue is taken again by the batch insert;
    the others already stored are left alone."""
    store = redis_over.store
    tasks = [_task(_id(n)) for n in range(3)]
    for task in tasks:
        task.status = Status.DEQUEUED
    assert await store.insert_dequeued(tasks[:2]) == {_id(0), _id(1)}
    marked = await store.compare_and_set(
        _id(0),
        expected={Status.DEQUEUED},
        target=Status.QUEUED,
        now=now_ms(),
        changes=TaskChanges(lease_token="marker", lease_expires_at=None, error="back"),
    )
    assert marked is not None
    tasks[0].lease_token = "new-lease"
    assert await store.insert_dequeued(tasks) == {_id(0), _id(2)}
    revived = await store.get(_id(0))
    assert revived is not None
    assert (revived.status, revived.lease_token) == (Status.DEQUEUED, "new-lease")


async def test_a_batch_insert_keeps_nulls_booleans_and_every_number(redis_over: Backends) -> None:
    store = redis_over.store
    policy = RetryPolicy(
        backoff_min_seconds=1, backoff_max_seconds=2.5, backoff_multiplier=2, retry_on=[503]
    )
    tasks = [_task(_id(n), priority=[-(2**31), 2**31 - 1, 0][n]) for n in range(3)]
    tasks[0].timeout_seconds = 5  # an int in a double precision column
    tasks[0].lease_token, tasks[0].lease_expires_at = "L", 2**53
    tasks[1].scheduled_at, tasks[1].retry_policy = 123, policy
    tasks[1].dead_letter, tasks[1].dispatched = True, True
    tasks[1].error, tasks[1].result, tasks[1].completed_at = "e\u00e9", b'{"r": 1}', 7
    tasks[2].queue, tasks[2].task_data = "other", b'"\\u0000 \xe2\x82\xac"'
    for n, task in enumerate(tasks):
        task.status, task.sequence, task.dequeued_at = Status.DEQUEUED, 10 + n, 99
    assert await store.insert_dequeued(tasks) == {_id(0), _id(1), _id(2)}
    for task in tasks:
        assert await store.get(task.task_id) == task


async def test_a_redrive_cut_off_before_redis_has_it_comes_back_with_fresh_attempts(
    redis_over: Backends,
) -> None:
    """Step 1 of a re-drive (the store's row marked Queued) is done, step 2 (Redis) fails:
    recovery finishes it with the re-drive's fresh attempts, not the spent ones (with those
    the task came back Dequeued, unable to start, and went round the reaper for ever)."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    await queue.enqueue(_task(_id(1)))
    now = now_ms()
    [taken] = await queue.transfer_many(store, now=now, most=1)
    assert taken.attempts == 0
    for _ in range(2):  # both attempts of max_retries=1 spent
        started = await store.compare_and_set(
            _id(1),
            expected={Status.DEQUEUED, Status.RETRY},
            target=Status.PROCESSING,
            now=now,
            changes=TaskChanges(increment_attempts=True, lease_token="L", lease_expires_at=now),
        )
        assert started is not None
        failed = await store.compare_and_set(
            _id(1),
            expected={Status.PROCESSING},
            target=Status.RETRY if started.attempts == 1 else Status.FAILED,
            now=now,
            changes=TaskChanges(lease_token=None, lease_expires_at=None, error="HTTP 500"),
        )
        assert failed is not None
        assert failed.status is (Status.RETRY if started.attempts == 1 else Status.FAILED)
    failed = await store.compare_and_set(
        _id(1),
        expected={Status.FAILED},
        target=Status.FAILED,
        now=now,
        changes=TaskChanges(dead_letter=True, completed_at=now, result=b'{"no": 1}'),
    )
    assert failed is not None
    assert failed.attempts == 2

    async def cut_off(**arguments: object) -> None:
        raise BackendUnavailable("the Redis queue failed: injected")

    real_requeue = queue._requeue
    queue._requeue = cut_off  # type: ignore[assignment]
    try:
        with pytest.raises(BackendUnavailable):
            await queue.requeue(store, failed, now=now, note="re-driven", redrive=True)
    finally:
        queue._requeue = real_requeue
    later = now_ms() + 3_600_000
    await queue.recover(store, now=later)
    [back] = await queue.transfer_many(store, now=later, most=1)
    assert (back.task_id, back.status, back.attempts) == (_id(1), Status.DEQUEUED, 0)
    assert (back.dead_letter, back.result, back.completed_at) == (False, None, None)
    assert back.attempts <= back.max_retries  # it can start


async def test_a_requeue_that_failed_here_is_finished_by_the_next_recovery(
    redis_over: Backends,
) -> None:
    """Step 1 of a requeue (the store's row marked Queued) is done, step 2 (Redis) fails in
    this process: its next recovery finishes it, not one reservation_seconds (30 s) later. A
    re-drive answered 503 was Queued to GET, 409 to a second re-drive, and not dequeuable."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    for n in range(2):
        await queue.enqueue(_task(_id(n)))
    now = now_ms()
    taken = await queue.transfer_many(store, now=now, most=2, lease_token="L")

    async def cut_off(**arguments: object) -> None:
        raise BackendUnavailable("the Redis queue failed: injected")

    real_requeue = queue._requeue
    queue._requeue = cut_off  # type: ignore[assignment]
    try:
        for task in taken:
            with pytest.raises(BackendUnavailable):
                await queue.requeue(store, task, now=now, note="returned")
    finally:
        queue._requeue = real_requeue
    # The second's mark is no longer this process's to finish: a dequeue took it meanwhile.
    assert await store.compare_and_set(
        _id(1), expected={Status.QUEUED}, target=Status.DEQUEUED, now=now, changes=TaskChanges()
    )
    await queue.recover(store, now=now_ms())
    [back] = await queue.transfer_many(store, now=now_ms(), most=2)
    assert (back.task_id, back.status) == (_id(0), Status.DEQUEUED)
    assert await queue.depth() == 0


async def test_the_queue_tells_the_stores_it_serves_apart(redis_queue: RedisQueue) -> None:
    """``register_store``: another store's processes are returned while seen since ``since``,
    by their latest heartbeat; this store's own others are not; a process that unregisters is
    gone at once, and one unseen for a day is forgotten."""
    day = 24 * 3600 * 1000
    assert await redis_queue.register_store("A", "a1", now=1_000, since=0) == {}
    assert await redis_queue.register_store("A", "a2", now=1_500, since=0) == {}  # same store
    assert await redis_queue.register_store("B", "b1", now=2_000, since=0) == {"A": 1_500}
    assert await redis_queue.register_store("B", "b1", now=3_000, since=1_200) == {"A": 1_500}
    assert await redis_queue.register_store("B", "b1", now=4_000, since=1_600) == {}
    await redis_queue.unregister_store("A", "a2")
    assert await redis_queue.register_store("B", "b1", now=5_000, since=0) == {"A": 1_000}
    await redis_queue.register_store("B", "b1", now=1_001 + day, since=0)  # a1 is a day old
    fields = await redis_queue.client.hkeys(redis_queue._stores)
    assert sorted(_text(field) for field in fields) == ["B b1"]


async def test_a_queue_that_fails_to_register_does_not_fail_the_heartbeat(
    sqlite_service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down at a heartbeat: the process's row in the store is still refreshed and the
    maintenance round goes on (its reap of Processing leases needs only the store)."""

    async def down(*args: object, **kwargs: object) -> dict[str, int]:
        raise BackendUnavailable("the Redis queue failed: injected")

    monkeypatch.setattr(sqlite_service.queue, "register_store", down)
    seen = await sqlite_service.announce()
    assert [process.process_id for process in seen] == [sqlite_service._process.process_id]


async def test_a_redis_outage_does_not_keep_a_dead_process_tasks_processing(
    tmp_path: Path,
) -> None:
    """The reaper's round began with the Redis queue's recovery: with Redis down it failed
    there, and a task in Processing whose process had died (its lease run out, in the
    reachable SQL store) stayed Processing, refusing execute and cancel, until Redis came back."""
    env = backend_env("redis+sqlite", tmp_path)
    redis_url = URL(env["TASKPLATFORM_QUEUE_URL"])
    proxy = Proxy(redis_url.host or "127.0.0.1", redis_url.port or 6379).start()
    env["TASKPLATFORM_QUEUE_URL"] = str(redis_url.with_port(proxy.port))
    settings = Settings(
        **settings_kwargs(env),  # type: ignore[arg-type]
        processing_lease_grace_seconds=0.1,
    )
    await prepare_schema(settings)
    try:
        async with opened_service(settings) as service:
            body = b'{"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x", "timeoutSeconds": 0.2}'
            task, _ = await service.create(
                parse_task_create(body, max_depth=64, max_url_length=2048)
            )
            await service.dequeue(0)
            await service.start_execute(task.task_id)  # and its process dies: no outcome
            await asyncio.sleep(0.4)  # its lease (0.3 s) runs out
            proxy.cut()
            with pytest.raises(BackendUnavailable):
                await service.reap()
            stored = await service.store.get(task.task_id)
            assert stored is not None
            assert stored.status is Status.FAILED  # a pulled task: its caller executes again
            assert stored.error is not None
            assert "lease" in stored.error
            proxy.restore()
    finally:
        proxy.stop()


async def test_a_scheduled_task_released_by_a_failed_cancel_waits_for_its_time(
    redis_over: Backends,
) -> None:
    """A cancel reserves the task itself, from the scheduled set too. When the store then
    failed, or the process died and recovery returned the reservation, the task went back to
    the ready set: due at once, an hour early."""
    queue, store = redis_over.queue, redis_over.store
    assert isinstance(queue, RedisQueue)
    now = now_ms()
    for n in (1, 2):
        later = _task(_id(n))
        later.scheduled_at = now + 3_600_000
        await queue.enqueue(later)
    queue._faults = Faults("after_reserve=fail:1")  # the store fails the cancel's write
    with pytest.raises(BackendUnavailable):
        await queue.cancel(store, _id(1), now=now_ms())
    # The process dies between the cancel's reservation and its write; recovery returns it.
    await queue._reserve_one(
        keys=[queue._task_key(_id(2)), queue._inflight], args=[queue._prefix, now_ms()]
    )
    assert await queue.recover(store, now=now_ms() + 1) == 1
    assert await queue.transfer(store, now=now_ms()) is None  # neither is due
    scheduled = await queue.client.zrange(f"{queue._prefix}:scheduled:default", 0, -1)
    assert sorted(_text(member)[17:] for member in scheduled) == [_id(1), _id(2)]
    due = await queue.transfer(store, now=now + 3_600_000)
    assert due is not None
    assert due.task_id == _id(1)
