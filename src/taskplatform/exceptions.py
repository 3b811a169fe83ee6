"""Exceptions of taskplatform; each maps to one HTTP status and one stable problem ``code``.

::

    TaskPlatformError                 500 internal_error
    ├── RequestError                  4xx: the client's request is wrong
    │   ├── MalformedJSON             400 malformed_json
    │   ├── ValidationFailed          422 validation_error
    │   ├── IdempotencyKeyReused      422 idempotency_key_reused
    │   ├── PayloadTooLarge           413 payload_too_large
    │   ├── UnsupportedMediaType      415 unsupported_media_type
    │   ├── TaskNotFound              404 task_not_found
    │   ├── QueueEmpty                404 queue_empty
    │   └── TaskConflict              409: the task's status does not allow the operation
    │       ├── TaskNotDequeued       409 task_not_dequeued
    │       ├── TaskProcessing        409 task_processing
    │       ├── TaskCompleted         409 task_completed
    │       ├── TaskCancelled         409 task_cancelled
    │       ├── TaskNotFailed         409 task_not_failed
    │       └── RetryLimitReached     409 retry_limit_reached
    ├── QueuePaused                   409 queue_paused
    ├── BackendUnavailable            503 backend_unavailable
    └── ShuttingDown                  503 shutting_down

The HTTP layer turns these into ``application/problem+json`` bodies (RFC 9457) in one handler,
through the ``status_code`` and ``code`` class attributes; routes never build error responses.
"""

from __future__ import annotations

from collections.abc import Sequence


class TaskPlatformError(Exception):
    """An unexpected error in the task platform."""

    status_code = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(self, detail: str | None = None, *, task_id: str | None = None) -> None:
        """Create the error.

        Args:
            detail: A human-readable explanation of this occurrence; the class docstring if None.
            task_id: The task concerned, where there is one.
        """
        self.detail = detail or (type(self).__doc__ or self.title).strip().splitlines()[0]
        self.task_id = task_id
        super().__init__(self.detail)


class RequestError(TaskPlatformError):
    """The request cannot be served as sent."""

    status_code = 400
    code = "bad_request"
    title = "Bad request"


class MalformedJSON(RequestError):
    """The request body is not well-formed JSON."""

    status_code = 400
    code = "malformed_json"
    title = "Malformed JSON"


class ValidationFailed(RequestError):
    """One or more fields of the request are invalid."""

    status_code = 422
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, errors: Sequence[tuple[str, str]], detail: str | None = None) -> None:
        """Create the error.

        Args:
            errors: ``(field, message)`` pairs; ``field`` is a JSON path such as ``$.priority``.
            detail: A summary; by default the first error.
        """
        self.errors = list(errors)
        first = self.errors[0] if self.errors else ("$", "invalid")
        super().__init__(detail or f"{first[0]}: {first[1]}")


class IdempotencyKeyReused(RequestError):
    """This Idempotency-Key was used for a create with another body."""

    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency key reused"


class PayloadTooLarge(RequestError):
    """The request body is larger than the server accepts."""

    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(RequestError):
    """The request body must be JSON (Content-Type: application/json)."""

    status_code = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class TaskNotFound(RequestError):
    """No task has this id."""

    status_code = 404
    code = "task_not_found"
    title = "Task not found"


class QueueEmpty(RequestError):
    """The queue holds no task."""

    status_code = 404
    code = "queue_empty"
    title = "Queue empty"


class TaskConflict(RequestError):
    """The task's status does not allow this operation."""

    status_code = 409
    code = "task_conflict"
    title = "Conflict with the task's status"


class TaskNotDequeued(TaskConflict):
    """The task is still Queued: dequeue it before executing it."""

    code = "task_not_dequeued"
    title = "Task not dequeued"


class TaskProcessing(TaskConflict):
    """The task is already executing."""

    code = "task_processing"
    title = "Task processing"


class TaskCompleted(TaskConflict):
    """The task has completed; it is not executed again."""

    code = "task_completed"
    title = "Task completed"


class TaskCancelled(TaskConflict):
    """The task was cancelled; it is never executed."""

    code = "task_cancelled"
    title = "Task cancelled"


class TaskNotFailed(TaskConflict):
    """Only a Failed task can be sent back to its queue."""

    code = "task_not_failed"
    title = "Task not failed"


class QueuePaused(RequestError):
    """The queue is paused: it hands out no task until it is resumed."""

    status_code = 409
    code = "queue_paused"
    title = "Queue paused"


class RetryLimitReached(TaskConflict):
    """The task has used all of its attempts (maxRetries + 1)."""

    code = "retry_limit_reached"
    title = "Retry limit reached"


def raise_if_cancelled() -> None:
    """Raise CancelledError if the current asyncio task has been asked to stop.

    A driver can turn a cancellation that lands mid-call into its own error (asyncpg through
    SQLAlchemy does); translated to :class:`BackendUnavailable` and caught by a retry loop, it
    would be lost, and shutdown would wait for that loop forever. Backends call this before
    translating a driver error, and loops that retry on errors call it too.
    """
    import asyncio

    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class BackendUnavailable(TaskPlatformError):
    """The queue or store backend cannot be reached; try again later."""

    status_code = 503
    code = "backend_unavailable"
    title = "Backend unavailable"


class ShuttingDown(TaskPlatformError):
    """The server stopped mid-callback; the attempt is recorded as interrupted: execute again.

    Raised by a synchronous execute whose callback is still running when the shutdown grace
    (``shutdown_grace_seconds``) runs out, and by an execute that arrives once the server is
    stopping (then no attempt is started). A 503 rather than the 500 the cancelled request would
    otherwise get: nothing went wrong, and another server (or this one once restarted) can run
    the task.
    """

    status_code = 503
    code = "shutting_down"
    title = "Server shutting down"
