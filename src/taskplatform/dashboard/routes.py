"""The dashboard's pages and form actions, all under ``/dashboard``.

Pages (GET): the overview (counts per status, the queues, queue depth over the last hour), the
task table (filters, cursor pagination) and one task (data, result, attempt log, actions).
Actions (POST): execute, re-drive and cancel a task, dequeue the next task of a queue, log in and
out. Every action answers with a redirect back to a page that shows its outcome (a one-shot
flash cookie), so reloading never repeats it; a service error becomes a readable message, never
a 500.

Access: :class:`~taskplatform.api.security.SecurityMiddleware` guards every path here except
the login form and the static files. Cross-site request forgery: the session cookie is
SameSite=Strict, and every POST must carry an ``Origin`` (or, lacking one, a ``Referer``) of
this very server, which a page of another origin cannot forge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response

from taskplatform.api.security import (
    DASHBOARD_COOKIE,
    DASHBOARD_SESSION_SECONDS,
    dashboard_session,
)
from taskplatform.dashboard.chart import depth_chart
from taskplatform.exceptions import TaskNotFound, TaskPlatformError
from taskplatform.models import Status, TaskRecord, format_time, now_ms
from taskplatform.service import ExecuteOutcome, TaskService
from taskplatform.validation import QUEUE_PATTERN, TASK_ID_PATTERN, canonical_task_id

router = APIRouter(prefix="/dashboard", include_in_schema=False)

PAGE_SIZE = 25
"""Rows per page of the task table."""
REFRESH_SECONDS = 5
"""How often an open page re-fetches its live region."""
CHART_WINDOW_MS = 3_600_000
"""The depth chart's span: the last hour."""
SESSION_SECONDS = DASHBOARD_SESSION_SECONDS
"""How long a dashboard login lasts (the cookie's Max-Age; the server checks the expiry too)."""
EXECUTE_WAIT_SECONDS = 10.0
"""How long Execute waits for the callback's outcome before answering "still running" (a task
may allow its callback up to an hour); the live page shows the outcome when it comes."""
_FLASH_COOKIE = "taskplatform_flash"
_SHOWN_BYTES = 64 * 1024  # a task's data may be 1 MiB; a page shows the start of it
_LOGIN_BODY_LIMIT = 8 * 1024
_TASK_ID = re.compile(TASK_ID_PATTERN)
# Executes that outlived EXECUTE_WAIT_SECONDS: referenced until done, so none is collected.
_running: set[asyncio.Future[ExecuteOutcome]] = set()
_QUEUE = re.compile(QUEUE_PATTERN)
_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
_ACTIONS = ("execute", "retry", "cancel")
# Which actions a task's status allows; the service still decides (a race answers a message).
_ACTIONS_BY_STATUS = {
    Status.QUEUED: ("cancel",),
    Status.DEQUEUED: ("execute", "cancel"),
    Status.RETRY: ("execute", "cancel"),
    Status.FAILED: ("execute", "retry", "cancel"),
}


def _when(ms: int | None) -> str:
    """Format epoch ms for people: ``2026-11-30 17:21:19.624 UTC``, or an em dash."""
    text = format_time(ms)
    return "—" if text is None else text.replace("T", " ").replace("Z", " UTC")


def _ago(ms: int | None) -> str:
    """Format how long ago epoch ms was: ``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``."""
    if ms is None:
        return ""
    seconds = (now_ms() - ms) / 1000
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            break
    else:
        amount = f"{int(seconds)} s"
    return f"in {amount}" if future else f"{amount} ago"


# A number _pretty marked, as json.dumps writes the marked string: "\u0000<marker><number>".
_MARKED_NUMBER = re.compile(r'"\\u0000([0-9a-f]{32})([-+.0-9eE]+)"')


