"""A dispatcher's batch claim, through the service on every backend: up to ``most`` tasks in
dequeue order, each in Processing with one attempt and a lease from its own timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskplatform.backends import TaskChanges
from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import Status, TaskRecord, now_ms
from taskplatform.service import TaskService
from taskplatform.validation import parse_task_create
from tests.support.receiver import Receiver


async def _create(
    service: TaskService, priority: int, timeout_seconds: int, url: str = "http://127.0.0.1:9/x"
) -> str:
    body = (
        f'{{"taskData": {{}}, "callbackUrl": "{url}", "priority": {priority}, '
        f'"timeoutSeconds": {timeout_seconds}}}'
    )
    task, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    return task.task_id


async def test_a_claim_takes_a_batch_each_under_its_own_lease(service: TaskService) -> None:
    ids = [
        await _create(service, priority, timeout)
        for priority, timeout in [(0, 5), (3, 60), (0, 60), (3, 5), (7, 5), (-1, 60)]
    ]
    grace_ms = round(service.settings.processing_lease_grace_seconds * 1000)
    before = now_ms()
    claimed = await service.claim_for_dispatch("default", 4)
    after = now_ms()
    assert sorted(task.task_id for task in claimed) == sorted([ids[4], ids[1], ids[3], ids[0]])
    for task in claimed:
        assert (task.status, task.attempts, task.dispatched) == (Status.PROCESSING, 1, True)
        stored = await service.get(task.task_id)
        assert stored.status is Status.PROCESSING
        assert stored.lease_token == task.lease_token
        lease_ms = round(task.timeout_seconds * 1000) + grace_ms
        assert task.lease_expires_at is not None
        assert before + lease_ms <= task.lease_expires_at <= after + lease_ms
    rest = await service.claim_for_dispatch("default", 4)
    assert sorted(task.task_id for task in rest) == sorted([ids[2], ids[5]])
    assert await service.claim_for_dispatch("default", 4) == []
    counts, _ = await service.stats()
    assert counts[Status.PROCESSING] == 6
    assert counts[Status.QUEUED] == 0


async def test_a_claim_that_fails_partway_returns_what_it_started(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A due retry is already in Processing when taking new tasks fails: the claim returns it
    (to be called back), instead of raising and leaving it in Processing with nobody on it."""
    first = await _create(service, 0, 5)
    [task] = await service.claim_for_dispatch("default", 1)
    waiting = await service._transition(
        first,
        {Status.PROCESSING},
        Status.RETRY,
        changes=TaskChanges(lease_token=None, lease_expires_at=None, next_attempt_at=now_ms() - 1),
    )
    assert waiting is not None
    await _create(service, 0, 5)

    async def unavailable(*args: object, **kwargs: object) -> list[TaskRecord]:
        raise BackendUnavailable("the queue is down")

    monkeypatch.setattr(service.queue, "transfer_many", unavailable)
    service._no_retries_until.clear()
    claimed = await service.claim_for_dispatch("default", 2)
    assert [(t.task_id, t.status, t.attempts) for t in claimed] == [(first, Status.PROCESSING, 2)]
    with pytest.raises(BackendUnavailable):  # nothing claimed: the dispatcher pauses
        await service.claim_for_dispatch("default", 2)
    assert task.task_id == first


async def test_an_outcome_being_recorded_at_the_shutdown_deadline_is_kept(
    service: TaskService, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callbacks have answered and their outcomes are being written (slowly) when the
    shutdown deadline cancels them: the outcomes are still recorded, none is left in
    Processing, and each attempt is logged once (not also as interrupted)."""
    ids = [await _create(service, 0, 5, receiver.url("/ok")) for _ in range(3)]
    claimed = await service.claim_for_dispatch("default", 3)
    assert len(claimed) == 3
    compare_and_set = service.store.compare_and_set

    async def slow_write(*args: Any, **kwargs: Any) -> TaskRecord | None:
        await asyncio.sleep(0.3)  # a slow commit
        return await compare_and_set(*args, **kwargs)

    monkeypatch.setattr(service.store, "compare_and_set", slow_write)
    for task in claimed:
        service.dispatch(task)
    while len([hit for hit in receiver.hits_on("/ok") if hit.headers.get("X-Task-Id") in ids]) < 3:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # every outcome is in its write now
    await service.shutdown(0)
    for task_id in ids:
        assert (await service.get(task_id)).status is Status.COMPLETED
        assert [e.http_status for e in await service.executions(task_id)] == [200]


async def test_a_claim_stopped_after_its_commit_still_calls_its_tasks_back(
    service: TaskService, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatcher is stopped while its claim waits for the answer of the statement that
    moved its tasks on to Processing, which has committed: the claim still ends with the tasks
    known, so the shutdown calls them back, instead of leaving them in Processing with nobody on
    them until their lease runs out."""
    ids = [await _create(service, 0, 5, receiver.url("/ok")) for _ in range(3)]
    compare_and_set_many = service.store.compare_and_set_many
    committed = asyncio.Event()

    async def slow_answer(*args: Any, **kwargs: Any) -> list[TaskRecord]:
        moved = await compare_and_set_many(*args, **kwargs)
        committed.set()
        await asyncio.sleep(0.3)  # the answer on its way back
        return moved

    monkeypatch.setattr(service.store, "compare_and_set_many", slow_answer)
    claim = asyncio.ensure_future(service.claim_for_dispatch("default", 3))
    await committed.wait()
    for task_id in ids:
        assert (await service.get(task_id)).status is Status.PROCESSING
    claim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await claim
    await service.shutdown(10)
    for task_id in ids:
        assert (await service.get(task_id)).status is Status.COMPLETED
        assert [e.http_status for e in await service.executions(task_id)] == [200]
    hits = [hit.headers.get("X-Task-Id") for hit in receiver.hits_on("/ok")]
    assert sorted(task_id for task_id in hits if task_id in ids) == sorted(ids)


async def test_a_claim_never_started_goes_back_even_where_pulls_take_no_lease(
    service: TaskService,
) -> None:
    """A dispatcher died between its claim and the start: its claim's own lease sends the task
    back, also from a process whose pulls take no lease (dequeue_lease_seconds 0), and the
    record says which lease ran out."""
    service.settings = service.settings.model_copy(update={"dequeue_lease_seconds": 0})
    task_id = await _create(service, 0, 5)
    claimed_at = now_ms() - 2000
    [taken] = await service.queue.transfer_many(
        service.store,
        now=claimed_at,
        most=1,
        queue="default",
        lease_token="claim",
        lease_expires_at=claimed_at + 1000,
        dispatched=True,
    )
    assert taken.task_id == task_id
    assert await service.reap() == (0, 1)
    task = await service.get(task_id)
    assert task.status is Status.QUEUED
    assert (
        task.error
        == "returned to the queue: the dispatcher that claimed it did not start it within 1 s"
    )
    [again] = await service.claim_for_dispatch("default", 1)
    assert (again.task_id, again.status, again.attempts) == (task_id, Status.PROCESSING, 1)
