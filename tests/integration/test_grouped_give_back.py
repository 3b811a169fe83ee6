"""A pull dequeue whose client left, and whose give-back then failed once, returns its own task
to the queue and no other: dequeues that ran together share one statement and its lease token,
and the others' tasks went to callers that are there."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskplatform.exceptions import BackendUnavailable, QueueEmpty
from taskplatform.service import TaskService
from tests.support.service import create_task


@pytest.mark.parametrize("service", ["postgres", "redis+postgres"], indirect=True)
async def test_a_failed_give_back_returns_no_task_another_caller_was_handed(
    service: TaskService,
) -> None:
    """Found in review: caller A's client left while A's dequeue ran in one statement with
    caller B's; A's give-back failed once (a database blip), and the retry returned every task
    Dequeued under the group's token, B's too, answered 200: the next dequeue handed it out
    again."""
    for _ in range(3):
        await create_task(service, "http://127.0.0.1:9/x")
    groups: Any = service.queue._dequeues  # type: ignore[attr-defined]
    real_take, calls = groups._take_many, []
    gone_a = asyncio.Event()

    async def take_many(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(0.5)  # X's statement in flight; A and B wait, then go together
        tasks = await real_take(*args, **kwargs)
        if len(calls) == 2:
            gone_a.set()  # A's client hangs up while its group's statement runs
        return tasks

    groups._take_many = take_many
    real_requeue = service.queue.requeue
    blips: list[int] = []

    async def requeue(*args: Any, **kwargs: Any) -> bool:
        if not blips:  # the database fails once, at A's give-back
            blips.append(1)
            raise BackendUnavailable("blip")
        return await real_requeue(*args, **kwargs)

    service.queue.requeue = requeue  # type: ignore[method-assign]
    x = asyncio.create_task(service.dequeue())
    await asyncio.sleep(0.1)
    a = asyncio.create_task(service.dequeue(client_gone=gone_a))
    await asyncio.sleep(0)
    b = asyncio.create_task(service.dequeue())
    handed = {(await x).task_id, (await b).task_id}
    with pytest.raises(QueueEmpty):
        await a
    assert blips, "A's give-back was not tried"
    await asyncio.sleep(1.0)  # the settler's rounds return A's task
    again = []
    while True:
        try:
            again.append((await service.dequeue()).task_id)
        except QueueEmpty:
            break
    assert len(handed) == 2
    assert not handed & set(again), (handed, again)
    assert len(again) == 1  # A's, given back
