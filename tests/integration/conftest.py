"""Integration fixtures: each backend combination, opened directly (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.settings import Settings
from tests.support.backends import BACKENDS, backend_env


@pytest.fixture(params=BACKENDS)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """A fresh, empty queue and store of one backend combination."""
    env = backend_env(request.param, tmp_path)
    settings = Settings(database_url=env["TASKPLATFORM_DATABASE_URL"])
    prepare_schema(settings)
    opened = open_backends(settings)
    yield opened
    await opened.close()
