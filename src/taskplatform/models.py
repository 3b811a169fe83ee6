"""Domain records, the task state machine's statuses and the JSON wire shapes of the API."""

from __future__ import annotations

import datetime
import enum
import time
from typing import Annotated, Any

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
    CANCELLED = "Cancelled"  # cancelled before its callback succeeded; final, never called again


DEFAULT_QUEUE = "default"
"""The queue a task goes to when its create names none."""


# ---------------------------------------------------------------------------------------------
# Time: integer milliseconds since the Unix epoch internally, RFC 3339 UTC with "Z" on the wire.


_clock_offset_ms = 0
"""What :func:`now_ms` adds to this host's clock: the store's clock minus this host's, in
milliseconds (:func:`follow_clock`); 0 where the store is on this host (SQLite)."""


def now_ms() -> int:
    """Return the current time in whole milliseconds since the Unix epoch (UTC), by the store's
    clock: this host's wall clock corrected by :func:`follow_clock`.

    Every time taskplatform keeps or compares (leases, schedules, backoff, idempotency key
    expiry, the timestamps of the API) is read here, so that API processes on several hosts
    sharing one database agree on it even when their own clocks do not.
    """
    return time.time_ns() // 1_000_000 + _clock_offset_ms


def follow_clock(offset_ms: int) -> None:
    """Make :func:`now_ms` run ``offset_ms`` milliseconds ahead of this host's wall clock
    (behind, when negative). Called by the service with the store's clock offset."""
    global _clock_offset_ms  # one clock per process, read on every hot path
    _clock_offset_ms = offset_ms


def clock_offset_ms() -> int:
    """Return the offset :func:`now_ms` currently adds to this host's clock, in milliseconds."""
    return _clock_offset_ms


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


