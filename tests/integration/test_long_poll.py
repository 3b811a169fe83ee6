"""A long-polling dequeue whose client has gone, on every backend: a task taken just as the
client left goes back to the queue at its place instead of sitting Dequeued for nobody."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.exceptions import QueueEmpty
from taskplatform.models import Status, TaskRecord
from taskplatform.service import TaskService
from taskplatform.validation import parse_task_create


async def _create(service: TaskService, priority: int) -> str:
    body = f'{{"taskData": {{}}, "callbackUrl": "http://127.0.0.1:9/x", "priority": {priority}}}'
    task, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    return task.task_id


async def test_a_task_taken_as_the_client_leaves_goes_back_to_its_place(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's connection closes while the dequeue takes the task (the real transfer
    runs, then the disconnect is seen): the task is Queued again, still ahead of a later task
    of lower priority, and its record says why."""
    first, second = await _create(service, 5), await _create(service, 0)
    gone = asyncio.Event()
    real = service.queue.transfer

    async def transfer_then_leave(*args: object, **kwargs: object) -> TaskRecord | None:
        taken = await real(*args, **kwargs)  # type: ignore[arg-type]
        gone.set()
        return taken

    monkeypatch.setattr(service.queue, "transfer", transfer_then_leave)
    with pytest.raises(QueueEmpty):
        await service.dequeue(5, client_gone=gone)
    monkeypatch.undo()
    back = await service.get(first)
    assert back.status is Status.QUEUED
    assert back.error == "returned to the queue: the client that dequeued it had gone"
    assert (await service.dequeue()).task_id == first
    assert (await service.dequeue()).task_id == second


async def test_a_waiting_dequeue_ends_when_the_client_leaves(service: TaskService) -> None:
    """Waiting on an empty queue, the dequeue answers as soon as the client has gone, not at
    the end of its wait, and takes nothing created after."""
    gone = asyncio.Event()
    waiting = asyncio.ensure_future(service.dequeue(10, client_gone=gone))
    await asyncio.sleep(0.2)
    gone.set()
    with pytest.raises(QueueEmpty):
        await asyncio.wait_for(waiting, 2)
    task_id = await _create(service, 0)
    assert (await service.get(task_id)).status is Status.QUEUED
