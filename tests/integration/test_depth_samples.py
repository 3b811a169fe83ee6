"""The store's queue depth history, on every backend: upsert per interval, read since, prune."""

from __future__ import annotations

import asyncio

from taskplatform.backends import Backends
from taskplatform.backends.base import DepthSample
from taskplatform.dispatch import sender_from_settings
from taskplatform.models import Status, TaskRecord, now_ms
from taskplatform.service import TaskService
from taskplatform.settings import Settings

MINUTE = 60_000
DAY = 24 * 60 * MINUTE


def _task(n: int, queue: str) -> TaskRecord:
    now = now_ms()
    return TaskRecord(
        task_id=f"01900000-0000-7000-8000-{n:012d}",
        status=Status.QUEUED,
        queue=queue,
        priority=0,
        task_data=b"{}",
        callback_url="http://127.0.0.1:9/x",
        max_retries=1,
        timeout_seconds=5.0,
        created_at=now,
        updated_at=now,
    )


async def test_samples_are_read_back_per_queue_oldest_first(backends: Backends) -> None:
    base = 1_800_000_000_000
    store = backends.store
    await store.record_depth_samples(
        [DepthSample("default", base + MINUTE, 3), DepthSample("emails", base + MINUTE, 7)],
        prune_before=0,
    )
    await store.record_depth_samples([DepthSample("default", base, 1)], prune_before=0)
    assert await store.depth_samples(since=base) == [
        DepthSample("default", base, 1),
        DepthSample("default", base + MINUTE, 3),
        DepthSample("emails", base + MINUTE, 7),
    ]
    assert await store.depth_samples(since=base + 1) == [
        DepthSample("default", base + MINUTE, 3),
        DepthSample("emails", base + MINUTE, 7),
    ]


async def test_writers_of_the_same_interval_leave_one_row(backends: Backends) -> None:
    base = 1_800_000_000_000
    store = backends.store
    # Ten servers sampling the same minute at once: one row per queue, the last write's depth.
    await asyncio.gather(
        *(
            store.record_depth_samples([DepthSample("default", base, depth)], prune_before=0)
            for depth in range(10)
        )
    )
    samples = await store.depth_samples(since=0)
    assert len(samples) == 1
    assert samples[0].queue == "default"
    assert samples[0].sampled_at == base
    assert samples[0].depth in range(10)
    await store.record_depth_samples([DepthSample("default", base, 42)], prune_before=0)
    assert await store.depth_samples(since=0) == [DepthSample("default", base, 42)]


async def test_old_samples_are_pruned(backends: Backends) -> None:
    now = 1_800_000_000_000
    store = backends.store
    await store.record_depth_samples(
        [DepthSample("default", now - DAY - MINUTE, 5), DepthSample("default", now - DAY, 6)],
        prune_before=0,
    )
    await store.record_depth_samples([DepthSample("default", now, 7)], prune_before=now - DAY)
    assert await store.depth_samples(since=0) == [
        DepthSample("default", now - DAY, 6),
        DepthSample("default", now, 7),
    ]
    await store.record_depth_samples([], prune_before=now + 1)
    assert await store.depth_samples(since=0) == []


async def test_samples_of_the_queue_counts_round_trip(backends: Backends) -> None:
    # What the service's sampler does: the queue backend's counts, written to the store.
    for n in range(3):
        await backends.queue.enqueue(_task(n, "emails"))
    await backends.queue.enqueue(_task(9, "default"))
    counts = await backends.queue.queue_counts(now=now_ms())
    at = now_ms() - now_ms() % MINUTE
    samples = [DepthSample(name, at, count.depth) for name, count in sorted(counts.items())]
    await backends.store.record_depth_samples(samples, prune_before=at - DAY)
    assert await backends.store.depth_samples(since=at) == [
        DepthSample("default", at, 1),
        DepthSample("emails", at, 3),
    ]


async def test_the_service_samples_every_queue_and_fills_empty_intervals(
    backends: Backends,
) -> None:
    """The sampler writes the default queue even when empty and other queues while they hold
    tasks; the history gives a drained queue 0 where it had no sample."""
    settings = Settings(queue_depth_sample_seconds=1)
    service = TaskService(backends, sender_from_settings(settings), settings)
    for n in range(2):
        await backends.queue.enqueue(_task(n, "emails"))
    now = now_ms()
    first = await service.sample_queue_depth(now - 2000)
    assert [(s.queue, s.depth) for s in first] == [("default", 0), ("emails", 2)]
    while await backends.queue.transfer(backends.store, now=now, queue="emails") is not None:
        pass
    await service.sample_queue_depth(now - 1000)
    await service.sample_queue_depth(now - 1000)  # a second server in the same interval
    times, depths = await service.depth_history(seconds=60)
    bucket = (now - 2000) - (now - 2000) % 1000
    assert times == [bucket, bucket + 1000]
    assert depths == {"default": [0, 0], "emails": [2, 0]}
