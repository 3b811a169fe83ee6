"""Which requests the fast path (``api.hotpath``) takes, and that the rest fall through to FastAPI.

The fast path must never say yes where FastAPI's validation would say no, so every request it
takes is one FastAPI would accept as well-formed up to the handler.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskplatform.api.hotpath import match

TASK = "0190a5f2-0000-7000-8000-00000000abcd"


def scope(
    method: str, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
    }


@pytest.mark.parametrize(
    ("method", "path", "query", "headers"),
    [
        ("POST", "/api/tasks", b"", []),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"order-42")]),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"k" * 255)]),
        ("GET", "/api/tasks/dequeue", b"", []),
        ("POST", "/api/tasks/dequeue", b"", []),
        ("GET", f"/api/tasks/{TASK}", b"", []),
        ("POST", f"/api/tasks/{TASK}/execute", b"", []),
        ("POST", f"/api/tasks/{TASK}/execute", b"", [(b"prefer", b"respond-async")]),
    ],
)
def test_takes_the_hot_routes(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    assert match(scope(method, path, query, headers)) is not None


@pytest.mark.parametrize(
    ("method", "path", "query", "headers"),
    [
        ("GET", "/api/tasks", b"", []),  # list
        ("PUT", "/api/tasks", b"", []),  # 405 from FastAPI
        ("POST", "/api/tasks/", b"", []),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"has space")]),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"")]),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"k" * 256)]),
        ("POST", "/api/tasks", b"", [(b"idempotency-key", b"a"), (b"idempotency-key", b"b")]),
        ("GET", "/api/tasks/dequeue", b"waitSeconds=1", []),
        ("GET", "/api/tasks/dequeue", b"queue=emails", []),
        ("DELETE", "/api/tasks/dequeue", b"", []),
        ("GET", f"/api/tasks/{TASK.upper()}", b"", []),
        ("GET", f"/api/tasks/{TASK}x", b"", []),
        ("GET", "/api/tasks/not-a-uuid", b"", []),
        ("POST", f"/api/tasks/{TASK}", b"", []),
        ("GET", f"/api/tasks/{TASK}/execute", b"", []),
        ("GET", f"/api/tasks/{TASK}/executions", b"", []),
        ("POST", f"/api/tasks/{TASK}/cancel", b"", []),
        ("POST", f"/api/tasks/{TASK}/execute/", b"", []),
        ("POST", "/api/tasks/batch", b"", []),
        ("GET", "/api/stats", b"", []),
    ],
)
def test_leaves_everything_else_to_fastapi(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    assert match(scope(method, path, query, headers)) is None
