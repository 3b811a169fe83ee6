"""Fixtures shared by every tier: a clean environment and a real callback receiver."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.backends import drop_created_databases
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


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    """Drop the PostgreSQL databases the session created, once it ends."""
    yield
    drop_created_databases()
