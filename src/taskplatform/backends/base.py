"""The two backend seams: a queue of Queued tasks and a store of tasks from Dequeued on.

The seed specification makes the queue and the database two parts (FR-001, FR-002) and users put
them on two systems (a Redis queue, a PostgreSQL store), so they are two interfaces. A backend
subclasses :class:`Queue` or :class:`Store` and implements the ``_``-prefixed hooks; the public
methods hold the bookkeeping every backend shares. An incomplete backend fails at construction
(``abc``), not mid-request. Backends translate driver errors into
:class:`~taskplatform.exceptions.BackendUnavailable`, so no driver exception escapes them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence

import msgspec

from taskplatform.exceptions import BackendUnavailable
from taskplatform.models import DEFAULT_QUEUE, ExecutionRecord, Status, TaskRecord, now_ms

PURGE_BATCH_KEYS = 10_000
"""Expired idempotency keys one statement forgets (:meth:`Queue.purge_expired`)."""
PURGE_BATCHES = 10
"""Statements one purge runs at most: a backlog goes in the rounds that follow."""


class TaskChanges(msgspec.Struct, kw_only=True):
    """Columns a status transition writes besides ``status`` and ``updated_at``.

    A field left at ``UNSET`` is not written; ``None`` writes SQL NULL. ``increment_attempts``
    adds one to ``attempts`` inside the same atomic update. ``lease_grace_seconds`` sets
    ``lease_expires_at`` to the update's time plus the task's own ``timeout_seconds`` plus that
    many seconds, computed in the same statement (so one statement starts tasks of different
    timeouts, and a pull execute needs no read first); it excludes ``lease_expires_at``.
    ``withdraw_attempt`` takes one from ``attempts`` likewise (an attempt whose start was
    committed but never answered, so no callback was made: ``TaskService._withdraw``).
    """

    increment_attempts: bool = False
    withdraw_attempt: bool = False
    lease_token: str | msgspec.UnsetType | None = msgspec.UNSET
    lease_expires_at: int | msgspec.UnsetType | None = msgspec.UNSET
    lease_grace_seconds: float | msgspec.UnsetType = msgspec.UNSET
    next_attempt_at: int | msgspec.UnsetType | None = msgspec.UNSET
    result: bytes | msgspec.UnsetType | None = msgspec.UNSET
    error: str | msgspec.UnsetType | None = msgspec.UNSET
    completed_at: int | msgspec.UnsetType | None = msgspec.UNSET
    dead_letter: bool | msgspec.UnsetType = msgspec.UNSET
    dispatched: bool | msgspec.UnsetType = msgspec.UNSET
    attempts: int | msgspec.UnsetType = msgspec.UNSET
    scheduled_at: int | msgspec.UnsetType | None = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.lease_grace_seconds is not msgspec.UNSET and (
            self.lease_expires_at is not msgspec.UNSET
        ):
            raise ValueError("set lease_expires_at or lease_grace_seconds, not both")
        if (self.increment_attempts or self.withdraw_attempt) and (
            self.attempts is not msgspec.UNSET or self.increment_attempts == self.withdraw_attempt
        ):
            raise ValueError("set one of attempts, increment_attempts and withdraw_attempt")

    def columns(self) -> dict[str, object]:
        """Return the set columns as ``{column name: value}``, skipping ``UNSET`` ones (and
        ``lease_grace_seconds``, which is an expression, not a value)."""
        return {
            name: value
            for name in (
                "lease_token",
                "lease_expires_at",
                "next_attempt_at",
                "result",
                "error",
                "completed_at",
                "dead_letter",
                "dispatched",
                "attempts",
                "scheduled_at",
            )
            if (value := getattr(self, name)) is not msgspec.UNSET
        }


class IdempotencyClaim(msgspec.Struct, frozen=True):
    """An ``Idempotency-Key`` to claim in the same atomic step as an enqueue.

    ``request_hash`` is the SHA-256 (hex) of the request body; ``expires_at`` is epoch ms.
    """

    key: str
    request_hash: str
    expires_at: int


class IdempotentReplay(msgspec.Struct, frozen=True):
    """The live claim that an earlier request holds on an idempotency key."""

    task_id: str
    request_hash: str


class QueueCounts(msgspec.Struct, frozen=True):
    """What a queue backend knows about one named queue: ``depth`` Queued tasks (due or
    scheduled for later), and ``oldest_due_at`` (epoch ms): since when the longest-waiting due
    task has been due, its creation or, if later, its ``scheduledAt``; None when no task is due.
    A task scheduled for later is not waiting yet: an alert on the oldest age must not fire
    for work planned a day ahead."""

    depth: int
    oldest_due_at: int | None


class QueueActivity(msgspec.Struct, frozen=True):
    """What the store knows about one named queue: callbacks in flight, attempts since a time."""

    in_flight: int
    attempts: int


class DepthSample(msgspec.Struct, frozen=True):
    """The depth of one named queue at the start of one sampling interval (epoch ms)."""

    queue: str
    sampled_at: int
    depth: int


class ProcessRecord(msgspec.Struct, frozen=True):
    """One API or worker process serving a database, as its last heartbeat left it.

    ``process_id`` is ``host:pid:random``; ``queue`` says where its queue is (no password);
    ``started_at`` and ``seen_at`` are epoch milliseconds.
    """

    process_id: str
    queue: str
    started_at: int
    seen_at: int


class Queue(abc.ABC):
    """Holds Queued tasks in order: priority descending, then FIFO by enqueue sequence."""

    @abc.abstractmethod
    async def enqueue(
        self, task: TaskRecord, *, claim: IdempotencyClaim | None = None
    ) -> IdempotentReplay | None:
        """Add ``task`` (status Queued) to the queue; durable when this returns.

        Args:
            task: The new task; its ``sequence`` is set from the queue's counter.
            claim: An idempotency key to claim in the same atomic step. If a live claim on the key
                exists, nothing is enqueued.

        Returns:
            None when the task was enqueued; the existing claim when the key was taken.

        Raises:
            BackendUnavailable: the queue cannot be written; nothing was enqueued.
        """

    @abc.abstractmethod
    async def enqueue_many(self, tasks: list[TaskRecord]) -> None:
        """Add every one of ``tasks`` in one atomic step: all are enqueued, or none.

        Raises:
            BackendUnavailable: the queue cannot be written; nothing was enqueued.
        """

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """Return the Queued task ``task_id``, or None if the queue does not hold it."""

    @abc.abstractmethod
    async def list_tasks(
        self, *, before: str | None, limit: int, queue: str | None = None
    ) -> list[TaskRecord]:
        """Return up to ``limit`` Queued tasks with id below ``before`` (of ``queue``, or of
        every queue), newest first."""

    @abc.abstractmethod
    async def depth(self) -> int:
        """Return the number of tasks in the queue, over every named queue."""

    @abc.abstractmethod
    async def queue_counts(self, *, now: int) -> dict[str, QueueCounts]:
        """Return the counts of every named queue that holds a task, due as of ``now`` (ms)."""

    async def status_counts(self, store: Store, queue: str | None = None) -> dict[Status, int]:
        """Return how many tasks of ``queue`` (of every queue when None) are in each status:
        Queued ones as this queue counts them, the others as ``store`` does. A status without
        tasks may be missing.

        This default reads the queue, then the store: a task that moves from one to the other
        in between (a dequeue, a cancel) is counted in both. A queue that shares its database
        with the store reads both in one snapshot, which is exact.

        Raises:
            BackendUnavailable: the queue or the store cannot be reached.
        """
        if queue is None:
            depth = await self.depth()
        else:
            counted = (await self.queue_counts(now=now_ms())).get(queue)
            depth = counted.depth if counted else 0
        counts = await store.count_by_status(queue)
        counts[Status.QUEUED] = depth
        return counts

    @abc.abstractmethod
    async def cancel(self, store: Store, task_id: str, *, now: int) -> TaskRecord | None:
        """Take the Queued task ``task_id`` out of the queue into ``store`` as Cancelled.

        Atomic like :meth:`transfer`: the task ends up either still queued or cancelled in the
        store, never both or neither.

        Returns:
            The cancelled task, or None when the queue does not hold it (any more).
        """

    @abc.abstractmethod
    async def transfer(
        self,
        store: Store,
        *,
        now: int,
        queue: str = DEFAULT_QUEUE,
        lease_token: str | None = None,
        lease_expires_at: int | None = None,
        dispatched: bool = False,
    ) -> TaskRecord | None:
        """Take the next due task of ``queue`` and insert it into ``store`` as Dequeued.

        The move is atomic from the caller's view (seed FR-009): the task ends up either still
        queued or in the store, never in both or neither. A backend that shares a database with
        ``store`` does it in one transaction; others reserve, insert idempotently, then ack.

        Args:
            store: The store that receives the task.
            now: The dequeue time, epoch milliseconds; a task scheduled after it is not due.
            queue: The named queue to take from.
            lease_token: The Dequeued lease's token (None: no lease).
            lease_expires_at: When the Dequeued lease ends, epoch ms (None: never).
            dispatched: Mark the task as a dispatcher's (its failures are retried automatically).

        Returns:
            The task as stored (status Dequeued), or None when the queue is empty.

        Raises:
            BackendUnavailable: the queue or the store cannot be reached; the task stays queued.
        """

    async def transfer_many(
        self,
        store: Store,
        *,
        now: int,
        most: int,
        queue: str = DEFAULT_QUEUE,
        lease_token: str | None = None,
        lease_expires_at: int | None = None,
        dispatched: bool = False,
    ) -> list[TaskRecord]:
        """Take up to ``most`` due tasks of ``queue`` into ``store`` as Dequeued, as
        :meth:`transfer` does one (the dispatcher claims a batch into its free slots).

        Each task moves atomically, as in :meth:`transfer`; they may share ``lease_token``,
        which fences together with the task id. This default takes batches from
        :meth:`_transfer_batch` until ``most`` moved or the queue ran out; a backend that can
        move many in one statement overrides that, or this.

        Returns:
            The tasks as stored (Dequeued), in dequeue order (priority descending, then FIFO);
            fewer than ``most`` when the queue ran out, empty when it was empty.

        Raises:
            BackendUnavailable: the first move failed. A failure after some moved returns those
                (they are Dequeued under the lease, and must not be lost from sight), unless a
                later move may have committed without an answer (PostgreSQL's top-up): then a
                pull (not ``dispatched``) raises, and its caller gives back all that moved under
                its token.
        """
        moved: list[TaskRecord] = []
        while len(moved) < most:
            try:
                batch = await self._transfer_batch(
                    store,
                    now=now,
                    most=most - len(moved),
                    queue=queue,
                    lease_token=lease_token,
                    lease_expires_at=lease_expires_at,
                    dispatched=dispatched,
                )
            except BackendUnavailable:
                if not moved:
                    raise
                break
            if batch is None:
                break
            moved.extend(batch)
        return moved

    async def _transfer_batch(
        self,
        store: Store,
        *,
        now: int,
        most: int,
        queue: str,
        lease_token: str | None,
        lease_expires_at: int | None,
        dispatched: bool,
    ) -> list[TaskRecord] | None:
        """Move up to ``most`` due tasks of ``queue`` into ``store``, as one step of
        :meth:`transfer_many`: None when the queue had none due; a list, possibly shorter than
        ``most`` or even empty, otherwise. This default moves one with :meth:`transfer`."""
        task = await self.transfer(
            store,
            now=now,
            queue=queue,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            dispatched=dispatched,
        )
        return None if task is None else [task]

    @abc.abstractmethod
    async def requeue(
        self, store: Store, task: TaskRecord, *, now: int, note: str | None, redrive: bool = False
    ) -> bool:
        """Return a Dequeued ``task`` from ``store`` to the queue, at its original position.

        Fenced by ``task.lease_token``: it happens only if the stored task is still Dequeued
        under that lease, so of several reapers at most one moves it. ``note`` is written to the
        task's ``error``, so its record says why it is queued again (None clears it).

        With ``redrive``, the task must be Failed instead (a dead letter sent back by hand): it
        returns with no attempts made, no longer a dead letter, and not scheduled.

        Returns:
            True if this call moved the task.
        """

    async def purge_expired(self, *, now: int) -> None:
        """Forget idempotency keys past their expiry (a backend with TTLs has nothing to do)."""
        return None

    async def listen(self, on_enqueue: Callable[[], None]) -> None:
        """Call ``on_enqueue`` whenever any process enqueues, until cancelled.

        Lets a long-polling dequeue wake at once for a task created by another process. This
        default returns at once: the service then falls back to polling.
        """
        return None

    async def recover(self, store: Store, *, now: int) -> int:
        """Settle transfers that a crashed process left half-done; run periodically by servers.

        A queue that moves tasks in one transaction has nothing to settle (this default). One that
        reserves, inserts and acks returns expired reservations whose task is not in ``store``
        and acks those that are.

        Returns:
            How many tasks went back to the queue.
        """
        return 0

    async def hand_over(
        self, store: Store, *, now: int, most: int, lease_token: str, lease_expires_at: int
    ) -> list[TaskRecord]:
        """Take up to ``most`` tasks of any queue, due or not, oldest sequence number first,
        into ``store`` as Dequeued under ``lease_token`` until ``lease_expires_at`` (epoch
        ms), in one transaction; for a queue elsewhere to take them in (:meth:`requeue`).

        Only a queue in the store's own database has this: it is the one left behind when a
        store's queue moves to Redis (``TaskService.adopt_database_queue``).

        Returns:
            The tasks as stored; empty when this queue holds none.

        Raises:
            BackendUnavailable: nothing moved.
        """
        raise NotImplementedError(f"{type(self).__name__} does not hand its tasks over")

    async def follow_sequence(self, number: int) -> None:
        """Have this queue's sequence counter hand out numbers past ``number`` from now on
        (never moves it back). A queue in the store's own database numbers every task it
        holds itself: nothing to do (this default).

        Raises:
            BackendUnavailable: the queue cannot be reached.
        """
        return None

    async def follow_store(self, store: Store) -> None:
        """Bring what this queue keeps up to date with ``store``, once per process, before the
        first task goes back to the queue. A queue in the store's own database is up to date
        by its nature (this default).

        Raises:
            BackendUnavailable: the queue or the store cannot be reached (try again later).
        """
        return None

    async def register_store(
        self, store_id: str, process_id: str, *, now: int, since: int
    ) -> dict[str, int]:
        """Record that ``process_id``, serving the store ``store_id``, uses this queue (at
        ``now``, epoch ms), and return the other stores seen here since ``since``: ``{store id:
        last seen, epoch ms}``.

        A queue kept apart from its store (Redis) can be named by processes of two databases;
        each then takes the other's tasks into its own tables, where the other's clients cannot
        find them. This default, for a queue inside its store, returns ``{}``: it serves that
        store alone.

        Raises:
            BackendUnavailable: the queue cannot be reached.
        """
        return {}

    async def unregister_store(self, store_id: str, process_id: str) -> None:
        """Forget what :meth:`register_store` recorded for ``process_id``, at a clean stop, so
        that a store moved to another database (``taskplatform db copy``) is not taken for a
        second one while the old one's processes are only stopped. This default does nothing.

        Raises:
            BackendUnavailable: the queue cannot be reached.
        """
        return None

    async def eviction_policy(self) -> str | None:
        """Return how the queue's server drops keys when its memory is full (Redis's
        ``maxmemory-policy``, such as ``noeviction`` or ``allkeys-lru``), or None for a queue
        that never drops what it holds (this default) or a server that does not say.

        Raises:
            BackendUnavailable: the queue cannot be reached.
        """
        return None

    @abc.abstractmethod
    async def ping(self) -> None:
        """Check that the backend answers. Raises BackendUnavailable if not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's connections and threads."""


