"""Routes of the task resource: create, dequeue, execute, get, list, executions, stats.

The hot routes (create, dequeue, get, execute) take the raw request and answer with bytes encoded
by msgspec, skipping FastAPI's body parsing and response validation; their OpenAPI entries are
declared by hand from the same wire types (``api.openapi``).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from taskplatform.api.openapi import (
    CREATE_ERRORS,
    EXAMPLES,
    EXECUTE_ERRORS,
    BackendUnavailable,
    QueueEmpty,
    TaskNotFound,
    ValidationFailed,
    json_body,
    method_not_allowed,
    problems,
    request_body,
)
from taskplatform.api.problems import problem_of
from taskplatform.exceptions import (
    MalformedJSON,
    PayloadTooLarge,
    QueuePaused,
    RequestError,
    TaskCompleted,
    TaskNotFailed,
    TaskProcessing,
    UnsupportedMediaType,
)
from taskplatform.exceptions import ValidationFailed as ValidationFailedError
from taskplatform.models import (
    DEFAULT_QUEUE,
    BatchCreate,
    BatchItem,
    BatchResult,
    BatchTaskCreate,
    ExecuteAccepted,
    ExecuteResult,
    ExecutionList,
    ExecutionView,
    QueueList,
    QueueView,
    RedriveFilter,
    RedriveResult,
    Stats,
    Status,
    TaskCreate,
    TaskCreated,
    TaskList,
    TaskView,
)
from taskplatform.service import TaskService
from taskplatform.validation import (
    IDEMPOTENCY_KEY_PATTERN,
    QUEUE_PATTERN,
    TASK_ID_PATTERN,
    canonical_task_id,
    check_json_depth,
    check_task_limits,
    parse_batch,
    parse_redrive_filter,
    parse_task_create,
    query_integer,
    query_number,
)


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route defines, by the name a client sends (the alias)."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """Refuse a query parameter the route does not define: a 422 naming it, as an unknown body
    field is refused, before the route does anything.

    Why: a parameter misspelt on a dequeue (``?quue=emails``) would otherwise be ignored, and a
    task taken from the default queue; on a create, ``?priority=5`` would be a task of priority
    0. The routes of the API (not the dashboard's pages, not ``/metrics``) have it as a router
    dependency; the fast path (``api.hotpath``) takes no request with a query string it does
    not read, so every such request comes here.

    Raises:
        ValidationFailed: with ``query.<name>`` for each unknown parameter.
    """
    if not request.query_params:  # the usual case: nothing to look up
        return
    known = _query_names(request.scope["route"].dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ValidationFailedError(
            [
                (f"query.{name}", f"unknown query parameter (this route takes: {takes})")
                for name in unknown
            ]
        )


# Every route of the API may answer 422 for a query parameter it does not take.
_API_ROUTES: dict[str, Any] = {
    "dependencies": [Depends(refuse_unknown_query)],
    "responses": problems(ValidationFailed),
}
router = APIRouter(prefix="/api/tasks", tags=["tasks"], **_API_ROUTES)
_encode = msgspec.json.Encoder().encode
_JSON = "application/json"
IDEMPOTENCY_KEY_FIELD = "header.Idempotency-Key"
"""How an error names the header: as FastAPI's own validation does (``header.<alias>``), as an
unknown query parameter is ``query.<name>`` and a body field ``$.<path>``."""
TaskId = Annotated[str, Path(alias="taskId", description="The id create returned.")]
QueueQuery = Annotated[
    str, Query(pattern=QUEUE_PATTERN, description="The named queue to take from.")
]


def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


def _json(
    body: msgspec.Struct, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encode(body), status, headers=headers, media_type=_JSON)


_UTF8 = ("utf-8", "utf8")


def _check_json_media_type(request: Request) -> None:
    content_types = request.headers.getlist("content-type")
    if len(content_types) != 1:
        raise UnsupportedMediaType("send exactly one Content-Type header: application/json")
    media_type, *parameters = (part.strip().lower() for part in content_types[0].split(";"))
    is_json = media_type == _JSON or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if not is_json:
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    for parameter in parameters:
        name, equals, value = parameter.partition("=")
        # Only a charset that is given and is not UTF-8 is refused; a parameter that is not
        # name=value ("; charset", ";;") carries nothing to act on (RFC 9110, section 5.6.6).
        if name.strip() == "charset" and equals and value.strip().strip('"') not in _UTF8:
            raise UnsupportedMediaType("JSON bodies must be UTF-8 (RFC 8259)")


async def read_json_body(request: Request, limit: int) -> bytes:
    """Return the request body after checking its media type and size.

    Raises:
        UnsupportedMediaType: the Content-Type is not JSON, or names a charset other than UTF-8.
        PayloadTooLarge: the body is over ``limit`` bytes (checked while reading, so a client
            cannot make the server buffer more than that).
    """
    _check_json_media_type(request)
    for coding in request.headers.getlist("content-encoding"):
        if coding.strip().lower() not in ("", "identity"):
            # RFC 9110 §15.5.16: 415 for a content coding the server does not take.
            raise UnsupportedMediaType("send the body uncompressed, with no Content-Encoding")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "",
    summary="Create a task (enqueue)",
    status_code=201,
    response_class=Response,
    openapi_extra=request_body(
        TaskCreate,
        {"taskData": {"orderId": 42}, "callbackUrl": "http://127.0.0.1:9000/", "priority": 5},
    ),
    responses={
        201: json_body(
            TaskCreated,
            "Queued; `Location` names the new task.",
            headers={"Location": "The new task's path, `/api/tasks/{taskId}`."},
        ),
        200: json_body(
            TaskCreated,
            "A repeat of an `Idempotency-Key` with the same body: the first task, as it is now "
            "(header `Idempotent-Replayed: true`).",
            headers={
                "Location": "The task's path, `/api/tasks/{taskId}`.",
                "Idempotent-Replayed": "`true`: this answer is a replay, no task was made.",
            },
        ),
        **problems(*CREATE_ERRORS, BackendUnavailable),
    },
)
async def create_task(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description=(
                "Makes retries safe: a repeat with the same key and body within 24 hours returns "
                "the first task (200) instead of creating another; another body is 422."
            ),
        ),
    ] = None,
) -> Response:
    """Put a task into the queue and return its id (seed FR-001)."""
    service = _service(request)
    settings = service.settings
    body = await read_json_body(request, settings.max_body_bytes)
    create = parse_task_create(
        body, max_depth=settings.max_json_depth, max_url_length=settings.max_callback_url_length
    )
    check_task_limits(
        create,
        max_timeout_seconds=settings.max_timeout_seconds,
        max_retries=settings.max_retries_ceiling,
    )
    if len(request.headers.getlist("idempotency-key")) > 1:
        # Two headers mean two keys (RFC 9110 §5.3), as one folded header does: say so.
        raise ValidationFailedError([(IDEMPOTENCY_KEY_FIELD, "send one Idempotency-Key header")])
    key = idempotency_key  # checked against the pattern by FastAPI: 1..255 visible ASCII
    task, replayed = await service.create(
        create,
        idempotency_key=key,
        request_hash=hashlib.sha256(body).hexdigest() if key is not None else None,
    )
    headers = {"Location": f"/api/tasks/{task.task_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(TaskCreated(task.task_id, task.status), 200 if replayed else 201, headers)


_DEQUEUE_RESPONSES = {
    200: json_body(TaskView, "The task, now Dequeued and stored in the database."),
    **problems(QueueEmpty, QueuePaused, ValidationFailed, BackendUnavailable),
}


# Both methods, as API.md allows GET and POST; one operation id each for OpenAPI.
@router.get(
    "/dequeue",
    summary="Take the next task out of the queue",
    response_class=Response,
    responses=_DEQUEUE_RESPONSES,
    operation_id="dequeue_task_get",
)
@router.post(
    "/dequeue",
    summary="Take the next task out of the queue",
    response_class=Response,
    responses=_DEQUEUE_RESPONSES,
    operation_id="dequeue_task",
)
async def dequeue_task(
    request: Request,
    wait_seconds: Annotated[
        float,
        BeforeValidator(query_number),
        Query(
            alias="waitSeconds",
            ge=0,
            le=20,
            description="Long poll: wait up to this many seconds for a task if the queue is empty.",
        ),
    ] = 0,
    queue: QueueQuery = DEFAULT_QUEUE,
) -> Response:
    """Take the highest-priority task (FIFO within a priority) into the database (FR-002)."""
    service = _service(request)
    if wait_seconds <= 0:
        task = await service.dequeue(0, queue)
    else:
        # A long poll outlives many clients' and proxies' timeouts: when the client hangs up,
        # stop waiting, or a task arriving later would be taken for nobody and sit Dequeued
        # until its lease ran out.
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_for_disconnect(request, gone))
        try:
            task = await service.dequeue(wait_seconds, queue, client_gone=gone)
        finally:
            watcher.cancel()
    return _json(TaskView.of(task))


async def _watch_for_disconnect(request: Request, gone: asyncio.Event) -> None:
    """Set ``gone`` once the ASGI server reports the client's connection closed."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the request's body, which a dequeue does not read
    gone.set()


@router.get(
    "",
    summary="List tasks, newest first",
    response_class=Response,
    responses={
        200: json_body(TaskList, "A page of tasks."),
        **problems(ValidationFailed, BackendUnavailable),
    },
)
async def list_tasks(
    request: Request,
    status: Annotated[Status | None, Query(description="Only tasks in this status.")] = None,
    limit: Annotated[
        int, BeforeValidator(query_integer), Query(ge=1, le=200, description="Page size.")
    ] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=TASK_ID_PATTERN, description="`nextCursor` of the previous page."),
    ] = None,
    queue: Annotated[
        str | None,
        Query(pattern=QUEUE_PATTERN, description="Only tasks of this named queue."),
    ] = None,
    dead_letter: Annotated[
        bool | None,
        Query(
            alias="deadLetter",
            description="Only dead letters (true: Failed for good) or only others (false).",
        ),
    ] = None,
) -> Response:
    """List tasks in any status, newest first, a page at a time."""
    tasks, next_cursor = await _service(request).list_tasks(
        status=status, cursor=cursor, limit=limit, queue=queue, dead_letter=dead_letter
    )
    return _json(TaskList([TaskView.of(task) for task in tasks], next_cursor))


