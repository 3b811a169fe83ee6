"""The OpenAPI document shows an example for every endpoint, every response and every error code,
and every example is a valid body of its declared type."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest
from fastapi import FastAPI

from taskplatform import models
from taskplatform.api.app import create_app
from taskplatform.api.openapi import EXAMPLES
from taskplatform.api.problems import PROBLEM_MEDIA_TYPE
from taskplatform.api.protocol import HEADERS_TIMEOUT, HEADERS_TOO_LARGE
from taskplatform.api.security import STATEFUL_GETS, needs_key
from taskplatform.exceptions import TaskPlatformError
from taskplatform.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(Settings())


@pytest.fixture(scope="module")
def document(app: FastAPI) -> dict[str, Any]:
    schema: dict[str, Any] = app.openapi()
    return schema


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


def _examples(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


def test_every_request_and_response_body_has_an_example(document: dict[str, Any]) -> None:
    missing = []
    for method, path, operation in _operations(document):
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            if not _examples(media):
                missing.append(f"{method} {path} request {media_type}")
        for status, response in operation["responses"].items():
            for media_type, media in response.get("content", {}).items():
                if not _examples(media):
                    missing.append(f"{method} {path} {status} {media_type}")
    assert not missing, missing
    assert len(_operations(document)) >= 18


def _valid(document: dict[str, Any], name: str, example: Any) -> list[str]:
    """Validate ``example`` against component ``name`` of ``document`` (JSON Schema 2020-12)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema)
    return [str(error) for error in validator.iter_errors(example)]


def test_every_example_is_a_valid_body_of_its_type(document: dict[str, Any]) -> None:
    checked = 0
    for method, path, operation in _operations(document):
        bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
        for body in bodies:
            for media in body.get("content", {}).values():
                reference = media.get("schema", {}).get("$ref", "")
                if not reference:
                    continue
                name = reference.rsplit("/", 1)[-1]
                for example in _examples(media):
                    errors = _valid(document, name, example)
                    assert not errors, f"{method} {path}: {name} example: {errors}"
                    checked += 1
    assert checked >= 40


@pytest.mark.parametrize("wire_type", list(EXAMPLES), ids=lambda t: t.__name__)
def test_each_default_example_matches_its_schema(
    document: dict[str, Any], wire_type: type[msgspec.Struct]
) -> None:
    assert not _valid(document, wire_type.__name__, EXAMPLES[wire_type])


def test_a_wrong_example_is_caught(document: dict[str, Any]) -> None:
    assert _valid(document, "TaskView", EXAMPLES[models.TaskView] | {"priority": "high"})
    assert _valid(document, "TaskCreated", {"taskId": "x"})


def test_every_error_code_has_an_example(document: dict[str, Any]) -> None:
    shown = set(re.findall(r"'code': '([a-z_]+)'", str(document)))
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("| status | code | when |") :]
    table = table[: table.index("\n\n")]
    documented = set(re.findall(r"`([a-z_]+)`", table)) - {"errors"}
    # The errors an HTTP answer can carry live in taskplatform.exceptions (others, such as the
    # schema check's, stop a command before it serves); importing more must not change this.
    raised = {
        error.code
        for error in _subclasses(TaskPlatformError)
        if error.__module__ == "taskplatform.exceptions" and error.code != "task_conflict"
    }
    assert documented >= raised, "README's error table misses codes the service raises"
    assert documented - shown == set(), "codes without an example in /openapi.json"
    assert {"unauthorized", "rate_limited", "not_found", "method_not_allowed"} <= shown


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids))


def test_problem_examples_are_problems(document: dict[str, Any]) -> None:
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get("application/problem+json")
            if media is None:
                continue
            for example in _examples(media):
                problem = msgspec.json.decode(msgspec.json.encode(example), type=models.Problem)
                assert problem.status == int(status), f"{method} {path} {status}"
                assert problem.type.endswith(problem.code)


