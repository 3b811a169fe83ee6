"""The service's cache of paused queues, on every backend: callers that find it stale together
share one store read, and a pause made in this process is seen at once, even by a caller that
arrives while an older read is still in flight."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.service import TaskService


def _count_reads(service: TaskService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the store's reads of the paused queues (the real store still answers them)."""
    reads = [0]
    real = service.store.paused_queues

    async def counted() -> set[str]:
        reads[0] += 1
        return await real()

    monkeypatch.setattr(service.store, "paused_queues", counted)
    return reads


async def test_concurrent_callers_share_one_read(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.set_paused("reports", True)
    reads = _count_reads(service, monkeypatch)
    answers = await asyncio.gather(*(service.paused_queues() for _ in range(50)))
    assert reads[0] == 1
    assert all(answer == {"reports"} for answer in answers)
    # Fresh now: the next callers read nothing.
    await asyncio.gather(*(service.paused_queues() for _ in range(10)))
    assert reads[0] == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_read(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await service.set_paused("reports", True)
    reads = _count_reads(service, monkeypatch)
    first = asyncio.ensure_future(service.paused_queues())
    second = asyncio.ensure_future(service.paused_queues())
    await asyncio.sleep(0)  # both are waiting on the one read
    first.cancel()
    assert await second == {"reports"}
    assert first.cancelled()
    assert reads[0] == 1


async def test_a_pause_here_is_seen_at_once_despite_a_read_in_flight(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that started before the pause must neither answer a later caller nor be
    cached: the caller after ``set_paused`` reads again."""
    assert await service.paused_queues() == set()
    service._paused_read_at = float("-inf")  # stale, as after _PAUSE_CACHE_SECONDS
    release = asyncio.Event()
    real = service.store.paused_queues
    reads = [0]

    async def slow_first_read() -> set[str]:
        reads[0] += 1
        if reads[0] == 1:
            answer = await real()  # before the pause
            await release.wait()
            return answer
        return await real()

    monkeypatch.setattr(service.store, "paused_queues", slow_first_read)
    early = asyncio.ensure_future(service.paused_queues())
    await asyncio.sleep(0.05)
    await service.set_paused("reports", True)
    assert await service.paused_queues() == {"reports"}
    release.set()
    assert await early == set()  # its own answer, from before the pause
    assert await service.paused_queues() == {"reports"}  # the old read was not cached
    assert reads[0] == 2