@router.post(
    "/batch",
    summary="Create up to 1,000 tasks in one request",
    response_class=Response,
    openapi_extra=request_body(
        BatchCreate,
        {"tasks": [{"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9000/"}]},
    ),
    responses={
        200: json_body(BatchResult, "Per task, in order: its id, or the problem with it."),
        **problems(*CREATE_ERRORS, BackendUnavailable),
    },
)
async def create_batch(request: Request) -> Response:
    """Create many tasks: each item is checked on its own, with the limits of a single create,
    and each item's result says what became of it. An item may carry its own
    ``idempotencyKey`` (a resend gives its task back, ``replayed``); the keyed items are written
    first, each with its key, then the valid items without one in one transaction, so a batch
    resent after a 503 makes each keyed task once. The ``Idempotency-Key`` header is refused
    here rather than ignored."""
    service = _service(request)
    settings = service.settings
    if "idempotency-key" in request.headers:
        raise ValidationFailedError(
            [
                (
                    IDEMPOTENCY_KEY_FIELD,
                    "not supported on a batch; give each item its own idempotencyKey instead",
                )
            ]
        )
    body = await read_json_body(request, settings.max_batch_body_bytes)
    too_deep = ValidationFailedError(
        [("$.tasks", f"an item is nested deeper than {settings.max_json_depth} levels")]
    )
    # Parsed first: brackets are counted in JSON text only, as a body cut short never pairs
    # its brackets off and would be blamed on nesting instead of being 400 malformed_json.
    batch = parse_batch(body, too_deep)
    try:
        check_json_depth(body, settings.max_json_depth + 2)  # {"tasks": [ ... ]} adds two
    except ValidationFailedError as exc:
        raise too_deep from exc
    parsed: list[BatchTaskCreate | RequestError] = []
    hashes: list[str | None] = []
    for raw in batch.tasks:
        item = bytes(raw)
        try:
            if len(item) > settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"the task is over the limit of {settings.max_body_bytes} bytes"
                )
            create = parse_task_create(
                item,
                max_depth=settings.max_json_depth,
                max_url_length=settings.max_callback_url_length,
                batch_item=True,
            )
            check_task_limits(
                create,
                max_timeout_seconds=settings.max_timeout_seconds,
                max_retries=settings.max_retries_ceiling,
            )
        except RequestError as exc:
            parsed.append(exc)
            hashes.append(None)
            continue
        parsed.append(create)
        # The item's exact bytes, as a single create hashes its body: a resend must be the same.
        hashes.append(None if create.idempotency_key is None else hashlib.sha256(item).hexdigest())
    results = await service.create_many(parsed, hashes)
    items = [
        BatchItem(index=index, error=problem_of(result))
        if isinstance(result, RequestError)
        else BatchItem(
            index=index, task_id=result[0].task_id, status=result[0].status, replayed=result[1]
        )
        for index, result in enumerate(results)
    ]
    return _json(BatchResult(items))


