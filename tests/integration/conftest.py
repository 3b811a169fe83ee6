"""Integration fixtures: each backend combination, opened directly (no HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.settings import Settings
from tests.support.backends import BACKENDS, backend_env, settings_kwargs


@pytest.fixture(params=BACKENDS)
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    """A fresh, empty queue and store of one backend combination."""
    settings = Settings(**settings_kwargs(backend_env(request.param, tmp_path)))  # type: ignore[arg-type]
    await prepare_schema(settings)
    opened = open_backends(settings)
    yield opened
    await opened.close()
