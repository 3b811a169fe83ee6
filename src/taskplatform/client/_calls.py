"""The transport-free half of the client: how each API call is built and how its answer is read.

Each public method of :class:`~taskplatform.client.TaskClient` and
:class:`~taskplatform.client.AsyncTaskClient` is one builder here that returns a :class:`Call`
(method, path, query, body bytes, headers, retry mode, parser); the two clients only send it,
the one with a blocking ``httpx.Client``, the other with ``httpx.AsyncClient``, and both hand the
response to :func:`finish`. So the two cannot drift apart in what they send or how they parse.
"""

from __future__ import annotations

import datetime
import enum
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from taskplatform.client.errors import (
    ConnectionFailed,
    QueueEmpty,
    RateLimited,
    TaskNotFound,
    TaskPlatformError,
    UnexpectedResponse,
    error_from_problem,
)
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
    dumps_json,
    read_number,
)

T = TypeVar("T")

EXECUTE_TIMEOUT_SECONDS = 3660.0
"""How long execute waits for its answer by default, in seconds: the server bounds one attempt by
the task's ``timeoutSeconds`` (at most 3,600 s), plus a minute for everything around it."""


class RetryMode(enum.Enum):
    """Which transport failures a call may be sent again after."""

    ALWAYS = "always"  # idempotent: a repeat has the effect of one request
    CONNECT = "connect"  # not idempotent: only when the request surely never reached the server
    NEVER = "never"  # execute: even a refused connection is reported, never resent


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after transport failures, and of idempotent calls after a 503: exponential
    backoff with jitter.

    Args:
        retries: How many times a call may be sent again after the first try (0: never).
        backoff_seconds: The first wait's cap, in seconds; each later cap doubles.
        backoff_max_seconds: The largest wait, in seconds.
    """

    retries: int = 3
    backoff_seconds: float = 0.2
    backoff_max_seconds: float = 5.0

    def delay(self, attempt: int) -> float:
        """Return the wait before try ``attempt + 1``, in seconds (``attempt`` counts from 1).

        A uniform draw from the upper half of ``min(max, backoff × 2^(attempt-1))``: clients
        that failed together spread out, yet none retries at once.
        """
        cap = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def allows_after(self, call: Call[Any], response: httpx.Response, attempt: int) -> bool:
        """Return whether ``call``, answered ``response`` on try ``attempt``, is sent again: a
        503 (the server could not reach its database, or is stopping) to an idempotent call
        (:attr:`RetryMode.ALWAYS`). Such a create may have committed before the database's
        answer was lost (README, 503 ``backend_unavailable``): resent with the same bytes and
        ``Idempotency-Key`` it is answered with that task, never made twice."""
        return (
            call.retry is RetryMode.ALWAYS
            and attempt <= self.retries
            and response.status_code == 503
            and 503 not in call.also_ok
        )

    def allows(self, mode: RetryMode, exc: httpx.TransportError, attempt: int) -> bool:
        """Return whether a call of ``mode`` that failed with ``exc`` on try ``attempt`` is
        sent again."""
        if attempt > self.retries or mode is RetryMode.NEVER:
            return False
        never_sent = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
        if mode is RetryMode.CONNECT:
            return isinstance(exc, never_sent)
        return isinstance(
            exc,
            (*never_sent, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError),
        )


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request, ready to send, and how to read its answer.

    ``timeout`` (seconds) replaces the client's read timeout for calls that wait on purpose
    (long-poll dequeue, execute). ``recover`` turns an error answer into a value (dequeue's
    ``queue_empty`` into None) instead of raising it; ``also_ok`` lists non-2xx statuses that
    ``parse`` reads as answers (``/readyz``'s 503).
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    retry: RetryMode = RetryMode.ALWAYS
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    recover: Callable[[TaskPlatformError], T] | None = None
    also_ok: frozenset[int] = frozenset()


def encode_json(value: object) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON, the bytes sent as a body; a
    :class:`~taskplatform.client.models.JsonNumber` is written as its text (:func:`dumps_json`).

    Raises:
        ValueError: ``value`` holds NaN or an infinity, which JSON cannot carry; is nested too
            deeply to encode (about 1,000 levels; the server refuses more than 64 by default
            anyway); or refers to itself.
        TypeError: ``value`` holds something that is not JSON (a set, a datetime, ...).
    """
    try:
        text = dumps_json(value, separators=(",", ":"))
    except RecursionError:
        # A RecursionError says nothing of which argument was at fault, and is not an error a
        # caller expects from a bad value.
        raise ValueError("the value is nested too deeply to encode as JSON") from None
    return text.encode()


