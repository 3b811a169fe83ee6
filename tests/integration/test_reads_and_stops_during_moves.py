"""Moves of a task between the queue and the store while the service reads or starts it, and
stops and failures that cut a step short: none may lose the task from sight, leave it in a status
nothing moves it on from, or count an attempt never made. Found in review (2026-12-03), each
made deterministic by wrapping a store or queue method at the moment another process would act;
each failed on the code before its fix, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from taskplatform import service as service_module
from taskplatform.exceptions import BackendUnavailable, QueueEmpty, TaskNotFound
from taskplatform.models import Status, TaskRecord
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from tests.support.backends import BACKENDS, backend_env, settings_kwargs
from tests.support.receiver import Receiver
from tests.support.service import create_task, opened_service

Factory = Callable[..., contextlib.AbstractAsyncContextManager[TaskService]]


@pytest.fixture(params=BACKENDS)
def make_service(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Open a TaskService on a fresh backend combination, some settings overridden."""

    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[TaskService]:
        env = settings_kwargs(backend_env(request.param, tmp_path))
        async with opened_service(Settings(**{**env, **overrides})) as service:
            yield service

    return make


async def test_a_give_back_that_fails_once_is_tried_again_with_leases_off(
    make_service: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases off. A long poll takes a task just as its client leaves, and the store fails
    the give-back once (a blip). The task must still go back to the queue once the store
    answers again (as ``_return`` does for a lost dequeue answer, "leases off included");
    it stayed Dequeued with no lease, which nothing ever moves."""
    async with make_service(dequeue_lease_seconds=0) as service:
        task_id = await create_task(service, "http://127.0.0.1:9/x")
        gone = asyncio.Event()
        real_transfer = service.queue.transfer
        real_requeue = service.queue.requeue
        failures = [BackendUnavailable("the database went away for a moment (injected)")]

        async def transfer_then_leave(*args: Any, **kwargs: Any) -> TaskRecord | None:
            taken = await real_transfer(*args, **kwargs)
            gone.set()
            return taken

        async def requeue_fails_once(*args: Any, **kwargs: Any) -> bool:
            if failures:
                raise failures.pop()
            return await real_requeue(*args, **kwargs)

        monkeypatch.setattr(service.queue, "transfer", transfer_then_leave)
        monkeypatch.setattr(service.queue, "requeue", requeue_fails_once)
        with pytest.raises((QueueEmpty, BackendUnavailable)):
            await service.dequeue(5, client_gone=gone)
        monkeypatch.setattr(service.queue, "transfer", real_transfer)
        await asyncio.sleep(1.0)  # the settler's rounds (0.2 s, 0.6 s) would have run
        await service.reap()  # and the reaper
        task = await service.get(task_id)
        assert task.status is Status.QUEUED, (task.status, task.lease_expires_at)


async def test_listing_every_status_keeps_a_task_redriven_between_its_reads(
    make_service: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /api/tasks`` (no status) read the queue, then the store. A task that moved from
    the store back to the queue in between (a re-drive; a reaper's requeue likewise) was in
    neither read, and vanished from the list. The queue is read again after the store."""
    async with make_service() as service:
        task_id = await create_task(service, "http://127.0.0.1:9/x", maxRetries=0)
        assert (await service.dequeue()).task_id == task_id
        assert (await service.execute(task_id)).status is Status.FAILED
        real = service.queue.list_tasks

        async def list_then_redrive(**kwargs: Any) -> list[TaskRecord]:
            listed = await real(**kwargs)
            monkeypatch.setattr(service.queue, "list_tasks", real)
            await service.redrive(task_id)  # another client's, just after the first read
            return listed

        monkeypatch.setattr(service.queue, "list_tasks", list_then_redrive)
        page, _ = await service.list_tasks(status=None, cursor=None, limit=50)
        assert task_id in {task.task_id for task in page}


async def test_get_finds_a_task_dequeued_and_given_back_between_its_reads(
    make_service: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``get`` read the store, the queue, then the store again. A dequeue just before the
    queue read and a return to the queue (a long poll whose client left, a reaper's requeue)
    just before the second store read hid the task from all three: 404 for a task that
    exists. Reads now alternate up to five times (``TaskService._locate``)."""
    async with make_service() as service:
        task_id = await create_task(service, "http://127.0.0.1:9/x")
        taken: list[TaskRecord] = []
        real_queue_get, real_store_get = service.queue.get, service.store.get
        store_reads = [0]

        async def queue_get(task_id: str) -> TaskRecord | None:
            if not taken:
                taken.append(await service.dequeue())
            return await real_queue_get(task_id)

        async def store_get(task_id: str) -> TaskRecord | None:
            store_reads[0] += 1
            if store_reads[0] == 2 and taken:
                await service._give_back(taken[0])
            return await real_store_get(task_id)

        monkeypatch.setattr(service.queue, "get", queue_get)
        monkeypatch.setattr(service.store, "get", store_get)
        try:
            found = await service.get(task_id)
        except TaskNotFound:
            pytest.fail("GET answered 404 for a task that is Queued")
        assert found.task_id == task_id


async def test_a_claim_cut_off_at_stop_after_its_start_committed_is_withdrawn(
    make_service: Factory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dispatcher stops while its claim's start (Dequeued -> Processing) has committed but
    not yet answered; the claim gets _CLAIM_FINISH_SECONDS, then is cancelled. The started
    task is in no ``claimed`` list, so nobody calls it back. Unlike a start whose answer was
    lost to an error, nothing took the attempt back (``_withdraw``): the stop left it
    Processing, and when its lease ran out the reaper counted an attempt never made; a
    ``maxRetries: 0`` task ended a dead letter that no callback ever reached."""
    monkeypatch.setattr(service_module, "_CLAIM_FINISH_SECONDS", 0.2)
    # The stop waits this long for the start, whose answer takes 30 s here, then settles.
    monkeypatch.setattr(service_module, "SETTLE_AT_STOP_SECONDS", 0.5)
    async with make_service(processing_lease_grace_seconds=0) as service:
        task_id = await create_task(service, receiver.url("/ok"), maxRetries=0, timeoutSeconds=1)
        real = service.store.compare_and_set_many
        committed = asyncio.Event()

        async def slow_answer(*args: Any, **kwargs: Any) -> list[TaskRecord]:
            moved = await real(*args, **kwargs)  # committed in the database
            committed.set()
            await asyncio.sleep(30)  # the answer is slow to come back
            return moved

        monkeypatch.setattr(service.store, "compare_and_set_many", slow_answer)
        claim = asyncio.ensure_future(service.claim_for_dispatch("default", 1))
        await committed.wait()
        claim.cancel()  # the dispatcher is stopped
        with pytest.raises(asyncio.CancelledError):
            await claim
        monkeypatch.setattr(service.store, "compare_and_set_many", real)
        await service.shutdown(0.5)
        after_stop = await service.get(task_id)
        await asyncio.sleep(1.2)  # the attempt's lease (1 s + 0 s grace) runs out
        await service.reap()
        task = await service.get(task_id)
        calls = len(receiver.hits_for(task_id))
        summary = (
            f"left {after_stop.status.value} by a clean stop; then {task.status.value}, "
            f"dead letter {task.dead_letter}, {task.attempts} attempt(s) counted, "
            f"{calls} callback(s) made: {task.error}"
        )
        assert after_stop.status is not Status.PROCESSING, summary
        assert task.attempts == calls, summary


async def test_an_execute_cut_short_before_its_start_commits_is_withdrawn_once_it_has(
    make_service: Factory, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels an execute while its start is still on its way to the database (a slow
    pool or network; a group commit's writer, or SQLite's writer thread, carries on). The
    withdraw was registered at once, and its one try found nothing Processing; the start then
    committed, and the reaper counted an attempt never made. It is registered once the
    statement has finished: here after the stop, and the task ends in Retry with no attempt
    counted (found in review)."""
    async with make_service(processing_lease_grace_seconds=0) as service:
        task_id = await create_task(service, receiver.url("/ok"), maxRetries=0, timeoutSeconds=1)
        await service.dequeue(0)
        real = service.store.compare_and_set
        entered, gate = asyncio.Event(), asyncio.Event()
        finished = asyncio.Event()

        async def on_its_way(*args: Any, **kwargs: Any) -> TaskRecord | None:
            entered.set()
            await gate.wait()
            try:
                return await real(*args, **kwargs)
            finally:
                finished.set()

        monkeypatch.setattr(service.store, "compare_and_set", on_its_way)
        monkeypatch.setattr(service_module, "SETTLE_AT_STOP_SECONDS", 0.2)
        execute = asyncio.ensure_future(service.execute(task_id))
        await entered.wait()
        execute.cancel()  # the server stops
        with pytest.raises(asyncio.CancelledError):
            await execute
        await service.shutdown(0.5)  # waits 0.2 s for the start, then the settler's last try
        monkeypatch.setattr(service.store, "compare_and_set", real)
        gate.set()
        await asyncio.wait_for(finished.wait(), 10)
        for _ in range(100):
            task = await service.get(task_id)
            if task.status is Status.RETRY:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # the attempt's lease (1 s + 0 s grace) would have run out
        await service.reap()
        task = await service.get(task_id)
        assert task.status is Status.RETRY, task
        assert task.attempts == len(receiver.hits_for(task_id)) == 0
