"""``TaskService.execute`` cancelled by its caller (a request whose client hung up, under a server
that cancels such requests) must not cancel the callback already running, nor leave the attempt
unrecorded. In process, over a real SQLite file and a real slow receiver: uvicorn itself never
cancels a request, so only this test shows the shield at work."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from taskplatform.models import Status
from taskplatform.service import TaskService
from taskplatform.validation import parse_task_create
from tests.support.receiver import Receiver


@pytest.fixture
def service(sqlite_service: TaskService) -> TaskService:
    """A TaskService on a fresh SQLite file (see conftest.py)."""
    return sqlite_service


async def test_cancelling_execute_lets_the_callback_finish_and_records_it(
    service: TaskService, receiver: Receiver
) -> None:
    """The awaiting caller is cancelled 0.2 s into a 1 s callback: the callback runs on to its
    answer, the task is Completed, and its one attempt is recorded with the receiver's 200."""
    body = f'{{"taskData": {{"n": 1}}, "callbackUrl": "{receiver.url("/slow?seconds=1")}"}}'
    request = parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    created, _ = await service.create(request)
    task_id = created.task_id
    assert (await service.dequeue()).task_id == task_id

    caller = asyncio.create_task(service.execute(task_id))
    await asyncio.sleep(0.2)
    assert len(receiver.hits_for(task_id)) == 1  # the callback is in flight
    assert (await service.get(task_id)).status is Status.PROCESSING
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    deadline = time.monotonic() + 10
    while (task := await service.get(task_id)).status is Status.PROCESSING:
        assert time.monotonic() < deadline, "the attempt was never recorded"
        await asyncio.sleep(0.05)
    assert task.status is Status.COMPLETED, task.error
    assert task.attempts == 1
    assert task.result is not None
    assert json.loads(task.result) == {"slow": True}
    log = await service.executions(task_id)
    assert [(entry.attempt, entry.http_status, entry.error) for entry in log] == [(1, 200, None)]
    assert len(receiver.hits_for(task_id)) == 1


async def test_a_dispatched_call_that_fails_unexpectedly_is_logged_with_its_traceback(
    service: TaskService,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A defect in recording an outcome (here the store raising a RuntimeError) of a call that
    nobody awaits, as a dispatched one: logged as an error with its traceback, where it was
    dropped without a word and the task sat in Processing until its lease ran out."""
    body = f'{{"taskData": {{"n": 1}}, "callbackUrl": "{receiver.url("/ok")}"}}'
    request = parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    created, _ = await service.create(request)
    task = await service.start_execute((await service.dequeue()).task_id)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(service.store, "compare_and_set", broken)
    call = service.dispatch(task)
    await asyncio.wait({call})
    await asyncio.sleep(0)  # the done callbacks run
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1, caplog.text
    assert f"callback {created.task_id}: its outcome could not be recorded" in errors[0].message
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[1] is call.exception()