def _json_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {"Content-Type": "application/json", **(extra or {})}


def _body(response: httpx.Response) -> dict[str, Any]:
    data = response.json(parse_float=read_number)  # a number a float cannot hold, as sent
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


def _segment(value: str) -> str:
    """``value`` as one path segment: quote(safe="") so a "/" or "?" cannot address another
    route, and "." and ".." percent-encoded, which an HTTP client would otherwise resolve as dot
    segments (RFC 3986 section 5.2.4: ``/api/tasks/..`` is ``/api``)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


# A task id as create issues it (a UUID; the server takes hex digits in either case).
_TASK_ID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")


def _task_path(task_id: str, suffix: str = "") -> str:
    """The path of one task's resource.

    Raises:
        TaskNotFound: ``task_id`` is not a UUID, so no task has it; raised without a request, as
            such an id could name another route (``dequeue``: a GET there takes a task).
    """
    if not isinstance(task_id, str) or _TASK_ID.match(task_id) is None:
        detail = f"no task has the id {str(task_id)[:80]!r}"
        # The document the server would answer (RFC 9457), its ``type`` included.
        problem = {
            "type": "urn:taskplatform:problem:task_not_found",
            "title": "Task not found",
            "status": 404,
            "code": "task_not_found",
        }
        raise TaskNotFound(
            404, "task_not_found", "Task not found", detail, problem | {"detail": detail}
        )
    return f"/api/tasks/{_segment(task_id)}{suffix}"


def error_from_response(response: httpx.Response) -> TaskPlatformError:
    """Build the exception for an error answer: the problem's class, or UnexpectedResponse."""
    content_type = response.headers.get("content-type", "")
    problem: object = None
    if "json" in content_type:
        try:
            problem = response.json()
        except ValueError:
            problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        error = error_from_problem(response.status_code, problem)
        if isinstance(error, RateLimited):
            try:
                error.retry_after = float(response.headers.get("retry-after", ""))
            except ValueError:
                error.retry_after = None
        return error
    text = response.text[:300].strip()
    return UnexpectedResponse(
        response.status_code,
        "unexpected_response",
        response.reason_phrase,
        f"HTTP {response.status_code} {response.reason_phrase} from {response.request.url} "
        f"is not an API answer (Content-Type {content_type or 'none'}): {text!r}",
        {},
    )


def finish(call: Call[T], response: httpx.Response) -> T:
    """Read the answer to ``call``: its parsed value, or raise the error it carries.

    Raises:
        TaskPlatformError: the server answered with an error (the subclass of its ``code``);
            UnexpectedResponse when the answer is not the API's (wrong URL, a proxy's page).
    """
    if response.is_success or response.status_code in call.also_ok:
        try:
            return call.parse(response)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(
                response.status_code,
                "unexpected_response",
                response.reason_phrase,
                f"{call.method} {response.request.url} answered {response.status_code} with a "
                f"body this client cannot read ({exc!r}): {response.text[:300]!r}",
                {},
            ) from exc
    error = error_from_response(response)
    if call.recover is not None:
        return call.recover(error)
    raise error


MAX_RESPONSE_BYTES = 1 << 30
"""The largest answer a client reads, in bytes (1 GiB): far over the largest the API gives (a
page of 200 tasks, each with a task's data and a callback's result, 1 MiB each by default),
and a bound on what a wrong server, or one that never ends its answer, can make it hold."""


