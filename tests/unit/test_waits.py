"""Waits in the service and the dispatcher always end when their task is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.service import wait_for_event


async def test_a_cancel_racing_the_event_or_the_timer_is_never_lost() -> None:
    """Cancel lands in the same loop turn as the event being set, or as the timer firing.

    On Python 3.11 ``asyncio.wait_for`` and ``asyncio.timeout`` could drop such a cancellation;
    a dispatcher loop built on them then ignored SIGTERM (seen in about 1 of 10 stops).
    """
    for round_ in range(400):
        event = asyncio.Event()
        seconds = 0.001 if round_ % 2 else 10.0
        waiter = asyncio.create_task(wait_for_event(event, seconds))
        await asyncio.sleep(0.001 if round_ % 2 else 0)
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_it_returns_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    event.set()
    assert await wait_for_event(event, 10) is True
