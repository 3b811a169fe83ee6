"""The two clients: :class:`TaskClient` (blocking) and :class:`AsyncTaskClient` (asyncio).

Both send the :class:`~taskplatform.client._calls.Call` that one shared builder makes for each
operation, so their methods are one line each; only the sending (and the sleep between retries)
differs.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from taskplatform import __version__
from taskplatform.client import _calls
from taskplatform.client._calls import Call, RetryPolicy
from taskplatform.client.models import (
    BatchItemResult,
    CreatedTask,
    Execution,
    ExecutionOutcome,
    NewTask,
    Page,
    QueueInfo,
    Readiness,
    RedriveResult,
    Stats,
    Status,
    Task,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_SECONDS = 30.0
"""Connect, read, write and pool timeout of every call but execute and long-poll dequeue, s."""


class _Config:
    """What both clients hold: URL, headers, timeouts and the retry policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff_seconds: float,
        backoff_max_seconds: float,
        max_response_bytes: int,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self.base_url = httpx.URL(base_url)
        if self.base_url.scheme not in ("http", "https") or not self.base_url.host:
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        self.timeout = timeout
        if not max_response_bytes > 0:
            raise ValueError(f"max_response_bytes must be over 0, not {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        self.retry_policy = RetryPolicy(retries, backoff_seconds, backoff_max_seconds)
        self.headers = {"User-Agent": f"taskplatform-client/{__version__}"}
        if api_key:
            _calls.header_value("api_key", api_key)
            self.headers["Authorization"] = f"Bearer {api_key}"

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method,
            call.path,
            params=call.params,
            content=call.content,
            headers=call.headers,
            timeout=self._timeout(call),
        )

    def _timeout(self, call: Call[Any]) -> httpx.Timeout:
        if call.timeout is None:
            return httpx.Timeout(self.timeout)
        return httpx.Timeout(self.timeout, read=call.timeout)


