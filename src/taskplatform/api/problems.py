"""RFC 9457 problem details: every error response of the API, from one place."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import msgspec
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from taskplatform.exceptions import TaskPlatformError, ValidationFailed
from taskplatform.models import Problem, ProblemFieldError
from taskplatform.validation import PATTERN_RULES

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_encode = msgspec.json.Encoder().encode

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}

NO_HEAD_PATHS = frozenset({"/api/tasks/dequeue"})
"""Paths whose GET is not safe (a dequeue takes a task, FR-002), so HEAD, which RFC 9110
(section 9.3.2) makes a GET without the body, is refused there: it would take a task and drop
it. Every other GET route also answers HEAD (see ``hotpath.TaskPlatformAPI``)."""


def problem_type(code: str) -> str:
    """Return the problem ``type`` URI for ``code``, stable across releases."""
    return f"urn:taskplatform:problem:{code}"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: Sequence[tuple[str, str]] | None = None,
    task_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build an ``application/problem+json`` response (RFC 9457) with a stable ``code``."""
    body = Problem(
        type=problem_type(code),
        title=title,
        status=status,
        detail=detail,
        code=code,
        errors=[ProblemFieldError(field, message) for field, message in errors] if errors else None,
        task_id=task_id,
    )
    return Response(_encode(body), status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_of(exc: TaskPlatformError) -> Problem:
    """Return the problem body of a taskplatform error (for a batch item's ``error``)."""
    return Problem(
        type=problem_type(exc.code),
        title=exc.title,
        status=exc.status_code,
        detail=exc.detail,
        code=exc.code,
        errors=(
            [ProblemFieldError(field, message) for field, message in exc.errors]
            if isinstance(exc, ValidationFailed)
            else None
        ),
        task_id=exc.task_id,
    )


def error_response(exc: TaskPlatformError) -> Response:
    """Build the problem response of a taskplatform error, from its class attributes."""
    return problem_response(
        exc.status_code,
        exc.code,
        exc.title,
        exc.detail,
        errors=exc.errors if isinstance(exc, ValidationFailed) else None,
        task_id=exc.task_id,
    )


async def _on_platform_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TaskPlatformError)
    if exc.status_code >= 500:
        logger.warning("%s %s failed: %s", request.method, request.url.path, exc.detail)
    return error_response(exc)


async def _on_request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        (".".join(str(part) for part in error.get("loc", ())), _message(error))
        for error in exc.errors()
    ]
    return error_response(ValidationFailed(errors or [("$", "invalid request")]))


def _message(error: Mapping[str, Any]) -> str:
    """Pydantic's message for one error, or for a value that does not match a known pattern,
    what the pattern means (its regex says little to a client)."""
    if error.get("type") == "string_pattern_mismatch":
        rule = PATTERN_RULES.get(str(error.get("ctx", {}).get("pattern")))
        if rule is not None:
            return rule
    return str(error.get("msg", "invalid"))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = dict(exc.headers) if exc.headers else {}
    if status == 404:
        detail = f"no route matches {request.method} {request.url.path}"
    if status == 405:
        # Starlette names only the first route of the path; a path can have several (GET and
        # POST /api/tasks are two routes), so list the methods of all of them.
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"{request.method} is not allowed here; use {_one_of(allowed)}"
    return problem_response(
        status,
        _HTTP_CODES.get(status, phrase.lower().replace(" ", "_")),
        phrase[:1] + phrase[1:].lower(),  # sentence case, as every other problem's title
        detail,
        headers=headers or None,
    )


def _one_of(methods: list[str]) -> str:
    """``GET``, ``GET or POST``, ``GET, HEAD or POST``."""
    return (
        " or ".join(methods) if len(methods) < 3 else f"{', '.join(methods[:-1])} or {methods[-1]}"
    )


def _allowed_methods(request: Request) -> list[str]:
    scope = request.scope
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    static: dict[str, list[str]] = getattr(request.app.state, "static_path_methods", {})
    if path in static:
        # Its own routes' methods, not those of a parameter route that fits it too:
        # ``/api/tasks/batch`` is POST only, whatever ``GET /api/tasks/{taskId}`` would take.
        allowed = list(static[path])
    else:
        allowed = []
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            method_scope = {**scope, "method": method}
            routes = request.app.router.routes
            if any(route.matches(method_scope)[0] is Match.FULL for route in routes):
                allowed.append(method)
    if "GET" in allowed and "HEAD" not in allowed and path not in NO_HEAD_PATHS:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return allowed


def static_path_methods(routers: Iterable[APIRouter]) -> dict[str, list[str]]:
    """Map each path without parameters of ``routers`` to its routes' methods, sorted.

    The app keeps it as ``app.state.static_path_methods``, for the 405's ``Allow`` and for a
    parameter route to tell a request meant for another route (see ``tasks.get_task``).
    """
    methods: dict[str, set[str]] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and "{" not in route.path:
                methods.setdefault(route.path, set()).update(route.methods or ())
    return {path: sorted(names) for path, names in methods.items()}


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # The client hung up while sending its body: nothing was stored, nobody reads this answer.
    logger.debug("%s %s: client disconnected mid-request", request.method, request.url.path)
    return problem_response(400, "client_disconnected", "Client disconnected", "body incomplete")


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem_response(500, "internal_error", "Internal server error", "an unexpected error")


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` answer with problem+json."""
    app.add_exception_handler(TaskPlatformError, _on_platform_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(Exception, _on_unexpected)


async def exception_response(request: Request, exc: Exception) -> Response:
    """The problem response the handlers installed above give for ``exc``.

    For routes served without FastAPI's exception middleware (``api.hotpath``), so that an error
    answers the same on every path: a taskplatform error its own status and ``code``; a client
    that hung up mid-body 400 ``client_disconnected``; anything else 500 ``internal_error``,
    logged with its traceback.
    """
    if isinstance(exc, TaskPlatformError):
        return await _on_platform_error(request, exc)
    if isinstance(exc, ClientDisconnect):
        return await _on_client_disconnect(request, exc)
    return await _on_unexpected(request, exc)