@router.post(
    "/retry",
    summary="Re-drive dead letters in bulk",
    response_class=Response,
    openapi_extra=request_body(RedriveFilter, {"queue": "default", "limit": 100}),
    responses={
        200: json_body(RedriveResult, "The dead letters sent back to their queues."),
        **problems(
            MalformedJSON,
            ValidationFailed,
            PayloadTooLarge,
            UnsupportedMediaType,
            BackendUnavailable,
        ),
    },
)
async def redrive_dead_letters(request: Request) -> Response:
    """Send dead letters (of one queue, or all) back to their queues with fresh attempts."""
    service = _service(request)
    no_body = request.headers.get("content-length", "0") == "0" and not request.headers.get(
        "transfer-encoding"
    )
    body = b"" if no_body else await read_json_body(request, 4096)
    selection = parse_redrive_filter(body or b"{}")
    retried = await service.redrive_dead_letters(queue=selection.queue, limit=selection.limit)
    return _json(RedriveResult(len(retried), retried))


@router.get(
    "/{taskId}",
    summary="Get a task",
    response_class=Response,
    responses={
        200: json_body(TaskView, "The task."),
        **problems(TaskNotFound, BackendUnavailable),
        405: method_not_allowed(
            "Here `taskId` names a route that takes no GET (`batch`, `retry`: POST only), "
            "not a task.",
            "GET is not allowed here; use POST",
            "POST",
        ),
    },
)
async def get_task(request: Request, task_id: TaskId) -> Response:
    """Tell where a task stands, in any status, Queued included (FR-010)."""
    if f"{router.prefix}/{task_id}" in request.app.state.static_path_methods:
        # GET /api/tasks/batch is a wrong method for the batch route (RFC 9110, section
        # 15.5.6), not a look-up of a task whose id is "batch"; the handler names the methods.
        raise StarletteHTTPException(405)
    task_id = canonical_task_id(task_id)
    return _json(TaskView.of(await _service(request).get(task_id)))


