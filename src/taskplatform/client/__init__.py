"""Python client of the taskplatform HTTP API: blocking and asyncio, typed, with retries.

::

    from taskplatform.client import TaskClient

    with TaskClient("http://127.0.0.1:8000", api_key="...") as client:
        created = client.create({"orderId": 42}, "http://127.0.0.1:9000/orders", priority=5)
        task = client.dequeue()                 # a Task, or None when the queue is empty
        if task is not None:
            outcome = client.execute(task.task_id)

Errors are exceptions, one class per problem ``code`` (``TaskNotFound`` for ``task_not_found``,
see :mod:`taskplatform.client.errors`). Receivers verify signed callbacks with
:func:`verify_callback`.
"""

from __future__ import annotations

from taskplatform.client._calls import RetryMode, RetryPolicy
from taskplatform.client._client import DEFAULT_TIMEOUT_SECONDS, AsyncTaskClient, TaskClient
from taskplatform.client.errors import (
    PROBLEM_CLASSES,
    BackendUnavailable,
    BadRequest,
    ClientError,
    ConnectionFailed,
    CrossOriginRequest,
    HeaderFieldsTooLarge,
    HostNotAllowed,
    IdempotencyKeyReused,
    InternalError,
    InvalidSignature,
    MalformedJSON,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    QueueEmpty,
    QueuePaused,
    RateLimited,
    RequestTimeout,
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
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    ValidationError,
)
from taskplatform.client.models import (
    BatchItemResult,
    CreatedTask,
    Execution,
    ExecutionOutcome,
    JsonNumber,
    NewTask,
    Page,
    QueueInfo,
    Readiness,
    RedriveResult,
    Stats,
    Status,
    Task,
    dumps_json,
)
from taskplatform.client.signatures import verify_callback

verify_signature = verify_callback
"""Another name of :func:`verify_callback`."""

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "PROBLEM_CLASSES",
    "AsyncTaskClient",
    "BackendUnavailable",
    "BadRequest",
    "BatchItemResult",
    "ClientError",
    "ConnectionFailed",
    "CreatedTask",
    "CrossOriginRequest",
    "Execution",
    "ExecutionOutcome",
    "HeaderFieldsTooLarge",
    "HostNotAllowed",
    "IdempotencyKeyReused",
    "InternalError",
    "InvalidSignature",
    "JsonNumber",
    "MalformedJSON",
    "MethodNotAllowed",
    "NewTask",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "QueueEmpty",
    "QueueInfo",
    "QueuePaused",
    "RateLimited",
    "Readiness",
    "RedriveResult",
    "RequestTimeout",
    "RetryLimitReached",
    "RetryMode",
    "RetryPolicy",
    "ShuttingDown",
    "Stats",
    "Status",
    "Task",
    "TaskCancelled",
    "TaskClient",
    "TaskCompleted",
    "TaskConflict",
    "TaskNotDequeued",
    "TaskNotFailed",
    "TaskNotFound",
    "TaskPlatformError",
    "TaskProcessing",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "ValidationError",
    "dumps_json",
    "verify_callback",
    "verify_signature",
]