class RetryPolicy(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """How the dispatcher retries a task: backoff bounds and the status codes it treats specially.

    Stored with the task as JSON (camelCase), filled from the settings at create time so a later
    change of the defaults does not alter tasks already queued. Times in seconds.
    """

    backoff_min_seconds: float
    backoff_max_seconds: float
    backoff_multiplier: float
    retry_on: list[int] | None = None
    permanent_on: list[int] | None = None


_encode_policy = msgspec.json.Encoder().encode
_decode_policy = msgspec.json.Decoder(RetryPolicy).decode


def policy_text(policy: RetryPolicy | None) -> str | None:
    """Return ``policy`` as JSON text, as the ``retry_policy`` column and Redis field keep it."""
    return None if policy is None else _encode_policy(policy).decode()


def policy_of(text: str | bytes | None) -> RetryPolicy | None:
    """Parse stored ``retry_policy`` JSON back into a policy (None or empty: none)."""
    return None if not text else _decode_policy(text)


QUEUED_FIELDS = (
    "task_id",
    "priority",
    "task_data",
    "callback_url",
    "max_retries",
    "timeout_seconds",
    "attempts",
    "error",
    "created_at",
    "updated_at",
    "queue",
    "scheduled_at",
    "retry_policy",
)
"""The fields of :class:`TaskRecord` a queue backend keeps for a Queued task (all it needs to
rebuild the record but its sequence), in the one order every backend writes them."""


class TaskRecord(msgspec.Struct, kw_only=True):
    """One task as the backends hold it.

    ``task_data`` and ``result`` are JSON text (bytes) exactly as received, so the caller's payload
    round-trips byte for byte; times are epoch milliseconds; ``timeout_seconds`` is in seconds.
    ``retry_policy`` is None only for tasks created before policies existed (the settings apply).
    ``dead_letter`` marks a Failed task that will not be retried automatically; ``dispatched``
    marks a task a dispatcher took (its retryable failures are retried automatically).
    """

    task_id: str
    sequence: int = 0
    status: Status
    queue: str = DEFAULT_QUEUE
    scheduled_at: int | None = None
    retry_policy: RetryPolicy | None = None
    dead_letter: bool = False
    dispatched: bool = False
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


def queued_values(task: TaskRecord) -> tuple[Any, ...]:
    """Return the :data:`QUEUED_FIELDS` of ``task``, in that order: a ``queued_tasks`` row of the
    SQL queues, and (None as "") a task hash of the Redis queue. Built once per task of a batch
    create, so a plain tuple."""
    return (
        task.task_id,
        task.priority,
        task.task_data.decode(),
        task.callback_url,
        task.max_retries,
        task.timeout_seconds,
        task.attempts,
        task.error,
        task.created_at,
        task.updated_at,
        task.queue,
        task.scheduled_at,
        policy_text(task.retry_policy),
    )


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


QUEUE_NAME = r"[A-Za-z0-9_\-]|[A-Za-z0-9_.\-][A-Za-z0-9_\-]|[A-Za-z0-9_\-]\.|[A-Za-z0-9_.\-]{3,64}"
"""A queue name, unanchored: 1 to 64 letters, digits, ``_``, ``.`` or ``-``, but not ``.`` or
``..``, which a URL path normalises away (``/api/queues/../pause``). Spelled out by length rather
than with a lookahead, which pydantic's regex engine (the routes' patterns) lacks."""

QUEUE_NAME_RULE = "must be 1 to 64 letters, digits, `_`, `.` or `-`, and not `.` or `..`"
""":data:`QUEUE_NAME` in words, for error messages (a regex means little to a client)."""

QueueName = Annotated[
    str,
    msgspec.Meta(
        # \Z, not $: Python's $ also matches before a final newline ("default\n").
        pattern=rf"^(?:{QUEUE_NAME})\Z",
        description="A named queue: 1 to 64 letters, digits, `_`, `.` or `-`; not `.` or `..`.",
    ),
]
BackoffSeconds = Annotated[float, msgspec.Meta(gt=0, le=86400)]
StatusCodes = Annotated[
    list[Annotated[int, msgspec.Meta(ge=300, le=599)]], msgspec.Meta(max_length=100)
]
MAX_DELAY_SECONDS = 365 * 86400
"""The furthest ahead a task may be scheduled, in seconds (one year)."""


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
    queue: QueueName = DEFAULT_QUEUE
    delay_seconds: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0, le=MAX_DELAY_SECONDS, description="Run no sooner than this many s from now."
            ),
        ]
        | None
    ) = None
    scheduled_at: (
        Annotated[
            datetime.datetime,
            msgspec.Meta(tz=True, description="Run no sooner than this time (RFC 3339)."),
        ]
        | None
    ) = None
    backoff_min_seconds: (
        Annotated[BackoffSeconds, msgspec.Meta(description="Shortest wait before a retry, s.")]
        | None
    ) = None
    backoff_max_seconds: (
        Annotated[BackoffSeconds, msgspec.Meta(description="Longest wait before a retry, s.")]
        | None
    ) = None
    backoff_multiplier: (
        Annotated[float, msgspec.Meta(ge=1, le=100, description="Growth of the wait per attempt.")]
        | None
    ) = None
    retry_on: (
        Annotated[StatusCodes, msgspec.Meta(description="Statuses retried automatically.")] | None
    ) = None
    permanent_on: (
        Annotated[StatusCodes, msgspec.Meta(description="Statuses never retried automatically.")]
        | None
    ) = None


IDEMPOTENCY_KEY = r"[\x21-\x7e]{1,255}"
"""An idempotency key, unanchored: 1 to 255 printable ASCII characters, no space (what an HTTP
header carries without quoting, so the ``Idempotency-Key`` header and a batch item's
``idempotencyKey`` take the same keys)."""


