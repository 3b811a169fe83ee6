"""The task service: the state machine and every operation on tasks.

This module owns the state machine of API.md (from the seed specification's diagram)::

    Queued --dequeue--> Dequeued --execute--> Processing --2xx--> Completed
                                              Processing --failure--> Failed
    Failed --execute (attempts left)--> Retry --> Processing
    Failed with no attempts left is final.

The move from Queued to Dequeued is the queue backend's atomic transfer (seed FR-009); every other
change of status goes through :meth:`TaskService._transition`, which checks the edge against
:data:`TRANSITIONS` and applies it as a compare-and-set in the store. No other code writes a status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import msgspec
import uuid_utils

from taskplatform.backends import Backends, TaskChanges
from taskplatform.dispatch.callback import CallbackOutcome, CallbackSender
from taskplatform.exceptions import (
    BackendUnavailable,
    QueueEmpty,
    RetryLimitReached,
    TaskCompleted,
    TaskConflict,
    TaskNotDequeued,
    TaskNotFound,
    TaskProcessing,
)
from taskplatform.models import ExecutionRecord, Status, TaskCreate, TaskRecord, now_ms
from taskplatform.settings import Settings

logger = logging.getLogger(__name__)

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.DEQUEUED}),
    Status.DEQUEUED: frozenset({Status.PROCESSING}),
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED}),
    Status.FAILED: frozenset({Status.RETRY}),
    Status.RETRY: frozenset({Status.PROCESSING}),
    Status.COMPLETED: frozenset(),
}
"""Allowed edges of the state machine: ``status -> statuses it may move to``."""


class ExecuteOutcome(msgspec.Struct, kw_only=True):
    """The result of one execute: the task's status after the attempt and what the callback said.

    ``result`` is JSON text or None.
    """

    task_id: str
    status: Status
    result: bytes | None
    error: str | None
    attempt: int


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
        self.sender = sender
        self.settings = settings
        self._background: set[asyncio.Task[ExecuteOutcome]] = set()

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
    ) -> TaskRecord | None:
        """Move ``task_id`` from one of ``source`` to ``target`` atomically, if the task allows it.

        Returns:
            The task after the change, or None if it was not in ``source`` (or the lease token or
            attempts check did not hold): another caller got there first.

        Raises:
            ValueError: an edge is not in :data:`TRANSITIONS` (a programming error).
            BackendUnavailable: the store cannot be reached.
        """
        for status in source:
            if target not in TRANSITIONS[status]:
                raise ValueError(f"{status} -> {target} is not a transition of the state machine")
        task = await self.store.compare_and_set(
            task_id,
            expected=source,
            target=target,
            now=now_ms(),
            changes=changes,
            lease_token=lease_token,
            require_attempts_left=require_attempts_left,
            execution=execution,
        )
        if task is not None:
            logger.info(
                "task %s is %s (attempt %d)",
                task_id,
                target.value,
                task.attempts,
                extra={"task_id": task_id, "status": target.value, "attempt": task.attempts},
            )
        return task

    # -- operations ------------------------------------------------------------------------------

    async def create(self, request: TaskCreate) -> TaskRecord:
        """Put a new task into the queue (seed FR-001, FR-008).

        Args:
            request: A validated create request; missing options take the settings' defaults.

        Returns:
            The task as queued, with its new id (a UUIDv7: unique, time-ordered, unguessable).

        Raises:
            BackendUnavailable: the queue cannot be written; nothing was created.
        """
        now = now_ms()
        task = TaskRecord(
            task_id=str(uuid_utils.uuid7()),
            status=Status.QUEUED,
            priority=request.priority,
            task_data=bytes(request.task_data),
            callback_url=request.callback_url,
            max_retries=(
                self.settings.default_max_retries
                if request.max_retries is None
                else request.max_retries
            ),
            timeout_seconds=(
                self.settings.default_timeout_seconds
                if request.timeout_seconds is None
                else request.timeout_seconds
            ),
            created_at=now,
            updated_at=now,
        )
        await self.queue.enqueue(task)
        return task

    async def dequeue(self) -> TaskRecord:
        """Take the next task out of the queue into the store (seed FR-002, FR-009).

        Returns:
            The task, now Dequeued: the highest priority first, FIFO within a priority.

        Raises:
            QueueEmpty: no task is queued.
            BackendUnavailable: a backend cannot be reached; the task stays queued.
        """
        task = await self.queue.transfer(self.store, now=now_ms())
        if task is None:
            raise QueueEmpty()
        logger.info(
            "task %s is %s",
            task.task_id,
            task.status.value,
            extra={"task_id": task.task_id, "status": task.status.value},
        )
        return task

    async def get(self, task_id: str) -> TaskRecord:
        """Return the task ``task_id`` in whatever status it is (seed FR-010).

        Raises:
            TaskNotFound: no such task.
        """
        # Store first: a task moves from the queue to the store, never back, so reading the store
        # again after a miss in the queue closes the window in which it moved between the reads.
        task = await self.store.get(task_id) or await self.queue.get(task_id)
        if task is None:
            task = await self.store.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task has the id {task_id!r}", task_id=task_id)
        return task

    async def execute(self, task_id: str) -> ExecuteOutcome:
        """Run one callback attempt of ``task_id`` and record it (seed FR-003, FR-006, FR-007).

        Returns:
            The task's status after the attempt (Completed or Failed), the callback's result and
            error, and the attempt number. A failed callback is an outcome, not an exception.

        Raises:
            TaskNotFound, TaskNotDequeued, TaskProcessing, TaskCompleted, RetryLimitReached:
                the task cannot be executed now.
            BackendUnavailable: the store cannot be reached.
        """
        task = await self.start_execute(task_id)
        # Shielded: a client that hangs up must not cancel a callback that is already running,
        # or the attempt would stay unrecorded.
        return await asyncio.shield(self.finish_execute(task))

    async def execute_in_background(self, task_id: str) -> TaskRecord:
        """Start an attempt like :meth:`execute` and return at once with the Processing task.

        The callback runs on this process's event loop; its outcome appears on ``get``.

        Raises:
            The same errors as :meth:`execute`, before any callback starts.
        """
        task = await self.start_execute(task_id)
        background = asyncio.create_task(self.finish_execute(task))
        self._background.add(background)
        background.add_done_callback(self._background.discard)
        return task

    async def start_execute(self, task_id: str) -> TaskRecord:
        """Move ``task_id`` to Processing under a fresh lease, ready for one callback.

        Returns:
            The task in Processing; ``attempts`` already counts the new attempt and
            ``lease_token`` fences the attempt's outcome.

        Raises:
            TaskNotFound, TaskNotDequeued, TaskProcessing, TaskCompleted, RetryLimitReached.
        """
        task = await self.store.get(task_id)
        if task is None:
            if await self.queue.get(task_id) is not None:
                raise TaskNotDequeued(task_id=task_id)
            raise TaskNotFound(f"no task has the id {task_id!r}", task_id=task_id)
        if task.status is Status.FAILED:
            if not task.attempts_left():
                raise _conflict(task)
            retried = await self._transition(
                task_id, {Status.FAILED}, Status.RETRY, require_attempts_left=True
            )
            if retried is None:
                raise _conflict(await self.store.get(task_id) or task)
        elif task.status not in (Status.DEQUEUED, Status.RETRY):
            raise _conflict(task)
        now = now_ms()
        lease_seconds = task.timeout_seconds + self.settings.processing_lease_grace_seconds
        processing = await self._transition(
            task_id,
            {Status.DEQUEUED, Status.RETRY},
            Status.PROCESSING,
            changes=TaskChanges(
                increment_attempts=True,
                lease_token=str(uuid_utils.uuid4()),
                lease_expires_at=now + round(lease_seconds * 1000),
            ),
            require_attempts_left=True,
        )
        if processing is None:
            raise _conflict(await self.store.get(task_id) or task)
        return processing

    async def finish_execute(self, task: TaskRecord) -> ExecuteOutcome:
        """Make the callback of a Processing ``task`` and record the attempt and its outcome.

        Returns:
            The outcome. If the lease was lost meanwhile (another process failed the attempt as
            interrupted), the status reported is the task's current one.
        """
        attempt = task.attempts
        outcome: CallbackOutcome = await self.sender.send(task, attempt)
        target = Status.COMPLETED if outcome.success else Status.FAILED
        finished = await self._transition(
            task.task_id,
            {Status.PROCESSING},
            target,
            changes=TaskChanges(
                lease_token=None,
                lease_expires_at=None,
                result=outcome.result,
                error=outcome.error,
                completed_at=outcome.finished_at if outcome.success else msgspec.UNSET,
            ),
            lease_token=task.lease_token,
            execution=ExecutionRecord(
                task_id=task.task_id,
                attempt=attempt,
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
                duration_ms=outcome.duration_ms,
                http_status=outcome.http_status,
                result=outcome.result,
                error=outcome.error,
            ),
        )
        status = target
        if finished is None:
            logger.warning(
                "task %s: attempt %d finished after its lease was lost; outcome not applied",
                task.task_id,
                attempt,
                extra={"task_id": task.task_id, "attempt": attempt},
            )
            current = await self.store.get(task.task_id)
            status = current.status if current is not None else target
        return ExecuteOutcome(
            task_id=task.task_id,
            status=status,
            result=outcome.result,
            error=outcome.error,
            attempt=attempt,
        )

    async def list_tasks(
        self, *, status: Status | None, cursor: str | None, limit: int
    ) -> tuple[list[TaskRecord], str | None]:
        """Return a page of tasks, newest first, and the cursor of the next page (or None).

        Args:
            status: Only tasks in this status, or all.
            cursor: ``nextCursor`` of the previous page, or None for the first.
            limit: Page size.
        """
        fetch = limit + 1
        if status is Status.QUEUED:
            tasks = await self.queue.list_tasks(before=cursor, limit=fetch)
        elif status is not None:
            tasks = await self.store.list_tasks(status=status, before=cursor, limit=fetch)
        else:
            queued = await self.queue.list_tasks(before=cursor, limit=fetch)
            stored = await self.store.list_tasks(status=None, before=cursor, limit=fetch)
            # A task moving from queue to store between the two reads can appear in both.
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

    async def stats(self) -> tuple[dict[Status, int], int]:
        """Return ``(tasks per status, queue depth)``; every status is present."""
        depth = await self.queue.depth()
        counts = dict.fromkeys(Status, 0)
        counts.update(await self.store.count_by_status())
        counts[Status.QUEUED] = depth
        return counts, depth

    async def ready(self) -> None:
        """Check that both backends answer. Raises BackendUnavailable if one does not."""
        await self.queue.ping()
        await self.store.ping()

    async def run_maintenance(self) -> None:
        """Settle half-done transfers every ``recovery_interval_seconds``, until cancelled.

        Every server runs this loop; a failure is logged and retried on the next round.
        """
        while True:
            await asyncio.sleep(self.settings.recovery_interval_seconds)
            try:
                await self.queue.recover(self.store, now=now_ms())
            except BackendUnavailable as exc:
                logger.warning("recovery round failed: %s", exc.detail)

    async def drain(self) -> None:
        """Wait for the callbacks started in the background to finish and be recorded."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _conflict(task: TaskRecord) -> TaskConflict:
    """Return the 409 error that explains why ``task`` cannot be executed in its status."""
    if task.status is Status.COMPLETED:
        return TaskCompleted(task_id=task.task_id)
    if task.status is Status.FAILED and not task.attempts_left():
        return RetryLimitReached(
            f"the task has made {task.attempts} attempts, the most its maxRetries of "
            f"{task.max_retries} allows",
            task_id=task.task_id,
        )
    if task.status is Status.QUEUED:
        return TaskNotDequeued(task_id=task.task_id)
    # Processing, or Dequeued/Retry/Failed just taken by a concurrent execute.
    return TaskProcessing(task_id=task.task_id)
