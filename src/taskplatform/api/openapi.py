"""OpenAPI pieces for routes whose bodies are msgspec structs rather than Pydantic models.

The hot routes parse and write JSON with msgspec (several times cheaper than FastAPI's default
path), so their schemas come from ``msgspec.json.schema_components`` and are merged into the
document FastAPI generates; ``/openapi.json`` stays complete.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from taskplatform import models
from taskplatform.api.problems import PROBLEM_MEDIA_TYPE, problem_type
from taskplatform.api.protocol import HEADERS_TIMEOUT, HEADERS_TOO_LARGE
from taskplatform.api.security import STATEFUL_GETS, needs_key
from taskplatform.exceptions import (
    BackendUnavailable,
    IdempotencyKeyReused,
    MalformedJSON,
    PayloadTooLarge,
    QueueEmpty,
    RetryLimitReached,
    ShuttingDown,
    TaskCancelled,
    TaskCompleted,
    TaskNotDequeued,
    TaskNotFound,
    TaskPlatformError,
    TaskProcessing,
    UnsupportedMediaType,
    ValidationFailed,
)

WIRE_TYPES: tuple[type[msgspec.Struct], ...] = (
    models.TaskCreate,
    models.TaskCreated,
    models.TaskView,
    models.TaskList,
    models.ExecuteResult,
    models.ExecuteAccepted,
    models.ExecutionList,
    models.Stats,
    models.Problem,
    models.BatchCreate,
    models.BatchTaskCreate,
    models.BatchResult,
    models.RedriveFilter,
    models.RedriveResult,
    models.QueueView,
    models.QueueList,
)
_REF = "#/components/schemas/{name}"


def ref(wire_type: type[msgspec.Struct]) -> dict[str, str]:
    """Return a JSON Schema reference to ``wire_type``'s component."""
    return {"$ref": _REF.format(name=wire_type.__name__)}


_TASK_ID = "01a22ee1-516f-7461-a649-60429638fb17"
_TASK: dict[str, Any] = {
    "taskId": _TASK_ID,
    "status": "Dequeued",
    "taskData": {"orderId": 1042, "action": "send-receipt"},
    "callbackUrl": "https://worker.example.com/hooks/receipt",
    "priority": 0,
    "maxRetries": 3,
    "timeoutSeconds": 30.0,
    "attempts": 0,
    "createdAt": "2026-11-30T11:35:25.123Z",
    "updatedAt": "2026-11-30T11:35:26.004Z",
    "dequeuedAt": "2026-11-30T11:35:26.004Z",
    "completedAt": None,
    "nextAttemptAt": None,
    "result": None,
    "error": None,
    "queue": "default",
    "scheduledAt": None,
    "deadLetter": False,
    "backoffMinSeconds": None,
    "backoffMaxSeconds": None,
    "backoffMultiplier": None,
    "retryOn": None,
    "permanentOn": None,
}
_QUEUE: dict[str, Any] = {
    "name": "default",
    "paused": False,
    "depth": 12,
    "inFlight": 3,
    "oldestQueuedAgeSeconds": 4.2,
    "dispatchRatePerSecond": 85.5,
}
EXAMPLES: dict[type[msgspec.Struct], Any] = {
    models.TaskCreated: {"taskId": _TASK_ID, "status": "Queued"},
    models.TaskView: _TASK,
    models.TaskList: {
        "items": [_TASK | {"status": "Completed", "attempts": 1, "result": {"sent": True}}],
        "nextCursor": _TASK_ID,
    },
    models.ExecuteResult: {
        "taskId": _TASK_ID,
        "status": "Completed",
        "result": {"sent": True},
        "error": None,
        "attempt": 1,
    },
    models.ExecuteAccepted: {"taskId": _TASK_ID, "status": "Processing"},
    models.ExecutionList: {
        "taskId": _TASK_ID,
        "items": [
            {
                "attempt": 1,
                "startedAt": "2026-11-30T11:35:27.010Z",
                "finishedAt": "2026-11-30T11:35:27.058Z",
                "durationMs": 48,
                "httpStatus": 503,
                "result": "busy",
                "error": "HTTP 503 Service Unavailable",
            },
            {
                "attempt": 2,
                "startedAt": "2026-11-30T11:35:29.100Z",
                "finishedAt": "2026-11-30T11:35:29.131Z",
                "durationMs": 31,
                "httpStatus": 200,
                "result": {"sent": True},
                "error": None,
            },
        ],
    },
    models.Stats: {
        "tasks": {
            "Queued": 12,
            "Dequeued": 1,
            "Processing": 3,
            "Completed": 950,
            "Failed": 4,
            "Retry": 2,
            "Cancelled": 1,
        },
        "queueDepth": 12,
    },
    models.BatchResult: {
        "items": [
            {"index": 0, "taskId": _TASK_ID, "status": "Queued"},
            {
                "index": 1,
                "error": {
                    "type": problem_type("validation_error"),
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "callbackUrl: must be an absolute http or https URL",
                    "code": "validation_error",
                    "errors": [
                        {"field": "callbackUrl", "message": "must be an absolute http or https URL"}
                    ],
                },
            },
        ]
    },
    models.RedriveResult: {"retried": 1, "taskIds": [_TASK_ID]},
    models.QueueView: _QUEUE,
    models.QueueList: {"items": [_QUEUE, _QUEUE | {"name": "emails", "depth": 0, "inFlight": 0}]},
}
"""A realistic body for each response type, shown in ``/docs``; a unit test decodes each one
into its type, so an example cannot drift from the schema."""