class AnswerReader:
    """Collects the body of ``response``, read as a stream, up to ``limit`` bytes (decoded).

    Raises (from the constructor, for a ``Content-Length`` over the limit, and from
    :meth:`add`):
        UnexpectedResponse: the answer is over ``limit``; code ``unexpected_response``. Nothing
            more should be read.
    """

    def __init__(self, call: Call[Any], response: httpx.Response, limit: int) -> None:
        self._call, self._response, self._limit = call, response, limit
        self._body = bytearray()
        try:
            announced = int(response.headers.get("content-length", "0"))
        except ValueError:  # the HTTP parser refuses one that is not a number: never here
            announced = 0
        self._check(announced)

    def add(self, chunk: bytes) -> None:
        """Take the next ``chunk`` of the body."""
        self._body += chunk
        self._check(len(self._body))

    def answer(self) -> httpx.Response:
        """Return the response with its whole body, as a non-streamed one."""
        # The body is decoded already: a Content-Encoding left in would decode it again.
        headers = [
            (name, value)
            for name, value in self._response.headers.multi_items()
            if name.lower() != "content-encoding"
        ]
        return httpx.Response(
            self._response.status_code,
            headers=headers,
            content=bytes(self._body),
            request=self._response.request,
            extensions=self._response.extensions,
        )

    def undecodable(self, exc: httpx.DecodingError) -> UnexpectedResponse:
        """The error for a body that its ``Content-Encoding`` does not decode (``exc``)."""
        response = self._response
        return UnexpectedResponse(
            response.status_code,
            "unexpected_response",
            response.reason_phrase,
            f"{self._call.method} {response.request.url} answered {response.status_code} with a "
            f"body that does not decode as its Content-Encoding says: {exc}",
            {},
        )

    def _check(self, size: int) -> None:
        if size > self._limit:
            response = self._response
            raise UnexpectedResponse(
                response.status_code,
                "unexpected_response",
                response.reason_phrase,
                f"{self._call.method} {response.request.url} answered {response.status_code} "
                f"with a body over this client's limit of {self._limit:,} bytes "
                "(max_response_bytes): not an API answer; nothing more was read",
                {},
            )


def connection_failed(
    call: Call[Any], base_url: httpx.URL, exc: httpx.TransportError, attempts: int
) -> ConnectionFailed:
    """Describe a call that got no answer, naming the URL, the failure and the tries made."""
    kind = type(exc).__name__
    reason = str(exc) or kind
    tries = "1 try" if attempts == 1 else f"{attempts} tries"
    try:
        url = exc.request.url  # with the base URL's path prefix, as sent
    except RuntimeError:  # an error raised before a request was made
        url = base_url.join(call.path)
    return ConnectionFailed(
        f"{call.method} {url} got no answer after {tries}: {kind}: {reason}",
        attempts=attempts,
    )


# --- builders, one per API operation ---------------------------------------------------------


def header_value(name: str, value: str) -> str:
    """Return ``value`` if an HTTP header can carry it (printable ASCII, RFC 9110 section 5.5).

    Raises:
        ValueError: it holds a control character (a line break) or a character beyond ASCII,
            which would otherwise fail inside the HTTP library as if the server never answered.
    """
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"{name} must be printable ASCII (it travels in an HTTP header)")
    return value


def create_call(task: NewTask, idempotency_key: str | None) -> Call[CreatedTask]:
    """``POST /api/tasks``; the body is encoded once, so every retry sends the same bytes.

    Raises:
        ValueError: ``idempotency_key`` is not printable ASCII (:func:`header_value`).
    """
    if idempotency_key is None:
        key = str(uuid.uuid4())
    else:
        key = header_value("idempotency_key", idempotency_key)

    def parse(response: httpx.Response) -> CreatedTask:
        data = _body(response)
        return CreatedTask(
            task_id=data["taskId"],
            status=Status(data["status"]),
            replayed=response.headers.get("idempotent-replayed") == "true",
            raw=data,
        )

    return Call(
        "POST",
        "/api/tasks",
        parse,
        RetryMode.ALWAYS,  # safe: the server answers a repeated key with the first task
        content=encode_json(task.to_json()),
        headers=_json_headers({"Idempotency-Key": key}),
    )


