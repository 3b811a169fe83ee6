"""The task service: the state machine and every operation on tasks.

This module owns the state machine of API.md (from the seed specification's diagram)::

    Queued --dequeue--> Dequeued --execute--> Processing --2xx--> Completed
                                              Processing --failure--> Failed
    Failed --execute (attempts left)--> Retry --> Processing
    Failed with no attempts left is final.
    Dequeued --lease expired--> Queued            (nobody executed it in time)
    Processing --lease expired--> Failed          (the process making the call died)
    Processing --retryable failure--> Retry       (a dispatched task; waits for nextAttemptAt)
    Failed --re-drive--> Queued                   (POST /api/tasks/{taskId}/retry)
    Queued, Dequeued, Retry, Failed --cancel--> Cancelled    (final)

The moves between queue and store (Queued -> Dequeued or Cancelled, and back to Queued when a
lease expires or a dead letter is re-driven) are the queue backend's atomic transfers (seed
FR-009); every other change of status goes through
:meth:`TaskService._transition`, which checks the edge against :data:`TRANSITIONS` and applies it as
a compare-and-set in the store. No other code writes a status.

Leases: a Dequeued task holds one for ``dequeue_lease_seconds``; a Processing task for its
``timeoutSeconds`` plus ``processing_lease_grace_seconds``, owned by the process making the call.
Each server's maintenance loop reaps expired leases; the lease token fences every reap, so of
several servers at most one moves a task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import msgspec
import uuid_utils

from taskplatform.backends import Backends, TaskChanges, queue_address
from taskplatform.backends.base import DepthSample, IdempotencyClaim, ProcessRecord
from taskplatform.dispatch.callback import CallbackOutcome, CallbackSender
from taskplatform.dispatch.retry import backoff_seconds, is_retryable
from taskplatform.exceptions import (
    BackendUnavailable,
    IdempotencyKeyReused,
    QueueEmpty,
    QueuePaused,
    RequestError,
    RetryLimitReached,
    ShuttingDown,
    TaskCancelled,
    TaskCompleted,
    TaskConflict,
    TaskNotDequeued,
    TaskNotFailed,
    TaskNotFound,
    TaskPlatformError,
    TaskProcessing,
    ValidationFailed,
    raise_if_cancelled,
)
from taskplatform.faults import Faults
from taskplatform.logs import log_events
from taskplatform.metrics import Metrics
from taskplatform.models import (
    DEFAULT_QUEUE,
    BatchTaskCreate,
    ExecutionRecord,
    QueueView,
    RetryPolicy,
    Status,
    TaskCreate,
    TaskRecord,
    clock_offset_ms,
    follow_clock,
    now_ms,
)
from taskplatform.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.DEQUEUED, Status.CANCELLED}),
    Status.DEQUEUED: frozenset({Status.PROCESSING, Status.QUEUED, Status.CANCELLED}),
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.RETRY}),
    Status.FAILED: frozenset({Status.RETRY, Status.QUEUED, Status.CANCELLED}),
    Status.RETRY: frozenset({Status.PROCESSING, Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.CANCELLED: frozenset(),
}
"""Allowed edges of the state machine: ``status -> statuses it may move to``."""

INTERRUPTED = "interrupted: the server stopped during the callback"
"""The error of an attempt whose callback the server cut off at shutdown, when the grace ran
out."""

LEASE_EXPIRED = (
    "interrupted: the lease ran out before the callback's outcome was recorded (the server making "
    "it stopped, or could not reach the database)"
)
"""The error the reaper gives an attempt whose Processing lease ran out: the process making the
callback died, or it kept failing to record the outcome until the lease ended. Either way the
callback may or may not have been answered."""

STOPPED_MID_CALLBACK = (
    "the server stopped before the callback finished: the attempt was recorded as interrupted "
    "(it counts toward maxRetries) and the task can be executed again"
)
"""The detail of the 503 ``shutting_down`` a synchronous execute gets when the grace runs out."""

STOPPED_MID_LAST_CALLBACK = (
    "the server stopped before the callback finished: the attempt was recorded as interrupted, "
    "and it was the task's last (maxRetries): the task is a dead letter, which POST "
    "/api/tasks/retry re-drives"
)
"""The detail of :data:`STOPPED_MID_CALLBACK` for a task that had no attempt left after it: the
interrupted attempt counts, so the task cannot be executed again (found in review: the 503 said
it could, and the next execute was 409 ``retry_limit_reached``)."""

WITHDRAWN = (
    "attempt withdrawn: the database did not confirm its start (no answer, or the server "
    "stopped before it came), so no callback was made; the task can be executed again"
)
"""The error of a task whose move to Processing committed but was never answered, or whose
caller was cancelled meanwhile: the attempt does not count (see ``TaskService._withdraw``)."""

STOPPING = (
    "the server is stopping and starts no new attempt; the task was not executed: execute it "
    "again (on another server, or once this one is back)"
)
"""The detail of the 503 ``shutting_down`` of an execute that arrives while the server stops."""

_REAP_BATCH = 100

SETTLE_AT_STOP_SECONDS = 5.0
"""How long a stopping process waits for its last tries to settle starts and dequeues the
database did not confirm (``TaskService._settle``)."""

CLOCK_SYNC_SECONDS = 60.0
"""How often a process measures its clock against the store's (:meth:`TaskService.sync_clock`):
a host's clock drifts by milliseconds a minute at most while its time sync works."""

HEARTBEAT_SECONDS = 10.0
"""How often a process refreshes its row in the store's ``processes`` table (:meth:`announce`)."""

PROCESS_GONE_SECONDS = 60.0
"""A process not seen for this long is taken for stopped: its queue is no longer compared."""

_PROCESS_FORGET_MS = 24 * 3600 * 1000
"""A process's row is deleted a day after it was last seen."""

CLOCK_JUMP_MS = 500
"""A move of the wall clock against the monotonic one past this makes the next maintenance
round measure the store's clock again, not a minute later (NTP slews by far less)."""


