"""A dispatcher's batch claim, through the service on every backend: up to ``most`` tasks in
dequeue order, each in Processing with one attempt and a lease from its own timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplatform.models import Status, now_ms
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create
from tests.support.backends import BACKENDS, backend_env, settings_kwargs
from tests.support.service import opened_service


@pytest.fixture(params=BACKENDS)
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskService]:
    """A TaskService on a fresh, empty backend combination."""
    settings = Settings(**settings_kwargs(backend_env(request.param, tmp_path)))  # type: ignore[arg-type]
    async with opened_service(settings) as opened:
        yield opened


async def _create(service: TaskService, priority: int, timeout_seconds: int) -> str:
    body = (
        f'{{"taskData": {{}}, "callbackUrl": "http://127.0.0.1:9/x", "priority": {priority}, '
        f'"timeoutSeconds": {timeout_seconds}}}'
    )
    task, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    return task.task_id


async def test_a_claim_takes_a_batch_each_under_its_own_lease(service: TaskService) -> None:
    ids = [
        await _create(service, priority, timeout)
        for priority, timeout in [(0, 5), (3, 60), (0, 60), (3, 5), (7, 5), (-1, 60)]
    ]
    grace_ms = round(service.settings.processing_lease_grace_seconds * 1000)
    before = now_ms()
    claimed = await service.claim_for_dispatch("default", 4)
    after = now_ms()
    assert sorted(task.task_id for task in claimed) == sorted([ids[4], ids[1], ids[3], ids[0]])
    for task in claimed:
        assert (task.status, task.attempts, task.dispatched) == (Status.PROCESSING, 1, True)
        stored = await service.get(task.task_id)
        assert stored.status is Status.PROCESSING
        assert stored.lease_token == task.lease_token
        lease_ms = round(task.timeout_seconds * 1000) + grace_ms
        assert task.lease_expires_at is not None
        assert before + lease_ms <= task.lease_expires_at <= after + lease_ms
    rest = await service.claim_for_dispatch("default", 4)
    assert sorted(task.task_id for task in rest) == sorted([ids[2], ids[5]])
    assert await service.claim_for_dispatch("default", 4) == []
    counts, _ = await service.stats()
    assert counts[Status.PROCESSING] == 6
    assert counts[Status.QUEUED] == 0
