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
from taskplatform.exceptions import (
    BackendUnavailable,
    IdempotencyKeyReused,
    MalformedJSON,
    PayloadTooLarge,
    QueueEmpty,
    RetryLimitReached,
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


def json_body(wire_type: type[msgspec.Struct], description: str) -> dict[str, Any]:
    """Return an OpenAPI response object whose JSON body is ``wire_type``."""
    return {"description": description, "content": {"application/json": {"schema": ref(wire_type)}}}


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
)
__all__ = [
    "CREATE_ERRORS",
    "EXECUTE_ERRORS",
    "BackendUnavailable",
    "QueueEmpty",
    "TaskNotFound",
    "ValidationFailed",
    "install_openapi",
    "json_body",
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
