"""Integration fixtures: each backend combination, opened directly (no HTTP), and the service
on top of one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from tests.support.backends import BACKENDS, backend_env, settings_kwargs
from tests.support.service import opened_service


@pytest.fixture(params=BACKENDS)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """A fresh, empty queue and store of one backend combination."""
    settings = Settings(**settings_kwargs(backend_env(request.param, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_service(tmp_path: Path) -> AsyncIterator[TaskService]:
    """A TaskService on a fresh SQLite file."""
    async with opened_service(Settings(database_url=f"sqlite:///{tmp_path / 'tp.db'}")) as service:
        yield service


@pytest.fixture(params=BACKENDS)
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskService]:
    """A TaskService on a fresh, empty backend combination."""
    settings = Settings(**settings_kwargs(backend_env(request.param, tmp_path)))  # type: ignore[arg-type]
    async with opened_service(settings) as opened:
        yield opened
