"""The fast path of the four hot routes: create, dequeue, get and execute without FastAPI's stack.

Why it exists: profiling create under load (``bench/run.py``, py-spy) put about 40 % of the API
process's CPU in FastAPI's middleware, router and dependency solving, twice what the handler and
the store together cost, and create is held to half the rate of a bare ASGI handler. So the app
matches these four routes first and calls the very same handlers (``api.tasks``) behind the very
same :class:`~taskplatform.api.security.SecurityMiddleware`, answering errors with the same
problem documents (``problems.exception_response``). Whatever it does not match exactly falls
through to FastAPI, which stays the one description of the API (routes, OpenAPI, validation):
another method or path, any query string (a dequeue's to validate, another route's to refuse:
``tasks.refuse_unknown_query``), a task id that is not a canonical UUID, an ``Idempotency-Key``
outside its pattern. So the fast path never has to say no to anything FastAPI would have said
yes to, and never answers differently.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from taskplatform.api import tasks
from taskplatform.api.problems import NO_HEAD_PATHS, exception_response
from taskplatform.api.security import SecurityMiddleware
from taskplatform.models import DEFAULT_QUEUE
from taskplatform.settings import Settings
from taskplatform.validation import IDEMPOTENCY_KEY_PATTERN, TASK_ID_PATTERN

Endpoint = Callable[[Request], Awaitable[Response]]

# The routes' own patterns, so that the fast path never takes what FastAPI would refuse.
_TASK_PATH = re.compile(rf"/api/tasks/({TASK_ID_PATTERN.strip('^$')})(/execute)?\Z")
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN.encode())  # with fullmatch: no "\n" slips


def _idempotency_key(scope: Scope) -> tuple[bool, str | None]:
    """(whether the fast path may serve it, the key): one key matching the pattern, or none."""
    key: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            if key is not None or not _IDEMPOTENCY_KEY.fullmatch(value):
                return False, None
            key = value
    return True, None if key is None else key.decode("ascii")


def match(scope: Scope) -> Endpoint | None:
    """Return the endpoint that serves this HTTP request on the fast path, or None.

    None for a request with a query string, and for anything but ``POST /api/tasks``,
    ``GET|POST /api/tasks/dequeue``, ``GET /api/tasks/{id}`` and ``POST /api/tasks/{id}/execute``
    with a canonical lowercase UUID, as the module docstring explains.
    """
    if scope["query_string"]:
        return None
    method: str = scope["method"]
    path: str = scope["path"]
    if path == "/api/tasks":
        if method != "POST":
            return None
        ok, key = _idempotency_key(scope)
        if not ok:
            return None
        return lambda request: tasks.create_task(request, idempotency_key=key)
    if path == "/api/tasks/dequeue":
        if method not in ("GET", "POST"):
            return None
        return lambda request: tasks.dequeue_task(request, 0, DEFAULT_QUEUE)
    found = _TASK_PATH.match(path)
    if found is None:
        return None
    task_id = found[1]
    if found[2] is None:
        return (lambda request: tasks.get_task(request, task_id)) if method == "GET" else None
    return (lambda request: tasks.execute_task(request, task_id)) if method == "POST" else None


class TaskPlatformAPI(FastAPI):
    """FastAPI with the fast path of :func:`match` in front (see the module docstring).

    Call :meth:`install_security` once the routes are set up; before that, and for every request
    the fast path does not take, it is FastAPI unchanged.
    """

    _fast: SecurityMiddleware | None = None

    def install_security(self, settings: Settings) -> None:
        """Put a :class:`SecurityMiddleware` for ``settings`` in front of every route, and serve
        the hot routes on the fast path behind one sharing its rate-limit buckets."""
        self._fast = SecurityMiddleware(self._serve_fast, settings=settings)
        self.add_middleware(SecurityMiddleware, settings=settings, limiter=self._fast.limiter)

    async def _serve_fast(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = scope.pop("taskplatform.endpoint")
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await exception_response(request, exc)
        await response(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's lifespan, quiet when the process ends without a shutdown.

        After a second SIGINT uvicorn skips the lifespan's shutdown, and the event loop's
        teardown cancels the lifespan where it waits. The lifespan's own cleanup still runs
        (``api.app``); but Starlette reports the cancellation as ``lifespan.shutdown.failed``
        with its traceback, which uvicorn logs as an ERROR although nothing failed. That one
        report, and the cancellation after it, end here.
        """
        torn_down = False

        async def send_unless_torn_down(message: Message) -> None:
            nonlocal torn_down
            task = asyncio.current_task()
            if message["type"] == "lifespan.shutdown.failed" and task and task.cancelling():
                torn_down = True
                return
            await send(message)

        try:
            await super().__call__(scope, receive, send_unless_torn_down)
        except asyncio.CancelledError:
            if not torn_down:
                raise

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "HEAD"
            and scope["path"] not in NO_HEAD_PATHS
        ):
            # HEAD is GET without the body (RFC 9110, section 9.3.2), which uptime probes use.
            # The routes see a GET in a copy of the scope; uvicorn keeps its own, sees HEAD
            # there and sends the headers only, Content-Length included.
            scope = {**scope, "method": "GET"}
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if self._fast is not None and scope["type"] == "http":
            endpoint = match(scope)
            if endpoint is not None:
                scope["app"] = self  # what Starlette sets: handlers find app.state through it
                scope["taskplatform.endpoint"] = endpoint
                await self._fast(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
