"""What the client returns: frozen dataclasses with snake_case fields, parsed from the API's JSON.

Times are timezone-aware :class:`datetime.datetime` in UTC; durations are seconds (floats) unless
the name says otherwise (``duration_ms``). Each record keeps the JSON it came from in ``raw``
(camelCase, as the API sent it), for callers that print or forward it unchanged.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from taskplatform.models import Status

__all__ = [
    "BatchItemResult",
    "CreatedTask",
    "Execution",
    "ExecutionOutcome",
    "JsonNumber",
    "NewTask",
    "Page",
    "QueueInfo",
    "Readiness",
    "RedriveResult",
    "Stats",
    "Status",
    "Task",
    "dumps_json",
]


class JsonNumber(float):
    """A number in an answer that a float cannot hold, as the client reads it: the float
    nearest to it, and :attr:`text`, its digits as the server sent them (the API keeps task
    data as sent). A float keeps 17 significant digits, and ``1e400`` is infinite; ``text`` is
    what a program writes to give the number back unchanged, as the command line does. Every
    other number is a plain ``int`` or ``float`` (:func:`read_number`).
    """

    __slots__ = ("text",)
    text: str
    made: ClassVar[bool] = False
    """Whether this process has made one: until then :func:`dumps_json` need not look."""

    def __new__(cls, text: str) -> JsonNumber:
        """Read ``text``, a JSON number (RFC 8259, section 6) such as ``0.10000000000000000001``
        or ``1e400``.

        Raises:
            ValueError: ``text`` is no JSON number (``1_000.5``, `` 1.5``, ``nan``: Python's
                ``float`` reads them, and :func:`dumps_json` would write them as they are).
        """
        if not _JSON_NUMBER.fullmatch(text):
            raise ValueError(f"not a JSON number: {text!r}")
        number = super().__new__(cls, text)
        number.text = text
        JsonNumber.made = True
        return number

    def __reduce__(self) -> tuple[type[JsonNumber], tuple[str]]:
        return JsonNumber, (self.text,)


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")

# Stands for a number in the text json.dumps writes, which then gets the number's own text. Its
# \x00 is written \u0000, which no string of the value can be written as; the random part is
# unknown outside this process, so no string can hold the whole of it either.
_MARK = f"\x00{secrets.token_hex(16)}="
_MARKED = re.compile(rf'"\\u0000{_MARK[1:]}([-+.0-9eE]+)"')


def dumps_json(
    value: object, *, separators: tuple[str, str] | None = None, infinite_floats: bool = False
) -> str:
    """``json.dumps(value, ensure_ascii=False, allow_nan=False, separators=separators)``, with
    each :class:`JsonNumber` written as its :attr:`~JsonNumber.text`: the number the API
    sent, not the float nearest to it. So a task read from the API is created again with the
    same data, as the API keeps data as sent.

    Args:
        value: What to write: dicts, lists, tuples, strings, numbers, booleans, None.
        separators: As ``json.dumps``'s (``(",", ":")`` for the most compact text).
        infinite_floats: Write an infinite float as ``1e999`` (``-1e999``), which reads back as
            it, instead of refusing it (to print what the API holds: it keeps ``1e999``).

    Raises:
        ValueError: ``value`` holds NaN or (without ``infinite_floats``) an infinite float,
            which JSON cannot carry, or refers to itself (while no JsonNumber was made).
        TypeError: ``value`` holds something that is not JSON (a set, a datetime, ...).
        RecursionError: ``value`` is nested past Python's recursion limit, or refers to itself
            (once a JsonNumber was made: the walk that finds them does not look for cycles).
    """
    if not (JsonNumber.made or infinite_floats):  # no number to find: json.dumps alone
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=separators)
    marked = _numbers_marked(value, infinite_floats)
    text = json.dumps(marked, ensure_ascii=False, allow_nan=False, separators=separators)
    return text if marked is value else _MARKED.sub(lambda found: found[1], text)


def _numbers_marked(value: object, infinite_floats: bool) -> object:
    """``value`` with each :class:`JsonNumber` (and with ``infinite_floats``, each infinite
    float) replaced by the string :data:`_MARK` + its text; ``value`` itself, not a copy, when
    it holds none (the common case: a create's data is walked, not copied)."""
    if isinstance(value, float):
        if isinstance(value, JsonNumber):
            return _MARK + value.text
        if infinite_floats and math.isinf(value):
            return _MARK + ("1e999" if value > 0 else "-1e999")
        return value
    if isinstance(value, dict):
        marked_dict: dict[Any, object] | None = None
        for key, item in value.items():
            marked_item = _numbers_marked(item, infinite_floats)
            if marked_item is not item:
                if marked_dict is None:
                    marked_dict = dict(value)
                marked_dict[key] = marked_item
        return value if marked_dict is None else marked_dict
    if isinstance(value, list | tuple):
        marked_list: list[object] | None = None
        for index, item in enumerate(value):
            marked_item = _numbers_marked(item, infinite_floats)
            if marked_item is not item:
                if marked_list is None:
                    marked_list = list(value)
                marked_list[index] = marked_item
        return value if marked_list is None else marked_list
    return value


def read_number(text: str) -> float:
    """``json.loads``'s ``parse_float``: the JSON number ``text`` (with a fraction or an
    exponent) as a float, or as a :class:`JsonNumber` when the float is not the same number."""
    value = float(text)
    if repr(value) == text:  # what JSON writers of floats send: one comparison
        return value
    if not math.isinf(value) and decimal.Decimal(text) == decimal.Decimal(repr(value)):
        return value  # the same number, written otherwise: 1.50, 1E5
    return JsonNumber(text)


def parse_time(value: object) -> datetime.datetime | None:
    """Parse an RFC 3339 timestamp such as ``2026-11-30T11:35:25.123Z`` (None stays None).

    Raises:
        ValueError: ``value`` is neither None nor an RFC 3339 string.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 timestamp, got {value!r}")
    return datetime.datetime.fromisoformat(value)


def _required_time(value: object) -> datetime.datetime:
    parsed = parse_time(value)
    if parsed is None:
        raise ValueError("a required timestamp is null")
    return parsed


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Task:
    """A task as ``GET /api/tasks/{taskId}``, list and dequeue return it.

    ``task_data`` is the payload as created; ``result`` the last callback answer (parsed JSON,
    else its text); ``timeout_seconds`` and the ``backoff_*_seconds`` are seconds.
    """

    task_id: str
    status: Status
    task_data: dict[str, Any]
    callback_url: str
    priority: int
    queue: str
    max_retries: int
    timeout_seconds: float
    attempts: int
    created_at: datetime.datetime
    updated_at: datetime.datetime
    dequeued_at: datetime.datetime | None
    completed_at: datetime.datetime | None
    next_attempt_at: datetime.datetime | None
    scheduled_at: datetime.datetime | None
    result: Any
    error: str | None
    dead_letter: bool
    backoff_min_seconds: float | None
    backoff_max_seconds: float | None
    backoff_multiplier: float | None
    retry_on: list[int] | None
    permanent_on: list[int] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        """Build a task from the API's JSON object.

        Raises:
            KeyError, ValueError, TypeError: ``data`` is not a task as the API describes one.
        """
        return cls(
            task_id=data["taskId"],
            status=Status(data["status"]),
            task_data=data["taskData"],
            callback_url=data["callbackUrl"],
            priority=int(data["priority"]),
            queue=data.get("queue", "default"),
            max_retries=int(data["maxRetries"]),
            timeout_seconds=float(data["timeoutSeconds"]),
            attempts=int(data["attempts"]),
            created_at=_required_time(data["createdAt"]),
            updated_at=_required_time(data["updatedAt"]),
            dequeued_at=parse_time(data.get("dequeuedAt")),
            completed_at=parse_time(data.get("completedAt")),
            next_attempt_at=parse_time(data.get("nextAttemptAt")),
            scheduled_at=parse_time(data.get("scheduledAt")),
            result=data.get("result"),
            error=data.get("error"),
            dead_letter=bool(data.get("deadLetter", False)),
            backoff_min_seconds=_float_or_none(data.get("backoffMinSeconds")),
            backoff_max_seconds=_float_or_none(data.get("backoffMaxSeconds")),
            backoff_multiplier=_float_or_none(data.get("backoffMultiplier")),
            retry_on=data.get("retryOn"),
            permanent_on=data.get("permanentOn"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class CreatedTask:
    """The answer to a create: the new task's id and status.

    ``replayed`` is True when the ``Idempotency-Key`` had been used before with the same body:
    the task is the one the first request created (and ``status`` is where it stands now).
    """

    task_id: str
    status: Status
    replayed: bool
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class NewTask:
    """One task to create, for :meth:`TaskClient.create_batch` (the arguments of ``create``).

    Times and durations are seconds; ``scheduled_at`` must be timezone-aware. None leaves a
    field to the server's default.
    """

    task_data: Mapping[str, Any]
    callback_url: str
    priority: int = 0
    queue: str | None = None
    delay_seconds: float | None = None
    scheduled_at: datetime.datetime | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    backoff_min_seconds: float | None = None
    backoff_max_seconds: float | None = None
    backoff_multiplier: float | None = None
    retry_on: list[int] | None = None
    permanent_on: list[int] | None = None
    idempotency_key: str | None = None
    """Batch only: a resend of the item with the same key within the key's lifetime (24 hours
    by default) gives back the first task (``BatchItemResult.replayed``) instead of creating
    another."""

    def to_json(self) -> dict[str, Any]:
        """Return the create body (camelCase), leaving out the fields that are None.

        Raises:
            TypeError: ``task_data`` is not a mapping, or ``scheduled_at`` not a datetime (the
                type hints say so; a message names the field rather than a later attribute).
            ValueError: ``scheduled_at`` has no time zone (the API refuses local times).
        """
        if not isinstance(self.task_data, Mapping):
            raise TypeError(
                f"task_data must be a mapping (a JSON object), not {type(self.task_data).__name__}"
            )
        body: dict[str, Any] = {
            "taskData": dict(self.task_data),
            "callbackUrl": self.callback_url,
            "priority": self.priority,
        }
        optional: dict[str, Any] = {
            "queue": self.queue,
            "delaySeconds": self.delay_seconds,
            "maxRetries": self.max_retries,
            "timeoutSeconds": self.timeout_seconds,
            "backoffMinSeconds": self.backoff_min_seconds,
            "backoffMaxSeconds": self.backoff_max_seconds,
            "backoffMultiplier": self.backoff_multiplier,
            "retryOn": self.retry_on,
            "permanentOn": self.permanent_on,
            "idempotencyKey": self.idempotency_key,
        }
        if self.scheduled_at is not None:
            if not isinstance(self.scheduled_at, datetime.datetime):
                raise TypeError(
                    "scheduled_at must be a datetime.datetime with a time zone, not "
                    f"{type(self.scheduled_at).__name__} (datetime.datetime.fromisoformat parses "
                    "an ISO 8601 string)"
                )
            if self.scheduled_at.tzinfo is None:
                raise ValueError("scheduled_at needs a time zone, e.g. datetime.UTC")
            optional["scheduledAt"] = self.scheduled_at.isoformat()
        body.update({key: value for key, value in optional.items() if value is not None})
        return body


@dataclass(frozen=True)
class BatchItemResult:
    """One item of a batch create, in the order sent: the new task's id, or the error.

    Exactly one of ``task_id`` (with ``status``) and ``error`` is set. ``replayed`` is True
    when the item's idempotency key had been used before with the same item: the task is the
    one the first request created.
    """

    index: int
    task_id: str | None
    status: Status | None
    error: Exception | None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """Whether this item created a task."""
        return self.error is None


@dataclass(frozen=True)
class ExecutionOutcome:
    """The answer to execute: the attempt's outcome, or (``accepted``) that it runs in the
    background and its outcome will show on ``get``.

    A failed callback is an outcome, not an error: ``status`` is Failed and ``error`` says why.
    ``attempt`` is the attempt's number (1, 2, …); None when ``accepted``.
    """

    task_id: str
    status: Status
    result: Any
    error: str | None
    attempt: int | None
    accepted: bool
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Execution:
    """One entry of a task's attempt log; ``http_status`` is None when no answer came."""

    attempt: int
    started_at: datetime.datetime
    finished_at: datetime.datetime
    duration_ms: int
    http_status: int | None
    result: Any
    error: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Execution:
        """Build an attempt from the API's JSON object."""
        return cls(
            attempt=int(data["attempt"]),
            started_at=_required_time(data["startedAt"]),
            finished_at=_required_time(data["finishedAt"]),
            duration_ms=int(data["durationMs"]),
            http_status=data.get("httpStatus"),
            result=data.get("result"),
            error=data.get("error"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class Page:
    """One page of ``list``: tasks newest first; pass ``next_cursor`` back for the next page
    (None on the last one)."""

    items: list[Task]
    next_cursor: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Stats:
    """Tasks per status (status name → count) and ``queue_depth``, the Queued tasks."""

    tasks: dict[str, int]
    queue_depth: int
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class QueueInfo:
    """One named queue: Queued ``depth``, callbacks ``in_flight``, the oldest Queued task's age
    (seconds, None when empty) and attempts per second over the last minute."""

    name: str
    paused: bool
    depth: int
    in_flight: int
    oldest_queued_age_seconds: float | None
    dispatch_rate_per_second: float
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueInfo:
        """Build a queue from the API's JSON object."""
        return cls(
            name=data["name"],
            paused=bool(data["paused"]),
            depth=int(data["depth"]),
            in_flight=int(data["inFlight"]),
            oldest_queued_age_seconds=_float_or_none(data.get("oldestQueuedAgeSeconds")),
            dispatch_rate_per_second=float(data.get("dispatchRatePerSecond", 0.0)),
            raw=dict(data),
        )


@dataclass(frozen=True)
class RedriveResult:
    """The answer to a bulk re-drive: how many dead letters went back, and their ids."""

    retried: int
    task_ids: list[str]
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Readiness:
    """``/readyz``: whether the server's backends answer; ``detail`` says why not."""

    ready: bool
    status: str
    detail: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)