class TaskClient(_Config):
    """A blocking client of the taskplatform HTTP API.

    Use it as a context manager (``with TaskClient(url) as client:``) or call :meth:`close`. It
    keeps one connection pool; it is safe to share between threads.

    Transport failures (refused or reset connections, timeouts) are retried with exponential
    backoff and jitter, only where a repeat cannot do anything twice: reads, ``create`` (it
    always sends an ``Idempotency-Key``, so the server answers a repeat with the first task),
    ``cancel``, queue pause/resume, and ``create_batch`` when every item has an idempotency key.
    These are also resent after a 503 answer. ``dequeue``, ``retry`` and other batches are
    resent only when the connection was never made. ``execute`` is never resent. After the last try
    :class:`~taskplatform.client.ConnectionFailed` is raised.

    Args:
        base_url: The server, such as ``http://127.0.0.1:8000`` (a path prefix is kept).
        api_key: Sent as ``Authorization: Bearer <key>``; None sends none.
        timeout: Seconds allowed to connect and for each read or write (30); execute waits up
            to an hour by default and a long-poll dequeue ``wait_seconds`` longer.
        retries: How many times a call may be resent after a transport failure (3; 0: never).
        backoff_seconds: The first wait before a retry is at most this, in seconds (0.2); each
            next one doubles, up to ``backoff_max_seconds`` (5).
        backoff_max_seconds: The longest wait between tries, in seconds.
        max_response_bytes: The largest answer read, in bytes (1 GiB); a larger one raises
            :class:`~taskplatform.client.UnexpectedResponse` and is not read further.
        transport: An httpx transport to send through (tests, proxies, mounts); None: httpx's.

    Raises:
        ValueError: ``base_url`` is not http(s) with a host, ``api_key`` is not printable
            ASCII, or ``max_response_bytes`` is not over 0.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        max_response_bytes: int = _calls.MAX_RESPONSE_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            retries,
            backoff_seconds,
            backoff_max_seconds,
            max_response_bytes,
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send ``call``, retrying as its mode allows, and return its parsed answer.

        Raises:
            TaskPlatformError: the server answered with an error.
            ConnectionFailed: no answer came, after the retries allowed.
        """
        attempt = 0
        while True:
            attempt += 1
            request = self._request(self._http, call)
            try:
                response = self._http.send(request, stream=True)
                try:
                    reader = _calls.AnswerReader(call, response, self.max_response_bytes)
                    try:
                        for chunk in response.iter_bytes():
                            reader.add(chunk)
                    except httpx.DecodingError as exc:
                        raise reader.undecodable(exc) from exc
                finally:
                    response.close()
            except httpx.TransportError as exc:
                if not self.retry_policy.allows(call.retry, exc, attempt):
                    raise _calls.connection_failed(call, self.base_url, exc, attempt) from exc
                time.sleep(self.retry_policy.delay(attempt))
                continue
            answer = reader.answer()
            if self.retry_policy.allows_after(call, answer, attempt):
                time.sleep(self.retry_policy.delay(attempt))
                continue
            return _calls.finish(call, answer)

    def create(
        self,
        task_data: Mapping[str, Any],
        callback_url: str,
        priority: int = 0,
        *,
        queue: str | None = None,
        delay_seconds: float | None = None,
        scheduled_at: datetime.datetime | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        backoff_min_seconds: float | None = None,
        backoff_max_seconds: float | None = None,
        backoff_multiplier: float | None = None,
        retry_on: builtins.list[int] | None = None,
        permanent_on: builtins.list[int] | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedTask:
        """Create (enqueue) a task.

        Args:
            task_data: The payload, a JSON object; the callback's body.
            callback_url: Absolute http(s) URL that execute POSTs to.
            priority: Higher is dequeued first (-2^31..2^31-1; default 0).
            queue: The named queue (server default ``default``).
            delay_seconds: Not dequeued or dispatched sooner than this many seconds from now.
            scheduled_at: Not before this time; timezone-aware.
            max_retries: Retries after the first attempt (0..100; server default 3).
            timeout_seconds: Total time for one callback attempt, s (server default 30).
            backoff_min_seconds: Shortest wait before an automatic retry, s.
            backoff_max_seconds: Longest wait before an automatic retry, s.
            backoff_multiplier: Growth of the wait per attempt (1..100).
            retry_on: HTTP statuses (300..599) the dispatcher retries.
            permanent_on: HTTP statuses (300..599) the dispatcher never retries.
            idempotency_key: Up to 255 visible ASCII characters; a fresh uuid4 when None. A
                repeat with the same key and body within 24 h returns the first task.

        Returns:
            The task's id and status; ``replayed`` when the key had created it before.

        Raises:
            ValidationError: a field is out of range (422).
            IdempotencyKeyReused: the key was used with another body (422).
            PayloadTooLarge: the body is over the server's limit (413).
            ConnectionFailed: no answer after the retries.
            ValueError, TypeError: ``task_data`` cannot be encoded as JSON (NaN, a set, nesting
                too deep to encode), ``scheduled_at`` has no time zone, or ``idempotency_key``
                is not printable ASCII.
        """
        task = _calls.new_task(
            task_data,
            callback_url,
            priority,
            queue=queue,
            delay_seconds=delay_seconds,
            scheduled_at=scheduled_at,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            backoff_min_seconds=backoff_min_seconds,
            backoff_max_seconds=backoff_max_seconds,
            backoff_multiplier=backoff_multiplier,
            retry_on=retry_on,
            permanent_on=permanent_on,
        )
        return self.send(_calls.create_call(task, idempotency_key))

    def create_batch(
        self, items: Iterable[NewTask | Mapping[str, Any]]
    ) -> builtins.list[BatchItemResult]:
        """Create up to 1,000 tasks in one request; each item succeeds or fails on its own.

        Args:
            items: :class:`NewTask` objects, or create bodies as the API takes them
                (camelCase: ``{"taskData": ..., "callbackUrl": ...}``). An item with an
                idempotency key (``NewTask.idempotency_key``, ``"idempotencyKey"``) is given back
                on a resend instead of created again; a batch whose items all have one is
                resent after any transport failure.

        Returns:
            One result per item, in order: the task's id, or the error with that item (an
            instance of the problem code's exception class, not raised).

        Raises:
            ValidationError: the batch itself is wrong (empty, over 1,000 items).
            PayloadTooLarge: the batch is over 16 MiB.
            ConnectionFailed: no answer; resent only if the connection was never made.
        """
        return self.send(_calls.batch_call(items))

    def get(self, task_id: str) -> Task:
        """Return the task, in any status.

        Raises:
            TaskNotFound: no task has this id.
        """
        return self.send(_calls.get_call(task_id))

    def dequeue(self, queue: str | None = None, wait_seconds: float | None = None) -> Task | None:
        """Take the next due task of ``queue`` (highest priority, then oldest): it is Dequeued.

        Args:
            queue: The named queue (server default ``default``).
            wait_seconds: Long-poll up to this many seconds (0..20) for a task to arrive.

        Returns:
            The task, or None when the queue holds no due task.

        Raises:
            QueuePaused: the queue is paused.
        """
        return self.send(_calls.dequeue_call(queue, wait_seconds, self.timeout))

    def execute(
        self, task_id: str, respond_async: bool = False, *, read_timeout: float | None = None
    ) -> ExecutionOutcome:
        """Make one callback attempt of a Dequeued (or Failed, with attempts left) task.

        Never retried by the client: a repeat would call the callback again.

        Args:
            task_id: The task.
            respond_async: Return at once (``accepted``) and let the attempt run; its outcome
                shows on :meth:`get`.
            read_timeout: Seconds to wait for the answer (default 3,660: the longest attempt the
                server allows, plus a minute).

        Returns:
            The attempt's outcome: a failed callback is ``status`` Failed, not an exception.

        Raises:
            TaskNotFound: no such task.
            TaskNotDequeued, TaskProcessing, TaskCompleted, TaskCancelled, RetryLimitReached:
                its status does not allow execute (409).
            ConnectionFailed: no answer (the attempt may or may not have been made: ``get``
                tells).
        """
        return self.send(_calls.execute_call(task_id, respond_async, read_timeout))

    def retry(self, task_id: str) -> Task:
        """Re-drive a Failed task: attempts reset, back to its queue at its original position.

        Raises:
            TaskNotFound: no such task.
            TaskNotFailed: the task is not Failed (409).
        """
        return self.send(_calls.retry_call(task_id))

    def retry_dead_letters(
        self, queue: str | None = None, limit: int | None = None
    ) -> RedriveResult:
        """Re-drive up to ``limit`` (1..1000, server default 1000) dead letters of ``queue``
        (of every queue when None)."""
        return self.send(_calls.retry_dead_letters_call(queue, limit))

    def cancel(self, task_id: str) -> Task:
        """Cancel a Queued, Dequeued, Retry or Failed task; cancelling again answers the same.

        Raises:
            TaskNotFound: no such task.
            TaskProcessing: a callback attempt is in flight (409; try again).
            TaskCompleted: the task completed (409).
        """
        return self.send(_calls.cancel_call(task_id))

    def executions(self, task_id: str) -> builtins.list[Execution]:
        """Return the task's attempt log, oldest first.

        Raises:
            TaskNotFound: no such task.
        """
        return self.send(_calls.executions_call(task_id))

    def stats(self, queue: str | None = None) -> Stats:
        """Return the number of tasks per status and the queue depth (of ``queue``, or all)."""
        return self.send(_calls.stats_call(queue))

    def queues(self) -> builtins.list[QueueInfo]:
        """Return every named queue with its depth, in-flight count, age and dispatch rate."""
        return self.send(_calls.queues_call())

    def pause_queue(self, name: str) -> QueueInfo:
        """Pause a queue: neither dispatched nor dequeued (within 0.25 s everywhere)."""
        return self.send(_calls.pause_call(name, True))

    def resume_queue(self, name: str) -> QueueInfo:
        """Resume a paused queue."""
        return self.send(_calls.pause_call(name, False))

    def health(self) -> bool:
        """Return True when the server process answers ``/healthz``.

        Raises:
            ConnectionFailed: the server cannot be reached.
        """
        return self.send(_calls.health_call())

    def ready(self) -> Readiness:
        """Return whether the server's backends answer (``/readyz``)."""
        return self.send(_calls.ready_call())

    def list(
        self,
        status: Status | str | None = None,
        queue: str | None = None,
        dead_letter: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Return one page of tasks, newest first.

        Args:
            status: Only tasks in this status.
            queue: Only tasks of this named queue.
            dead_letter: True: only dead letters; False: only others; None: both.
            limit: Page size, 1..200 (server default 50).
            cursor: ``next_cursor`` of the previous page.

        Raises:
            ValidationError: a filter is out of range.
        """
        return self.send(_calls.list_call(status, queue, dead_letter, limit, cursor))

    def iter_tasks(
        self,
        status: Status | str | None = None,
        queue: str | None = None,
        dead_letter: bool | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> Iterator[Task]:
        """Yield every task that matches, newest first, fetching page after page lazily; from
        ``cursor`` on (a page's ``next_cursor``) if given, else from the newest."""
        while True:
            page = self.list(status, queue, dead_letter, page_size, cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class AsyncTaskClient(_Config):
    """The asyncio twin of :class:`TaskClient`: the same methods, arguments and errors, awaited.

    Use ``async with AsyncTaskClient(url) as client:`` or await :meth:`aclose`. The constructor
    arguments are :class:`TaskClient`'s; ``transport`` is an ``httpx.AsyncBaseTransport``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        retries: int = 3,
        backoff_seconds: float = 0.2,
        backoff_max_seconds: float = 5.0,
        max_response_bytes: int = _calls.MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout,
            retries,
            backoff_seconds,
            backoff_max_seconds,
            max_response_bytes,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send ``call`` as :meth:`TaskClient.send` does."""
        attempt = 0
        while True:
            attempt += 1
            request = self._request(self._http, call)
            try:
                response = await self._http.send(request, stream=True)
                try:
                    reader = _calls.AnswerReader(call, response, self.max_response_bytes)
                    try:
                        async for chunk in response.aiter_bytes():
                            reader.add(chunk)
                    except httpx.DecodingError as exc:
                        raise reader.undecodable(exc) from exc
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                if not self.retry_policy.allows(call.retry, exc, attempt):
                    raise _calls.connection_failed(call, self.base_url, exc, attempt) from exc
                await asyncio.sleep(self.retry_policy.delay(attempt))
                continue
            answer = reader.answer()
            if self.retry_policy.allows_after(call, answer, attempt):
                await asyncio.sleep(self.retry_policy.delay(attempt))
                continue
            return _calls.finish(call, answer)

    async def create(
        self,
        task_data: Mapping[str, Any],
        callback_url: str,
        priority: int = 0,
        *,
        queue: str | None = None,
        delay_seconds: float | None = None,
        scheduled_at: datetime.datetime | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        backoff_min_seconds: float | None = None,
        backoff_max_seconds: float | None = None,
        backoff_multiplier: float | None = None,
        retry_on: builtins.list[int] | None = None,
        permanent_on: builtins.list[int] | None = None,
        idempotency_key: str | None = None,
    ) -> CreatedTask:
        """Create (enqueue) a task; see :meth:`TaskClient.create`."""
        task = _calls.new_task(
            task_data,
            callback_url,
            priority,
            queue=queue,
            delay_seconds=delay_seconds,
            scheduled_at=scheduled_at,
            max_retries=max_retries,
            timeout_seconds=timeout_seconds,
            backoff_min_seconds=backoff_min_seconds,
            backoff_max_seconds=backoff_max_seconds,
            backoff_multiplier=backoff_multiplier,
            retry_on=retry_on,
            permanent_on=permanent_on,
        )
        return await self.send(_calls.create_call(task, idempotency_key))

    async def create_batch(
        self, items: Iterable[NewTask | Mapping[str, Any]]
    ) -> builtins.list[BatchItemResult]:
        """Create up to 1,000 tasks; see :meth:`TaskClient.create_batch`."""
        return await self.send(_calls.batch_call(items))

    async def get(self, task_id: str) -> Task:
        """Return the task; see :meth:`TaskClient.get`."""
        return await self.send(_calls.get_call(task_id))

    async def dequeue(
        self, queue: str | None = None, wait_seconds: float | None = None
    ) -> Task | None:
        """Take the next due task, or None; see :meth:`TaskClient.dequeue`."""
        return await self.send(_calls.dequeue_call(queue, wait_seconds, self.timeout))

    async def execute(
        self, task_id: str, respond_async: bool = False, *, read_timeout: float | None = None
    ) -> ExecutionOutcome:
        """Make one callback attempt, never retried; see :meth:`TaskClient.execute`."""
        return await self.send(_calls.execute_call(task_id, respond_async, read_timeout))

    async def retry(self, task_id: str) -> Task:
        """Re-drive a Failed task; see :meth:`TaskClient.retry`."""
        return await self.send(_calls.retry_call(task_id))

    async def retry_dead_letters(
        self, queue: str | None = None, limit: int | None = None
    ) -> RedriveResult:
        """Re-drive dead letters; see :meth:`TaskClient.retry_dead_letters`."""
        return await self.send(_calls.retry_dead_letters_call(queue, limit))

    async def cancel(self, task_id: str) -> Task:
        """Cancel a task; see :meth:`TaskClient.cancel`."""
        return await self.send(_calls.cancel_call(task_id))

    async def executions(self, task_id: str) -> builtins.list[Execution]:
        """Return the attempt log; see :meth:`TaskClient.executions`."""
        return await self.send(_calls.executions_call(task_id))

    async def stats(self, queue: str | None = None) -> Stats:
        """Return tasks per status and the queue depth; see :meth:`TaskClient.stats`."""
        return await self.send(_calls.stats_call(queue))

    async def queues(self) -> builtins.list[QueueInfo]:
        """Return every named queue; see :meth:`TaskClient.queues`."""
        return await self.send(_calls.queues_call())

    async def pause_queue(self, name: str) -> QueueInfo:
        """Pause a queue; see :meth:`TaskClient.pause_queue`."""
        return await self.send(_calls.pause_call(name, True))

    async def resume_queue(self, name: str) -> QueueInfo:
        """Resume a queue; see :meth:`TaskClient.resume_queue`."""
        return await self.send(_calls.pause_call(name, False))

    async def health(self) -> bool:
        """Return True when ``/healthz`` answers; see :meth:`TaskClient.health`."""
        return await self.send(_calls.health_call())

    async def ready(self) -> Readiness:
        """Return ``/readyz``; see :meth:`TaskClient.ready`."""
        return await self.send(_calls.ready_call())

    async def list(
        self,
        status: Status | str | None = None,
        queue: str | None = None,
        dead_letter: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        """Return one page of tasks; see :meth:`TaskClient.list`."""
        return await self.send(_calls.list_call(status, queue, dead_letter, limit, cursor))

    async def iter_tasks(
        self,
        status: Status | str | None = None,
        queue: str | None = None,
        dead_letter: bool | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncIterator[Task]:
        """Yield every task that matches, page after page; see :meth:`TaskClient.iter_tasks`."""
        while True:
            page = await self.list(status, queue, dead_letter, page_size, cursor)
            for task in page.items:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
