"""The service's side of a graceful stop, in process over a real SQLite file and a real slow
receiver: one deadline from the signal on, a 503 ``shutting_down`` instead of a cancelled request,
no new attempts, long polls that let go, and the signal hook that starts it all.

``tests/acceptance/test_reliability.py`` shows the same through a real ``taskplatform serve`` and a
real SIGTERM on every backend; these show each rule on its own, and fast.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from taskplatform.api.app import create_app, hook_stop_signals
from taskplatform.exceptions import QueueEmpty, ShuttingDown
from taskplatform.models import Status
from taskplatform.service import (
    INTERRUPTED,
    STOPPED_MID_CALLBACK,
    STOPPED_MID_LAST_CALLBACK,
    STOPPING,
    TaskService,
)
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create
from tests.support.receiver import Receiver


@pytest.fixture
def service(sqlite_service: TaskService) -> TaskService:
    """A TaskService on a fresh SQLite file (see conftest.py)."""
    return sqlite_service


async def _created(service: TaskService, callback_url: str) -> str:
    body = f'{{"taskData": {{"n": 1}}, "callbackUrl": "{callback_url}"}}'
    created, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    return created.task_id


async def _dequeued(service: TaskService, callback_url: str) -> str:
    task_id = await _created(service, callback_url)
    assert (await service.dequeue()).task_id == task_id
    return task_id


async def test_an_execute_in_flight_gets_the_grace_once_then_a_shutting_down_error(
    service: TaskService, receiver: Receiver
) -> None:
    """begin_shutdown(0.5) during a 2 s callback: the waiting execute raises ShuttingDown 0.5 s
    later (not CancelledError, which the server would turn into a 500), after the attempt was
    recorded as interrupted; a later shutdown(30) keeps that deadline instead of waiting 30 s."""
    task_id = await _dequeued(service, receiver.url("/slow?seconds=2"))
    caller = asyncio.create_task(service.execute(task_id))
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    started = time.monotonic()
    service.begin_shutdown(0.5)
    with pytest.raises(ShuttingDown) as raised:
        await caller
    assert 0.45 < time.monotonic() - started < 1.5
    assert (raised.value.detail, raised.value.task_id) == (STOPPED_MID_CALLBACK, task_id)
    task = await service.get(task_id)
    assert (task.status, task.attempts, task.error) == (Status.FAILED, 1, INTERRUPTED)
    assert [entry.error for entry in await service.executions(task_id)] == [INTERRUPTED]

    started = time.monotonic()
    await service.shutdown(30)
    assert time.monotonic() - started < 0.5


async def test_a_shutdown_mid_callback_of_a_last_attempt_says_the_task_is_a_dead_letter(
    service: TaskService, receiver: Receiver
) -> None:
    """maxRetries 0: the interrupted attempt was the task's last, so it is a dead letter, and
    the 503 said "the task can be executed again" while the next execute was 409
    retry_limit_reached (found in review)."""
    body = (
        f'{{"taskData": {{}}, "callbackUrl": "{receiver.url("/slow?seconds=2")}", "maxRetries": 0}}'
    )
    created, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    task_id = created.task_id
    assert (await service.dequeue()).task_id == task_id
    caller = asyncio.create_task(service.execute(task_id))
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    service.begin_shutdown(0.2)
    with pytest.raises(ShuttingDown) as raised:
        await caller
    assert raised.value.detail == STOPPED_MID_LAST_CALLBACK
    task = await service.get(task_id)
    assert (task.status, task.dead_letter) == (Status.FAILED, True)
    await service.shutdown(30)


async def test_a_callback_that_starts_after_the_stopper_looked_gets_the_same_deadline(
    service: TaskService, receiver: Receiver
) -> None:
    """An execute past its stopping check when the signal came starts its callback after the
    stopper found nothing in flight: shutdown still waits for it until the deadline and
    records it interrupted, instead of closing the backends under it."""
    task_id = await _dequeued(service, receiver.url("/slow?seconds=5"))
    task = await service.start_execute(task_id)  # past the check
    service.begin_shutdown(0.5)
    await asyncio.sleep(0.05)  # the stopper has looked: nothing was in flight
    service.dispatch(task)
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    started = time.monotonic()
    await service.shutdown(30)
    assert time.monotonic() - started < 1.5
    stopped = await service.get(task_id)
    assert (stopped.status, stopped.error) == (Status.FAILED, INTERRUPTED)


async def test_a_callback_that_ends_within_the_grace_answers_its_outcome(
    service: TaskService, receiver: Receiver
) -> None:
    task_id = await _dequeued(service, receiver.url("/slow?seconds=0.3"))
    caller = asyncio.create_task(service.execute(task_id))
    while not receiver.hits_for(task_id):
        await asyncio.sleep(0.02)
    service.begin_shutdown(5)
    outcome = await caller
    assert (outcome.status, outcome.attempt) == (Status.COMPLETED, 1)
    started = time.monotonic()
    await service.shutdown(5)  # nothing left in flight: no wait
    assert time.monotonic() - started < 0.5


async def test_a_stopping_service_starts_no_attempt_and_ends_long_polls(
    service: TaskService, receiver: Receiver
) -> None:
    """Once stopping: execute raises ShuttingDown and makes no callback (the task stays
    Dequeued, executable elsewhere), the dispatcher claims nothing, and a long poll answers
    QueueEmpty at once instead of holding the server's drain for its whole wait."""
    task_id = await _dequeued(service, receiver.url("/ok"))
    poll = asyncio.create_task(service.dequeue(wait_seconds=10))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    service.begin_shutdown(5)
    with pytest.raises(QueueEmpty):
        await poll
    assert time.monotonic() - started < 0.5
    with pytest.raises(ShuttingDown) as raised:
        await service.execute(task_id)
    assert raised.value.detail == STOPPING
    assert (await service.get(task_id)).status is Status.DEQUEUED
    assert not receiver.hits_for(task_id)
    await _dequeued(service, receiver.url("/ok"))  # a plain dequeue still answers
    await _created(service, receiver.url("/ok"))
    assert await service.claim_for_dispatch("default") == []
    await service.shutdown(5)


