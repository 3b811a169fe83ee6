"""Exceptions of the client: one class per problem ``code`` of the API, and the transport's.

::

    ClientError                         any failure the client reports
    ├── TaskPlatformError               the server answered with an error (status, code, problem)
    │   ├── MalformedJSON               400 malformed_json
    │   ├── PayloadTooLarge             413 payload_too_large
    │   ├── UnsupportedMediaType        415 unsupported_media_type
    │   ├── ValidationError             422 validation_error (``errors`` names each field)
    │   ├── IdempotencyKeyReused        422 idempotency_key_reused
    │   ├── Unauthorized                401 unauthorized
    │   ├── CrossOriginRequest          403 cross_origin_request
    │   ├── HostNotAllowed              403 host_not_allowed
    │   ├── TaskNotFound                404 task_not_found
    │   ├── QueueEmpty                  404 queue_empty
    │   ├── NotFound                    404 not_found (no such route)
    │   ├── MethodNotAllowed            405 method_not_allowed
    │   ├── TaskConflict                409: the task's status does not allow the operation
    │   │   ├── TaskNotDequeued         409 task_not_dequeued
    │   │   ├── TaskProcessing          409 task_processing
    │   │   ├── TaskCompleted           409 task_completed
    │   │   ├── TaskCancelled           409 task_cancelled
    │   │   ├── TaskNotFailed           409 task_not_failed
    │   │   └── RetryLimitReached       409 retry_limit_reached
    │   ├── QueuePaused                 409 queue_paused
    │   ├── RateLimited                 429 rate_limited (``retry_after`` seconds)
    │   ├── BackendUnavailable          503 backend_unavailable
    │   ├── ShuttingDown                503 shutting_down
    │   ├── BadRequest                  400 bad_request
    │   ├── RequestTimeout              408 request_timeout (the request's head came too slowly)
    │   ├── HeaderFieldsTooLarge        431 header_fields_too_large
    │   ├── InternalError               500 internal_error
    │   └── UnexpectedResponse          an answer that is not a problem document (a proxy's page)
    ├── ConnectionFailed                no answer: refused, reset or timed out (after retries)
    └── InvalidSignature                a callback's ``webhook-signature`` does not verify

A problem whose ``code`` this client does not know raises :class:`TaskPlatformError` itself, so
a newer server never breaks an older client's ``except`` clauses.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar


class ClientError(Exception):
    """A request through the taskplatform client failed."""


class TaskPlatformError(ClientError):
    """The server answered with an error (an RFC 9457 problem document).

    Args:
        status: The HTTP status code, such as 404.
        code: The problem's stable ``code``, such as ``task_not_found``.
        title: The problem's short summary.
        detail: The explanation of this occurrence.
        problem: The whole problem document as the server sent it (extra members included).
    """

    code_name: ClassVar[str | None] = None
    """The ``code`` this class stands for; None for the base class and the synthetic ones."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.problem: dict[str, Any] = dict(problem or {})
        super().__init__(f"{status} {code}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and copy) by the arguments, not by ``args``, which holds the message alone:
        an error raised in a ``ProcessPoolExecutor`` worker broke the pool (found in review)."""
        arguments = (self.status, self.code, self.title, self.detail, self.problem)
        return (type(self), arguments, self.__dict__)  # what was set after, as retry_after

    @property
    def task_id(self) -> str | None:
        """The task the problem concerns, where the server named one."""
        value = self.problem.get("taskId")
        return value if isinstance(value, str) else None


class MalformedJSON(TaskPlatformError):
    """400: the body is not JSON, or not UTF-8."""

    code_name = "malformed_json"


class BadRequest(TaskPlatformError):
    """400: the request cannot be served as sent."""

    code_name = "bad_request"


class RequestTimeout(TaskPlatformError):
    """408: the request line and headers did not arrive within the server's time (30 s)."""

    code_name = "request_timeout"


class HeaderFieldsTooLarge(TaskPlatformError):
    """431: the request line and headers are over the server's limit (64 KiB)."""

    code_name = "header_fields_too_large"


class PayloadTooLarge(TaskPlatformError):
    """413: the body is over the server's limit (1 MiB for a task, 16 MiB for a batch)."""

    code_name = "payload_too_large"


class UnsupportedMediaType(TaskPlatformError):
    """415: the Content-Type is not JSON."""

    code_name = "unsupported_media_type"


class ValidationError(TaskPlatformError):
    """422: a field is missing, unknown, of the wrong type or out of range."""

    code_name = "validation_error"

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Each bad field as ``(JSON path such as "$.priority", message)``."""
        items = self.problem.get("errors") or []
        return [
            (str(item.get("field", "")), str(item.get("message", "")))
            for item in items
            if isinstance(item, dict)
        ]


class IdempotencyKeyReused(TaskPlatformError):
    """422: the ``Idempotency-Key`` was used before with another body."""

    code_name = "idempotency_key_reused"


class Unauthorized(TaskPlatformError):
    """401: API keys are configured and the request has no valid one."""

    code_name = "unauthorized"


class HostNotAllowed(TaskPlatformError):
    """403: a server without API keys, on loopback, answers only requests for a loopback name;
    the client's URL names it otherwise (use 127.0.0.1 or localhost, or set keys)."""

    code_name = "host_not_allowed"


class CrossOriginRequest(TaskPlatformError):
    """403: a browser sent a POST from a page of another origin (``Sec-Fetch-Site``, ``Origin``).

    A program never sees it unless it forwards a browser's headers.
    """

    code_name = "cross_origin_request"


class TaskNotFound(TaskPlatformError):
    """404: no task has this id."""

    code_name = "task_not_found"


class QueueEmpty(TaskPlatformError):
    """404: the queue holds no due task (``dequeue`` returns None instead of raising it)."""

    code_name = "queue_empty"


class NotFound(TaskPlatformError):
    """404: no such route (a wrong base URL, or a server older than this client)."""

    code_name = "not_found"


class MethodNotAllowed(TaskPlatformError):
    """405: the route does not take this method."""

    code_name = "method_not_allowed"


class TaskConflict(TaskPlatformError):
    """409: the task's status does not allow the operation."""


class TaskNotDequeued(TaskConflict):
    """409: the task is still Queued; dequeue it before executing it."""

    code_name = "task_not_dequeued"


class TaskProcessing(TaskConflict):
    """409: a callback attempt of the task is in flight."""

    code_name = "task_processing"


class TaskCompleted(TaskConflict):
    """409: the task has completed; it is final."""

    code_name = "task_completed"


class TaskCancelled(TaskConflict):
    """409: the task was cancelled; it is final."""

    code_name = "task_cancelled"


class TaskNotFailed(TaskConflict):
    """409: only a Failed task can be re-driven."""

    code_name = "task_not_failed"


class RetryLimitReached(TaskConflict):
    """409: the task has used all of its attempts."""

    code_name = "retry_limit_reached"


class QueuePaused(TaskPlatformError):
    """409: the queue is paused; nothing is dequeued from it."""

    code_name = "queue_paused"


class RateLimited(TaskPlatformError):
    """429: over the per-key request rate."""

    code_name = "rate_limited"

    retry_after: float | None = None
    """Seconds the server asked to wait (its ``Retry-After`` header), where it said."""


class BackendUnavailable(TaskPlatformError):
    """503: the server's database or queue cannot be reached; nothing was lost, try later."""

    code_name = "backend_unavailable"


class ShuttingDown(TaskPlatformError):
    """503: the server stopped during execute; the attempt, if one started, is recorded as
    interrupted, and the task can be executed again (on another server, or after the restart)."""

    code_name = "shutting_down"


class InternalError(TaskPlatformError):
    """500: an unexpected error in the server."""

    code_name = "internal_error"


class UnexpectedResponse(TaskPlatformError):
    """The server (or something in front of it) answered with something other than the API's.

    ``code`` is ``unexpected_response``; ``detail`` holds the start of the body, so a proxy's
    "502 Bad Gateway" page or a wrong ``base_url`` shows for what it is.
    """


class ConnectionFailed(ClientError):
    """No answer came: the connection was refused or reset, or the request timed out.

    Args:
        message: What failed, naming the URL.
        attempts: How many times the request was tried (retries included).
    """

    def __init__(self, message: str, *, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle (and copy) with ``attempts``, a keyword ``args`` does not hold."""
        return (functools.partial(type(self), attempts=self.attempts), self.args, self.__dict__)


class InvalidSignature(ClientError):
    """A callback's Standard Webhooks signature is missing, malformed, stale or wrong."""


PROBLEM_CLASSES: dict[str, type[TaskPlatformError]] = {
    cls.code_name: cls
    for cls in (
        MalformedJSON,
        BadRequest,
        RequestTimeout,
        HeaderFieldsTooLarge,
        PayloadTooLarge,
        UnsupportedMediaType,
        ValidationError,
        IdempotencyKeyReused,
        Unauthorized,
        CrossOriginRequest,
        HostNotAllowed,
        TaskNotFound,
        QueueEmpty,
        NotFound,
        MethodNotAllowed,
        TaskNotDequeued,
        TaskProcessing,
        TaskCompleted,
        TaskCancelled,
        TaskNotFailed,
        RetryLimitReached,
        QueuePaused,
        RateLimited,
        BackendUnavailable,
        ShuttingDown,
        InternalError,
    )
    if cls.code_name is not None
}
"""Problem ``code`` → the exception class raised for it; an unknown code raises the base."""


def error_from_problem(status: int, problem: Mapping[str, Any]) -> TaskPlatformError:
    """Build the exception for a problem document.

    Args:
        status: The HTTP status of the response (used when the document has none).
        problem: The parsed ``application/problem+json`` body.

    Returns:
        An instance of the class :data:`PROBLEM_CLASSES` maps the ``code`` to, else of
        :class:`TaskPlatformError`.
    """
    code = str(problem.get("code") or "unknown")
    cls = PROBLEM_CLASSES.get(code, TaskPlatformError)
    raw_status = problem.get("status")
    return cls(
        raw_status if isinstance(raw_status, int) else status,
        code,
        str(problem.get("title") or ""),
        str(problem.get("detail") or problem.get("title") or code),
        problem,
    )
