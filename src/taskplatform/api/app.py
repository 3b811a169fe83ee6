"""The ASGI application: routes, problem handlers, and the lifespan that opens the backends."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import multiprocessing
import signal
import threading
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from types import FrameType
from typing import Any

from fastapi import FastAPI

from taskplatform import __version__
from taskplatform.api import health, protocol, tasks
from taskplatform.api.hotpath import TaskPlatformAPI
from taskplatform.api.openapi import install_openapi
from taskplatform.api.problems import install_problem_handlers, static_path_methods
from taskplatform.api.supervisor import SECOND_SIGNAL, stop_when_orphaned, unblock_stop_signals
from taskplatform.backends import open_backends, prepare_schema
from taskplatform.dashboard import install as install_dashboard
from taskplatform.dispatch import sender_from_settings
from taskplatform.dispatch.dispatcher import Dispatcher
from taskplatform.logs import lines_written_per_turn, stop_holding_lines
from taskplatform.metrics import process_stopped
from taskplatform.service import TaskService
from taskplatform.settings import Settings, load_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """A central service that runs work through HTTP callbacks: create a task, dequeue it,
execute it (the platform POSTs its taskData to its callbackUrl), and follow its status.
Errors are `application/problem+json` (RFC 9457) with a stable `code`."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SignalHandler = Callable[[int, FrameType | None], object]