class BatchTaskCreate(TaskCreate, kw_only=True):
    """One item of ``POST /api/tasks/batch``: a create body, with an idempotency key of its own.

    The key does for the item what the ``Idempotency-Key`` header does for a single create: a
    repeat with the same key and the same item bytes within the key's lifetime gives back the
    first task instead of creating another. Batches have no header per item, so the key rides
    in the item.
    """

    idempotency_key: (
        Annotated[
            str,
            msgspec.Meta(
                pattern=rf"^(?:{IDEMPOTENCY_KEY})\Z",
                description=(
                    "Makes a resent item safe: a repeat with the same key and the same item "
                    "bytes within the key's lifetime (TASKPLATFORM_IDEMPOTENCY_KEY_TTL_SECONDS, "
                    "24 hours by default) gives back the first task; another item is an error."
                ),
            ),
        ]
        | None
    ) = None


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
    queue: str
    scheduled_at: Timestamp | None
    dead_letter: bool
    backoff_min_seconds: float | None
    backoff_max_seconds: float | None
    backoff_multiplier: float | None
    retry_on: list[int] | None
    permanent_on: list[int] | None

    @classmethod
    def of(cls, task: TaskRecord) -> TaskView:
        """Build the wire view of ``task``."""
        policy = task.retry_policy
        return cls(
            task_id=task.task_id,
            status=task.status,
            task_data=msgspec.Raw(task.task_data),
            callback_url=task.callback_url,
            priority=task.priority,
            max_retries=task.max_retries,
            timeout_seconds=float(task.timeout_seconds),  # a REAL column may come back as int
            attempts=task.attempts,
            created_at=format_time(task.created_at),  # type: ignore[arg-type]
            updated_at=format_time(task.updated_at),  # type: ignore[arg-type]
            dequeued_at=format_time(task.dequeued_at),
            completed_at=format_time(task.completed_at),
            next_attempt_at=format_time(task.next_attempt_at),
            result=None if task.result is None else msgspec.Raw(task.result),
            error=task.error,
            queue=task.queue,
            scheduled_at=format_time(task.scheduled_at),
            dead_letter=task.dead_letter,
            backoff_min_seconds=policy.backoff_min_seconds if policy else None,
            backoff_max_seconds=policy.backoff_max_seconds if policy else None,
            backoff_multiplier=policy.backoff_multiplier if policy else None,
            retry_on=policy.retry_on if policy else None,
            permanent_on=policy.permanent_on if policy else None,
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


class BatchCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/tasks/batch``: up to 1,000 create bodies, each checked on its own."""

    tasks: Annotated[
        list[msgspec.Raw],
        msgspec.Meta(
            min_length=1,
            max_length=1000,
            extra_json_schema={"items": {"$ref": "#/components/schemas/BatchTaskCreate"}},
        ),
    ]


class BatchItem(msgspec.Struct, rename="camel", omit_defaults=True):
    """One result of a batch create: the new task, or the problem with that item."""

    index: int
    task_id: str | None = None
    status: Status | None = None
    replayed: Annotated[
        bool,
        msgspec.Meta(
            description="True when the item's idempotencyKey gave back an earlier task, "
            "as the header `Idempotent-Replayed: true` does for a single create."
        ),
    ] = False
    error: Problem | None = None


class BatchResult(msgspec.Struct, rename="camel"):
    """Body of a 200 from ``POST /api/tasks/batch``: one item per task sent, in order."""

    items: list[BatchItem]


class RedriveFilter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /api/tasks/retry``: which dead letters to send back to their queue."""

    queue: QueueName | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000


class RedriveResult(msgspec.Struct, rename="camel"):
    """Body of a 200 from ``POST /api/tasks/retry``: the dead letters sent back."""

    retried: int
    task_ids: list[str]


class QueueView(msgspec.Struct, rename="camel"):
    """One named queue: ``depth`` Queued tasks (due or scheduled for later), ``inFlight``
    callbacks, how long the longest-waiting due task has waited (s; from its creation or its
    later ``scheduledAt``, None when none is due), and attempts per second over the last
    minute."""

    name: str
    paused: bool
    depth: int
    in_flight: int
    oldest_queued_age_seconds: float | None
    dispatch_rate_per_second: float


class QueueList(msgspec.Struct):
    """Body of ``GET /api/queues``, by name."""

    items: list[QueueView]


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