def _prefers_async(request: Request) -> bool:
    # RFC 7240: "Prefer: respond-async" may share the header with other preferences.
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


@router.post(
    "/{taskId}/execute",
    summary="Execute a task: call its callbackUrl",
    response_class=Response,
    responses={
        200: json_body(ExecuteResult, "The attempt's outcome; a failed callback is `Failed`."),
        202: json_body(
            ExecuteAccepted,
            "With `Prefer: respond-async`: the callback runs.",
            headers={
                "Preference-Applied": "`respond-async` (RFC 7240).",
                "Location": "The task's path, to read its outcome from.",
            },
        ),
        **problems(*EXECUTE_ERRORS),
    },
)
async def execute_task(request: Request, task_id: TaskId) -> Response:
    """Call the task's callbackUrl and record the attempt (FR-003, FR-006, FR-007)."""
    task_id = canonical_task_id(task_id)
    service = _service(request)
    if _prefers_async(request):
        task = await service.execute_in_background(task_id)
        return _json(
            ExecuteAccepted(task.task_id, task.status),
            202,
            headers={"Preference-Applied": "respond-async", "Location": f"/api/tasks/{task_id}"},
        )
    outcome = await service.execute(task_id)
    return _json(
        ExecuteResult(
            task_id=outcome.task_id,
            status=outcome.status,
            result=None if outcome.result is None else msgspec.Raw(outcome.result),
            error=outcome.error,
            attempt=outcome.attempt,
        )
    )