def batch_call(items: Iterable[NewTask | Mapping[str, Any]]) -> Call[list[BatchItemResult]]:
    """``POST /api/tasks/batch``; retried after any transport failure when every item has an
    idempotency key (a resend gives those tasks back), else only when it surely never arrived."""
    bodies = [item.to_json() if isinstance(item, NewTask) else dict(item) for item in items]
    every_item_keyed = all(body.get("idempotencyKey") is not None for body in bodies)

    def parse(response: httpx.Response) -> list[BatchItemResult]:
        results = []
        for item in _body(response)["items"]:
            problem = item.get("error")
            error = (
                error_from_problem(int(problem.get("status", 422)), problem)
                if isinstance(problem, dict)
                else None
            )
            results.append(
                BatchItemResult(
                    index=int(item["index"]),
                    task_id=item.get("taskId"),
                    status=Status(item["status"]) if item.get("status") else None,
                    error=error,
                    replayed=item.get("replayed") is True,
                )
            )
        return results

    return Call(
        "POST",
        "/api/tasks/batch",
        parse,
        RetryMode.ALWAYS if every_item_keyed else RetryMode.CONNECT,
        content=encode_json({"tasks": bodies}),
        headers=_json_headers(),
    )


def _task(response: httpx.Response) -> Task:
    return Task.from_json(_body(response))


def get_call(task_id: str) -> Call[Task]:
    """``GET /api/tasks/{taskId}``."""
    return Call("GET", _task_path(task_id), _task)


def list_call(
    status: Status | str | None,
    queue: str | None,
    dead_letter: bool | None,
    limit: int | None,
    cursor: str | None,
) -> Call[Page]:
    """``GET /api/tasks`` with its filters; None leaves a filter out."""
    params: dict[str, str] = {}
    if status is not None:
        params["status"] = str(status)
    if queue is not None:
        params["queue"] = queue
    if dead_letter is not None:
        params["deadLetter"] = "true" if dead_letter else "false"
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor

    def parse(response: httpx.Response) -> Page:
        data = _body(response)
        return Page([Task.from_json(item) for item in data["items"]], data["nextCursor"], data)

    return Call("GET", "/api/tasks", parse, params=params)


def dequeue_call(
    queue: str | None, wait_seconds: float | None, timeout: float
) -> Call[Task | None]:
    """``POST /api/tasks/dequeue``: a task, or None on ``queue_empty``.

    Sent as POST, not GET, so that no cache or proxy takes it for a safe request; retried only
    when it never arrived, as a lost answer would leave the task leased to nobody until its lease
    runs out.
    """
    params: dict[str, str] = {}
    if queue is not None:
        params["queue"] = queue
    if wait_seconds is not None:
        params["waitSeconds"] = f"{wait_seconds:g}"

    def empty(error: TaskPlatformError) -> Task | None:
        if isinstance(error, QueueEmpty):
            return None
        raise error

    return Call(
        "POST",
        "/api/tasks/dequeue",
        _task,
        RetryMode.CONNECT,
        params=params,
        timeout=timeout + (wait_seconds or 0.0),
        recover=empty,
    )


def execute_call(
    task_id: str, respond_async: bool, timeout: float | None
) -> Call[ExecutionOutcome]:
    """``POST /api/tasks/{taskId}/execute``; never retried, as it calls the task's callback."""

    def parse(response: httpx.Response) -> ExecutionOutcome:
        data = _body(response)
        accepted = response.status_code == 202
        return ExecutionOutcome(
            task_id=data["taskId"],
            status=Status(data["status"]),
            result=data.get("result"),
            error=data.get("error"),
            attempt=None if accepted else int(data["attempt"]),
            accepted=accepted,
            raw=data,
        )

    return Call(
        "POST",
        _task_path(task_id, "/execute"),
        parse,
        RetryMode.NEVER,
        headers={"Prefer": "respond-async"} if respond_async else {},
        timeout=EXECUTE_TIMEOUT_SECONDS if timeout is None else timeout,
    )