def json_body(
    wire_type: type[msgspec.Struct],
    description: str,
    example: object = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Return an OpenAPI response object whose JSON body is ``wire_type``.

    Args:
        wire_type: The body's type.
        description: What the response means.
        example: A body to show; None takes ``EXAMPLES[wire_type]``.
        headers: The headers the response carries: name → what it says (:func:`header`).

    Raises:
        KeyError: ``wire_type`` has no example (add one to :data:`EXAMPLES`).
    """
    shown = EXAMPLES[wire_type] if example is None else example
    _WRITTEN.append(shown)
    placeholder = {_PLACEHOLDER: len(_WRITTEN) - 1}
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ref(wire_type), "example": placeholder}},
    }
    if headers:
        response["headers"] = {name: header(meaning) for name, meaning in headers.items()}
    return response


def header(description: str) -> dict[str, Any]:
    """Return an OpenAPI header object: a string that says ``description``."""
    return {"description": description, "schema": {"type": "string"}}


_PLACEHOLDER = "x-taskplatform-example"
_WRITTEN: list[Any] = []  # the examples of json_body, by placeholder number


def request_body(wire_type: type[msgspec.Struct], example: object) -> dict[str, Any]:
    """Return ``openapi_extra`` declaring a required JSON request body of ``wire_type``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref(wire_type), "example": example}},
        }
    }