def _wall_minus_monotonic() -> int:
    return time.time_ns() - time.monotonic_ns()


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _ceil_ms(microseconds: int) -> int:
    """``microseconds`` in whole milliseconds, rounded up."""
    return -(-microseconds // 1000)


DEPTH_RETENTION_MS = 24 * 3600 * 1000
"""How long queue depth samples are kept (the dashboard charts the last hour)."""
_PAUSE_CACHE_SECONDS = 0.25
_RETRY_CHECK_SECONDS = 0.05
"""After a look for due retries of a queue finds none, a dispatcher's claims skip the look for
this long: a claim then costs one round trip less (bench/run.py: about a sixth of a PostgreSQL
claim), and a retry, which waits its backoff anyway, starts at most this much later."""
_CLAIM_FINISH_SECONDS = 5.0
"""How long a dispatcher's claim in flight when it is stopped gets to finish, so that the tasks
it moved are known and called back (a backend down would otherwise hold up the stop)."""
_HAND_OVER_BATCH = 500
"""Tasks one move from the database's queue to Redis takes in one transaction (about 1.5 to
3.5 ms a task to move, so a batch holds no connection for more than a few seconds)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a future nobody awaits any more as seen (no "never retrieved" log)."""
    if not future.cancelled():
        future.exception()


def _callbacks_text(count: int) -> str:
    """``"1 callback"``, ``"2 callbacks"``: a count of callbacks for a log line."""
    return f"{count} callback" if count == 1 else f"{count} callbacks"


def _lifecycle_event(task: TaskRecord, note: str = "") -> tuple[str, dict[str, object]]:
    """The log line of ``task`` having just reached its status: the message, and the fields
    the JSON format carries (issue 8: task id, attempt and status on every lifecycle event)."""
    status = task.status.value
    return (
        f"task {task.task_id} is {status} (attempt {task.attempts}){note}",
        {"task_id": task.task_id, "status": status, "attempt": task.attempts, "queue": task.queue},
    )


def _requeue_reason(task: TaskRecord) -> str:
    """Why the Dequeued ``task``, whose lease ran out, goes back to its queue: the lease it
    was given, not the reaping process's setting (processes may differ)."""
    if task.lease_expires_at is None or task.dequeued_at is None:
        return "its dequeue lease ran out"
    seconds = (task.lease_expires_at - task.dequeued_at) / 1000
    if task.dispatched:
        return f"the dispatcher that claimed it did not start it within {seconds:g} s"
    return f"not executed within {seconds:g} s of dequeue"


def _interrupted_status(task: TaskRecord) -> Status:
    """Where an interrupted attempt of ``task`` leaves it: Retry when the dispatcher will try it
    again after a backoff (a dispatched task with attempts left; an interruption is
    retryable), else Failed."""
    return Status.RETRY if task.dispatched and task.attempts_left() else Status.FAILED


class Arrivals:
    """Wakes long-polling dequeues when a task may have arrived.

    ``current()`` is taken before looking at the queue and waited on after, so an arrival between
    the look and the wait is never missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waiters = 0

    def current(self) -> asyncio.Event:
        """Return the event the next :meth:`notify` sets."""
        return self._event

    def notify(self) -> None:
        """Wake everyone waiting now."""
        self._event.set()
        self._event = asyncio.Event()


async def wait_for_event(
    event: asyncio.Event, seconds: float, other: asyncio.Event | None = None
) -> bool:
    """Wait up to ``seconds`` for ``event`` (or ``other``, when given); return whether
    ``event`` is set.

    Not ``asyncio.wait_for`` or ``asyncio.timeout``: on Python 3.11 both can lose a cancellation
    that arrives just as the event is set or the timer fires (measured here: a dispatcher that
    never stopped on SIGTERM), and every wait in this service must end when cancelled.
    ``asyncio.wait`` does not cancel anything on timeout, so an outer cancellation always
    propagates.
    """
    waiters = {asyncio.ensure_future(event.wait())}
    if other is not None:
        waiters.add(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set()


class ExecuteOutcome(msgspec.Struct, kw_only=True):
    """The result of one execute: the task's status after the attempt and what the callback said.

    ``result`` is JSON text or None.
    """

    task_id: str
    status: Status
    result: bytes | None
    error: str | None
    attempt: int


KEYED_BATCH_CONCURRENCY = 16
"""How many keyed items of batch creates a process writes at once, over all batches (see
``create_many``)."""


def logged_result(result: bytes | None, limit: int) -> bytes | None:
    """What the attempt log keeps of a callback's ``result`` (JSON text, bytes): the result
    itself up to ``limit`` bytes, else a JSON string of its start, ending in "…", at most
    ``limit`` bytes.

    An attempt kept up to 2 MiB (a 1 MiB answer of control bytes, escaped) and a task makes up
    to 101 attempts before each re-drive: one read of its log loaded and encoded all of them
    (212 MB, half a GiB of server memory). The task's own ``result`` keeps the last answer.
    """
    if result is None or len(result) <= limit:
        return result
    text = result[:limit].decode("utf-8", errors="ignore")
    # Escaping can double text (quotes, backslashes) or more (control bytes): shorten until
    # the string with its "…" fits, by what it is over, as the callback's own cut does.
    while (size := len(encoded := msgspec.json.encode(text + "…"))) > limit and text:
        text = text[: max(0, len(text) - (size - limit))]
    return encoded


class TaskService:
    """Every operation on tasks, over a queue, a store and a callback sender.

    Args:
        backends: The queue and store.
        sender: Sends callbacks; started and closed by the caller.
        settings: Defaults for new tasks and lease lengths.
    """

    def __init__(self, backends: Backends, sender: CallbackSender, settings: Settings) -> None:
        self.queue = backends.queue
        self.store = backends.store
        self._database_queue = backends.database_queue  # see adopt_database_queue
        self._starting: set[asyncio.Future[Any]] = set()  # see _started
        self.sender = sender
        self.settings = settings
        self.arrivals = Arrivals()
        # Every callback in flight in this process, so that shutdown can wait for it or record it.
        self._inflight: set[asyncio.Task[ExecuteOutcome]] = set()
        # Set by begin_shutdown: ends the callbacks still running at the one shutdown deadline.
        self._stopper: asyncio.Task[None] | None = None
        self._deadline = float("inf")  # monotonic; set by begin_shutdown, cut by stop_now
        self._deadline_cut = asyncio.Event()
        self._paused: set[str] = set()
        self._paused_read_at = float("-inf")
        # The store read of the paused queues in flight, shared by every caller that finds the
        # cached set stale, so an expiry under load costs one read, not one per request.
        self._paused_read: asyncio.Future[set[str]] | None = None
        self._paused_generation = 0  # bumped by set_paused, so an older read does not cache
        self._no_retries_until: dict[str, float] = {}
        self.metrics = Metrics(max_queues=settings.metrics_max_queues)
        # Shared by every batch in flight: keyed items each take a connection for a moment, and
        # batches side by side must not take the whole pool (PostgreSQL opened and closed
        # overflow connections for each when four batches ran 16 each).
        self._keyed_slots = asyncio.Semaphore(KEYED_BATCH_CONCURRENCY)
        self._next_depth_sample = 0  # epoch ms; the first maintenance round samples at once
        self._next_clock_sync = 0.0  # monotonic; a maintenance round syncs once it is past
        self._wall_minus_monotonic = 0  # ns, at the last sync: a change means the clock jumped
        self._warned_offset_ms = 0
        self._process = ProcessRecord(
            process_id=f"{socket.gethostname()}:{os.getpid()}:{uuid_utils.uuid4().hex[:8]}",
            queue=queue_address(settings),
            started_at=now_ms(),
            seen_at=0,
        )
        self._next_heartbeat = 0.0  # monotonic
        self._warned_processes: set[tuple[str, str]] = set()
        self._store_id: str | None = None  # read at the first announce
        self._warned_stores: set[str] = set()
        self._faults = Faults(settings.faults)  # tests only: see faults.py
        # Writes the database may have committed without answering, to be settled (_withdraw,
        # _return): what to try, and until when (monotonic); one job tries them all in turn.
        self._unsettled: dict[str, tuple[Callable[[], Awaitable[None]], float]] = {}
        self._settler: asyncio.Task[None] | None = None
        self._settle_now = asyncio.Event()  # set at shutdown: see _settle

    # -- the one place a status changes ---------------------------------------------------------

    async def _transition(
        self,
        task_id: str,
        source: Collection[Status],
        target: Status,
        *,
        changes: TaskChanges | None = None,
        lease_token: str | None = None,
        require_attempts_left: bool = False,
        execution: ExecutionRecord | None = None,
        due_by: int | None = None,
        ends_attempt: bool = True,
    ) -> TaskRecord | None:
        """Move ``task_id`` from one of ``source`` to ``target`` atomically, if the task allows it.

        ``ends_attempt=False`` for a step into Retry that ends no attempt (a Failed task executed
        again, a start withdrawn): it is logged but not counted as an outcome ``retry`` ("failed,
        retry scheduled") in ``taskplatform_tasks_finished_total``.

        Returns:
            The task after the change, or None if it was not in ``source`` (or the lease token or
            attempts check did not hold): another caller got there first.

        Raises:
            ValueError: an edge is not in :data:`TRANSITIONS` (a programming error).
            BackendUnavailable: the store cannot be reached.
        """
        _check_edges(source, target)
        task = await self.store.compare_and_set(
            task_id,
            expected=source,
            target=target,
            now=now_ms(),
            changes=changes,
            lease_token=lease_token,
            require_attempts_left=require_attempts_left,
            execution=execution,
            due_by=due_by,
        )
        if task is not None:
            self._moved(task, counted=ends_attempt)
        return task

    async def _transition_many(
        self,
        task_ids: Sequence[str],
        source: Collection[Status],
        target: Status,
        *,
        changes: TaskChanges,
        require_attempts_left: bool = False,
        due_by: int | None = None,
    ) -> list[TaskRecord]:
        """:meth:`_transition` of several tasks in one store call (a dispatcher's batch claim):
        each moves on its own, atomically, if it allows it.

        Returns:
            The tasks that moved; the others were not in ``source`` (or had no attempt left).

        Raises:
            ValueError: an edge is not in :data:`TRANSITIONS` (a programming error).
            BackendUnavailable: the store cannot be reached.
        """
        _check_edges(source, target)
        tasks = await self.store.compare_and_set_many(
            task_ids,
            expected=source,
            target=target,
            now=now_ms(),
            changes=changes,
            require_attempts_left=require_attempts_left,
            due_by=due_by,
        )
        self._moved_many(tasks)
        return tasks

    def _moved(self, task: TaskRecord, note: str = "", *, counted: bool = True) -> None:
        """Log ``task`` having just reached its status (a lifecycle event) and, if ``counted``,
        count it (:meth:`Metrics.task_moved`)."""
        message, fields = _lifecycle_event(task, note)
        logger.info(message, extra=fields)
        if counted:
            self.metrics.task_moved(task.queue, task.status)

    def _moved_many(self, tasks: Sequence[TaskRecord]) -> None:
        """:meth:`_moved` of several tasks (a batch): one record with a line per task
        (:class:`~taskplatform.logs.EventLines`), the same lines as one record each."""
        if logger.isEnabledFor(logging.INFO):
            log_events(logger, logging.INFO, [_lifecycle_event(task) for task in tasks])
        moved = collections.Counter((task.queue, task.status) for task in tasks)
        for (queue, status), count in moved.items():
            self.metrics.task_moved(queue, status, count)

    # -- operations ------------------------------------------------------------------------------

    async def create(
        self,
        request: TaskCreate,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Put a new task into the queue (seed FR-001, FR-008).

        Args:
            request: A validated create request; missing options take the settings' defaults.
            idempotency_key: The client's ``Idempotency-Key``: a repeat within the key's TTL with
                the same body returns the first task instead of creating another.
            request_hash: SHA-256 (hex) of the request body, compared across repeats of a key.

        Returns:
            ``(task, replayed)``: the new task (a UUIDv7 id: unique, time-ordered, unguessable)
            and False; or, for a repeated key, the first task as it is now and True.

        Raises:
            ValidationFailed: the callback URL's literal address is refused by the URL policy.
            IdempotencyKeyReused: the key was used with another body.
            BackendUnavailable: the queue cannot be written; nothing was created.
        """
        task = self._new_task(request)
        claim = None
        if idempotency_key is not None and request_hash is not None:
            ttl_ms = round(self.settings.idempotency_key_ttl_seconds * 1000)
            claim = IdempotencyClaim(idempotency_key, request_hash, task.created_at + ttl_ms)
        replay = await self.queue.enqueue(task, claim=claim)
        if replay is not None:
            if replay.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for a create with another body; "
                    "use a new key for a new task",
                    task_id=replay.task_id,
                )
            return await self.get(replay.task_id), True
        self.arrivals.notify()
        self._moved(task)
        self.metrics.task_created(task.queue)
        return task, False

    def _new_task(self, request: TaskCreate) -> TaskRecord:
        """Build the Queued record of a validated create ``request``, defaults from settings.

        Raises:
            ValidationFailed: the callback URL's literal address is refused by the URL policy.
        """
        refusal = self.sender.policy.check_url(request.callback_url)
        if refusal is not None:
            raise ValidationFailed(
                [("$.callbackUrl", f"refused by the callback URL policy: {refusal}")]
            )
        settings = self.settings
        now = now_ms()
        scheduled_at = None
        # Milliseconds rounded up, never down (whole microseconds first, so that 0.3 s is 300
        # ms, not 301): "not dequeued or dispatched before that time" (README).
        if request.delay_seconds is not None and request.delay_seconds > 0:
            scheduled_at = now + _ceil_ms(round(request.delay_seconds * 1_000_000))
        elif request.scheduled_at is not None:
            since_epoch = request.scheduled_at - _EPOCH
            scheduled_at = _ceil_ms(since_epoch // datetime.timedelta(microseconds=1))
        defaults = self._default_policy()
        # A bound the request gives wins over the other's default (documented): a minimum
        # above the default maximum raises the maximum to it, a maximum below the default
        # minimum lowers the minimum. Both given, validation has checked their order.
        backoff_min = request.backoff_min_seconds or defaults.backoff_min_seconds
        backoff_max = request.backoff_max_seconds or defaults.backoff_max_seconds
        if request.backoff_max_seconds is not None and request.backoff_min_seconds is None:
            backoff_min = min(backoff_min, backoff_max)
        backoff_max = max(backoff_max, backoff_min)
        return TaskRecord(
            task_id=str(uuid_utils.uuid7()),
            status=Status.QUEUED,
            priority=request.priority,
            task_data=bytes(request.task_data),
            callback_url=request.callback_url,
            max_retries=(
                settings.default_max_retries if request.max_retries is None else request.max_retries
            ),
            timeout_seconds=(
                settings.default_timeout_seconds
                if request.timeout_seconds is None
                else request.timeout_seconds
            ),
            created_at=now,
            updated_at=now,
            queue=request.queue,
            scheduled_at=scheduled_at,
            retry_policy=RetryPolicy(
                backoff_min_seconds=backoff_min,
                backoff_max_seconds=backoff_max,
                backoff_multiplier=request.backoff_multiplier or defaults.backoff_multiplier,
                retry_on=request.retry_on,
                permanent_on=request.permanent_on,
            ),
        )

    async def create_many(
        self, requests: Sequence[BatchTaskCreate | RequestError], item_hashes: Sequence[str | None]
    ) -> list[tuple[TaskRecord, bool] | RequestError]:
        """Put the valid ones of several create requests into the queue (a batch create).

        Items with an ``idempotency_key`` go first, each as a single keyed create does: atomic
        with its key, given back on a repeat. The items without one go last, all in one atomic
        step. So when the queue fails part way (503), a client that resends the whole batch gets
        its keyed items back rather than twice, and the unkeyed ones were not created yet.

        Args:
            requests: Validated requests, or the error of an item that failed its checks.
            item_hashes: Per request, SHA-256 (hex) of the item's bytes, for the items with a
                key (compared across repeats of the key, as a single create's body is); None
                for the others.

        Returns:
            Per item, in order: ``(task, replayed)`` (a new task and False; for a repeated key,
            the first task as it is now and True), or why it was not created (its own error,
            the callback URL policy's refusal, or ``IdempotencyKeyReused``).

        Raises:
            BackendUnavailable: the queue cannot be written. No unkeyed item was created; keyed
                items may have been, and a resend gives them back.
        """
        results: list[tuple[TaskRecord, bool] | RequestError | None] = []
        keyed: list[tuple[int, TaskCreate, str, str]] = []
        unkeyed: list[TaskRecord] = []
        for index, (request, item_hash) in enumerate(zip(requests, item_hashes, strict=True)):
            if isinstance(request, RequestError):
                results.append(request)
            elif request.idempotency_key is not None and item_hash is not None:
                keyed.append((index, request, request.idempotency_key, item_hash))
                results.append(None)  # filled in below
            else:
                try:
                    task = self._new_task(request)
                except ValidationFailed as exc:
                    results.append(exc)
                    continue
                unkeyed.append(task)
                results.append((task, False))
        if keyed:

            async def create_keyed(index: int, request: TaskCreate, key: str, hashed: str) -> None:
                async with self._keyed_slots:
                    try:
                        results[index] = await self.create(
                            request, idempotency_key=key, request_hash=hashed
                        )
                    except IdempotencyKeyReused as exc:
                        results[index] = IdempotencyKeyReused(
                            "this idempotencyKey was used for another item (or create); use a "
                            "new key for a new task",
                            task_id=exc.task_id,
                        )
                    except RequestError as exc:  # this item's own problem, not the batch's
                        results[index] = exc

            try:
                async with asyncio.TaskGroup() as group:
                    for item in keyed:
                        group.create_task(create_keyed(*item))
            except ExceptionGroup as failed:  # BackendUnavailable: the whole request is a 503
                raise failed.exceptions[0] from None
        if unkeyed:
            await self.queue.enqueue_many(unkeyed)
            self.arrivals.notify()
            self._moved_many(unkeyed)
            for queue, count in collections.Counter(task.queue for task in unkeyed).items():
                self.metrics.task_created(queue, count)
        # Every keyed item's place was filled above, or the task group raised.
        return [result for result in results if result is not None]

    async def dequeue(
        self,
        wait_seconds: float = 0,
        queue: str = DEFAULT_QUEUE,
        *,
        client_gone: asyncio.Event | None = None,
    ) -> TaskRecord:
        """Take the next task out of the queue into the store (seed FR-002, FR-009).

        Args:
            wait_seconds: When the queue is empty, how long to wait for a task (a long poll),
                at most ``long_poll_max_seconds``.
                The wait wakes as soon as any process enqueues (a local signal, PostgreSQL
                LISTEN/NOTIFY or Redis pub/sub), with a periodic check as the fallback.
                A pause of ``queue`` ends the wait too (seen within the pause cache's time).
            queue: The named queue to take from.
            client_gone: Set when the client that asked has gone (its connection closed). The
                wait ends then, and a task taken just as it left goes back to the queue at its
                place: nobody would get it, and it would sit Dequeued until its lease ran out.

        Returns:
            The task, now Dequeued under a lease: the highest priority first, FIFO within a
            priority, among the due tasks of ``queue`` (a scheduled task is not due before its
            time).

        Raises:
            QueueEmpty: no task is queued (after waiting), or the client has gone.
            QueuePaused: ``queue`` is paused, or was paused during the wait.
            BackendUnavailable: a backend cannot be reached; the task stays queued, or, if the
                database moved it without answering, goes back once it answers (``_return``).
        """
        deadline = time.monotonic() + min(wait_seconds, self.settings.long_poll_max_seconds)
        while True:
            if queue in await self.paused_queues():
                raise QueuePaused(f"the queue {queue!r} is paused; resume it to dequeue")
            arrived = self.arrivals.current()
            # A token of its own each time, always (leases off too), so that a dequeue whose
            # answer was lost can be found and returned (see _return).
            lease_token = str(uuid_utils.uuid4())
            try:
                task = await self._transfer(queue, lease_token)
            except BackendUnavailable:
                self._return(lease_token)
                raise
            remaining = deadline - time.monotonic()
            if task is not None or remaining <= 0:
                break
            self.arrivals.waiters += 1
            try:
                poll = min(remaining, self.settings.long_poll_fallback_seconds)
                await wait_for_event(arrived, poll, client_gone)
            finally:
                self.arrivals.waiters -= 1
            if self.stopping or (client_gone is not None and client_gone.is_set()):
                # Answer now instead of holding up the server's drain for up to 20 s; the task
                # a look now might find is better left queued than handed out by a server
                # that will not execute it, or to a client that is no longer there.
                break
        if task is None:
            raise QueueEmpty(f"no task is due in the queue {queue!r}")
        self._moved(task)
        self.metrics.task_dequeued(task.queue, "pull")
        if client_gone is not None and client_gone.is_set():
            try:
                await self._give_back(task)
            except BackendUnavailable:
                # Tried again until the store answers: with leases off nothing else would ever
                # move the task, and with them it would wait out its lease.
                # This task alone: concurrent dequeues share one statement and its lease
                # token, and the others' tasks went to callers that are there (found in
                # review: a task answered 200 to one caller was returned and handed out again).
                self._return(
                    task.lease_token or lease_token,
                    "the client that dequeued it had gone",
                    only=task.task_id,
                )
            raise QueueEmpty(f"the client left before a task of the queue {queue!r} came")
        return task

    async def _give_back(
        self, task: TaskRecord, why: str = "the client that dequeued it had gone"
    ) -> None:
        """Return a task just dequeued for a caller that will not get it to the queue, at its
        place; ``why`` goes into its error and the log line."""
        if task.lease_token is None:
            return  # no token to fence the move with (a task dequeued by an older version)
        assert Status.QUEUED in TRANSITIONS[Status.DEQUEUED]
        if await self.queue.requeue(
            self.store, task, now=now_ms(), note=f"returned to the queue: {why}"
        ):
            queued = msgspec.structs.replace(task, status=Status.QUEUED)
            self._moved(queued, f" again ({why})")

    async def _transfer(self, queue: str, lease_token: str) -> TaskRecord | None:
        now = now_ms()
        lease = self.settings.dequeue_lease_seconds
        return await self.queue.transfer(
            self.store,
            now=now,
            queue=queue,
            lease_token=lease_token,
            lease_expires_at=now + round(lease * 1000) if lease > 0 else None,
        )

    def _return(
        self,
        lease_token: str,
        why: str = "its dequeue's answer was lost (503)",
        *,
        only: str | None = None,
    ) -> None:
        """Have :meth:`_settle` return to the queue what a pull dequeue took under
        ``lease_token`` although it failed (``BackendUnavailable``): the database can commit the
        move and lose its answer (a connection reset, a failover), and the caller, told 503,
        never gets the task; it sat Dequeued until its lease ran out, or for ever with leases
        off. Likewise the task ``only`` (a task id), whose give-back (:meth:`_give_back`)
        failed: only it, as the dequeues grouped with it share its token and handed theirs
        out. ``why`` goes into the error. Tried for as long as the lease (an hour with leases
        off); a dequeue that did not commit finds nothing.
        """
        lease = self.settings.dequeue_lease_seconds

        async def attempt() -> None:
            for task in await self.store.dequeued_under(lease_token):
                if only is None or task.task_id == only:
                    await self._give_back(task, why)

        key = f"return {lease_token}" if only is None else f"return {lease_token} {only}"
        self._settle_later(key, attempt, lease if lease > 0 else 3600.0)

    def _settle_later(
        self, key: str, attempt: Callable[[], Awaitable[None]], seconds: float
    ) -> None:
        """Have ``attempt`` tried by :meth:`_settle` for up to ``seconds``."""
        self._unsettled[key] = (attempt, time.monotonic() + seconds)
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle(), name="settle unconfirmed writes")

    async def _settle(self) -> None:
        """Try each unsettled write (:meth:`_withdraw`, :meth:`_return`) in turn, after 0.2 s,
        until each has run or its time is up. While the store does not answer, one try a round
        and doubling pauses up to 2 s: an outage during which clients keep calling leaves one
        failing statement every 2 s, not one a failed request. From the start of shutdown
        (:attr:`_settle_now`) the pause is cut short and each gets a last try: a stop must not
        leave behind what a try could still settle (with leases off nothing else would)."""
        pause = 0.2
        while self._unsettled:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_now.wait(), pause)
            down = False
            for key, (attempt, deadline) in list(self._unsettled.items()):
                try:
                    await attempt()
                except BackendUnavailable:
                    raise_if_cancelled()
                    if self._settle_now.is_set() or time.monotonic() >= deadline:
                        del self._unsettled[key]
                        continue
                    down = True
                    break  # the store is down: the others wait for the next round
                except Exception:  # a defect: said, and not tried again
                    logger.exception("settling %s failed", key)
                    del self._unsettled[key]
                else:
                    del self._unsettled[key]
            pause = min(2 * pause, 2.0) if down else 0.2

    async def paused_queues(self) -> set[str]:
        """Return the paused queues, as read at most ``_PAUSE_CACHE_SECONDS`` ago.

        Cached per process so that dequeue and dispatch do not read the store every time; a
        pause therefore takes effect everywhere within that time. Callers that find the cache
        stale at the same moment share one store read.

        Raises:
            BackendUnavailable: the store cannot be reached (every caller sharing that read
                gets it; the next call reads again).
        """
        if time.monotonic() - self._paused_read_at <= _PAUSE_CACHE_SECONDS:
            return self._paused
        read = self._paused_read
        if read is None:
            read = self._paused_read = asyncio.ensure_future(self._read_paused())
            read.add_done_callback(self._paused_read_done)
        # Shielded: a caller that gives up (its client left) must not cancel the others' read.
        return await asyncio.shield(read)

    async def _read_paused(self) -> set[str]:
        read_at, generation = time.monotonic(), self._paused_generation
        paused = await self.store.paused_queues()
        if generation == self._paused_generation:
            self._paused, self._paused_read_at = paused, read_at
        return paused

    def _paused_read_done(self, read: asyncio.Future[set[str]]) -> None:
        if self._paused_read is read:
            self._paused_read = None
        if not read.cancelled():
            read.exception()  # retrieved here too, in case every caller was cancelled

    async def claim_for_dispatch(self, queue: str, most: int = 1) -> list[TaskRecord]:
        """Take up to ``most`` tasks of ``queue`` due for an automatic attempt, each moved on to
        Processing under a fresh lease.

        Dispatched tasks in Retry whose ``nextAttemptAt`` has come go first (they waited
        already; one statement starts them all), then the next due Queued tasks, taken in one
        batch (on PostgreSQL one statement to take them and one to start them, not two per
        task; each task's lease follows its own timeout). Of several
        dispatchers racing for one task, the compare-and-set lets exactly one through.

        Cancelled (the dispatcher stopping), the claim's statements still finish, for up to
        ``_CLAIM_FINISH_SECONDS``, and the tasks it moved are called back like every callback
        in flight at shutdown, before the cancellation goes on.

        Returns:
            The tasks in Processing; empty when nothing is due.

        Raises:
            BackendUnavailable: a backend cannot be reached.
        """
        if self.stopping or queue in await self.paused_queues():
            return []
        claimed: list[TaskRecord] = []
        claim = asyncio.ensure_future(self._claim(queue, most, claimed))
        try:
            await asyncio.shield(claim)
        except BackendUnavailable:
            if not claimed:
                raise
            # Those already in Processing must still be called back (their attempt is
            # counted); the dispatcher pauses on the next claim if the backend stays down.
        except asyncio.CancelledError:
            # The dispatcher is stopping. A cancelled wait does not undo a statement that has
            # committed, so a claim cut short could leave tasks in Processing that nobody
            # calls back until their lease runs out: let it finish (briefly), then what it
            # claimed runs as any callback in flight does at shutdown (finishes within the
            # grace, or is recorded as interrupted).
            claim.add_done_callback(_retrieve)
            try:
                await asyncio.wait({claim}, timeout=_CLAIM_FINISH_SECONDS)
            finally:
                claim.cancel()
                for task in claimed:
                    self._track(task)
            raise
        return claimed

    async def _claim(self, queue: str, most: int, claimed: list[TaskRecord]) -> None:
        """The steps of :meth:`claim_for_dispatch`, appending each task to ``claimed`` as soon
        as it is in Processing, so that a step failing later does not lose it."""
        now = now_ms()
        if time.monotonic() >= self._no_retries_until.get(queue, 0.0):
            due = await self.store.due_retries(queue, now=now, limit=most)
            if not due:
                self._no_retries_until[queue] = time.monotonic() + _RETRY_CHECK_SECONDS
            else:
                # Still due: another dispatcher may have run one and put it back to wait
                # meanwhile, with a later time.
                claimed += await self._start_many(
                    [waiting.task_id for waiting in due], {Status.RETRY}, due_by=now
                )
        if len(claimed) == most:
            return
        # The dispatcher executes at once; a short Dequeued lease covers a crash in between.
        lease = self.settings.processing_lease_grace_seconds or 30.0
        taken = await self.queue.transfer_many(
            self.store,
            now=now,
            most=most - len(claimed),
            queue=queue,
            lease_token=str(uuid_utils.uuid4()),
            lease_expires_at=now + round(lease * 1000),
            dispatched=True,
        )
        for task in taken:
            self.metrics.task_dequeued(task.queue, "dispatch")
        if taken:
            # One transition for all; each task's lease follows its own timeout.
            claimed += await self._start_many([task.task_id for task in taken], {Status.DEQUEUED})

    async def _start_processing(
        self, task_id: str, source: Collection[Status]
    ) -> TaskRecord | None:
        changes = self._processing_changes()
        start = asyncio.ensure_future(
            self._transition(
                task_id, source, Status.PROCESSING, changes=changes, require_attempts_left=True
            )
        )
        started = await self._started(start, [task_id], str(changes.lease_token))
        if started is not None:
            self._fault_after_start([task_id], str(changes.lease_token))
        return started

    async def _start_many(
        self, task_ids: list[str], source: Collection[Status], *, due_by: int | None = None
    ) -> list[TaskRecord]:
        """:meth:`_start_processing` of a dispatcher's batch: one statement, one lease token."""
        changes = self._processing_changes()
        start = asyncio.ensure_future(
            self._transition_many(
                task_ids,
                source,
                Status.PROCESSING,
                changes=changes,
                require_attempts_left=True,
                due_by=due_by,
            )
        )
        started = await self._started(start, task_ids, str(changes.lease_token))
        if started:
            self._fault_after_start(task_ids, str(changes.lease_token))
        return started

    async def _started(self, start: asyncio.Future[T], task_ids: list[str], lease_token: str) -> T:
        """Await ``start``, a move of ``task_ids`` to Processing under ``lease_token``, and have
        it withdrawn (:meth:`_withdraw`) if this process will make no callback for it.

        Two cases: the store failed without an answer (``BackendUnavailable``: it may have
        committed); and the caller was cancelled (a stop cutting an execute or a claim short),
        while the statement, which a cancelled wait does not stop (a group commit's writer, the
        SQLite writer thread), may have committed with its answer still on its way, or may
        commit later. So the withdraw is registered at once, and again once the statement has
        finished: a try before it committed finds nothing, and the reaper later counted an
        attempt never made (found in review). Shutdown waits for such statements
        (:attr:`_starting`) before the settler's last try.
        """
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            self._withdraw(task_ids, lease_token)
            self._starting.add(start)

            def finished(done: asyncio.Future[T]) -> None:
                self._starting.discard(done)
                _retrieve(done)
                self._withdraw(task_ids, lease_token)

            start.add_done_callback(finished)
            raise
        except BackendUnavailable:
            self._withdraw(task_ids, lease_token)
            raise

    def _fault_after_start(self, task_ids: list[str], lease_token: str) -> None:
        """Tests: fail as if the start's answer were lost after it committed."""
        try:
            self._faults.hit("after_start")
        except BackendUnavailable:
            self._withdraw(task_ids, lease_token)
            raise

    def _withdraw(self, task_ids: list[str], lease_token: str) -> None:
        """Have :meth:`_settle` undo a move to Processing that the database may have committed
        without answering.

        The statement that starts an attempt (``attempts + 1``, a fresh lease) can commit and
        then lose its answer (a connection reset, a failover), or its caller can be cancelled
        after it committed (a stop cutting a dispatcher's claim short): the caller made no
        callback, yet the task sat in Processing until its lease ran out, and the reaper
        then counted the attempt as interrupted. A task with ``maxRetries: 0`` ended a dead
        letter that no callback ever reached. Only this process knows the lease token of that
        start, so it looks: each task still in Processing under it goes to Retry, due now,
        with the attempt taken back and :data:`WITHDRAWN` as its error; a start that did not
        commit matches nothing. Tried until the store answers or the lease could have run out
        (``max_timeout_seconds`` + ``processing_lease_grace_seconds``), after which the
        reaper's fenced reap applies.
        """
        seconds = self.settings.max_timeout_seconds + self.settings.processing_lease_grace_seconds
        pending = list(task_ids)

        async def attempt() -> None:
            for task_id in list(pending):
                withdrawn = await self._transition(
                    task_id,
                    {Status.PROCESSING},
                    Status.RETRY,
                    changes=TaskChanges(
                        withdraw_attempt=True,
                        lease_token=None,
                        lease_expires_at=None,
                        next_attempt_at=now_ms(),
                        error=WITHDRAWN,
                    ),
                    lease_token=lease_token,
                    ends_attempt=False,  # the attempt was never made
                )
                pending.remove(task_id)
                if withdrawn is not None:
                    logger.warning(
                        "task %s: %s",
                        task_id,
                        WITHDRAWN,
                        extra={"task_id": task_id, "attempt": withdrawn.attempts + 1},
                    )
                    self.arrivals.notify()

        self._settle_later(f"withdraw {lease_token}", attempt, seconds)

    def _processing_changes(self) -> TaskChanges:
        """The columns of a move to Processing: one more attempt, under a fresh lease that
        covers the task's own callback timeout plus the grace (computed by the store)."""
        return TaskChanges(
            increment_attempts=True,
            lease_token=str(uuid_utils.uuid4()),
            lease_grace_seconds=self.settings.processing_lease_grace_seconds,
            next_attempt_at=None,
        )

    async def take_dispatch_token(self, queue: str, rate: float) -> bool:
        """Take one of ``queue``'s dispatch tokens (``rate`` per second over every dispatcher,
        at most one second's worth saved up); False means wait."""
        return await self.store.take_dispatch_token(
            queue, rate=rate, burst=max(1.0, rate), now=now_ms()
        )

    async def give_back_dispatch_token(self, queue: str, rate: float) -> None:
        """Return a token taken by :meth:`take_dispatch_token` for a claim that found nothing."""
        await self.store.give_back_dispatch_token(queue, burst=max(1.0, rate))

    def dispatch(self, task: TaskRecord) -> asyncio.Task[ExecuteOutcome]:
        """Make the callback of a claimed Processing ``task`` on this process's loop.

        Tracked like a background execute, so shutdown waits for it or records it interrupted.
        """
        return self._track(task)

    async def get(self, task_id: str) -> TaskRecord:
        """Return the task ``task_id`` in whatever status it is (seed FR-010).

        Raises:
            TaskNotFound: no such task.
        """
        task = await self._locate(task_id)
        if task is None:
            raise TaskNotFound(f"no task has the id {task_id!r}", task_id=task_id)
        return task

    async def _locate(self, task_id: str) -> TaskRecord | None:
        """Return the task ``task_id`` wherever it is: the store's record, else the queue's;
        None when neither has it.

        A task moves between the two between any two reads: a dequeue or a cancel from the
        queue to the store, a give-back, requeue or re-drive back. So one read of each could
        miss a task that exists; a dequeue and then a give-back between three reads (store,
        queue, store) did, and GET answered 404 (found in review). Reads alternate, up to five
        for a task that does not exist; to be missed, a task would have to move at each one.
        """
        task = await self.store.get(task_id)
        for _ in range(2):
            if task is not None:
                return task
            task = await self.queue.get(task_id) or await self.store.get(task_id)
        if task is None and self._database_queue is not None:
            # Not moved into Redis yet (adopt_database_queue): Queued all the same.
            task = await self._database_queue.get(task_id)
        return task

    async def execute(self, task_id: str) -> ExecuteOutcome:
        """Run one callback attempt of ``task_id`` and record it (seed FR-003, FR-006, FR-007).

        Returns:
            The task's status after the attempt (Completed or Failed), the callback's result and
            error, and the attempt number. A failed callback is an outcome, not an exception.

        Raises:
            TaskNotFound, TaskNotDequeued, TaskProcessing, TaskCompleted, RetryLimitReached:
                the task cannot be executed now.
            ShuttingDown: the server is stopping: either no attempt was started, or the callback
                was still running when the shutdown grace ran out and the attempt has been
                recorded as interrupted (the task can be executed again, unless that was its
                last attempt: then it is a dead letter).
            BackendUnavailable: the store cannot be reached.
        """
        task = await self.start_execute(task_id)
        call = self._track(task)
        # asyncio.wait, like a shield, never cancels the call: a client that hangs up must not
        # cancel a callback that is already running, or the attempt would stay unrecorded. And
        # unlike awaiting a shield, it does not turn the shutdown's cancellation of the call into
        # a CancelledError of this request (a 500): the call is over, interrupted and recorded.
        await asyncio.wait({call})
        if call.cancelled():
            detail = STOPPED_MID_CALLBACK if task.attempts_left() else STOPPED_MID_LAST_CALLBACK
            raise ShuttingDown(detail, task_id=task_id)
        return call.result()

    async def execute_in_background(self, task_id: str) -> TaskRecord:
        """Start an attempt like :meth:`execute` and return at once with the Processing task.

        The callback runs on this process's event loop; its outcome appears on ``get``.

        Raises:
            The same errors as :meth:`execute`, before any callback starts.
        """
        task = await self.start_execute(task_id)
        self._track(task)
        return task

    def _track(self, task: TaskRecord) -> asyncio.Task[ExecuteOutcome]:
        call = asyncio.create_task(self.finish_execute(task), name=f"callback {task.task_id}")
        self._inflight.add(call)
        self.metrics.in_flight.inc()
        call.add_done_callback(self._untrack)
        return call

    def _untrack(self, call: asyncio.Task[ExecuteOutcome]) -> None:
        self._inflight.discard(call)
        self.metrics.in_flight.dec()
        # An outcome that could not be recorded has been logged as a warning; a dispatched or
        # background call has nobody else to see its error. Anything else is a defect: logged
        # with its traceback, or a dispatched task would sit in Processing until its lease ran
        # out without a word (a synchronous execute's client also gets a 500).
        if call.cancelled():
            return
        error = call.exception()
        if error is not None and not isinstance(error, TaskPlatformError):
            logger.error(
                "%s: its outcome could not be recorded; the task is retried when its lease "
                "runs out",
                call.get_name(),
                exc_info=error,
            )

    async def start_execute(self, task_id: str) -> TaskRecord:
        """Move ``task_id`` to Processing under a fresh lease, ready for one callback.

        Returns:
            The task in Processing; ``attempts`` already counts the new attempt and
            ``lease_token`` fences the attempt's outcome.

        Raises:
            TaskNotFound, TaskNotDequeued, TaskProcessing, TaskCompleted, RetryLimitReached.
            ShuttingDown: the server is stopping; a callback started now could be cut off.
        """
        if self.stopping:
            raise ShuttingDown(STOPPING, task_id=task_id)
        # The usual case, a Dequeued or Retry task with an attempt left, is one statement; the
        # others are told apart from the task as it is then.
        processing = await self._start_processing(task_id, {Status.DEQUEUED, Status.RETRY})
        if processing is not None:
            return processing
        task = await self._locate(task_id)
        if task is None:
            raise TaskNotFound(f"no task has the id {task_id!r}", task_id=task_id)
        if task.status is Status.QUEUED:  # in the queue, or a Redis requeue's mark in the store
            raise TaskNotDequeued(task_id=task_id)
        if task.status is Status.FAILED:
            if not task.attempts_left():
                raise _conflict(task)
            # Tried again, a dead letter is one no more; this attempt's outcome decides anew.
            # Due at once: should the start below fail (a 503), the task waits in Retry where a
            # dispatcher claims it, or the caller's next execute starts it. Without a time, no
            # dispatcher ever would, and it was no longer listed as a dead letter to re-drive.
            retried = await self._transition(
                task_id,
                {Status.FAILED},
                Status.RETRY,
                changes=TaskChanges(dead_letter=False, next_attempt_at=now_ms()),
                require_attempts_left=True,
                ends_attempt=False,  # the attempt that failed was counted when it ended
            )
            if retried is None:
                raise _conflict(await self.store.get(task_id) or task)
        elif task.status not in (Status.DEQUEUED, Status.RETRY):
            raise _conflict(task)
        processing = await self._start_processing(task_id, {Status.DEQUEUED, Status.RETRY})
        if processing is None:
            raise _conflict(await self.store.get(task_id) or task)
        return processing

    async def finish_execute(self, task: TaskRecord) -> ExecuteOutcome:
        """Make the callback of a Processing ``task`` and record the attempt and its outcome.

        Returns:
            The outcome. If the lease was lost meanwhile (another process failed the attempt as
            interrupted), the task's status, result and error as stored now.
        """
        attempt = task.attempts
        try:
            outcome: CallbackOutcome = await self.sender.send(task, attempt)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: record the attempt as interrupted (it counts, and the
            # task can be executed again), then let the cancellation go on.
            await asyncio.shield(self._interrupt(task, INTERRUPTED))
            raise
        self.metrics.callback_finished(task.queue, outcome.success, outcome.duration_ms)
        target = Status.COMPLETED if outcome.success else Status.FAILED
        # None on success too (it is None in Processing already): every outcome then has one
        # shape, which PostgreSQL group-commits.
        next_attempt_at: int | None = None
        dead_letter: bool | msgspec.UnsetType = msgspec.UNSET
        if not outcome.success:
            next_attempt_at = self._automatic_retry(task, outcome)
            if next_attempt_at is not None:
                target = Status.RETRY
            # A dead letter: no attempt left, or a dispatched task that will not be retried.
            dead_letter = not task.attempts_left() or (task.dispatched and next_attempt_at is None)
        if self.settings.log_task_data:  # debugging only: payloads stay out of logs by default
            logger.debug(
                "task %s attempt %d sent %r, got %r",
                task.task_id,
                attempt,
                task.task_data[:2000],
                (outcome.result or b"")[:2000],
            )
        recording = asyncio.ensure_future(
            self._record_outcome(
                task,
                outcome,
                target,
                TaskChanges(
                    lease_token=None,
                    lease_expires_at=None,
                    result=outcome.result,
                    error=outcome.error,
                    completed_at=outcome.finished_at if outcome.success else msgspec.UNSET,
                    next_attempt_at=next_attempt_at,
                    dead_letter=dead_letter,
                ),
                ExecutionRecord(
                    task_id=task.task_id,
                    attempt=attempt,
                    started_at=outcome.started_at,
                    finished_at=outcome.finished_at,
                    duration_ms=outcome.duration_ms,
                    http_status=outcome.http_status,
                    result=logged_result(outcome.result, self.settings.execution_result_max_bytes),
                    error=outcome.error,
                ),
            )
        )
        try:
            finished = await asyncio.shield(recording)
        except asyncio.CancelledError:
            # The callback has answered: its outcome is recorded before we give way (shutdown
            # would otherwise leave the task in Processing, or count an attempt as interrupted
            # that in fact finished).
            with contextlib.suppress(Exception):
                await recording
            raise
        status = target
        if finished is None:
            logger.warning(
                "task %s: attempt %d finished after its lease was lost; outcome not applied",
                task.task_id,
                attempt,
                extra={"task_id": task.task_id, "attempt": attempt},
            )
            current = await self.store.get(task.task_id)
            if current is not None and current.attempts == attempt:
                # What GET and the attempt log say (the reaper's "interrupted"), not the
                # callback's answer that was not applied: the execute answered "timeout after
                # 1 s" while both recorded the interruption (found in review).
                return ExecuteOutcome(
                    task_id=task.task_id,
                    status=current.status,
                    result=current.result,
                    error=current.error,
                    attempt=attempt,
                )
            if current is not None:
                # A later attempt has begun: this attempt's own entry in the log, and the
                # status the interruption gave it (as _interrupt chose), not the later one's.
                logged = [
                    e for e in await self.store.executions(task.task_id) if e.attempt == attempt
                ]
                return ExecuteOutcome(
                    task_id=task.task_id,
                    status=_interrupted_status(task),
                    result=None,
                    error=logged[-1].error if logged else LEASE_EXPIRED,
                    attempt=attempt,
                )
        return ExecuteOutcome(
            task_id=task.task_id,
            status=status,
            result=outcome.result,
            error=outcome.error,
            attempt=attempt,
        )

    async def _record_outcome(
        self,
        task: TaskRecord,
        outcome: CallbackOutcome,
        target: Status,
        changes: TaskChanges,
        execution: ExecutionRecord,
    ) -> TaskRecord | None:
        """Record the answered attempt of the Processing ``task``: its move to ``target`` with
        ``changes`` and its ``execution``, fenced by the attempt's lease token.

        While the store cannot be reached it tries again (0.1 s, doubling to 2 s between tries)
        until the attempt's lease runs out, or the shutdown deadline passes: a callback that
        was answered is worth recording, and within its lease nothing else may touch the
        attempt. After that the reaper records the attempt as interrupted and the task goes
        again (README, "Leases").

        Returns:
            The task after the move, or None if the lease was lost meanwhile.

        Raises:
            BackendUnavailable: the lease ran out (or the shutdown deadline passed) with the
                store still unreachable; its detail says the callback was answered and not
                recorded.
        """
        delay, warned = 0.1, False
        while True:
            try:
                return await self._transition(
                    task.task_id,
                    {Status.PROCESSING},
                    target,
                    changes=changes,
                    lease_token=task.lease_token,
                    execution=execution,
                )
            except BackendUnavailable as exc:
                raise_if_cancelled()
                answer = (
                    "no answer" if outcome.http_status is None else f"HTTP {outcome.http_status}"
                )
                left = ((task.lease_expires_at or 0) - now_ms()) / 1000
                if left <= 0 or (self.stopping and time.monotonic() >= self._deadline):
                    detail = (
                        f"the callback of task {task.task_id} was made ({answer}) but attempt "
                        f"{task.attempts}'s outcome could not be recorded: {exc.detail}; the "
                        "attempt will be recorded as interrupted and the task can run again"
                    )
                    log_fields = {"task_id": task.task_id, "attempt": task.attempts}
                    logger.warning("%s", detail, extra=log_fields)
                    raise BackendUnavailable(detail, task_id=task.task_id) from exc
                if not warned:
                    logger.warning(
                        "task %s: attempt %d's outcome (%s, %s) cannot be recorded yet (%s); "
                        "trying again for up to %.3g s, until its lease runs out",
                        task.task_id,
                        task.attempts,
                        target.value,
                        answer,
                        exc.detail,
                        left,
                        extra={"task_id": task.task_id, "attempt": task.attempts},
                    )
                    warned = True
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 2.0)

    def _automatic_retry(self, task: TaskRecord, outcome: CallbackOutcome) -> int | None:
        """Return when a dispatched ``task`` whose attempt failed should run again (epoch ms),
        or None when it is not retried automatically (pull mode, permanent, no attempts left)."""
        if not task.dispatched or not task.attempts_left():
            return None
        policy = self._policy(task)
        if not is_retryable(outcome, policy):
            return None
        retry_after = outcome.retry_after_seconds if outcome.http_status in (429, 503) else None
        delay = backoff_seconds(
            policy,
            task.attempts,
            retry_after=retry_after,
            retry_after_cap=self.settings.retry_after_max_seconds,
        )
        return outcome.finished_at + round(delay * 1000)

    def _policy(self, task: TaskRecord) -> RetryPolicy:
        """Return ``task``'s retry policy; one created before policies existed gets the defaults."""
        return task.retry_policy or self._default_policy()

    def _default_policy(self) -> RetryPolicy:
        return RetryPolicy(
            backoff_min_seconds=self.settings.backoff_min_seconds,
            backoff_max_seconds=self.settings.backoff_max_seconds,
            backoff_multiplier=self.settings.backoff_multiplier,
        )

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel ``task_id``: it is never called back (again). Cancelling twice is harmless.

        A Queued task leaves the queue atomically; a Dequeued, Retry or Failed one moves by
        compare-and-set, so a dispatcher racing to start it either wins (the cancel gets 409)
        or never calls back.

        Returns:
            The task, Cancelled.

        Raises:
            TaskNotFound: no such task.
            TaskProcessing: a callback is in flight; it cannot be recalled.
            TaskCompleted: the callback succeeded already.
            BackendUnavailable: a backend cannot be reached.
        """
        cancellable = (Status.DEQUEUED, Status.RETRY, Status.FAILED)
        for _ in range(50):
            cancelled = await self.queue.cancel(self.store, task_id, now=now_ms())
            if cancelled is not None:
                self._moved(cancelled)
                return cancelled
            task = await self._locate(task_id)
            if task is None:
                raise TaskNotFound(f"no task has the id {task_id!r}", task_id=task_id)
            if task.status is Status.CANCELLED:
                return task
            if task.status is Status.QUEUED:
                # In the queue yet not cancelled there: reserved by a dequeue on its way into
                # the store (Redis), or a Redis requeue's mark in the store on its way back. A
                # moment later it has arrived, and the cancel above or the compare-and-set
                # below decides.
                await asyncio.sleep(0.01)
                continue
            if task.status is Status.COMPLETED:
                raise TaskCompleted(
                    "the task has completed; it can no longer be cancelled", task_id=task_id
                )
            if task.status is Status.PROCESSING:
                raise TaskProcessing(
                    "the task is executing; a task can be cancelled before or between attempts, "
                    "not during one",
                    task_id=task_id,
                )
            if task.status not in cancellable:
                raise _conflict(task)
            cancelled = await self._transition(
                task_id,
                cancellable,
                Status.CANCELLED,
                changes=TaskChanges(
                    lease_token=None, lease_expires_at=None, next_attempt_at=None, dead_letter=False
                ),
            )
            if cancelled is not None:
                return cancelled
        raise TaskProcessing(
            "the task is being handed out right now; try the cancel again", task_id=task_id
        )

    async def redrive(self, task_id: str) -> TaskRecord:
        """Send the Failed task ``task_id`` back to its queue with a fresh set of attempts.

        It returns at its original position (priority, then creation order), no longer a dead
        letter; its attempt log keeps the earlier attempts.

        Returns:
            The task, Queued.

        Raises:
            TaskNotFound: no such task.
            TaskNotFailed: the task is not Failed.
            BackendUnavailable: a backend cannot be reached.
        """
        task = await self.get(task_id)
        if task.status is not Status.FAILED:
            raise TaskNotFailed(
                f"the task is {task.status.value}; only a Failed task can be retried",
                task_id=task_id,
            )
        assert Status.QUEUED in TRANSITIONS[Status.FAILED]
        note = f"re-driven after {_attempts(task.attempts)}; last error: {task.error}"
        now = now_ms()
        if not await self.queue.requeue(self.store, task, now=now, note=note, redrive=True):
            current = await self.get(task_id)
            raise TaskNotFailed(
                f"the task is {current.status.value} now (another request moved it first); "
                "only a Failed task can be retried",
                task_id=task_id,
            )
        # The task as it went back; reading it again could already find a dispatcher's claim.
        queued = msgspec.structs.replace(
            task,
            status=Status.QUEUED,
            attempts=0,
            dead_letter=False,
            dispatched=False,
            error=note,
            result=None,
            scheduled_at=None,
            next_attempt_at=None,
            lease_token=None,
            lease_expires_at=None,
            dequeued_at=None,
            completed_at=None,
            updated_at=now,
        )
        self._moved(queued, ", re-driven")
        self.arrivals.notify()
        return queued

    async def redrive_dead_letters(self, *, queue: str | None, limit: int) -> list[str]:
        """Re-drive up to ``limit`` dead letters (of ``queue``, or of all queues), newest first.

        Returns:
            The ids of the tasks sent back; one re-driven concurrently by someone else is skipped.
        """
        dead = await self.store.list_tasks(
            status=Status.FAILED, before=None, limit=limit, queue=queue, dead_letter=True
        )
        retried = []
        for task in dead:
            try:
                await self.redrive(task.task_id)
            except TaskConflict:
                continue
            retried.append(task.task_id)
        return retried

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume ``queue``; this process sees it at once, others within 0.25 s."""
        await self.store.set_paused(queue, paused, now=now_ms())
        # A read already in flight may have missed this change: later callers start their own.
        self._paused_read_at = float("-inf")
        self._paused_read = None
        self._paused_generation += 1
        if not paused:
            self.arrivals.notify()

    async def queues(self) -> list[QueueView]:
        """Return every named queue known to the queue, the store or the pause table, by name."""
        now = now_ms()
        window_ms = 60_000
        counts = await self.queue.queue_counts(now=now)
        activity = await self.store.queue_activity(since=now - window_ms)
        paused = await self.store.paused_queues()
        views = []
        for name in sorted(set(counts) | set(activity) | paused | {DEFAULT_QUEUE}):
            count = counts.get(name)
            act = activity.get(name)
            oldest = count.oldest_due_at if count else None
            views.append(
                QueueView(
                    name=name,
                    paused=name in paused,
                    depth=count.depth if count else 0,
                    in_flight=act.in_flight if act else 0,
                    oldest_queued_age_seconds=(
                        None if oldest is None else max(0.0, (now - oldest) / 1000)
                    ),
                    dispatch_rate_per_second=(act.attempts if act else 0) / (window_ms / 1000),
                )
            )
        return views

    async def queue_view(self, name: str) -> QueueView:
        """Return the view of one named queue (a queue never used shows zeros)."""
        for view in await self.queues():
            if view.name == name:
                return view
        return QueueView(
            name=name,
            paused=False,
            depth=0,
            in_flight=0,
            oldest_queued_age_seconds=None,
            dispatch_rate_per_second=0.0,
        )

    async def list_tasks(
        self,
        *,
        status: Status | None,
        cursor: str | None,
        limit: int,
        queue: str | None = None,
        dead_letter: bool | None = None,
    ) -> tuple[list[TaskRecord], str | None]:
        """Return a page of tasks, newest first, and the cursor of the next page (or None).

        Args:
            status: Only tasks in this status, or all.
            cursor: ``nextCursor`` of the previous page, or None for the first.
            limit: Page size.
            queue: Only tasks of this named queue, or of all.
            dead_letter: Only dead letters (True), only others (False), or all (None).
        """
        fetch = limit + 1
        if dead_letter:  # only stored Failed tasks can be dead letters
            tasks = await self.store.list_tasks(
                status=status, before=cursor, limit=fetch, queue=queue, dead_letter=True
            )
        elif status is Status.QUEUED:
            tasks = await self.queue.list_tasks(before=cursor, limit=fetch, queue=queue)
        elif status is not None:
            tasks = await self.store.list_tasks(
                status=status, before=cursor, limit=fetch, queue=queue, dead_letter=dead_letter
            )
        else:
            # Queue, store, queue: a task moving from the store back to the queue between the
            # first two reads (a re-drive, a requeue) is in neither of them, and was missing
            # from the page (found in review). A task in the store and a queue read (moving
            # from the queue, or a Redis requeue's mark) is shown as the store has it.
            queued = await self.queue.list_tasks(before=cursor, limit=fetch, queue=queue)
            stored = await self.store.list_tasks(
                status=None, before=cursor, limit=fetch, queue=queue, dead_letter=dead_letter
            )
            queued += await self.queue.list_tasks(before=cursor, limit=fetch, queue=queue)
            merged = {task.task_id: task for task in queued}
            merged.update({task.task_id: task for task in stored})
            tasks = sorted(merged.values(), key=lambda task: task.task_id, reverse=True)
        page = tasks[:limit]
        next_cursor = page[-1].task_id if len(tasks) > limit else None
        return page, next_cursor

    async def executions(self, task_id: str) -> list[ExecutionRecord]:
        """Return the attempt log of ``task_id``, oldest first.

        Raises:
            TaskNotFound: no such task.
        """
        log = await self.store.executions(task_id)
        if not log:
            await self.get(task_id)
        return log

    async def stats(self, queue: str | None = None) -> tuple[dict[Status, int], int]:
        """Return ``(tasks per status, queue depth)`` of ``queue`` (or of all queues); every
        status is present."""
        counts = dict.fromkeys(Status, 0)
        counts.update(await self.queue.status_counts(self.store, queue))
        return counts, counts[Status.QUEUED]

    async def sample_queue_depth(self, now: int | None = None) -> list[DepthSample]:
        """Record every queue's depth for the interval holding ``now``; prune old samples.

        The default queue is always sampled, even empty; another queue only while it holds
        tasks, so an interval where the default queue has a sample but another queue has none
        means that queue was empty (:meth:`depth_history` fills those zeros). Every server
        samples; they upsert the same (queue, interval) row, so the count of servers does not
        matter.

        Args:
            now: The time, epoch ms (default: now). The sample is stamped with the start of its
                ``queue_depth_sample_seconds`` interval.

        Returns:
            The samples written.

        Raises:
            BackendUnavailable: a backend cannot be reached; nothing is recorded.
        """
        now = now_ms() if now is None else now
        interval = max(1, round(self.settings.queue_depth_sample_seconds * 1000))
        bucket = now - now % interval
        counts = await self.queue.queue_counts(now=now)
        depths = {DEFAULT_QUEUE: 0} | {name: count.depth for name, count in counts.items()}
        samples = [DepthSample(name, bucket, depth) for name, depth in sorted(depths.items())]
        await self.store.record_depth_samples(samples, prune_before=now - DEPTH_RETENTION_MS)
        return samples

    async def depth_history(self, *, seconds: float) -> tuple[list[int], dict[str, list[int]]]:
        """Return the sampled queue depths of the last ``seconds``.

        Returns:
            ``(times, depths)``: the sampled intervals' starts (epoch ms, oldest first), and per
            queue (by name) its depth at each of those times, 0 where it had no sample.
        """
        samples = await self.store.depth_samples(since=now_ms() - round(seconds * 1000))
        times = sorted({sample.sampled_at for sample in samples})
        index = {at: position for position, at in enumerate(times)}
        depths: dict[str, list[int]] = {}
        for sample in samples:
            series = depths.setdefault(sample.queue, [0] * len(times))
            series[index[sample.sampled_at]] = sample.depth
        return times, dict(sorted(depths.items()))

    async def metrics_exposition(self) -> bytes:
        """Return this process's metrics with the queue gauges read now (``GET /metrics``).

        When a backend does not answer, the counters are still returned, the queue gauges are
        left out and ``taskplatform_backends_up`` is 0: an outage shows in the scrape rather
        than failing it.
        """
        try:
            queues: list[QueueView] | None = await self.queues()
        except BackendUnavailable:
            queues = None
        return self.metrics.exposition(queues)

    async def ready(self) -> None:
        """Check that both backends answer. Raises BackendUnavailable if one does not."""
        await self.queue.ping()
        await self.store.ping()

    async def _interrupt(self, task: TaskRecord, error: str) -> bool:
        """Fail the Processing ``task``'s current attempt as interrupted, with ``error``
        (:data:`INTERRUPTED` or :data:`LEASE_EXPIRED`); fenced by its lease.

        Returns:
            True if this call recorded it (False: the outcome or another reaper got there first).
        """
        now = now_ms()
        target, next_attempt_at = _interrupted_status(task), None
        if target is Status.RETRY:
            next_attempt_at = now + round(backoff_seconds(self._policy(task), task.attempts) * 1000)
        interrupted = await self._transition(
            task.task_id,
            {Status.PROCESSING},
            target,
            changes=TaskChanges(
                lease_token=None,
                lease_expires_at=None,
                result=None,
                error=error,
                next_attempt_at=next_attempt_at,
                dead_letter=target is Status.FAILED and not task.attempts_left(),
            ),
            lease_token=task.lease_token,
            execution=ExecutionRecord(
                task_id=task.task_id,
                attempt=task.attempts,
                started_at=task.updated_at,
                finished_at=now,
                duration_ms=max(0, now - task.updated_at),
                http_status=None,
                result=None,
                error=error,
            ),
        )
        return interrupted is not None

    async def reap(self) -> tuple[int, int]:
        """Settle what crashed or idle clients left behind; every server runs this periodically.

        Returns expired Redis reservations to the queue, fails the attempts of Processing tasks
        whose lease ran out (their process died), returns Dequeued tasks whose lease ran out (a
        pull's ``dequeue_lease_seconds``, a dispatcher's claim's grace) to the queue at their
        original position, and forgets expired idempotency keys.

        Returns:
            ``(attempts interrupted, tasks requeued)`` by this call.

        Raises:
            BackendUnavailable: the store or the queue cannot be reached. A queue kept apart
                from the store (Redis) that cannot is raised only after the Processing leases
                are settled, which are the store's alone: an outage of Redis must not leave
                the tasks of a dead process Processing (refusing execute and cancel) till it ends.
        """
        now = now_ms()
        queue_failed: BackendUnavailable | None = None
        try:
            await self.queue.recover(self.store, now=now)
        except BackendUnavailable as exc:
            raise_if_cancelled()
            queue_failed = exc
        interrupted = requeued = 0
        for task in await self.store.expired_leases(Status.PROCESSING, now=now, limit=_REAP_BATCH):
            if await self._interrupt(task, LEASE_EXPIRED):
                interrupted += 1
                logger.warning(
                    "task %s: attempt %d interrupted (lease expired)",
                    task.task_id,
                    task.attempts,
                    extra={
                        "task_id": task.task_id,
                        "attempt": task.attempts,
                        "queue": task.queue,
                    },
                )
        if queue_failed is not None:
            raise queue_failed  # what follows returns tasks to the queue
        # Whatever this process's own dequeue_lease_seconds (0: its pulls take none): the
        # leases were set by the processes that dequeued, and a dispatcher's claim always has
        # one, for a crash between the claim and the start.
        assert Status.QUEUED in TRANSITIONS[Status.DEQUEUED]
        for task in await self.store.expired_leases(Status.DEQUEUED, now=now, limit=_REAP_BATCH):
            why = _requeue_reason(task)
            if await self.queue.requeue(
                self.store, task, now=now, note=f"returned to the queue: {why}"
            ):
                requeued += 1
                logger.info(
                    "task %s is Queued again (%s)",
                    task.task_id,
                    why,
                    extra={
                        "task_id": task.task_id,
                        "status": Status.QUEUED.value,
                        "attempt": task.attempts,
                        "queue": task.queue,
                    },
                )
        if requeued:
            self.arrivals.notify()
        await self.queue.purge_expired(now=now)
        return interrupted, requeued

    async def join(self) -> None:
        """Take part in the deployment before serving: follow the store's clock
        (:meth:`sync_clock`) so the first lease and timestamp are right, announce this
        process (:meth:`announce`), and bring the queue up to date with the store
        (:meth:`~taskplatform.backends.base.Queue.follow_store`). A store or queue that does
        not answer now is left to the maintenance rounds, which do each again."""
        with contextlib.suppress(BackendUnavailable):
            await self.sync_clock()
            await self.announce()
        with contextlib.suppress(BackendUnavailable):
            await self.queue.follow_store(self.store)  # else in the first maintenance round

    async def adopt_database_queue(self) -> int:
        """Move up to :data:`_HAND_OVER_BATCH` of the tasks waiting in the store database's own
        queue into the queue in use (Redis), each at its place: its priority, its sequence
        number, its scheduled time. Returns how many moved; 0 at once when the queue in use is
        the database's, or after one read when that queue is empty.

        Why: the way up (README) switches a store's queue to Redis by configuration. The tasks
        still waiting in the database's queue were then seen by nothing: no dequeue,
        dispatcher or GET found them, and the server only logged how many (a newcomer's
        finding). Each moves as a dequeue and a requeue do, so no new way of moving a task can
        lose one: out of the database's queue into the store, Dequeued under a lease of
        ``queue_reservation_seconds``, in one transaction (:meth:`Queue.hand_over`); then into
        Redis at its number (:meth:`Queue.requeue`'s three steps, its error left as it was). A
        process that dies in between leaves the task Dequeued under that lease, which the
        reaper returns to Redis once it runs out; processes doing this at once take different
        tasks. Redis's counter is moved past the numbers first (:meth:`Queue.follow_sequence`),
        so tasks created on Redis after them queue behind them; while servers on the old
        configuration still create tasks, the two counters overlap and such tasks can come
        out of order with Redis's. Idempotency keys stay in the database: a create repeated
        across the switch makes a second task. :meth:`run_maintenance` calls this in a loop of
        its own, so a backlog neither holds up the start nor the maintenance rounds.

        Raises:
            BackendUnavailable: the store or the queue cannot be reached (the loop goes on).
        """
        source = self._database_queue
        if source is None or not await source.list_tasks(before=None, limit=1):
            return 0
        await self.queue.follow_store(self.store)
        now = now_ms()
        taken = await source.hand_over(
            self.store,
            now=now,
            most=_HAND_OVER_BATCH,
            lease_token=str(uuid_utils.uuid4()),
            lease_expires_at=now + round(self.settings.queue_reservation_seconds * 1000),
        )
        if not taken:
            return 0
        await self.queue.follow_sequence(max(task.sequence for task in taken))
        moved = 0
        for task in taken:
            if await self.queue.requeue(self.store, task, now=now_ms(), note=task.error):
                moved += 1
        logger.warning(
            "moved %d tasks from the database's own queue into the queue at %s",
            moved,
            self._process.queue,
        )
        return moved

    async def _adopt_database_queue_for_ever(self) -> None:
        """:meth:`adopt_database_queue` batch after batch while there are tasks to move, then
        once every ``recovery_interval_seconds``, until cancelled."""
        while True:
            try:
                moved = await self.adopt_database_queue()
            except BackendUnavailable as exc:
                raise_if_cancelled()
                logger.warning("moving the database queue's tasks failed: %s", exc.detail)
                moved = 0
            except Exception:  # a defect: said, and tried again later rather than never
                logger.exception("moving the database queue's tasks failed")
                moved = 0
            if moved < _HAND_OVER_BATCH:
                await asyncio.sleep(self.settings.recovery_interval_seconds)

    async def sync_clock(self) -> None:
        """Follow the store's clock: set the offset :func:`~taskplatform.models.now_ms` adds to
        this host's clock to the database server's clock minus this host's.

        Leases, schedules, backoff and idempotency key expiry are instants that one process
        writes and another compares with its own "now". API processes on several hosts share
        one database, so they must share one clock: a host 60 s ahead would take every lease
        of the others for expired (its grace is 30 s) and run their tasks a second time. The
        database's clock is the one they all reach. Three round trips; the shortest gives the
        offset, to within half its duration (milliseconds on a LAN), and an offset moves only
        by more than that, so that network jitter does not shake the clock. A store on this
        host (SQLite) shares its clock: nothing to do. An offset of a second or more is logged
        as a warning (the host's time sync is broken) and exported as
        ``taskplatform_clock_offset_seconds``.

        Raises:
            BackendUnavailable: the database cannot be reached (the offset is kept).
        """
        best: tuple[int, float] | None = None  # (round trip ns, offset ms)
        for _ in range(3):
            sent = time.time_ns()
            remote = await self.store.clock_ms()
            received = time.time_ns()
            if remote is None:
                self._next_clock_sync = float("inf")
                # Set, not left at its default: with ``--workers N`` a gauge never set is
                # never written to the multiprocess files, and the metric would be missing.
                self.metrics.clock_offset.set(0)
                return
            trip = received - sent
            if best is None or trip < best[0]:
                best = (trip, remote - (sent + received) / 2_000_000)
        assert best is not None
        self._next_clock_sync = time.monotonic() + CLOCK_SYNC_SECONDS
        self._wall_minus_monotonic = _wall_minus_monotonic()
        trip, measured = best
        offset = round(measured)
        if abs(offset - clock_offset_ms()) > max(1.0, trip / 2_000_000):
            follow_clock(offset)
        offset = clock_offset_ms()
        self.metrics.clock_offset.set(offset / 1000)
        if abs(offset) >= 1000 and abs(offset - self._warned_offset_ms) >= 1000:
            self._warned_offset_ms = offset
            logger.warning(
                "this host's clock is %.1f s %s the database server's: taskplatform follows the "
                "database's clock, but the host's time sync (NTP) needs fixing",
                abs(offset) / 1000,
                "behind" if offset > 0 else "ahead of",
            )

    def _clock_jumped(self) -> bool:
        """Whether this host's wall clock moved against its monotonic clock by more than
        :data:`CLOCK_JUMP_MS` since the last :meth:`sync_clock` (set by hand, stepped by NTP,
        a VM resumed): the offset is then wrong until measured again, and a reaper going by it
        would take others' leases for expired. Checked every maintenance round."""
        if self._next_clock_sync == float("inf"):  # the store shares this host's clock
            return False
        drift = abs(_wall_minus_monotonic() - self._wall_minus_monotonic)
        return drift > CLOCK_JUMP_MS * 1_000_000

    async def announce(self) -> list[ProcessRecord]:
        """Refresh this process's row in the store's ``processes`` table and compare queues
        with the other processes on the database (those seen in the last
        :data:`PROCESS_GONE_SECONDS`).

        Every process of one deployment must use the same queue: with one on Redis and one on
        the database's own queue (or two Redis databases, or two key prefixes), each sees only
        its own tasks; a task created through one is not found, dequeued or cancelled through
        the other, and an idempotency key is honoured twice. Such a pair is logged as a warning,
        once each, naming both queues; a switch of the queue shows it while old and new run
        side by side, as it should.

        A queue kept apart from the store (Redis) is also told which store this process
        serves (:meth:`~taskplatform.backends.base.Queue.register_store`): processes of two
        databases on one Redis queue (the same URL and key prefix) take each other's tasks
        into their own tables, where the other's clients cannot find them. Another store seen
        there in the last :data:`PROCESS_GONE_SECONDS` is logged as a warning, once each.

        Returns:
            Every process seen, this one among them.

        Raises:
            BackendUnavailable: the store cannot be reached (a queue that cannot is skipped
                until the next heartbeat).
        """
        self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        now = now_ms()
        if not self._process.seen_at:  # started: by the store's clock, which sync_clock set
            self._process = msgspec.structs.replace(self._process, started_at=now)
        me = self._process = msgspec.structs.replace(self._process, seen_at=now)
        seen = await self.store.heartbeat(
            me,
            since=now - round(PROCESS_GONE_SECONDS * 1000),
            prune_before=now - _PROCESS_FORGET_MS,
        )
        for other in seen:
            pair = (other.process_id, other.queue)
            if other.queue == me.queue or pair in self._warned_processes:
                continue
            self._warned_processes.add(pair)
            # Two addresses of Redis may name one server (a host name and its IP address); the
            # database's own queue and Redis never are one.
            both_redis = other.queue.startswith("redis") and me.queue.startswith("redis")
            logger.warning(
                "process %s on this database uses the queue at %s, this one (%s) the queue at %s: "
                "%seach sees only its own queue's tasks. Give every process the same "
                "TASKPLATFORM_QUEUE_URL and TASKPLATFORM_REDIS_KEY_PREFIX (while a switch of the "
                "queue is under way, see the README)",
                other.process_id,
                other.queue,
                me.process_id,
                me.queue,
                "unless both name one Redis server, " if both_redis else "",
            )
        if self._store_id is None:
            self._store_id = await self.store.store_id()
        try:
            stores = await self.queue.register_store(
                self._store_id,
                me.process_id,
                now=now,
                since=now - round(PROCESS_GONE_SECONDS * 1000),
            )
        except BackendUnavailable:
            # The queue's own failure (logged by it): the rest of the maintenance round, the
            # reap of Processing leases in the store above all, must not wait on Redis.
            raise_if_cancelled()
            stores = {}
        for store_id, seen_at in stores.items():
            if store_id in self._warned_stores:
                continue
            self._warned_stores.add(store_id)
            logger.warning(
                "the queue at %s also serves another database (store %s, whose processes "
                "were seen there %.0f s ago; this one is store %s): each takes the other's tasks "
                "into its own tables, where the other's clients cannot find them. Give each "
                "database its own TASKPLATFORM_REDIS_KEY_PREFIX or Redis database (after "
                "taskplatform db copy, this is the old database's processes, still running or "
                "killed)",
                me.queue,
                store_id,
                max(0, now - seen_at) / 1000,
                self._store_id,
            )
        return seen

    async def run_maintenance(self) -> None:
        """Reap every ``recovery_interval_seconds`` and wake long polls, until cancelled.

        Once per ``queue_depth_sample_seconds`` interval it also records the queues' depths
        (:meth:`sample_queue_depth`).

        Also listens for enqueues by other processes (when the queue backend can signal them)
        and, while long polls wait, checks the queue every ``long_poll_fallback_seconds``.
        A failure is logged and retried on the next round.
        """
        jobs = [
            asyncio.create_task(self._listen(), name="enqueue listener"),
            asyncio.create_task(self._poll_for_waiters(), name="long-poll fallback"),
        ]
        if self._database_queue is not None:
            jobs.append(
                asyncio.create_task(
                    self._adopt_database_queue_for_ever(), name="database queue adoption"
                )
            )
        try:
            while True:
                # A library below may swallow our cancellation (seen once in CI: the shutdown
                # then waited 5 s for this loop's next sleep); honour it anyway.
                raise_if_cancelled()
                await asyncio.sleep(self.settings.recovery_interval_seconds)
                try:
                    if time.monotonic() >= self._next_clock_sync or self._clock_jumped():
                        await self.sync_clock()
                    if time.monotonic() >= self._next_heartbeat:
                        await self.announce()
                    await self.reap()
                    if (now := now_ms()) >= self._next_depth_sample:
                        await self.sample_queue_depth(now)
                        interval = max(1, round(self.settings.queue_depth_sample_seconds * 1000))
                        self._next_depth_sample = now - now % interval + interval
                except BackendUnavailable as exc:
                    raise_if_cancelled()
                    logger.warning("maintenance round failed: %s", exc.detail)
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)

    async def _listen(self) -> None:
        while True:
            try:
                await self.queue.listen(self.arrivals.notify)
                return  # the backend cannot signal: the poller covers it
            except BackendUnavailable as exc:
                raise_if_cancelled()
                logger.warning("enqueue listener lost (%s); retrying in 1 s", exc.detail)
                await asyncio.sleep(1)

    async def _poll_for_waiters(self) -> None:
        while True:
            raise_if_cancelled()  # as in run_maintenance
            await asyncio.sleep(self.settings.long_poll_fallback_seconds)
            if self.arrivals.waiters:
                with contextlib.suppress(BackendUnavailable):
                    if await self.queue.depth() > 0:
                        self.arrivals.notify()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`begin_shutdown` was called: no new attempt starts from then on."""
        return self._stopper is not None

    def begin_shutdown(self, grace_seconds: float) -> None:
        """Start stopping: callbacks in flight get until ``grace_seconds`` from now, once.

        Called when SIGTERM arrives (``api.app`` hooks the server's signal handler), so that the
        grace counts from the signal: the server's drain of its connections and this service's
        wait for callbacks then share one deadline, instead of waiting a full grace each. From
        now on no new attempt starts (execute answers 503 ``shutting_down``, the dispatcher
        claims nothing) and long polls answer at once; at the deadline the callbacks still
        running are cancelled and recorded as interrupted, which ends a synchronous execute
        waiting on one with 503 ``shutting_down`` before the server gives up on its request.
        A second call changes nothing: the first deadline holds (:meth:`stop_now` cuts it).
        """
        if self._stopper is not None:
            return
        self._deadline = time.monotonic() + grace_seconds
        self._stopper = asyncio.create_task(self._stop_callbacks(), name="shutdown")
        self.arrivals.notify()

    def stop_now(self) -> int:
        """Stop without waiting out the grace: the callbacks in flight are cancelled and recorded
        as interrupted now, as at the deadline (for a second stop signal: whoever sends it wants
        the process gone, and uvicorn then skips the lifespan's shutdown).

        Returns:
            How many callbacks were in flight; when any, a warning says so in the log.
        """
        self.begin_shutdown(0)
        self._deadline = min(self._deadline, time.monotonic())
        self._deadline_cut.set()
        if in_flight := len(self._inflight):
            logger.warning("second stop signal: interrupting %s now", _callbacks_text(in_flight))
        return in_flight

    async def wait_for_callbacks(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the callbacks in flight now to end: answered and recorded,
        or interrupted and recorded as such (after :meth:`stop_now`)."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=seconds)

    async def _stop_callbacks(self) -> None:
        """Wait for the callbacks in flight until the deadline (monotonic), then interrupt the
        rest; looks again until none is left, in case one started while stopping began."""
        said = 0
        while self._inflight:
            pending = set(self._inflight)
            remaining = self._deadline - time.monotonic()
            if remaining > 0:
                if len(pending) > said:  # once, unless more started meanwhile
                    logger.info(
                        "waiting up to %.3g s for %s", remaining, _callbacks_text(len(pending))
                    )
                said = len(pending)
                # Woken by each callback that ends, and by stop_now cutting the deadline.
                cut = asyncio.ensure_future(self._deadline_cut.wait())
                try:
                    await asyncio.wait(
                        {*pending, cut}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    cut.cancel()
                continue
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def shutdown(self, grace_seconds: float) -> None:
        """Let callbacks in flight finish until the shutdown deadline, then interrupt the rest.

        The deadline is the one :meth:`begin_shutdown` set at the signal; if nothing called it,
        it is ``grace_seconds`` from now. An interrupted attempt is recorded as failed with
        :data:`INTERRUPTED` (it counts, and the task can be executed again), so no task stays
        Processing after a clean stop. Last, this process leaves the queue's list of the stores
        it serves (:meth:`announce`).
        """
        self.begin_shutdown(grace_seconds)
        assert self._stopper is not None
        await self._stopper
        # An execute that passed the stopping check just before the signal can start its
        # callback after the stopper found nothing in flight: it gets the same deadline.
        await self._stop_callbacks()
        # Unconfirmed starts and dequeues not yet settled get one more try each, at once; what
        # the database still does not answer is left to the reaper (their leases run out).
        if self._starting:  # starts cut short by the stop: their withdraws come once they end
            await asyncio.wait(set(self._starting), timeout=SETTLE_AT_STOP_SECONDS)
        self._settle_now.set()
        if self._settler is not None:
            await asyncio.wait({self._settler}, timeout=SETTLE_AT_STOP_SECONDS)
            self._settler.cancel()
            await asyncio.gather(self._settler, return_exceptions=True)
        if self._store_id is not None:
            # Out of the queue's list of stores, so that a store moved to another database is
            # not warned of as a second one while this one is only stopped.
            with contextlib.suppress(BackendUnavailable):
                await self.queue.unregister_store(self._store_id, self._process.process_id)
        if self._process.seen_at:
            # Likewise out of the processes table: the documented switch of the queue (stop,
            # restart on another) warned of this process as still running on the old one.
            with contextlib.suppress(BackendUnavailable):
                await self.store.forget_process(self._process.process_id)


def _check_edges(source: Collection[Status], target: Status) -> None:
    """Raise ValueError unless every ``source`` -> ``target`` is an edge of :data:`TRANSITIONS`."""
    for status in source:
        if target not in TRANSITIONS[status]:
            raise ValueError(f"{status} -> {target} is not a transition of the state machine")


def _conflict(task: TaskRecord) -> TaskConflict:
    """Return the 409 error that explains why ``task`` cannot be executed in its status."""
    if task.status is Status.COMPLETED:
        return TaskCompleted(task_id=task.task_id)
    if task.status is Status.CANCELLED:
        return TaskCancelled(task_id=task.task_id)
    if task.status is Status.QUEUED:
        return TaskNotDequeued(task_id=task.task_id)
    if task.status is not Status.PROCESSING and not task.attempts_left():
        return RetryLimitReached(
            f"the task has made {_attempts(task.attempts)}, the most its maxRetries of "
            f"{task.max_retries} allows",
            task_id=task.task_id,
        )
    # Processing, or Dequeued/Retry/Failed just taken by a concurrent execute.
    return TaskProcessing(task_id=task.task_id)


def _attempts(count: int) -> str:
    return f"{count} attempt{'' if count == 1 else 's'}"