def retry_call(task_id: str) -> Call[Task]:
    """``POST /api/tasks/{taskId}/retry``: a repeat would answer 409, so connect-only retries."""
    return Call("POST", _task_path(task_id, "/retry"), _task, RetryMode.CONNECT)


def retry_dead_letters_call(queue: str | None, limit: int | None) -> Call[RedriveResult]:
    """``POST /api/tasks/retry``: re-drive dead letters in bulk."""
    body: dict[str, Any] = {}
    if queue is not None:
        body["queue"] = queue
    if limit is not None:
        body["limit"] = limit

    def parse(response: httpx.Response) -> RedriveResult:
        data = _body(response)
        return RedriveResult(int(data["retried"]), list(data["taskIds"]), data)

    return Call(
        "POST",
        "/api/tasks/retry",
        parse,
        RetryMode.CONNECT,
        content=encode_json(body),
        headers=_json_headers(),
    )


def cancel_call(task_id: str) -> Call[Task]:
    """``POST /api/tasks/{taskId}/cancel``: idempotent (a Cancelled task answers 200 again)."""
    return Call("POST", _task_path(task_id, "/cancel"), _task, RetryMode.ALWAYS)


def executions_call(task_id: str) -> Call[list[Execution]]:
    """``GET /api/tasks/{taskId}/executions``: the attempt log, oldest first."""

    def parse(response: httpx.Response) -> list[Execution]:
        return [Execution.from_json(item) for item in _body(response)["items"]]

    return Call("GET", _task_path(task_id, "/executions"), parse)


def stats_call(queue: str | None) -> Call[Stats]:
    """``GET /api/stats``, of one queue or all."""

    def parse(response: httpx.Response) -> Stats:
        data = _body(response)
        tasks = {str(name): int(count) for name, count in data["tasks"].items()}
        return Stats(tasks, int(data["queueDepth"]), data)

    return Call("GET", "/api/stats", parse, params={"queue": queue} if queue else {})


def queues_call() -> Call[list[QueueInfo]]:
    """``GET /api/queues``."""

    def parse(response: httpx.Response) -> list[QueueInfo]:
        return [QueueInfo.from_json(item) for item in _body(response)["items"]]

    return Call("GET", "/api/queues", parse)


def pause_call(name: str, paused: bool) -> Call[QueueInfo]:
    """``POST /api/queues/{name}/pause`` or ``/resume``: idempotent."""
    action = "pause" if paused else "resume"

    def parse(response: httpx.Response) -> QueueInfo:
        return QueueInfo.from_json(_body(response))

    return Call("POST", f"/api/queues/{_segment(name)}/{action}", parse, RetryMode.ALWAYS)


def health_call() -> Call[bool]:
    """``GET /healthz``: True when the process serves requests."""
    return Call("GET", "/healthz", lambda response: _body(response).get("status") == "ok")


def ready_call() -> Call[Readiness]:
    """``GET /readyz``: 200 ready, 503 not ready (an answer, not an error, here)."""

    def parse(response: httpx.Response) -> Readiness:
        data = _body(response)
        return Readiness(
            response.status_code == 200, str(data.get("status")), data.get("detail"), data
        )

    return Call("GET", "/readyz", parse, also_ok=frozenset({503}))


def new_task(
    task_data: Mapping[str, Any],
    callback_url: str,
    priority: int,
    *,
    queue: str | None,
    delay_seconds: float | None,
    scheduled_at: datetime.datetime | None,
    max_retries: int | None,
    timeout_seconds: float | None,
    backoff_min_seconds: float | None,
    backoff_max_seconds: float | None,
    backoff_multiplier: float | None,
    retry_on: list[int] | None,
    permanent_on: list[int] | None,
) -> NewTask:
    """Gather ``create``'s arguments into a :class:`NewTask` (shared by both clients)."""
    return NewTask(
        task_data=task_data,
        callback_url=callback_url,
        priority=priority,
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
