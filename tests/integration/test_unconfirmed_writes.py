"""Settling writes the database may have committed without answering (``TaskService._settle``):
one job for them all, so an outage during which clients keep calling does not multiply the
statements that fail, and every one is settled once the store answers again."""

from __future__ import annotations

import asyncio

import pytest

from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import TaskRecord
from taskplatform.service import TaskService


@pytest.fixture
def service(sqlite_service: TaskService) -> TaskService:
    """A TaskService on a fresh SQLite file (see conftest.py)."""
    return sqlite_service


async def test_an_outage_costs_one_failing_statement_a_round_not_one_a_request(
    service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    down = True

    async def dequeued_under(lease_token: str) -> list[TaskRecord]:
        calls.append(lease_token)
        if down:
            raise BackendUnavailable("injected")
        return []

    monkeypatch.setattr(service.store, "dequeued_under", dequeued_under)
    for n in range(50):  # fifty dequeues answered 503 during the outage
        service._return(f"token-{n}")
    await asyncio.sleep(1.6)  # rounds at 0.2, 0.6 and 1.4 s
    assert 1 <= len(calls) <= 4, len(calls)
    assert len(service._unsettled) == 50
    down = False
    await asyncio.sleep(2.2)  # the next round, at most 2 s on, settles every one
    assert service._unsettled == {}
    assert sorted(set(calls)) == sorted(f"token-{n}" for n in range(50))
