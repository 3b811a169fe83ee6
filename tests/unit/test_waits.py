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


async def test_a_cancellation_a_driver_turns_into_an_error_stays_a_cancellation() -> None:
    """A driver that answers a cancellation mid-call with its own error (asyncpg under
    SQLAlchemy can) must not have it translated to BackendUnavailable, which retry loops catch:
    the loop would never stop and shutdown would hang (seen once in CI on redis+postgres)."""
    import sqlalchemy.exc

    from taskplatform.backends.postgres import _translated_errors

    async def driver_call() -> None:
        with _translated_errors():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError as exc:
                raise sqlalchemy.exc.InterfaceError(
                    "select 1", None, Exception("another operation is in progress")
                ) from exc

    call = asyncio.create_task(driver_call())
    await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
