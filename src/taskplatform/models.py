"""Domain records, the task state machine's statuses and the JSON wire shapes of the API."""

from __future__ import annotations

import enum
import time
from typing import Annotated

import msgspec

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class Status(enum.StrEnum):
    """Where a task stands. The names come from the seed specification (FR-004) and API.md."""

    QUEUED = "Queued"  # in the queue backend, waiting to be dequeued
    DEQUEUED = "Dequeued"  # taken from the queue and stored in the database, not executed yet
    PROCESSING = "Processing"  # a callback attempt is in flight, under a lease
    COMPLETED = "Completed"  # the callback answered 2xx; final
    FAILED = "Failed"  # the last attempt failed; final once no attempts are left
    RETRY = "Retry"  # about to be (or waiting to be) attempted again


# ---------------------------------------------------------------------------------------------
# Time: integer milliseconds since the Unix epoch internally, RFC 3339 UTC with "Z" on the wire.


def now_ms() -> int:
    """Return the current wall-clock time in whole milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000


def format_time(ms: int | None) -> str | None:
    """Format epoch milliseconds as ``2026-11-30T11:35:25.123Z`` (API.md), or ``None``.

    Uses ``time.gmtime``, so the server's local time zone (``TZ``) never leaks into the output.
    """
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# ---------------------------------------------------------------------------------------------
# Internal records passed between the service and the backends.


class TaskRecord(msgspec.Struct, kw_only=True):
    """One task as the backends hold it.

    ``task_data`` and ``result`` are JSON text (bytes) exactly as received, so the caller's payload
    round-trips byte for byte; times are epoch milliseconds; ``timeout_seconds`` is in seconds.
    """

    task_id: str
    sequence: int = 0
    status: Status
    priority: int
    task_data: bytes
    callback_url: str
    max_retries: int
    timeout_seconds: float
    attempts: int = 0
    lease_token: str | None = None
    lease_expires_at: int | None = None
    next_attempt_at: int | None = None
    result: bytes | None = None
    error: str | None = None
    created_at: int
    updated_at: int
    dequeued_at: int | None = None
    completed_at: int | None = None

    def attempts_left(self) -> bool:
        """Return whether another attempt is allowed: at most ``max_retries + 1`` attempts."""
        return self.attempts <= self.max_retries


class ExecutionRecord(msgspec.Struct, kw_only=True):
    """One callback attempt (the seed's TaskExecution entity); append-only."""

    task_id: str
    attempt: int
    started_at: int
    finished_at: int
    duration_ms: int
    http_status: int | None
    result: bytes | None
    error: str | None


# ---------------------------------------------------------------------------------------------
# Wire shapes. Field names are camelCase (API.md); JSON values kept as text travel as msgspec.Raw.

Priority = Annotated[
    int,
    msgspec.Meta(
        ge=INT32_MIN,
        le=INT32_MAX,
        description="Higher is dequeued first; equal priorities are FIFO by creation.",
    ),
]
MaxRetries = Annotated[
    int,
    msgspec.Meta(
        ge=0, le=100, description="Retries allowed after the first attempt: at most maxRetries+1."
    ),
]
TimeoutSeconds = Annotated[
    float,
    msgspec.Meta(gt=0, le=3600, description="Total time allowed for one callback attempt, s."),
]


class TaskCreate(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Body of ``POST /api/tasks``. Unknown fields are rejected."""

    task_data: Annotated[
        msgspec.Raw,
        msgspec.Meta(
            description="The caller's payload, a JSON object; sent as the callback body.",
            extra_json_schema={"type": "object", "additionalProperties": True},
        ),
    ]
    callback_url: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="Absolute http or https URL that execute calls with POST.",
            extra_json_schema={"format": "uri", "maxLength": 2048},
        ),
    ]
    priority: Priority = 0
    max_retries: MaxRetries | None = None
    timeout_seconds: TimeoutSeconds | None = None


class TaskCreated(msgspec.Struct, rename="camel"):
    """Body of a 201 from ``POST /api/tasks``."""

    task_id: str
    status: Status


Timestamp = Annotated[
    str,
    msgspec.Meta(extra_json_schema={"format": "date-time", "example": "2026-11-30T11:35:25.123Z"}),
]
JsonValue = Annotated[
    msgspec.Raw,
    msgspec.Meta(
        description="Any JSON value: parsed JSON when the callback answered JSON, else the text.",
        extra_json_schema={},
    ),
]


class TaskView(msgspec.Struct, rename="camel", omit_defaults=False):
    """A task as ``GET /api/tasks/{taskId}`` and dequeue return it."""

    task_id: str
    status: Status
    task_data: Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "object"})]
    callback_url: str
    priority: int
    max_retries: int
    timeout_seconds: float
    attempts: int
    created_at: Timestamp
    updated_at: Timestamp
    dequeued_at: Timestamp | None
    completed_at: Timestamp | None
    next_attempt_at: Timestamp | None
    result: JsonValue | None
    error: str | None

    @classmethod
    def of(cls, task: TaskRecord) -> TaskView:
        """Build the wire view of ``task``."""
        return cls(
            task_id=task.task_id,
            status=task.status,
            task_data=msgspec.Raw(task.task_data),
            callback_url=task.callback_url,
            priority=task.priority,
            max_retries=task.max_retries,
            timeout_seconds=task.timeout_seconds,
            attempts=task.attempts,
            created_at=format_time(task.created_at),  # type: ignore[arg-type]
            updated_at=format_time(task.updated_at),  # type: ignore[arg-type]
            dequeued_at=format_time(task.dequeued_at),
            completed_at=format_time(task.completed_at),
            next_attempt_at=format_time(task.next_attempt_at),
            result=None if task.result is None else msgspec.Raw(task.result),
            error=task.error,
        )


class ExecuteResult(msgspec.Struct, rename="camel"):
    """Body of a 200 from ``POST /api/tasks/{taskId}/execute``: the outcome of one attempt."""

    task_id: str
    status: Status
    result: JsonValue | None
    error: str | None
    attempt: int


class ExecuteAccepted(msgspec.Struct, rename="camel"):
    """Body of a 202 from ``POST /api/tasks/{taskId}/execute`` with ``Prefer: respond-async``."""

    task_id: str
    status: Status


class ExecutionView(msgspec.Struct, rename="camel"):
    """One entry of the attempt log, ``GET /api/tasks/{taskId}/executions``."""

    attempt: int
    started_at: Timestamp
    finished_at: Timestamp
    duration_ms: int
    http_status: int | None
    result: JsonValue | None
    error: str | None

    @classmethod
    def of(cls, execution: ExecutionRecord) -> ExecutionView:
        """Build the wire view of ``execution``."""
        return cls(
            attempt=execution.attempt,
            started_at=format_time(execution.started_at),  # type: ignore[arg-type]
            finished_at=format_time(execution.finished_at),  # type: ignore[arg-type]
            duration_ms=execution.duration_ms,
            http_status=execution.http_status,
            result=None if execution.result is None else msgspec.Raw(execution.result),
            error=execution.error,
        )


class ExecutionList(msgspec.Struct, rename="camel"):
    """Body of ``GET /api/tasks/{taskId}/executions``, oldest attempt first."""

    task_id: str
    items: list[ExecutionView]


class TaskList(msgspec.Struct, rename="camel"):
    """Body of ``GET /api/tasks``: newest first; pass ``nextCursor`` back as ``cursor``."""

    items: list[TaskView]
    next_cursor: str | None


class Stats(msgspec.Struct, rename="camel"):
    """Body of ``GET /api/stats``: tasks per status; ``queueDepth`` counts Queued tasks."""

    tasks: dict[str, int]
    queue_depth: int


class ProblemFieldError(msgspec.Struct):
    """One bad field of a request: a JSON path such as ``$.priority`` and what is wrong with it."""

    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem details body, with a stable machine-readable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ProblemFieldError] | None = None
    task_id: Annotated[str | None, msgspec.Meta(extra_json_schema={})] = msgspec.field(
        default=None, name="taskId"
    )