async def test_the_signal_hook_starts_stopping_then_runs_the_servers_handler() -> None:
    """hook_stop_signals chains onto the handler in place (uvicorn's): a SIGTERM calls back on
    the loop and still reaches that handler; unhooking puts the handler back. A signal left at
    its default action is not hooked (no server there drains)."""
    original = signal.getsignal(signal.SIGTERM)
    reached: list[int] = []
    stops: list[str] = []

    def servers_handler(number: int, frame: FrameType | None) -> None:
        reached.append(number)

    async def stop() -> None:
        stops.append("stop")

    try:
        signal.signal(signal.SIGTERM, servers_handler)
        unhook = hook_stop_signals(stop)
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert (stops, reached) == (["stop"], [signal.SIGTERM])
        unhook()
        assert signal.getsignal(signal.SIGTERM) is servers_handler

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        unhook = hook_stop_signals(stop)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        unhook()
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_a_lifespan_torn_down_without_its_shutdown_reports_no_failure(
    tmp_path: Path,
) -> None:
    """A second SIGINT makes uvicorn skip the lifespan's shutdown, and the loop's teardown then
    cancels the lifespan where it waits: the app runs its cleanup and ends quietly, instead of
    sending ``lifespan.shutdown.failed`` with a traceback (which uvicorn logs as an ERROR)."""
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'tp.db'}"))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[MutableMapping[str, Any]] = []
    started = asyncio.Event()

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
    await started.wait()
    lifespan.cancel()  # what asyncio.run does to the tasks left at the end
    await asyncio.wait({lifespan})
    assert not lifespan.cancelled()
    assert lifespan.exception() is None
    assert [message["type"] for message in sent] == ["lifespan.startup.complete"]
    assert app.state.service.stopping  # the lifespan's cleanup ran
