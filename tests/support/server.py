"""Run ``taskplatform serve`` and ``taskplatform worker`` as real subprocesses, configured only by
environment variables."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

LOGS: list[Path] = []
"""The log file of every server and worker this test process has started, oldest first; a failing
test's report shows what each wrote during the test (``tests/conftest.py``)."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environ(extra: dict[str, str]) -> dict[str, str]:
    """Return this process's environment without ``TASKPLATFORM_*``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPLATFORM_")}
    env.update(extra)
    return env


def store_env(server: Server) -> dict[str, str]:
    """The store and queue settings of ``server``, for a worker on the same data."""
    return {
        key: value
        for key, value in server.env.items()
        if key.startswith("TASKPLATFORM_")
        and not key.startswith("TASKPLATFORM_DISPATCH")
        and key != "TASKPLATFORM_PORT"
    }


class Server:
    """One ``taskplatform serve`` process on a free loopback port.

    Args:
        env: ``TASKPLATFORM_*`` variables (and any others) for the process.
        log_path: Where the process's output goes.
        args: More arguments of ``serve`` (``--workers 2``).
        own_group: Start it in a process group of its own, as a shell starts a command, so
            that a test can signal it and its workers together, as a terminal's Ctrl-C does.
        cwd: The folder it runs in (this process's when None).
        launcher: A command that runs the server's command line given after it, as
            ``prlimit --nofile=256: --`` (it must exec it, so that the process is the
            server's); none by default.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *args: str,
        own_group: bool = False,
        cwd: Path | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.env = clean_environ(env)
        self.use_port(free_port())
        self.log_path = log_path
        self.args = args
        self.own_group = own_group
        self.cwd = cwd
        self.launcher = list(launcher)
        self.process: subprocess.Popen[bytes] | None = None
        LOGS.append(log_path)

    def start(self, timeout: float = 30.0) -> Server:
        """Start the process and wait until it listens and ``/healthz`` answers; returns self.

        The port :func:`free_port` found free can be taken before the process binds it, by
        another test or another test run on the machine (a test that starts its server late
        on a known port holds one for a second). Until this process's own log says it listens,
        an answer on the port is another server's and does not count; if the bind fails, the
        process starts again on a new port, twice at most.
        """
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:  # the child keeps its own copy of the fd
                self.process = subprocess.Popen(
                    [*self.launcher, sys.executable, "-m", "taskplatform", "serve", *self.args],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    process_group=0 if self.own_group else None,
                    cwd=self.cwd,
                )
            if self._wait_healthy(offset, timeout):
                return self
            if attempt < 2:
                self.use_port(free_port())
        raise RuntimeError(f"server could not bind a free port three times:\n{self.log()}")

    def use_port(self, port: int) -> None:
        """Listen on ``port`` from the next :meth:`start` on."""
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env["TASKPLATFORM_PORT"] = str(port)

    def _wait_healthy(self, offset: int, timeout: float) -> bool:
        """True once the process listens on its port and answers ``/healthz``; False when it
        exited because the port was taken. Raises for any other exit, or after ``timeout``."""
        assert self.process is not None
        # The address in the line is the one it binds (127.0.0.1, 0.0.0.0, [::]); the port is ours.
        listening = f":{self.port} (Press CTRL+C to quit)"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self._log_since(offset):
                    return False
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if listening in self._log_since(offset):
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        self.process.kill()  # not left running, unanswered, after the test that wanted it
        self.process.wait(5)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send ``sig`` and wait for the process to exit; returns its exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def log(self) -> str:
        """Return what the process has printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Worker:
    """One ``python -m taskplatform worker`` process: a dispatcher with no HTTP port.

    Args:
        env: ``TASKPLATFORM_*`` variables of the store and queue (as a server gets them).
        log_path: Where the process's output goes.
        args: Command line options, such as ``--concurrency 5 --queue x``.
    """

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = clean_environ(env)
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        LOGS.append(log_path)

    def start(self) -> Worker:
        """Start the process; returns self."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "taskplatform", "worker", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Send SIGTERM and wait for the process to exit; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def log(self) -> str:
        """Return what the process has printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