def _subclasses(cls: type[TaskPlatformError]) -> list[type[TaskPlatformError]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def test_every_route_that_reads_the_backends_documents_their_outage(
    document: dict[str, Any],
) -> None:
    """A 503 ``backend_unavailable`` comes from any route that reads the store or the queue;
    listing, getting, attempts, stats, pause and resume did not say so. The bulk re-drive
    refuses a body over 4 KiB (413), which it did not say either."""
    for path, operations in document["paths"].items():
        if not path.startswith("/api"):
            continue
        for method, operation in operations.items():
            assert "503" in operation["responses"], (method, path)
    assert "413" in document["paths"]["/api/tasks/retry"]["post"]["responses"]


def test_a_get_that_changes_state_declares_the_403_it_can_answer(document: dict[str, Any]) -> None:
    """The security middleware refuses a browser's cross-site request to a GET that changes
    state (dequeue) as it does one with an unsafe method; the document says so for both."""
    assert "/api/tasks/dequeue" in STATEFUL_GETS
    for path in STATEFUL_GETS:
        for method in ("get", "post"):
            assert "403" in document["paths"][path][method]["responses"], (method, path)


def _resolved(document: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in response:
        resolved: dict[str, Any] = document["components"]["responses"][
            response["$ref"].rsplit("/", 1)[-1]
        ]
        return resolved
    return response


def _examples_of(document: dict[str, Any], operation: dict[str, Any], status: str) -> Any:
    response = _resolved(document, operation["responses"].get(status, {}))
    return response.get("content", {}).get(PROBLEM_MEDIA_TYPE, {}).get("examples", {})


def test_every_operation_shows_what_the_protocol_and_the_middleware_answer_on_it(
    document: dict[str, Any],
) -> None:
    """The HTTP protocol (``api.protocol``) answers any request 400 ``bad_request`` (not HTTP),
    408 ``request_timeout`` and 431 ``header_fields_too_large``, and the security middleware
    400 (no Host, two Authorization headers) and 403 ``host_not_allowed`` (a keyless loopback
    server asked for another Host), whatever the path: no operation declared 408 or 431, and
    /healthz, /readyz and /metrics none of them (found in review). The 408 and 431 show the
    protocol's own problem documents."""
    missing = []
    for method, path, operation in _operations(document):
        for status, code in (
            ("400", "bad_request"),
            ("403", "host_not_allowed"),
            ("408", "request_timeout"),
            ("431", "header_fields_too_large"),
        ):
            if code not in _examples_of(document, operation, status):
                missing.append(f"{method} {path} {status} {code}")
    assert not missing, missing
    for method, path, operation in _operations(document):
        for problem in (HEADERS_TIMEOUT, HEADERS_TOO_LARGE):
            shown = _examples_of(document, operation, str(problem.status))[problem.code]["value"]
            assert shown == msgspec.to_builtins(problem), (method, path)


def test_the_operations_that_need_a_key_say_so_and_no_other_does(document: dict[str, Any]) -> None:
    """The document had no security scheme, and /metrics, behind the key once keys are set
    (unless TASKPLATFORM_METRICS_PUBLIC), declared neither 401 nor 429 (found in review). Each
    operation whose path needs a key when keys are set (``security.needs_key``) has the
    ``bearerAuth`` requirement, 401 and 429; the probes have none of the three."""
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "TASKPLATFORM_API_KEYS" in scheme["description"]
    assert "security" not in document, "the probes need no key: per operation"
    keyed = keyless = 0
    for method, path, operation in _operations(document):
        responses = operation["responses"]
        if needs_key(path, metrics_public=False, docs_public=False):
            keyed += 1
            assert operation.get("security") == [{"bearerAuth": []}], (method, path)
            assert "WWW-Authenticate" in responses["401"]["headers"], (method, path)
            assert "Retry-After" in responses["429"]["headers"], (method, path)
        else:
            keyless += 1
            assert "security" not in operation, (method, path)
            assert "401" not in responses, (method, path)
            assert "429" not in responses, (method, path)
    assert keyed >= 16
    assert keyless == 2  # /healthz and /readyz
    # /metrics needs the key only when keys are set and it is not made public: it says so.
    assert not needs_key("/metrics", metrics_public=True, docs_public=False)
    metrics = document["paths"]["/metrics"]["get"]
    assert "TASKPLATFORM_METRICS_PUBLIC=true" in metrics["description"]
    assert "TASKPLATFORM_METRICS_PUBLIC=true" in metrics["responses"]["401"]["description"]
    stats = document["paths"]["/api/stats"]["get"]
    assert "PUBLIC" not in stats["responses"]["401"]["description"]


def test_a_parameter_route_that_fits_another_routes_path_declares_its_405(
    app: FastAPI, document: dict[str, Any]
) -> None:
    """``GET /api/tasks/batch`` fits ``GET /api/tasks/{taskId}``, whose handler answers it 405
    (batch is POST only): no operation declared that 405 (found in review). Every operation
    whose path template fits the path of another route without the operation's method
    declares it, with its ``Allow``."""
    static: dict[str, list[str]] = app.state.static_path_methods
    fitting = 0
    for method, path, operation in _operations(document):
        if "{" not in path:
            continue
        pieces = re.split(r"\{[^/}]+\}", path)
        template = re.compile("[^/]+".join(map(re.escape, pieces)) + r"\Z")
        for other, methods in static.items():
            if template.match(other) and method not in methods:
                fitting += 1
                response = _resolved(document, operation["responses"].get("405", {}))
                assert "method_not_allowed" in str(response), (method, path, other)
                assert "Allow" in response["headers"], (method, path)
    assert fitting >= 2  # /api/tasks/batch and /api/tasks/retry


def test_the_response_headers_the_api_sends_are_declared(document: dict[str, Any]) -> None:
    """A client made from the document reads these headers (found in review: none was
    declared): Location on a create, Idempotent-Replayed on its replay, Preference-Applied on an
    asynchronous execute, Retry-After on 429, WWW-Authenticate on 401, Allow on 405."""
    paths = document["paths"]
    create = paths["/api/tasks"]["post"]["responses"]
    execute = paths["/api/tasks/{taskId}/execute"]["post"]["responses"]
    declared = {
        (status, name.lower())
        for responses in (create, execute)
        for status, response in responses.items()
        for name in _resolved(document, response).get("headers", {})
    }
    assert {
        ("201", "location"),
        ("200", "idempotent-replayed"),
        ("202", "preference-applied"),
        ("429", "retry-after"),
        ("401", "www-authenticate"),
    } <= declared
    allow = document["components"]["responses"]["MethodNotAllowed"]["headers"]
    assert "Allow" in allow