def problems(*errors: type[TaskPlatformError]) -> dict[int | str, dict[str, Any]]:
    """Return OpenAPI responses for ``errors``, grouped by status, one example per code."""
    by_status: dict[int, list[type[TaskPlatformError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        examples = {
            error.code: {
                "summary": error.title,
                "value": {
                    "type": problem_type(error.code),
                    "title": error.title,
                    "status": status,
                    "detail": (error.__doc__ or error.title).strip().splitlines()[0],
                    "code": error.code,
                },
            }
            for error in group
        }
        responses[status] = {
            "description": " / ".join(f"`{error.code}`" for error in group),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": ref(models.Problem), "examples": examples}},
        }
    return responses


CREATE_ERRORS = (
    MalformedJSON,
    ValidationFailed,
    IdempotencyKeyReused,
    PayloadTooLarge,
    UnsupportedMediaType,
)
EXECUTE_ERRORS = (
    TaskNotFound,
    TaskNotDequeued,
    TaskProcessing,
    TaskCompleted,
    TaskCancelled,
    RetryLimitReached,
    BackendUnavailable,
    ShuttingDown,
)
__all__ = [
    "CREATE_ERRORS",
    "EXAMPLES",
    "EXECUTE_ERRORS",
    "BackendUnavailable",
    "QueueEmpty",
    "TaskNotFound",
    "ValidationFailed",
    "install_openapi",
    "json_body",
    "method_not_allowed",
    "problems",
    "ref",
    "request_body",
]


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the msgspec wire types as components."""
    _, components = msgspec.json.schema_components(WIRE_TYPES, ref_template=_REF)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(components)
            _drop_default_validation_responses(schema)
            _restore_examples(schema)
            _add_outer_problems(schema)
            _ecma_patterns(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_default_validation_responses(schema: dict[str, Any]) -> None:
    """Remove the 422 ``HTTPValidationError`` FastAPI adds to every route with parameters.

    Our validation errors are problem+json (declared per route where they can happen); a path
    parameter that is any string cannot fail validation at all.
    """
    default = "#/components/schemas/HTTPValidationError"
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == default:
                del operation["responses"]["422"]
    if default not in str(schema.get("paths")):
        schemas = schema["components"]["schemas"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


# Problems the outer layers answer for any route: the security middleware (API keys, rate
# limit) and the router (no such path, wrong method).
_OUTER_PROBLEMS = {
    "unauthorized": (
        401,
        "Unauthorized",
        "send a valid API key: Authorization: Bearer <key>",
        "API keys are configured and the request has no valid one.",
    ),
    "cross_origin_request": (
        403,
        "Cross-origin request",
        "a browser sent this request from another site; the API takes no such requests",
        "A browser sent this request from a page of another origin.",
    ),
    "host_not_allowed": (
        403,
        "Host not allowed",
        "with no API keys this server answers only requests for a loopback name",
        "No API keys, a loopback server, and a Host that is not a loopback name.",
    ),
    "rate_limited": (
        429,
        "Too many requests",
        "over 100 requests per second; retry after the pause",
        "Over the per-key request rate; `Retry-After` says when to retry.",
    ),
    "not_found": (
        404,
        "Not found",
        "no route matches GET /api/task",
        "No route has this path.",
    ),
    "bad_request": (
        400,
        "Bad request",
        "the request cannot be read",
        "The request cannot be read at the HTTP level.",
    ),
    "header_fields_too_large": (
        HEADERS_TOO_LARGE.status,
        HEADERS_TOO_LARGE.title,
        HEADERS_TOO_LARGE.detail,
        "The request line and headers are over `TASKPLATFORM_MAX_HEADER_BYTES`; the connection "
        "is closed.",
    ),
    "request_timeout": (
        HEADERS_TIMEOUT.status,
        HEADERS_TIMEOUT.title,
        HEADERS_TIMEOUT.detail,
        "The request line and headers did not arrive within "
        "`TASKPLATFORM_HEADER_TIMEOUT_SECONDS`, or the body paused for longer than "
        "`TASKPLATFORM_BODY_TIMEOUT_SECONDS`; the connection is closed.",
    ),
    "internal_error": (
        500,
        "Internal server error",
        "An unexpected error in the task platform.",
        "A bug: it should never happen, and the server logs the traceback.",
    ),
    "method_not_allowed": (
        405,
        "Method not allowed",
        "DELETE is not allowed here; use GET",
        "The path exists, not with this method; `Allow` lists the methods.",
    ),
}


def outer_problem(code: str) -> dict[str, Any]:
    """Return the OpenAPI response object of one of :data:`_OUTER_PROBLEMS`, with its example."""
    status, title, detail, description = _OUTER_PROBLEMS[code]
    example = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return {
        "description": f"`{code}`: {description}",
        "content": {
            PROBLEM_MEDIA_TYPE: {
                "schema": ref(models.Problem),
                "examples": {code: {"summary": title, "value": example}},
            }
        },
    }


def _add_example(responses: dict[str, Any], status: str, code: str) -> None:
    """Add the example of outer problem ``code`` to ``responses[status]``, which is made when
    the operation declares no such status yet."""
    extra = outer_problem(code)
    response = responses.get(status)
    if response is None:
        responses[status] = extra
        return
    media = response.setdefault("content", {}).setdefault(
        PROBLEM_MEDIA_TYPE, extra["content"][PROBLEM_MEDIA_TYPE]
    )
    media.setdefault("examples", {}).update(extra["content"][PROBLEM_MEDIA_TYPE]["examples"])
    if f"`{code}`" not in response.get("description", ""):
        response["description"] = f"{response.get('description', '')} Or {extra['description']}"


_BEARER_SCHEME = "bearerAuth"
"""The name of the API key's security scheme in ``components.securitySchemes``."""
_BEARER_DESCRIPTION = (
    "An API key of `TASKPLATFORM_API_KEYS` (or `TASKPLATFORM_API_KEYS_FILE`), sent as "
    "`Authorization: Bearer <key>`. Only a server with API keys asks for it (401 "
    "`unauthorized` without a valid one); a server without keys takes every request without "
    "one, and then, when it listens on loopback, only for a loopback `Host` (403 "
    "`host_not_allowed`). The document is the same either way: an operation with this "
    "requirement needs the key whenever keys are set, unless its description names the setting "
    "that serves it without one. `/healthz` and `/readyz` never need it."
)


def _key_exemptions(path: str) -> list[str] | None:
    """Return None when a request for ``path`` never needs an API key, else the settings that
    serve it without one when keys are set (``security.needs_key``; empty: none does)."""
    if not needs_key(path, metrics_public=False, docs_public=False):
        return None
    exemptions = []
    if not needs_key(path, metrics_public=True, docs_public=False):
        exemptions.append("TASKPLATFORM_METRICS_PUBLIC")
    if not needs_key(path, metrics_public=False, docs_public=True):
        exemptions.append("TASKPLATFORM_DOCS_PUBLIC")
    return exemptions


def _add_outer_problems(schema: dict[str, Any]) -> None:
    """Declare on each operation what the layers in front of its route answer for it.

    The HTTP protocol (``api.protocol``) and the security middleware answer any request: 400
    ``bad_request`` (not HTTP, no Host, two Authorization headers), 408 ``request_timeout``,
    431 ``header_fields_too_large``, and 403 ``host_not_allowed`` (a keyless loopback server
    asked for another Host). Where a key is needed when keys are set (``security.needs_key``),
    the ``bearerAuth`` requirement, 401 and 429 (the rate limit counts per key); 403
    ``cross_origin_request`` on the operations the middleware guards against other sites (the
    unsafe methods, and the GETs that change state: ``security.STATEFUL_GETS``). The router's
    404 and 405 and the 500 no route should answer are reusable responses, so every error code
    has an example; a route that answers a 405 itself declares it (``GET /api/tasks/{taskId}``).
    """
    for path, operations in schema.get("paths", {}).items():
        exemptions = _key_exemptions(path)
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if exemptions is not None:
                _require_key(operation, exemptions)
            if method not in ("get", "head", "options") or path in STATEFUL_GETS:
                responses.setdefault("403", outer_problem("cross_origin_request"))
            _add_example(responses, "403", "host_not_allowed")
            _add_example(responses, "400", "bad_request")
            _add_example(responses, "408", "request_timeout")
            _add_example(responses, "431", "header_fields_too_large")
            # In status order, as /docs lists them: the statuses added here follow the route's.
            operation["responses"] = dict(sorted(responses.items()))
    components = schema["components"]
    components["securitySchemes"] = {
        _BEARER_SCHEME: {"type": "http", "scheme": "bearer", "description": _BEARER_DESCRIPTION}
    }
    reusable = components.setdefault("responses", {})
    reusable["NotFound"] = outer_problem("not_found")
    reusable["MethodNotAllowed"] = method_not_allowed()
    reusable["HostNotAllowed"] = outer_problem("host_not_allowed")
    reusable["BadRequest"] = outer_problem("bad_request")
    reusable["HeaderFieldsTooLarge"] = outer_problem("header_fields_too_large")
    reusable["RequestTimeout"] = outer_problem("request_timeout")
    reusable["InternalError"] = outer_problem("internal_error")


def _require_key(operation: dict[str, Any], exemptions: list[str]) -> None:
    """Give ``operation`` the ``bearerAuth`` requirement and the 401 and 429 of a request that
    needs a key, saying which settings of ``exemptions`` serve it without one."""
    operation["security"] = [{_BEARER_SCHEME: []}]
    responses = operation["responses"]
    responses.setdefault("401", outer_problem("unauthorized"))
    responses["401"].setdefault("headers", {})["WWW-Authenticate"] = header(
        "`Bearer`: the scheme the key goes in (RFC 6750)."
    )
    responses.setdefault("429", outer_problem("rate_limited"))
    responses["429"].setdefault("headers", {})["Retry-After"] = header(
        "Seconds to wait before the next request (RFC 9110, 10.2.3)."
    )
    if exemptions:
        settings = " or ".join(f"`{variable}=true`" for variable in exemptions)
        unless = f"Not with {settings}, which serves this without a key."
        for status in ("401", "429"):
            responses[status]["description"] += f" {unless}"
        operation["description"] = (
            f"{operation.get('description', '')}\n\nWith API keys set (`TASKPLATFORM_API_KEYS`) "
            f"this needs one, `Authorization: Bearer <key>`, unless {settings}; without keys, "
            "none."
        ).lstrip()


def method_not_allowed(
    when: str | None = None, detail: str | None = None, allow: str | None = None
) -> dict[str, Any]:
    """Return the OpenAPI response object of a 405 ``method_not_allowed``, with its ``Allow``.

    Args:
        when: What makes an operation answer it, added to the description; None: the router's
            405 for a method the path does not take, which no operation of the path answers.
        detail: The example's ``detail``; None: the generic one.
        allow: What the example's ``Allow`` lists, said in the header's description.
    """
    response = outer_problem("method_not_allowed")
    if when is not None:
        response["description"] += f" {when}"
    if detail is not None:
        media = response["content"][PROBLEM_MEDIA_TYPE]
        media["examples"]["method_not_allowed"]["value"]["detail"] = detail
    meaning = "The methods the path takes (RFC 9110, 10.2.1)"
    response["headers"] = {"Allow": header(f"{meaning}: `{allow}`." if allow else f"{meaning}.")}
    return response


def _ecma_patterns(node: Any) -> None:
    """Rewrite Python's end-of-input ``\\Z`` as ``$`` in every ``pattern`` of ``node``, in place.

    The models use ``\\Z`` because Python's ``$`` also matches before a final newline; JSON
    Schema patterns are ECMA-262, which has no ``\\Z`` (a client's validator rejects the whole
    document) and whose ``$`` already means the end of the input.
    """
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and "\\Z" in pattern:
            node["pattern"] = pattern.replace("\\Z", "$")
        for value in node.values():
            _ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _ecma_patterns(value)


def _restore_examples(node: Any) -> None:
    """Replace each example placeholder in ``node`` by its example as written, in place.

    FastAPI drops every null from the document it generates, which would leave examples missing
    required fields (``"error": null``); :func:`json_body` therefore hands it a placeholder.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and _PLACEHOLDER in value:
                node[key] = _WRITTEN[value[_PLACEHOLDER]]
            else:
                _restore_examples(value)
    elif isinstance(node, list):
        for value in node:
            _restore_examples(value)
