"""The parent process of ``serve --workers N``: uvicorn's supervisor, which also passes a second
stop signal on to the workers.

uvicorn's parent answers the first SIGINT or SIGTERM by sending each worker SIGTERM, then waits
for them deaf to any further signal, so a second signal (meant to cut the shutdown grace,
README "Graceful shutdown") never reached them and they ran out the whole grace.

A worker may also get the first signal twice: a terminal's Ctrl-C reaches the whole process
group, and so does a service manager's stop (systemd signals every process of the unit), and the
parent's SIGTERM follows. Counting that as a second signal cut the grace at the first Ctrl-C or
``systemctl stop``. So the two sides agree (see :func:`taskplatform.api.app.create_app`): after
the first stop signal a worker takes only SIGINT as the second, and ignores SIGTERM (its
parent's, or a copy of the group's); the parent passes on every later SIGINT or SIGTERM it gets
as SIGINT.

A Ctrl-C while a worker starts (spawning imports the whole app, about a second) would end it
in a KeyboardInterrupt traceback. So the parent starts workers with SIGINT and SIGTERM blocked,
a mask they inherit, and each unblocks them (:func:`unblock_stop_signals`) once uvicorn's
handlers are in place; a Ctrl-C meanwhile waits, and then stops the worker as usual. Both, for
the order: the parent's SIGTERM taken first, then the Ctrl-C's own SIGINT, would be a second
signal, and uvicorn would stop at once, leaving the callbacks its dispatcher had started in
Processing; released together, SIGINT comes first (the lower number). The parent's own copies
wait too, until the spawn (and uvicorn's health check of the workers around it, a few
milliseconds unless a worker hangs) is over: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.process import BaseProcess

from uvicorn.config import STARTUP_FAILURE as _STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

logger = logging.getLogger(__name__)

SECOND_SIGNAL = signal.SIGINT
"""What a worker takes, after its first stop signal, as the order to stop now."""

_HELD_WHILE_STARTING = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    # multiprocessing starts its resource tracker at the first spawn, and unblocks SIGINT and
    # SIGTERM after it, whatever the mask was: start it first, so the mask holds for the spawn.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_WHILE_STARTING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def unblock_stop_signals() -> None:
    """Let SIGINT and SIGTERM reach this process again: called in a worker once its handlers
    are in place.

    Workers start with them blocked (see the module's docstring); one that came meanwhile is
    delivered now, SIGINT first. A no-op in a process that never blocked them.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_WHILE_STARTING)


async def stop_when_orphaned(parent: BaseProcess) -> None:
    """In a worker, wait until ``parent`` (``serve --workers N``, as
    :func:`multiprocessing.parent_process` gives it) has ended, then stop as that parent would
    have asked: SIGTERM to itself.

    A parent killed with SIGKILL (the OOM killer, ``kill -9``, a service manager's last resort)
    sends nothing: its workers kept serving and dispatching, unsupervised,
    and held the port, so the next ``serve`` could not bind it. The parent's sentinel, a pipe
    only it writes to, reads as closed once it has ended, even before this was called.
    """
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(parent.sentinel, ended.set)
    try:
        await ended.wait()
    finally:
        loop.remove_reader(parent.sentinel)
    logger.warning(
        "the serve process (pid %s) that started this API process is gone: stopping, as it "
        "would have asked (SIGTERM)",
        parent.pid,
    )
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor(Multiprocess):
    """uvicorn's :class:`Multiprocess` (start the workers, replace one that dies, stop them all
    at the first SIGINT or SIGTERM) that, while the workers stop, sends each one still running
    :data:`SECOND_SIGNAL` for every further SIGINT or SIGTERM.

    Used as ``Supervisor(config, sockets=[config.bind_socket()]).run()``, as ``uvicorn.run``
    uses its own.
    """

    _stop_again = False
    startup_failed = False
    """Whether a worker ended with uvicorn's ``STARTUP_FAILURE`` (3), which stopped them all:
    ``serve`` then exits 3, as it does with one process."""

    # Each of these spawns workers (at start, for one that died, on SIGHUP, on SIGTTIN).
    def init_processes(self) -> None:
        """Start the workers, with SIGINT and SIGTERM blocked until their handlers are in place."""
        with _stop_signals_blocked():
            super().init_processes()

    def keep_subprocess_alive(self) -> None:
        """Replace a worker that died (uvicorn's), with the stop signals blocked as at the start;
        one that failed to start stops them all (uvicorn's) and is noted in
        :attr:`startup_failed`."""
        with _stop_signals_blocked():
            super().keep_subprocess_alive()
        if any(worker.exitcode == _STARTUP_FAILURE for worker in self.processes):
            self.startup_failed = True

    def restart_all(self) -> None:
        """Replace every worker (SIGHUP; uvicorn's), stop signals blocked as at the start."""
        with _stop_signals_blocked():
            super().restart_all()

    def handle_ttin(self) -> None:
        """Add a worker (SIGTTIN; uvicorn's), with the stop signals blocked as at the start."""
        with _stop_signals_blocked():
            super().handle_ttin()

    def handle_int(self) -> None:
        """The first SIGINT stops the workers (uvicorn's); one after it is passed on."""
        self._stop(super().handle_int)

    def handle_term(self) -> None:
        """The first SIGTERM stops the workers (uvicorn's); one after it is passed on."""
        self._stop(super().handle_term)

    def _stop(self, first: Callable[[], None]) -> None:
        if self.should_exit.is_set():  # two came before the main loop looked (0.5 s)
            self._stop_again = True
        else:
            first()

    def join_all(self) -> None:
        """Wait for every worker to end, passing on stop signals meanwhile (checked every 0.1 s).

        The listening socket is closed first: the workers close theirs at the stop signal, and
        the kernel would go on accepting connections on this process's copy that no one ever
        answers, for the whole grace; closed, a new connection is refused at once (README:
        "On SIGTERM the server stops accepting connections"), and goes elsewhere.
        """
        for sock in self.sockets:
            sock.close()
        while running := [worker for worker in self.processes if worker.process.is_alive()]:
            # First: a worker given SIGTERM (terminate_all) and SIGINT together would run the
            # SIGINT's handler first (Python runs pending handlers by signal number), and so
            # take the SIGTERM for the duplicate.
            running[0].process.join(0.1)
            while self.signal_queue:
                if self.signal_queue.pop(0) in (signal.SIGINT, signal.SIGTERM):
                    self._stop_again = True
            if self._stop_again:
                self._stop_again = False
                for worker in running:
                    assert worker.pid is not None  # started
                    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                        os.kill(worker.pid, SECOND_SIGNAL)
        super().join_all()  # each is over: this only logs uvicorn's "Waiting for child process"
