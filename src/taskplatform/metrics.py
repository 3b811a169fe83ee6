"""Prometheus metrics: what the service counts as it runs, and what it reads at each scrape.

Counted in the process, by :class:`Metrics` (prometheus-client):

- ``taskplatform_tasks_created_total{queue}``: tasks put into a queue (single and batch create).
- ``taskplatform_tasks_dequeued_total{queue,mode}``: tasks taken out of a queue, ``mode`` is
  ``pull`` (``GET /api/tasks/dequeue``) or ``dispatch`` (the dispatcher's claim).
- ``taskplatform_tasks_finished_total{queue,outcome}``: attempts and cancellations that ended a
  step of the state machine; ``outcome`` is the status reached: ``completed``, ``failed``,
  ``retry`` (failed, an automatic retry is scheduled) or ``cancelled``.
- ``taskplatform_callback_duration_seconds{queue,result}``: histogram of callback durations,
  ``result`` is ``success`` or ``failure``.
- ``taskplatform_callbacks_in_flight``: callbacks this process is making now.
- ``taskplatform_clock_offset_seconds``: the database server's clock minus this host's; the
  process times everything by the database's clock (``TaskService.sync_clock``).

Read from the backends at each scrape (so every process reports the same, global values):

- ``taskplatform_queue_depth{queue}``: Queued tasks.
- ``taskplatform_queue_oldest_age_seconds{queue}``: how long the longest-waiting due task has
  waited (from its creation, or its later ``scheduledAt``; 0 if none is due).
- ``taskplatform_queue_processing{queue}``: tasks in Processing, over all processes.
- ``taskplatform_backends_up``: 1 when the queue and the store answered the scrape, else 0.

With several API processes (``serve --workers N``), ``PROMETHEUS_MULTIPROC_DIR`` is set and the
counters are summed over the processes by prometheus-client's multiprocess mode, so a scrape that
lands on any process sees the whole server.

Queue names are the clients' choice, so the ``queue`` label is bounded (``metrics_max_queues``):
a process gives the first queues it counts series of their own and sums the rest under
:data:`OTHER_QUEUES`; a scrape gives the deepest queues their own gauges and sums the rest.
(Each process picks its own first queues, so past the bound one queue's counts can be split
between its name and :data:`OTHER_QUEUES` across ``--workers`` processes.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import Final, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from taskplatform.models import QueueView, Status

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# A ``*_created`` timestamp series beside every counter doubles the scrape for nothing a rate()
# needs; prometheus-client's switch for it is process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Callbacks run from milliseconds up to the longest timeoutSeconds (an hour); the default
# buckets stop at 10 s.
CALLBACK_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

_M = TypeVar("_M", bound=MetricWrapperBase)

OTHER_QUEUES: Final = "(other)"
"""The ``queue`` label of the queues past ``metrics_max_queues``: no queue name has brackets."""

_OUTCOMES: Final = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.RETRY: "retry",
    Status.CANCELLED: "cancelled",
}


class Metrics:
    """The counters of one process, in a registry of their own.

    A registry per instance rather than prometheus-client's global one, so that several
    applications in one process (tests) do not collide.

    Args:
        max_queues: Most queue names with series of their own (see the module docstring).
    """

    def __init__(self, max_queues: int = 1000) -> None:
        self.max_queues = max_queues
        self._labelled: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        self.created = Counter(
            "taskplatform_tasks_created",
            "Tasks put into a queue.",
            ["queue"],
            registry=self.registry,
        )
        self.dequeued = Counter(
            "taskplatform_tasks_dequeued",
            "Tasks taken out of a queue, by pull (dequeue) or by the dispatcher.",
            ["queue", "mode"],
            registry=self.registry,
        )
        self.finished = Counter(
            "taskplatform_tasks_finished",
            "Steps that ended an attempt or a task, by the status reached.",
            ["queue", "outcome"],
            registry=self.registry,
        )
        self.callback_duration = Histogram(
            "taskplatform_callback_duration_seconds",
            "Duration of callback requests, from sending to the full response.",
            ["queue", "result"],
            buckets=CALLBACK_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "taskplatform_callbacks_in_flight",
            "Callbacks being made now by this process.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.clock_offset = Gauge(
            "taskplatform_clock_offset_seconds",
            "The database server's clock minus this host's, which this process adds to its own "
            "(0 for SQLite).",
            registry=self.registry,
            multiprocess_mode="livemostrecent",
        )
        # Each labelled child, kept here: ``labels()`` checks and locks on every call (2.4 us
        # against 0.7 us for a dict hit), and a pulled task counts five times. A child lives
        # as long as its metric anyway (nothing here removes one).
        self._children: dict[tuple[object, ...], MetricWrapperBase] = {}

    def _queue(self, queue: str) -> str:
        """The ``queue`` label of ``queue``: its name while within ``max_queues``."""
        if queue in self._labelled:
            return queue
        if len(self._labelled) < self.max_queues:
            self._labelled.add(queue)
            return queue
        return OTHER_QUEUES

    def _child(self, metric: _M, *values: str) -> _M:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child  # type: ignore[return-value]

    def task_created(self, queue: str, count: int = 1) -> None:
        """Count ``count`` tasks created in ``queue``."""
        self._child(self.created, self._queue(queue)).inc(count)

    def task_dequeued(self, queue: str, mode: str) -> None:
        """Count one task taken out of ``queue``; ``mode`` is ``"pull"`` or ``"dispatch"``."""
        self._child(self.dequeued, self._queue(queue), mode).inc()

    def task_moved(self, queue: str, status: Status, count: int = 1) -> None:
        """Count ``count`` steps into ``status`` if it ends an attempt or the task (see module
        doc)."""
        outcome = _OUTCOMES.get(status)
        if outcome is not None:
            self._child(self.finished, self._queue(queue), outcome).inc(count)

    def callback_finished(self, queue: str, success: bool, duration_ms: float) -> None:
        """Observe one callback's duration (``duration_ms``, milliseconds)."""
        result = "success" if success else "failure"
        self._child(self.callback_duration, self._queue(queue), result).observe(duration_ms / 1000)

    def exposition(self, queues: Iterable[QueueView] | None) -> bytes:
        """Return the text exposition format of every metric, with ``queues`` read just now.

        Args:
            queues: The queue views of this scrape (:meth:`TaskService.queues`), or None when
                the backends could not be read (``taskplatform_backends_up`` is then 0).

        Returns:
            The body for ``GET /metrics`` (media type :data:`CONTENT_TYPE`).
        """
        counted = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            _forget_dead_processes(os.environ["PROMETHEUS_MULTIPROC_DIR"])
            counted = CollectorRegistry()
            MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
        scraped = CollectorRegistry()
        views = None if queues is None else _bounded(list(queues), self.max_queues)
        scraped.register(_QueueCollector(views))
        return generate_latest(counted) + generate_latest(scraped)