def hook_stop_signals(
    on_stop: Callable[[], Coroutine[Any, Any, None]],
    repeats: Collection[int] = STOP_SIGNALS,
) -> Callable[[], None]:
    """Run ``on_stop`` on this event loop when SIGTERM or SIGINT arrives, then, once it has
    returned, the server's own handler; return a function that removes the hook.

    After the first, only a signal in ``repeats`` goes on: a worker of ``serve --workers N``
    takes only SIGINT as its second (its parent's SIGTERM follows a Ctrl-C or a service
    manager's stop that reached the worker already; see :mod:`taskplatform.api.supervisor`)
    and ignores a SIGTERM then.

    Why: uvicorn tells the application nothing when a signal arrives. It stops accepting
    connections, waits for the requests in flight (up to ``timeout_graceful_shutdown``) and only
    then runs the lifespan's shutdown, so a grace counted from there comes on top of the drain,
    and a synchronous execute still waiting on its callback when the drain gives up is cancelled
    into a 500. Chaining onto the handler uvicorn installed (it uses ``signal.signal``, and
    restores its predecessors itself on exit) lets the service start its one deadline at the
    signal. uvicorn's handler runs after ``on_stop``: at a second SIGINT it drops every
    connection within a tenth of a second, and ``on_stop`` first ends what it can end properly.
    Only the main thread can set handlers, and a handler that is not a function (the default
    action, ignore) belongs to no server that drains: nothing is hooked then.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    hooked: dict[int, tuple[SignalHandler, SignalHandler]] = {}
    stopping: set[asyncio.Task[None]] = set()  # referenced until done
    signalled = False

    def stop_then_pass_on(number: int, frame: FrameType | None, previous: SignalHandler) -> None:
        task = loop.create_task(on_stop(), name="stop signal")
        stopping.add(task)

        def pass_on(_: asyncio.Task[None]) -> None:
            stopping.discard(task)
            previous(number, frame)

        task.add_done_callback(pass_on)

    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def chained(
            number: int,
            frame: FrameType | None,
            previous: SignalHandler = previous,
        ) -> None:
            # A signal handler runs between two bytecodes of whatever the loop is doing:
            # call_soon_threadsafe is the one safe way in (and a closed loop has nothing to stop).
            nonlocal signalled
            if signalled and number not in repeats:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_log_ignored, number)
                return
            signalled = True
            if loop.is_closed():
                previous(number, frame)
            else:
                loop.call_soon_threadsafe(stop_then_pass_on, number, frame, previous)

        signal.signal(signum, chained)
        hooked[signum] = (previous, chained)

    def unhook() -> None:
        for signum, (previous, ours) in hooked.items():
            if signal.getsignal(signum) is ours:  # not if someone has hooked on top since
                signal.signal(signum, previous)

    return unhook


def _log_ignored(number: int) -> None:
    logger.info(
        "%s ignored: this worker is stopping already (a second SIGINT or SIGTERM to its "
        "parent, or Ctrl-C again, stops it at once)",
        signal.Signals(number).name,
    )


STOP_NOW_SECONDS = 2.0
"""How long a second stop signal waits for the interrupted callbacks to be recorded before the
server drops its connections."""

JOB_STOP_SECONDS = 5.0
"""How long shutdown waits for a background job (maintenance, dispatcher) to end once cancelled."""


async def stop_jobs(jobs: list[asyncio.Task[None]], timeout_seconds: float) -> None:
    """Cancel ``jobs`` and wait up to ``timeout_seconds`` for them to end.

    Why the limit: a job that swallows its cancellation (a driver that turns it into an error of
    its own, caught by a retry loop) would otherwise hold the shutdown, and the process, forever.
    Such a job is logged at WARNING with the stack it is stuck in, so the cause can be fixed, and
    left behind; the backends close under it.
    """
    for job in jobs:
        job.cancel()
    _, pending = await asyncio.wait(jobs, timeout=timeout_seconds)
    for job in pending:
        stack = io.StringIO()
        job.print_stack(file=stack)
        logger.warning(
            "background job %r did not stop within %g s of its cancel; stopping without it\n%s",
            job.get_name(),
            timeout_seconds,
            stack.getvalue(),
        )


def freeze_startup_heap() -> None:
    """Collect what starting up left behind, then move every object that survives into the
    garbage collector's permanent generation (:func:`gc.freeze`), where no collection scans it.

    Why: a full (generation 2) collection scans every tracked object, and most of a server's
    objects are its imported modules, the app and its models, which live as long as the process.
    On the benchmark machine such a collection took 40-190 ms, and one during a 20 s run at
    1,000 creates/s put those milliseconds on 1 % of requests: a p99 of 17-103 ms against a p50
    of 2 ms. After the freeze a collection scans only what serving has made since. The lifespan
    undoes it (:func:`gc.unfreeze`) when the app stops, so a process that builds many apps (the
    tests) does not keep their heaps. Reference counting still frees what the frozen objects
    stop using; only cycles among them would stay, and startup leaves none behind after the
    collection here.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, schema_prepared: bool = False) -> FastAPI:
    """Build the application for ``settings`` (read from the environment when None).

    The backends open in the lifespan, so building the app does no I/O. The lifespan first
    creates or upgrades the schema (:func:`~taskplatform.backends.prepare_schema`), unless
    ``schema_prepared`` says the caller did so before this process started serving.
    """
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not schema_prepared:
            await prepare_schema(settings)
        backends = open_backends(settings)
        sender = sender_from_settings(settings)
        await sender.start()
        service = TaskService(backends, sender, settings)
        app.state.service = service
        await service.join()

        async def on_stop() -> None:
            # From the first stop signal on, every line is written at once: after a second one,
            # uvicorn skips the lifespan's shutdown and the process ends by the re-raised signal.
            stop_holding_lines()
            if not service.stopping:
                service.begin_shutdown(settings.shutdown_grace_seconds)
            elif service.stop_now():
                # uvicorn drops every connection next: end the callbacks first, so that each is
                # recorded as interrupted and a synchronous execute answers 503, not a 500.
                await service.wait_for_callbacks(STOP_NOW_SECONDS)

        # A worker of serve --workers N: see api/supervisor.py.
        unhook = hook_stop_signals(
            on_stop, (SECOND_SIGNAL,) if settings.workers > 1 else STOP_SIGNALS
        )
        maintenance = asyncio.create_task(service.run_maintenance(), name="maintenance")
        jobs = [maintenance]
        if settings.dispatch:
            dispatcher = Dispatcher.from_settings(service, settings)
            jobs.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        if (parent := multiprocessing.parent_process()) is not None:  # serve --workers N
            jobs.append(asyncio.create_task(stop_when_orphaned(parent), name="parent watch"))
        freeze_startup_heap()
        try:
            with lines_written_per_turn():
                yield
        finally:
            gc.unfreeze()
            try:
                await stop_jobs(jobs, JOB_STOP_SECONDS)
                await service.shutdown(settings.shutdown_grace_seconds)
            finally:
                # Hooked until the callbacks are over: a second SIGTERM while they finish must
                # cut the grace, as a second SIGINT does (uvicorn's own handler ignores it).
                unhook()
            await sender.close()
            await backends.close()
            process_stopped()

    app = TaskPlatformAPI(
        title="taskplatform",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # One documentation page, /docs (Swagger UI), whose styles the docs' CSP allows.
        redoc_url=None,
        # A 307 to the same path without its slash would send the body on to whatever host the
        # request named; a 404 problem says what is wrong instead.
        redirect_slashes=False,
    )
    routers = [tasks.router, tasks.stats_router, tasks.queues_router, health.router]
    for router in routers:
        app.include_router(router)
    app.state.static_path_methods = static_path_methods(routers)
    install_dashboard(app)
    install_problem_handlers(app)
    install_openapi(app)
    app.install_security(settings)
    return app


def create_app_from_env() -> FastAPI:
    """Build the application from ``TASKPLATFORM_*`` variables (a factory for uvicorn)."""
    return create_app(load_settings())


def create_served_app() -> FastAPI:
    """Build the application of ``taskplatform serve`` from ``TASKPLATFORM_*`` variables, and
    set the limits of its HTTP protocol (:func:`taskplatform.api.protocol.configure`).

    uvicorn calls this factory in each API process of ``serve``, which prepared the schema once
    before it started them: preparing it again in each process would repeat its startup
    warnings once per process (``--workers N``). uvicorn's signal handlers are in place when it
    calls this, so SIGINT and SIGTERM, which a worker of ``--workers N`` starts with blocked,
    are let in.
    """
    unblock_stop_signals()
    settings = load_settings()
    protocol.configure(settings)
    return create_app(settings, schema_prepared=True)
