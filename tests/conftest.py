"""Fixtures shared by every tier: a clean environment and a real callback receiver."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.backends import drop_created_databases
from tests.support.receiver import Receiver
from tests.support.server import LOGS

LOG_LINES_SHOWN = 150
"""The last lines of each server or worker log that a failing test's report shows."""

_log_sizes = pytest.StashKey[dict[Path, int]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None]:
    """Note how far each server and worker log has got before the test (and its fixtures) run."""
    item.stash[_log_sizes] = {path: path.stat().st_size for path in LOGS if path.exists()}
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add to a failing test's report what each server and worker wrote while it ran: most
    failures of a test over real processes are explained there, and the processes' temporary
    directories are gone by the time CI's output is read."""
    report = yield
    if report.failed:
        sizes = item.stash.get(_log_sizes, {})
        for path in dict.fromkeys(LOGS):
            if not path.exists() or path.stat().st_size == sizes.get(path, 0):
                continue
            with path.open("rb") as log:
                log.seek(sizes.get(path, 0))
                lines = log.read().decode(errors="replace").splitlines()
            shown = "\n".join(lines[-LOG_LINES_SHOWN:])
            report.sections.append((f"{path.parent.name}/{path.name}, during the test", shown))
    return report


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
