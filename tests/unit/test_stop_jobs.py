"""Shutdown's wait for the background jobs: bounded, and loud about a job that will not stop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from taskplatform.api.app import stop_jobs


async def test_a_job_that_swallows_its_cancel_is_logged_and_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # a retry loop that took the cancel for an error

    async def obedient() -> None:
        await asyncio.sleep(60)

    jobs = [
        asyncio.create_task(stubborn(), name="maintenance"),
        asyncio.create_task(obedient(), name="dispatcher"),
    ]
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="taskplatform.api.app"):
        await stop_jobs(jobs, 0.2)
    assert 0.2 <= time.monotonic() - started < 2
    assert jobs[1].cancelled()
    assert not jobs[0].done()
    [record] = caplog.records
    assert "'maintenance' did not stop within 0.2 s" in record.getMessage()
    assert "in stubborn" in record.getMessage()  # the stack it is stuck in
    release.set()
    await jobs[0]


async def test_jobs_that_stop_are_waited_for_no_longer_than_they_take() -> None:
    jobs = [asyncio.create_task(asyncio.sleep(60)) for _ in range(3)]
    started = time.monotonic()
    await stop_jobs(jobs, 30)
    assert time.monotonic() - started < 1
    assert all(job.cancelled() for job in jobs)