def _pretty(raw: bytes | None) -> str | None:
    """Return JSON text indented for reading (the start of it, if long); other text as is.

    Each number with a fraction or an exponent is written as it was sent, not as the float it
    reads as: ``1e400`` would show as ``Infinity`` (no JSON), and 30 digits as 17 (taskData is
    kept exactly as sent, README). Such a number is read as a marked string, then unquoted.
    """
    if raw is None:
        return None
    marker = f"\x00{uuid.uuid4().hex}"  # no string of the value can hold it: \x00 is escaped
    marked = False

    def mark(number: str) -> str:
        nonlocal marked
        marked = True
        return marker + number

    try:
        text = json.dumps(json.loads(raw, parse_float=mark), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # a callback's result may nest deeper than Python's stack
        text = raw.decode("utf-8", "replace")
    else:
        if marked:
            text = _MARKED_NUMBER.sub(
                lambda found: found[2] if found[1] == marker[1:] else found[0], text
            )
    if len(text) > _SHOWN_BYTES:
        text = text[:_SHOWN_BYTES] + f"\n… ({len(text) - _SHOWN_BYTES} more characters not shown)"
    return text


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("taskplatform.dashboard", "templates"),
    autoescape=True,  # every value is escaped: taskData and results are whatever clients sent
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(when=_when, ago=_ago)
_templates.globals.update(refresh_seconds=REFRESH_SECONDS, statuses=list(Status))


def _service(request: Request) -> TaskService:
    service: TaskService = request.app.state.service
    return service


def _keys_enabled(request: Request) -> bool:
    return bool(_service(request).settings.api_key_list())


def _render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with ``context`` plus the pending flash message (shown once)."""
    flash = _read_flash(request)
    # A refresh of the live region fetches the page in the background: leave the flash alone.
    refreshing = request.headers.get("x-dashboard-refresh") == "1"
    html = _templates.get_template(template).render(
        request_path=request.url.path,
        flash=None if refreshing else flash,
        keys_enabled=_keys_enabled(request),
        **context,
    )
    response = HTMLResponse(html, status, headers={"cache-control": "no-store"})
    if flash is not None and not refreshing:
        response.delete_cookie(_FLASH_COOKIE, path="/dashboard")
    return response


def _error_page(request: Request, exc: TaskPlatformError) -> HTMLResponse:
    return _render(
        request, "error.html", status=exc.status_code, title=exc.title, detail=exc.detail
    )


def _read_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(_FLASH_COOKIE)
    if not raw:
        return None
    try:
        flash = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, binascii.Error, RecursionError):  # a cookie is anyone's to forge
        return None
    if not isinstance(flash, dict) or not isinstance(text := flash.get("text"), str):
        return None
    try:
        text.encode()  # JSON can spell a lone surrogate, which no page can hold
    except UnicodeEncodeError:
        return None
    return {"kind": "error" if flash.get("kind") == "error" else "ok", "text": text}


def _redirect(request: Request, url: str, text: str, *, error: bool = False) -> Response:
    """Answer 303 to ``url``, with a one-shot message for the page it leads to."""
    response = RedirectResponse(url, status_code=303, headers={"cache-control": "no-store"})
    payload = json.dumps({"kind": "error" if error else "ok", "text": text[:500]})
    response.set_cookie(
        _FLASH_COOKIE,
        base64.urlsafe_b64encode(payload.encode()).decode(),
        max_age=60,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def same_origin(request: Request) -> bool:
    """Return whether a POST came from a page of this server (the CSRF check).

    Browsers send ``Origin`` on every POST; lacking it, ``Referer`` must be of this origin.
    A request with neither is refused: the dashboard is for browsers, which always send one.

    Args:
        request: The POST; its own origin is its scheme and ``Host`` header.

    Returns:
        True when ``Origin`` (or ``Referer``) is this server's origin.
    """
    host = request.headers.get("host")
    if not host:
        return False
    own = f"{request.url.scheme}://{host}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    return referer is not None and (referer == own or referer.startswith(own + "/"))


def _forged(request: Request) -> HTMLResponse:
    return _render(
        request,
        "error.html",
        status=403,
        title="Refused",
        detail="This form was not sent from this dashboard (cross-origin request); "
        "open the dashboard and try again there.",
    )


# -- pages ----------------------------------------------------------------------------------------


@router.get("/")
async def overview_with_a_slash() -> Response:
    """``/dashboard/`` is the overview too: a permanent redirect (308) to ``/dashboard``."""
    return RedirectResponse("/dashboard", status_code=308)


@router.get("")
async def overview(request: Request) -> Response:
    """Render the overview: tasks per status, the queues, and queue depth over the last hour."""
    service = _service(request)
    try:
        counts, depth = await service.stats()
        queues = await service.queues()
        times, depths = await service.depth_history(seconds=CHART_WINDOW_MS / 1000)
        recent, _ = await service.list_tasks(status=None, cursor=None, limit=10)
    except TaskPlatformError as exc:
        return _error_page(request, exc)
    now = now_ms()
    chart = depth_chart(times, depths, now=now, window_ms=CHART_WINDOW_MS)
    # A second layout for phones: the same viewBox scaled to 390 px would shrink its text.
    narrow = depth_chart(times, depths, now=now, window_ms=CHART_WINDOW_MS, width=400, height=240)
    return _render(
        request,
        "overview.html",
        counts=counts,
        total=sum(counts.values()),
        depth=depth,
        queues=queues,
        chart=chart,
        narrow_chart=narrow,
        sample_seconds=service.settings.queue_depth_sample_seconds,
        recent=recent,
    )


@router.get("/tasks")
async def task_table(request: Request) -> Response:
    """Render a page of tasks, newest first, filtered by ``status`` and ``queue``.

    Query parameters (all optional): ``status`` (a status name), ``queue`` (a queue name),
    ``cursor`` (the id after which the page starts, from the previous page's link). A bad value
    is answered with a 400 page that says which, not applied.
    """
    service = _service(request)
    params = request.query_params
    status_name = params.get("status") or None
    queue = params.get("queue") or None
    cursor = params.get("cursor") or None
    problems = []
    status = None
    if status_name is not None:
        try:
            status = Status(status_name)
        except ValueError:
            problems.append(f"status {status_name[:40]!r} is not one of the statuses")
    if queue is not None and _QUEUE.fullmatch(queue) is None:
        problems.append("queue names are 1 to 64 letters, digits, '_', '.' or '-'")
    if cursor is not None and _TASK_ID.fullmatch(cursor) is None:
        problems.append("the page cursor is not a task id")
    try:
        queue_names = [view.name for view in await service.queues()]
        if problems:
            tasks: list[TaskRecord] = []
            next_cursor = None
        else:
            tasks, next_cursor = await service.list_tasks(
                status=status, cursor=cursor, limit=PAGE_SIZE, queue=queue
            )
    except TaskPlatformError as exc:
        return _error_page(request, exc)
    filters = {"status": status_name or "", "queue": queue or ""}
    next_url = None
    if next_cursor is not None:
        query = "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
        next_url = f"/dashboard/tasks?{query + '&' if query else ''}cursor={next_cursor}"
    first_url = "/dashboard/tasks" + (
        "?" + "&".join(f"{k}={quote(v)}" for k, v in filters.items() if v)
        if any(filters.values())
        else ""
    )
    return _render(
        request,
        "tasks.html",
        status=400 if problems else 200,
        tasks=tasks,
        filters=filters,
        queue_names=queue_names,
        problems=problems,
        paged=cursor is not None,
        next_url=next_url,
        first_url=first_url,
    )


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: str) -> Response:
    """Render one task: status, timestamps, data, result, the attempt log and its actions.

    An id that no task has (or that is not an id) answers a 404 page.
    """
    service = _service(request)
    try:
        task_id = canonical_task_id(task_id)
        task = await service.get(task_id)
        executions = await service.executions(task_id)
    except TaskPlatformError as exc:
        return _error_page(request, exc)
    attempts_allowed = task.max_retries + 1
    actions = [
        action
        for action in _ACTIONS_BY_STATUS.get(task.status, ())
        if action != "execute" or task.status is not Status.FAILED or task.attempts_left()
    ]
    return _render(
        request,
        "task.html",
        task=task,
        task_data=_pretty(task.task_data),
        result=_pretty(task.result),
        executions=[(execution, _pretty(execution.result)) for execution in executions],
        attempts_allowed=attempts_allowed,
        actions=actions,
    )


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """Serve the dashboard's stylesheet or script.

    Raises:
        HTTPException: 404 for any other name, answered as every unknown path is (a problem
            document, ``not_found``).
    """
    media_type = _STATIC.get(name)
    if media_type is None:
        raise HTTPException(404)
    body = resources.files("taskplatform.dashboard").joinpath("static", name).read_bytes()
    # Revalidated on each load (no build step stamps versions into the names).
    return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})


# -- actions --------------------------------------------------------------------------------------


@router.post("/tasks/{task_id}/{action}")
async def task_action(request: Request, task_id: str, action: str) -> Response:
    """Execute, re-drive (``retry``) or cancel the task, then go back to its page.

    The outcome (the new status, or why the service refused) is shown there as a message.
    """
    if not same_origin(request):
        return _forged(request)
    try:
        task_id = canonical_task_id(task_id)
    except TaskNotFound as exc:
        return _error_page(request, exc)
    if action not in _ACTIONS:
        return _error_page(request, TaskNotFound(f"no task has the id {task_id[:80]!r}"))
    page = f"/dashboard/tasks/{task_id}"
    service = _service(request)
    try:
        if action == "execute":
            call = asyncio.ensure_future(service.execute(task_id))
            done, _ = await asyncio.wait({call}, timeout=EXECUTE_WAIT_SECONDS)
            if not done:
                _running.add(call)
                call.add_done_callback(_settled)
                return _redirect(
                    request,
                    page,
                    "Executing: the callback is still running; this page "
                    "shows the outcome when it ends",
                )
            outcome = call.result()
            text = f"Executed: attempt {outcome.attempt} ended {outcome.status.value}"
            if outcome.error:
                text += f" ({outcome.error})"
        elif action == "retry":
            task = await service.redrive(task_id)
            text = f"Re-driven: the task is {task.status.value} again, with fresh attempts"
        else:
            task = await service.cancel(task_id)
            text = f"Cancelled: the task is {task.status.value}"
    except TaskPlatformError as exc:
        return _redirect(request, page, f"{exc.title}: {exc.detail}", error=True)
    return _redirect(request, page, text)


def _settled(call: asyncio.Future[ExecuteOutcome]) -> None:
    """Forget a finished background execute; its outcome is on the task (errors included)."""
    _running.discard(call)
    if not call.cancelled():
        call.exception()  # retrieved: a refusal after the wait is no "never retrieved" warning


@router.post("/queues/{queue}/dequeue")
async def dequeue(request: Request, queue: str) -> Response:
    """Dequeue the next task of ``queue`` and open its page (or say why there is none)."""
    if not same_origin(request):
        return _forged(request)
    if _QUEUE.fullmatch(queue) is None:
        return _redirect(request, "/dashboard", "No such queue", error=True)
    try:
        task = await _service(request).dequeue(0, queue)
    except TaskPlatformError as exc:
        return _redirect(request, "/dashboard", f"{exc.title}: {exc.detail}", error=True)
    return _redirect(request, f"/dashboard/tasks/{task.task_id}", "Dequeued: ready to execute")


@router.get("/login")
async def login_form(request: Request) -> Response:
    """Render the login form (or go to the dashboard when no API keys are configured)."""
    if not _keys_enabled(request):
        return RedirectResponse("/dashboard", status_code=303)
    return _render(request, "login.html", next=_next(request.query_params.get("next")), error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the API key sent by the login form and set the session cookie.

    Form fields: ``key`` (an API key), ``next`` (the dashboard page to go to). A wrong key
    answers the form again with 401. The cookie is HttpOnly, SameSite=Strict, Path=/dashboard,
    and Secure when the request came over https.
    """
    if not same_origin(request):
        return _forged(request)
    fields = await _form(request)
    target = _next(fields.get("next"))
    keys = _service(request).settings.api_key_list()
    if not keys:
        return RedirectResponse("/dashboard", status_code=303)
    presented = hashlib.sha256(fields.get("key", "").strip().encode()).digest()
    matched = None
    for key in keys:  # no early exit: constant time, as the Bearer check
        if hmac.compare_digest(presented, hashlib.sha256(key.encode()).digest()):
            matched = key
    if matched is None:
        return _render(
            request, "login.html", status=401, next=target, error="That is not a valid API key."
        )
    response = RedirectResponse(target, status_code=303, headers={"cache-control": "no-store"})
    response.set_cookie(
        DASHBOARD_COOKIE,
        dashboard_session(matched),
        max_age=SESSION_SECONDS,
        path="/dashboard",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie and show the login form."""
    if not same_origin(request):
        return _forged(request)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(DASHBOARD_COOKIE, path="/dashboard")
    return response


def _next(value: str | None) -> str:
    """Return ``value`` if it is a dashboard path (never another site), else ``/dashboard``."""
    if value and (value == "/dashboard" or value.startswith(("/dashboard/", "/dashboard?"))):
        return value
    return "/dashboard"


async def _form(request: Request) -> dict[str, str]:
    """Read a small urlencoded form body (the login form); a larger one reads as empty."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_BODY_LIMIT:
            return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}