@router.post(
    "/{taskId}/cancel",
    summary="Cancel a task",
    response_class=Response,
    responses={
        200: json_body(
            TaskView,
            "The task, Cancelled (also when it was already).",
            EXAMPLES[TaskView] | {"status": "Cancelled"},
        ),
        **problems(TaskNotFound, TaskProcessing, TaskCompleted, BackendUnavailable),
    },
)
async def cancel_task(request: Request, task_id: TaskId) -> Response:
    """Cancel a Queued, Dequeued, Retry or Failed task: it is never called back."""
    task_id = canonical_task_id(task_id)
    return _json(TaskView.of(await _service(request).cancel(task_id)))


@router.post(
    "/{taskId}/retry",
    summary="Re-drive a Failed task",
    response_class=Response,
    responses={
        200: json_body(
            TaskView,
            "The task, Queued again with no attempts made.",
            EXAMPLES[TaskView]
            | {
                "status": "Queued",
                "dequeuedAt": None,
                "error": "re-driven after 4 attempts; last error: HTTP 503 Service Unavailable",
            },
        ),
        **problems(TaskNotFound, TaskNotFailed, BackendUnavailable),
    },
)
async def redrive_task(request: Request, task_id: TaskId) -> Response:
    """Send a Failed task (a dead letter, or one a caller gave up on) back to its queue."""
    task_id = canonical_task_id(task_id)
    return _json(TaskView.of(await _service(request).redrive(task_id)))


@router.get(
    "/{taskId}/executions",
    summary="The attempt log of a task",
    response_class=Response,
    responses={
        200: json_body(ExecutionList, "Attempts, oldest first."),
        **problems(TaskNotFound, BackendUnavailable),
    },
)
async def list_executions(request: Request, task_id: TaskId) -> Response:
    """Return every callback attempt of the task (the seed's TaskExecution entity)."""
    task_id = canonical_task_id(task_id)
    log = await _service(request).executions(task_id)
    return _json(ExecutionList(task_id, [ExecutionView.of(execution) for execution in log]))


stats_router = APIRouter(prefix="/api", tags=["stats"], **_API_ROUTES)
queues_router = APIRouter(prefix="/api/queues", tags=["queues"], **_API_ROUTES)
QueuePath = Annotated[str, Path(alias="name", pattern=QUEUE_PATTERN, description="A named queue.")]


@queues_router.get(
    "",
    summary="Every named queue with its depth, in-flight count, age and dispatch rate",
    response_class=Response,
    responses={200: json_body(QueueList, "The queues, by name."), **problems(BackendUnavailable)},
)
async def list_queues(request: Request) -> Response:
    """List the named queues: depth, callbacks in flight, oldest Queued age, attempts/s."""
    return _json(QueueList(await _service(request).queues()))


@queues_router.post(
    "/{name}/pause",
    summary="Pause a queue",
    response_class=Response,
    responses={
        200: json_body(QueueView, "The queue, paused.", EXAMPLES[QueueView] | {"paused": True}),
        **problems(ValidationFailed, BackendUnavailable),
    },
)
async def pause_queue(request: Request, name: QueuePath) -> Response:
    """Stop dispatch and dequeue from the queue (within 0.25 s everywhere); tasks stay."""
    service = _service(request)
    await service.set_paused(name, True)
    return _json(await service.queue_view(name))


@queues_router.post(
    "/{name}/resume",
    summary="Resume a paused queue",
    response_class=Response,
    responses={
        200: json_body(QueueView, "The queue, running."),
        **problems(ValidationFailed, BackendUnavailable),
    },
)
async def resume_queue(request: Request, name: QueuePath) -> Response:
    """Let dispatch and dequeue take from the queue again."""
    service = _service(request)
    await service.set_paused(name, False)
    return _json(await service.queue_view(name))


@stats_router.get(
    "/stats",
    summary="Tasks per status and queue depth",
    response_class=Response,
    responses={
        200: json_body(Stats, "Counts."),
        **problems(ValidationFailed, BackendUnavailable),
    },
)
async def stats(
    request: Request,
    queue: Annotated[
        str | None,
        Query(pattern=QUEUE_PATTERN, description="Only tasks of this named queue."),
    ] = None,
) -> Response:
    """Count tasks per status; ``queueDepth`` is the number of Queued tasks."""
    counts, depth = await _service(request).stats(queue)
    return _json(Stats({status.value: count for status, count in counts.items()}, depth))
