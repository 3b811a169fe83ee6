"""``TaskService.start_execute`` on every backend: a task that moves between the store and the
queue while execute looks for it is still found, and a dead letter tried again is one no more.

The moves are real operations on the real backends, run inside the window between execute's
reads (the store's and the queue's ``get`` are wrapped to run them first): over HTTP the window
is a few hundred microseconds and a test could only hope to hit it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskplatform.backends import TaskChanges
from taskplatform.exceptions import BackendUnavailable, RetryLimitReached
from taskplatform.models import Status, TaskRecord, now_ms
from taskplatform.service import LEASE_EXPIRED, TaskService
from tests.support.receiver import Receiver
from tests.support.service import create_task


def _before_first_call(
    monkeypatch: pytest.MonkeyPatch,
    backend: object,
    move: Callable[[], Awaitable[object]],
) -> None:
    """Make ``backend.get`` run ``move`` once, before its first read."""
    real = backend.get  # type: ignore[attr-defined]
    pending = [move]

    async def get(task_id: str) -> TaskRecord | None:
        if pending:
            await pending.pop()()
        return await real(task_id)  # type: ignore[no-any-return]

    monkeypatch.setattr(backend, "get", get)


async def test_execute_finds_a_task_that_moved_between_its_reads(
    service: TaskService, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Failed task is re-driven just before execute reads the store (so the store has it not)
    and dequeued just before execute reads the queue (so the queue has it not): execute must
    find it in the store again and start it, not answer that no such task exists (it did: a
    client may take a 404 to mean the task is gone)."""
    task_id = await create_task(service, receiver.url("/status/500"), maxRetries=3)
    assert (await service.dequeue()).task_id == task_id
    assert (await service.execute(task_id)).status is Status.FAILED

    async def dequeue() -> None:
        assert (await service.dequeue()).task_id == task_id

    _before_first_call(monkeypatch, service.store, lambda: service.redrive(task_id))
    _before_first_call(monkeypatch, service.queue, dequeue)
    started = await service.start_execute(task_id)
    assert (started.status, started.attempts) == (Status.PROCESSING, 1)  # re-driven: attempt 1
    assert (await service.finish_execute(started)).status is Status.FAILED
    assert len(receiver.hits_for(task_id)) == 2


async def test_a_dead_letter_that_succeeds_when_tried_again_is_no_dead_letter(
    service: TaskService, receiver: Receiver
) -> None:
    """A dispatched task whose first answer is permanent (``permanentOn: [500]``) is a Failed
    dead letter with attempts left; executed by hand, it succeeds: Completed, and no longer in
    the dead letters (it stayed flagged before)."""
    task_id = await create_task(service, receiver.url("/fail-first/1"), permanentOn=[500])
    (claimed,) = await service.claim_for_dispatch("default", 1)
    failed = await service.dispatch(claimed)
    assert failed.status is Status.FAILED
    task = await service.get(task_id)
    assert (task.status, task.dead_letter, task.attempts_left()) == (Status.FAILED, True, True)

    assert (await service.execute(task_id)).status is Status.COMPLETED
    task = await service.get(task_id)
    assert (task.status, task.dead_letter) == (Status.COMPLETED, False)
    dead = await service.list_tasks(status=None, cursor=None, limit=10, dead_letter=True)
    assert task_id not in {listed.task_id for listed in dead[0]}