class Store(abc.ABC):
    """Holds tasks from Dequeued on, and their append-only attempt log (TaskExecution)."""

    async def compare_and_set(
        self,
        task_id: str,
        *,
        expected: Collection[Status],
        target: Status,
        now: int,
        changes: TaskChanges | None = None,
        lease_token: str | None = None,
        require_attempts_left: bool = False,
        execution: ExecutionRecord | None = None,
        due_by: int | None = None,
    ) -> TaskRecord | None:
        """Atomically move ``task_id`` from one of ``expected`` to ``target``.

        Only the service calls this, through its single transition function, which checks the
        state machine; the store only guarantees atomicity: the update applies in one step only if
        the row still matches, so of two concurrent callers at most one wins.

        Args:
            task_id: The task to update.
            expected: Statuses the task must be in.
            target: The new status.
            now: The update time, epoch milliseconds (written to ``updated_at``).
            changes: Other columns to write in the same update.
            lease_token: When given, the row's ``lease_token`` must equal it (a fence).
            require_attempts_left: When true, ``attempts <= max_retries`` must hold.
            execution: An attempt record appended in the same transaction.
            due_by: When given, ``next_attempt_at <= due_by`` must hold (epoch ms): a claim of a
                Retry task is only valid while the task is still due, not after it came back
                to Retry with a later time.

        Returns:
            The task after the update, or None when no row matched (lost race or wrong status).

        Raises:
            BackendUnavailable: the store cannot be reached.
        """
        if not expected:
            raise ValueError("expected must name at least one status")
        return await self._compare_and_set(
            task_id,
            expected=tuple(expected),
            target=target,
            now=now,
            changes=changes or TaskChanges(),
            lease_token=lease_token,
            require_attempts_left=require_attempts_left,
            execution=execution,
            due_by=due_by,
        )

    @abc.abstractmethod
    async def _compare_and_set(
        self,
        task_id: str,
        *,
        expected: tuple[Status, ...],
        target: Status,
        now: int,
        changes: TaskChanges,
        lease_token: str | None,
        require_attempts_left: bool,
        execution: ExecutionRecord | None,
        due_by: int | None,
    ) -> TaskRecord | None: ...

    async def compare_and_set_many(
        self,
        task_ids: Sequence[str],
        *,
        expected: Collection[Status],
        target: Status,
        now: int,
        changes: TaskChanges | None = None,
        require_attempts_left: bool = False,
        due_by: int | None = None,
    ) -> list[TaskRecord]:
        """:meth:`compare_and_set` of several tasks with the same arguments: each row moves on its
        own if it matches (atomic per task, as one compare-and-set), the others stay as they are.

        Only the service calls this, through its transition functions (a dispatcher's claim of a
        batch).

        Returns:
            The tasks that moved, in no particular order.

        Raises:
            BackendUnavailable: the store cannot be reached; some tasks may have moved.
        """
        if not expected:
            raise ValueError("expected must name at least one status")
        return await self._compare_and_set_many(
            list(task_ids),
            expected=tuple(expected),
            target=target,
            now=now,
            changes=changes or TaskChanges(),
            require_attempts_left=require_attempts_left,
            due_by=due_by,
        )

    async def _compare_and_set_many(
        self,
        task_ids: list[str],
        *,
        expected: tuple[Status, ...],
        target: Status,
        now: int,
        changes: TaskChanges,
        require_attempts_left: bool,
        due_by: int | None,
    ) -> list[TaskRecord]:
        """One compare-and-set per task; a store that can do many in one statement overrides
        this."""
        moved = []
        for task_id in task_ids:
            task = await self._compare_and_set(
                task_id,
                expected=expected,
                target=target,
                now=now,
                changes=changes,
                lease_token=None,
                require_attempts_left=require_attempts_left,
                execution=None,
                due_by=due_by,
            )
            if task is not None:
                moved.append(task)
        return moved

    @abc.abstractmethod
    async def insert_dequeued(self, tasks: list[TaskRecord]) -> set[str]:
        """Insert tasks that were just taken from the queue, all in one transaction; a repeat of
        a task already stored is a no-op.

        Idempotent (``ON CONFLICT DO NOTHING``) so that a queue that reserves, inserts and acks can
        retry the insert after a crash without duplicating a task. ``tasks`` have distinct ids.

        Returns:
            The ids of the tasks this call inserted (the others were there already).

        Raises:
            BackendUnavailable: nothing was inserted.
        """

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRecord | None:
        """Return the stored task ``task_id``, or None."""

    @abc.abstractmethod
    async def expired_leases(self, status: Status, *, now: int, limit: int) -> list[TaskRecord]:
        """Return up to ``limit`` tasks in ``status`` whose lease ended before ``now`` (ms)."""

    @abc.abstractmethod
    async def dequeued_under(self, lease_token: str) -> list[TaskRecord]:
        """Return the tasks Dequeued under ``lease_token`` (a dequeue whose answer was lost).

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def remove_queued(self, task_id: str, lease_token: str) -> bool:
        """Delete the row of a task marked Queued under ``lease_token`` (a Redis requeue's mark).

        Returns:
            True if the row was deleted.
        """

    @abc.abstractmethod
    async def list_tasks(
        self,
        *,
        status: Status | None,
        before: str | None,
        limit: int,
        queue: str | None = None,
        dead_letter: bool | None = None,
    ) -> list[TaskRecord]:
        """Return up to ``limit`` stored tasks with id below ``before``, newest first.

        Args:
            status: Only tasks in this status; all when None.
            before: Exclusive upper bound on the task id (the pagination cursor), or None.
            limit: Largest number of tasks returned.
            queue: Only tasks of this named queue; all when None.
            dead_letter: Only dead letters (True) or only others (False); all when None.
        """

    @abc.abstractmethod
    async def due_retries(self, queue: str, *, now: int, limit: int) -> list[TaskRecord]:
        """Return up to ``limit`` dispatched tasks of ``queue`` in Retry whose ``next_attempt_at``
        is at or before ``now``, highest priority first."""

    @abc.abstractmethod
    async def queue_activity(self, *, since: int) -> dict[str, QueueActivity]:
        """Return, per named queue, tasks in Processing and attempts recorded since ``since``."""

    @abc.abstractmethod
    async def paused_queues(self) -> set[str]:
        """Return the names of the paused queues."""

    @abc.abstractmethod
    async def take_dispatch_token(self, queue: str, *, rate: float, burst: float, now: int) -> bool:
        """Take a token from ``queue``'s dispatch bucket, shared by every dispatcher.

        The bucket refills at ``rate`` tokens per second up to ``burst``; the check and the take
        are one atomic statement, so N dispatchers together keep to ``rate``.

        Returns:
            Whether a token was taken (False: dispatch must wait).
        """

    @abc.abstractmethod
    async def give_back_dispatch_token(self, queue: str, *, burst: float) -> None:
        """Return a token :meth:`take_dispatch_token` gave for a dispatch that found no task."""

    @abc.abstractmethod
    async def set_paused(self, queue: str, paused: bool, *, now: int) -> None:
        """Pause or resume ``queue``; every process sees it on its next :meth:`paused_queues`."""

    @abc.abstractmethod
    async def record_depth_samples(self, samples: list[DepthSample], *, prune_before: int) -> None:
        """Upsert ``samples`` on (queue, sampled_at) and forget samples older than ``prune_before``.

        Several servers sampling the same interval is harmless: the last write of a key wins.

        Args:
            samples: The depths to record; ``sampled_at`` is the interval's start, epoch ms.
            prune_before: Samples with ``sampled_at`` below this (epoch ms) are deleted.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def heartbeat(
        self, process: ProcessRecord, *, since: int, prune_before: int
    ) -> list[ProcessRecord]:
        """Record that ``process`` is alive, forget processes last seen before ``prune_before``,
        and return every process seen since ``since`` (epoch ms), ``process`` among them.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def forget_process(self, process_id: str) -> None:
        """Delete the row of ``process_id`` from the ``processes`` table: a process that stops
        cleanly, so that no other is warned of it (as of a process on another queue) in the
        minute its last heartbeat would still count.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def depth_samples(self, *, since: int) -> list[DepthSample]:
        """Return the samples with ``sampled_at >= since`` (epoch ms), by queue, oldest first."""

    @abc.abstractmethod
    async def executions(self, task_id: str) -> list[ExecutionRecord]:
        """Return the attempt log of ``task_id``, oldest attempt first."""

    @abc.abstractmethod
    async def count_by_status(self, queue: str | None = None) -> dict[Status, int]:
        """Return how many stored tasks (of ``queue``, or all) are in each status (absent
        statuses may be omitted)."""

    @abc.abstractmethod
    async def store_id(self) -> str:
        """Return this database's id: a random UUID written when its schema was made
        (migration 0006), kept for its life and not copied by ``taskplatform db copy``.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    @abc.abstractmethod
    async def queue_sequence(self) -> int:
        """Return the highest sequence number the database knows, 0 before the first: the last
        its own queue (``queued_tasks``) handed out, kept whichever queue is in use now, or
        any stored task's, as a queue elsewhere (Redis) numbered it. One scan of the tasks:
        for a process's start and a queue's recovery, not for each create.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """

    async def clock_ms(self) -> int | None:
        """Return the database server's clock in epoch milliseconds, or None when the database
        is on this host and shares its clock (SQLite, the default).

        Raises:
            BackendUnavailable: the database cannot be reached.
        """
        return None

    @abc.abstractmethod
    async def ping(self) -> None:
        """Check that the backend answers. Raises BackendUnavailable if not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the backend's connections and threads."""
