"""Small helpers for driving the API like a client would."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx

from tests.support.server import clean_environ

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def create(client: httpx.Client, callback_url: str, **fields: Any) -> str:
    """Create a task and return its id; fails the test unless the answer is 201."""
    body = {"taskData": fields.pop("task_data", {"n": 1}), "callbackUrl": callback_url, **fields}
    response = client.post("/api/tasks", json=body)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["taskId"]
    return task_id


def dequeue_until(client: httpx.Client, task_id: str) -> dict[str, Any]:
    """Dequeue until ``task_id`` comes out (the shared server may hold other tasks)."""
    for _ in range(10_000):
        response = client.get("/api/tasks/dequeue")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        if task["taskId"] == task_id:
            return task
    raise AssertionError(f"{task_id} never came out of the queue")


def ready_task(client: httpx.Client, callback_url: str, **fields: Any) -> str:
    """Create a task with the highest priority and dequeue it: ready to execute."""
    fields.setdefault("priority", 2**31 - 1)
    task_id = create(client, callback_url, **fields)
    dequeue_until(client, task_id)
    return task_id


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check that ``response`` is an RFC 9457 problem with ``status`` and ``code``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert problem["type"].endswith(code)
    return problem


def run_taskplatform(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskplatform *args`` with ``env`` (over a clean environment) to its end,
    within 60 s; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "taskplatform", *args],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