async def test_a_dead_letter_whose_start_fails_is_left_due_for_a_dispatcher(
    service: TaskService, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Executing a dead letter is two moves, Failed to Retry, then Retry to Processing. When the
    database failed the second (a 503), the task stayed in Retry with no time: no dispatcher
    ever claimed it, it was no dead letter to re-drive any more, and only another manual
    execute moved it. It is due at once now, and a dispatcher takes it."""
    task_id = await create_task(service, receiver.url("/fail-first/1"), permanentOn=[500])
    (claimed,) = await service.claim_for_dispatch("default", 1)
    assert (await service.dispatch(claimed)).status is Status.FAILED
    real = service.store.compare_and_set
    starts = []

    async def fails_to_start(task_id: str, **arguments: Any) -> TaskRecord | None:
        if arguments["target"] is Status.PROCESSING:
            starts.append(task_id)
            if len(starts) == 2:  # the first finds the task Failed; the second is its start
                raise BackendUnavailable("the database went away (injected)")
        return await real(task_id, **arguments)

    monkeypatch.setattr(service.store, "compare_and_set", fails_to_start)
    with pytest.raises(BackendUnavailable):
        await service.execute(task_id)
    monkeypatch.setattr(service.store, "compare_and_set", real)
    task = await service.get(task_id)
    assert (task.status, task.dead_letter) == (Status.RETRY, False)
    assert task.next_attempt_at is not None
    assert task.next_attempt_at <= now_ms()
    await asyncio.sleep(0.1)  # a claim looks for due retries at most every 50 ms
    (claimed,) = await service.claim_for_dispatch("default", 1)
    assert claimed.task_id == task_id
    assert (await service.dispatch(claimed)).status is Status.COMPLETED


async def test_a_dequeued_task_with_no_attempts_left_says_so(service: TaskService) -> None:
    """Execute of a Dequeued task whose attempts are spent (left so by an older version's
    interrupted re-drive) is refused as retry_limit_reached, not as already executing."""
    task_id = await create_task(service, "http://127.0.0.1:9/x", maxRetries=1)
    assert (await service.dequeue()).task_id == task_id
    spent = await service.store.compare_and_set(
        task_id,
        expected={Status.DEQUEUED},
        target=Status.DEQUEUED,
        now=now_ms(),
        changes=TaskChanges(attempts=2),
    )
    assert spent is not None
    with pytest.raises(RetryLimitReached, match="has made 2 attempts, the most its maxRetries"):
        await service.execute(task_id)
    assert (await service.get(task_id)).status is Status.DEQUEUED


async def test_an_execute_whose_lease_was_lost_answers_what_the_store_recorded(
    service: TaskService, receiver: Receiver
) -> None:
    """The reaper (here, run by hand at the moment it would be) failed the attempt as
    interrupted while the callback ran; the callback's own answer is then not applied. The
    execute answered that answer ("timeout after 1 s", or a 2xx's Failed with no error) while
    GET and the attempt log said "interrupted" (found in review, with a lease grace of 0)."""
    task_id = await create_task(service, receiver.url("/slow?seconds=0.5"))
    assert (await service.dequeue()).task_id == task_id
    caller = asyncio.create_task(service.execute(task_id))
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    processing = await service.get(task_id)
    assert processing.status is Status.PROCESSING
    assert await service._interrupt(processing, LEASE_EXPIRED)
    answered = await caller
    stored = await service.get(task_id)
    assert (answered.status, answered.error, answered.result) == (
        stored.status,
        stored.error,
        stored.result,
    )
    assert (stored.status, stored.error) == (Status.FAILED, LEASE_EXPIRED)
    assert [entry.error for entry in await service.executions(task_id)] == [LEASE_EXPIRED]


async def test_an_execute_whose_lease_was_lost_does_not_answer_a_later_attempts_state(
    service: TaskService, receiver: Receiver
) -> None:
    """Attempt 1's lease is taken (as the reaper does) while its callback runs, and a second
    execute starts attempt 2 at once. When attempt 1's callback ended, its execute answered the
    stored record: attempt 2's Processing, labelled attempt 1 (found in review). It answers
    what was recorded of attempt 1: Failed, interrupted."""
    task_id = await create_task(service, receiver.url("/slow?seconds=1"))
    assert (await service.dequeue()).task_id == task_id
    first = asyncio.create_task(service.execute(task_id))
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    assert await service._interrupt(await service.get(task_id), LEASE_EXPIRED)
    second = asyncio.create_task(service.execute(task_id))
    while len(receiver.hits_for(task_id)) < 2:
        await asyncio.sleep(0.02)
    answered = await first
    assert (answered.status, answered.error, answered.attempt) == (
        Status.FAILED,
        LEASE_EXPIRED,
        1,
    )
    assert (await second).status is Status.COMPLETED
