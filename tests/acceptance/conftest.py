"""Acceptance fixtures: the real ``taskplatform serve`` process, driven over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backends import BACKENDS, backend_env
from tests.support.server import Server, Worker


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend combination under test."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server shared by the tests of one module, on ``backend``."""
    workdir = tmp_path_factory.mktemp(f"server-{backend}")
    running = Server(backend_env(backend, workdir), workdir / "server.log").start()
    yield running
    running.stop()


@pytest.fixture
def start_server(backend: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start a fresh server of its own (empty queue), with extra environment variables."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        workdir = tmp_path / f"server-{len(started)}"
        workdir.mkdir()
        running = Server({**backend_env(backend, workdir), **env}, workdir / "server.log")
        started.append(running)
        return running.start()

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client bound to the shared server."""
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start ``taskplatform worker`` processes; stops them when the test ends."""
    started: list[Worker] = []

    def start(env: dict[str, str], *args: str) -> Worker:
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
