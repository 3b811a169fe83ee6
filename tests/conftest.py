"""Fixtures shared by every tier: a clean environment and a real callback receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.receiver import Receiver


@pytest.fixture(autouse=True)
def _clean_taskplatform_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without ``TASKPLATFORM_*`` variables from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("TASKPLATFORM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """A callback receiver on loopback, shared by the session (filter hits by task id)."""
    running = Receiver().start()
    yield running
    running.stop()