def process_stopped() -> None:
    """Drop this process's live gauges (callbacks in flight) from the multiprocess sum, at a
    clean stop of one of ``serve --workers N``'s processes (prometheus-client's documented
    ``mark_process_dead``); nothing to do in a single process."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def _forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of processes that died without :func:`process_stopped` (SIGKILL,
    the OOM killer; uvicorn starts a new worker in their place but does not clean up after
    them), so that callbacks in flight count only the living. A pid reused since is taken for
    alive, the same as prometheus-client would."""
    dead: set[int] = set()
    for name in os.listdir(directory):
        found = _LIVE_GAUGE_FILE.fullmatch(name)
        if found is None:
            continue
        pid = int(found[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass  # alive, another user's
    for pid in dead:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _bounded(views: list[QueueView], most: int) -> list[QueueView]:
    """``views`` if at most ``most``; else the deepest ``most`` of them (then the busiest),
    and one :data:`OTHER_QUEUES` view summing the rest (its age: the oldest of theirs)."""
    if len(views) <= most:
        return views
    ranked = sorted(views, key=lambda view: (view.depth, view.in_flight), reverse=True)
    kept, rest = ranked[:most], ranked[most:]
    ages = [view.oldest_queued_age_seconds for view in rest if view.oldest_queued_age_seconds]
    other = QueueView(
        name=OTHER_QUEUES,
        paused=False,
        depth=sum(view.depth for view in rest),
        in_flight=sum(view.in_flight for view in rest),
        oldest_queued_age_seconds=max(ages) if ages else None,
        dispatch_rate_per_second=sum(view.dispatch_rate_per_second for view in rest),
    )
    return [*kept, other]


class _QueueCollector(Collector):
    """The per-queue gauges of one scrape, from values already read from the backends."""

    def __init__(self, queues: list[QueueView] | None) -> None:
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "taskplatform_backends_up", "1 when the queue and the store answered this scrape."
        )
        up.add_metric([], 0 if self._queues is None else 1)
        yield up
        if self._queues is None:
            return
        depth = GaugeMetricFamily(
            "taskplatform_queue_depth", "Queued tasks in the queue.", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "taskplatform_queue_oldest_age_seconds",
            "How long the longest-waiting due task of the queue has waited (from its creation, "
            "or its later scheduledAt); 0 when none is due.",
            labels=["queue"],
        )
        processing = GaugeMetricFamily(
            "taskplatform_queue_processing",
            "Tasks of the queue in Processing, over every process.",
            labels=["queue"],
        )
        for view in self._queues:
            depth.add_metric([view.name], view.depth)
            age.add_metric([view.name], view.oldest_queued_age_seconds or 0.0)
            processing.add_metric([view.name], view.in_flight)
        yield depth
        yield age
        yield processing
