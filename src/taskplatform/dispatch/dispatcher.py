"""The dispatcher: takes due tasks by itself and makes their callbacks (push mode).

Pull mode (a caller dequeues, then executes) stays; the dispatcher works on the same tasks and
the same state machine through :class:`~taskplatform.service.TaskService`: it claims a task
(a due Retry first, else the next due Queued task of its queue, moved straight on to Processing
under a lease), makes the callback, and the service records the outcome and, for a retryable
failure, schedules the next attempt with backoff. Any number of dispatchers in any number of
processes share a PostgreSQL or Redis backend: each claim is an atomic move or compare-and-set,
so no task is called back twice for one attempt.

Run it with ``taskplatform worker`` (no HTTP) or inside every API process with
``TASKPLATFORM_DISPATCH=true`` / ``taskplatform serve --dispatch``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import time

from aiohttp import web

from taskplatform.exceptions import BackendUnavailable, raise_if_cancelled
from taskplatform.metrics import CONTENT_TYPE
from taskplatform.service import TaskService, wait_for_event
from taskplatform.settings import Settings

logger = logging.getLogger(__name__)


CLAIMERS_PER_QUEUE = 2
"""Claim loops per queue in one dispatcher (at most its concurrency)."""

CLAIM_MOST = 25
"""Most tasks one claim takes: the free slots when it starts, up to this many (and up to a fair
share of the concurrency among the claim loops)."""


class Dispatcher:
    """Keeps up to ``concurrency`` callbacks in flight over ``queues``, until cancelled.

    Args:
        service: The task service (backends and callback sender already open).
        queues: Names of the queues served, each by its own claim loop.
        concurrency: Most callbacks in flight at once, over all queues.
        queue_concurrency: Most callbacks of one queue in flight at once; None is all of
            ``concurrency`` for one queue and :func:`default_queue_concurrency` for several.
        rate: Dispatches per second per queue over every dispatcher (a token bucket kept in
            the store, holding one second's worth); 0 is unlimited.
        poll_seconds: How often an idle loop looks for tasks that came due (scheduled tasks,
            retries); an enqueue anywhere wakes it at once.
    """

    def __init__(
        self,
        service: TaskService,
        *,
        queues: list[str],
        concurrency: int,
        queue_concurrency: int | None = None,
        rate: float = 0.0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.service = service
        self.queues = queues
        self.rate = rate
        self.poll_seconds = poll_seconds
        self._slots = asyncio.Semaphore(concurrency)
        if queue_concurrency is None:
            queue_concurrency = default_queue_concurrency(concurrency, len(queues))
        self.queue_concurrency = min(concurrency, queue_concurrency)
        # Taken before a slot of the whole: a queue at its cap waits without holding any.
        self._queue_slots = {queue: asyncio.Semaphore(self.queue_concurrency) for queue in queues}
        # A claim takes as many tasks as there are free slots (up to CLAIM_MOST), so while one
        # claim is in flight the slots that free up make the next claim bigger: fewer
        # statements and commits per task under load, one task at once when idle. A second
        # loop overlaps its round trips with the first's (PostgreSQL SKIP LOCKED and Redis hand
        # each different tasks).
        self.claimers = max(1, min(concurrency, CLAIMERS_PER_QUEUE))
        # A claim holds its slots for a round trip even when its queue turns out empty: a fair
        # share of the concurrency per claim loop keeps idle queues from starving busy ones.
        fair_share = concurrency // (len(queues) * self.claimers)
        self.claim_most = max(1, min(CLAIM_MOST, fair_share, self.queue_concurrency))
        # When a queue's claims last failed loudly (monotonic seconds): its claim loops fail
        # together, and one warning a second for the queue says it all.
        self._warned_at: dict[str, float] = {}

    @classmethod
    def from_settings(cls, service: TaskService, settings: Settings) -> Dispatcher:
        """Build the dispatcher that the ``TASKPLATFORM_DISPATCH_*`` settings describe."""
        return cls(
            service,
            queues=settings.dispatch_queue_list(),
            concurrency=settings.dispatch_concurrency,
            queue_concurrency=settings.dispatch_queue_concurrency,
            rate=settings.dispatch_rate,
            poll_seconds=settings.dispatch_poll_seconds,
        )

    async def run(self) -> None:
        """Serve every queue until cancelled; callbacks in flight are left to the service's
        shutdown (which lets them finish within the grace period)."""
        logger.info(
            "dispatching queues %s with concurrency %d (at most %d per queue)",
            ",".join(self.queues),
            self._slots._value,
            self.queue_concurrency,
        )
        async with asyncio.TaskGroup() as group:
            for queue in self.queues:
                for n in range(self.claimers):
                    group.create_task(self._serve(queue), name=f"dispatch {queue} #{n}")

    async def _serve(self, queue: str) -> None:
        current = asyncio.current_task()
        while True:
            if current is not None and current.cancelling():
                # A library below swallowed our cancellation; honour it anyway, or shutdown
                # would wait for this loop forever.
                raise asyncio.CancelledError
            queue_slots = self._queue_slots[queue]
            await queue_slots.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                queue_slots.release()
                raise
            slots = 1
            # A rate limit takes a token per task, so a limited queue claims one at a time.
            while (
                self.rate <= 0
                and slots < self.claim_most
                and not self._slots.locked()
                and not queue_slots.locked()
            ):
                await queue_slots.acquire()  # both free: each returns at once
                await self._slots.acquire()
                slots += 1
            arrived = self.service.arrivals.current()
            try:
                if self.rate > 0 and not await self.service.take_dispatch_token(queue, self.rate):
                    self._release(queue_slots, slots)
                    await asyncio.sleep(min(self.poll_seconds, 1 / self.rate))
                    continue
                tasks = await self.service.claim_for_dispatch(queue, slots)
                if not tasks and self.rate > 0:
                    await self.service.give_back_dispatch_token(queue, self.rate)
            except BackendUnavailable as exc:
                self._release(queue_slots, slots)
                raise_if_cancelled()
                now = time.monotonic()
                if now - self._warned_at.get(queue, -math.inf) >= 1:
                    self._warned_at[queue] = now
                    logger.warning("dispatch of queue %s paused 1 s: %s", queue, exc.detail)
                await asyncio.sleep(1)
                continue
            self._release(queue_slots, slots - len(tasks))
            if not tasks:
                await wait_for_event(arrived, self.poll_seconds)
                continue
            done = functools.partial(self._done, queue_slots)
            for task in tasks:
                self.service.dispatch(task).add_done_callback(done)

    def _done(self, queue_slots: asyncio.Semaphore, _call: asyncio.Future[object]) -> None:
        self._release(queue_slots, 1)

    def _release(self, queue_slots: asyncio.Semaphore, slots: int) -> None:
        for _ in range(slots):
            queue_slots.release()
            self._slots.release()


def default_queue_concurrency(concurrency: int, queues: int) -> int:
    """The callbacks of one queue a dispatcher of ``concurrency`` over ``queues`` queues keeps in
    flight at most, unless configured: all with one queue; with several, all but one slot for
    each other queue (at most half of them kept back), so a queue whose callbacks hang always
    leaves the others a slot each, as Cloud Tasks' and QStash's per-queue limits would, while a
    queue alone in being busy still gets nearly all of them."""
    return max(1, concurrency - min(queues - 1, concurrency // 2))


class MetricsListenFailed(Exception):
    """The worker's ``/metrics`` cannot listen where the settings say; the message says where
    and why (``taskplatform worker`` exits 3 with it, as ``serve`` on a port in use does)."""


async def run_worker(settings: Settings) -> None:
    """Run a dispatcher with its own backends until SIGTERM or SIGINT (``taskplatform worker``).

    Also runs the maintenance loop (reaping expired leases, the enqueue listener), then stops
    gracefully: callbacks in flight get ``shutdown_grace_seconds`` to finish; the rest are
    recorded as interrupted and retried later. A second signal interrupts them at once.

    The schema must be current: ``taskplatform worker`` prepares it first and says why it cannot
    in one line. (A second try here, with the database refusing in between, ended in a traceback.)

    Raises:
        MetricsListenFailed: ``worker_metrics_port`` is set and cannot be listened on.
    """
    from taskplatform.backends import open_backends
    from taskplatform.dispatch import sender_from_settings

    backends = open_backends(settings)
    sender = sender_from_settings(settings)
    await sender.start()
    service = TaskService(backends, sender, settings)
    await service.join()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            service.stop_now()  # a second signal
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    metrics = None
    if settings.worker_metrics_port is not None:
        try:
            metrics = await _serve_metrics(
                service, settings.worker_metrics_host, settings.worker_metrics_port
            )
        except OSError as exc:  # the port taken, an address that is not this host's
            await sender.close()
            await backends.close()
            where = f"{settings.worker_metrics_host}:{settings.worker_metrics_port}"
            raise MetricsListenFailed(
                f"cannot serve /metrics on {where}: {exc.strerror or exc}"
            ) from exc
    maintenance = asyncio.create_task(service.run_maintenance(), name="maintenance")
    dispatcher = asyncio.create_task(Dispatcher.from_settings(service, settings).run())
    try:
        await stop.wait()
        logger.info("stopping: no new dispatches")
    finally:
        if metrics is not None:
            await metrics.cleanup()
        for job in (dispatcher, maintenance):
            job.cancel()
        await asyncio.gather(dispatcher, maintenance, return_exceptions=True)
        await service.shutdown(settings.shutdown_grace_seconds)
        await sender.close()
        await backends.close()


async def _serve_metrics(service: TaskService, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` of a worker process on ``host:port``; returns the running server.

    A worker has no API port, so its counters (dispatches, callbacks, outcomes) get one of their
    own; ``port`` 0 picks a free one, which the log names.
    """

    async def metrics(request: web.Request) -> web.Response:
        body = await service.metrics_exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    addresses = ", ".join(f"http://{host}:{address[1]}/metrics" for address in runner.addresses)
    logger.info("serving metrics on %s", addresses)
    return runner
