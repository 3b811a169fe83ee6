"""Callbacks that hang, drip, flood, redirect or answer oddly; and the exact retry limit."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.acceptance.helpers import assert_problem, ready_task
from tests.support.receiver import Receiver


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    """A second receiver on another port, to see whether a redirect was followed."""
    running = Receiver().start()
    yield running
    running.stop()


def _execute(client: httpx.Client, task_id: str) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    response = client.post(f"/api/tasks/{task_id}/execute")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body, time.monotonic() - started


def test_a_callback_that_hangs_times_out(client: httpx.Client, receiver: Receiver) -> None:
    """A callback that never answers fails when timeoutSeconds runs out."""
    task_id = ready_task(client, receiver.url("/slow?seconds=30"), timeoutSeconds=1)
    outcome, elapsed = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "timeout after 1 s"
    assert 0.9 < elapsed < 5


def test_a_callback_that_drips_meets_the_total_deadline(
    client: httpx.Client, receiver: Receiver
) -> None:
    """One byte a second keeps each read short; the total deadline still ends the attempt."""
    task_id = ready_task(client, receiver.url("/drip?seconds=30"), timeoutSeconds=2)
    outcome, elapsed = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "timeout after 2 s"
    assert 1.9 < elapsed < 6


@pytest.mark.parametrize("chunked", ["0", "1"], ids=["content-length", "chunked"])
def test_a_20_mb_response_fails_and_is_not_kept(
    client: httpx.Client, receiver: Receiver, chunked: str
) -> None:
    """A body over the 1 MiB cap fails the attempt, says so, and stores nothing of it."""
    task_id = ready_task(client, receiver.url(f"/big?bytes=20000000&chunked={chunked}"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert "over the limit of 1048576 bytes" in str(outcome["error"])
    assert outcome["result"] is None
    task = client.get(f"/api/tasks/{task_id}").json()
    assert task["result"] is None
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert log[0]["result"] is None
    assert log[0]["httpStatus"] == 200


def test_a_response_just_under_the_cap_is_kept(client: httpx.Client, receiver: Receiver) -> None:
    """A body of exactly 1 MiB is a result, kept whole."""
    task_id = ready_task(client, receiver.url("/big?bytes=1048576"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed"
    assert outcome["result"] == "a" * 1048576


def test_a_redirect_is_not_followed(
    client: httpx.Client, receiver: Receiver, other_receiver: Receiver
) -> None:
    """A 3xx is a failed attempt naming the status; the redirect target sees no request."""
    target = other_receiver.url("/ok")
    task_id = ready_task(client, receiver.url(f"/redirect?to={target}"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert str(outcome["error"]).startswith("HTTP 302")
    assert "not followed" in str(outcome["error"])
    assert other_receiver.hits == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/html", "<html><body><h1>Hi</h1></body></html>"),
        ("/text", "plain words"),
        ("/empty", ""),
    ],
)
def test_non_json_bodies_are_results(
    client: httpx.Client, receiver: Receiver, path: str, expected: str
) -> None:
    """HTML, plain text and empty bodies are kept as text results, not crashes."""
    task_id = ready_task(client, receiver.url(path))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed"
    assert outcome["result"] == expected
    assert client.get(f"/api/tasks/{task_id}").json()["result"] == expected


def test_an_error_status_fails_the_attempt_and_keeps_the_body(
    client: httpx.Client, receiver: Receiver
) -> None:
    """A 503 is a failed attempt; its body is still the result."""
    task_id = ready_task(client, receiver.url("/status/503"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "HTTP 503 Service Unavailable"
    assert outcome["result"] == {"status": 503}


def test_max_retries_3_allows_exactly_4_attempts(client: httpx.Client, receiver: Receiver) -> None:
    """maxRetries 3: four callback hits, each recorded, then 409 retry_limit_reached."""
    task_id = ready_task(client, receiver.url("/status/500"), maxRetries=3)
    for attempt in range(1, 5):
        outcome, _ = _execute(client, task_id)
        assert outcome["status"] == "Failed"
        assert outcome["attempt"] == attempt
    assert_problem(client.post(f"/api/tasks/{task_id}/execute"), 409, "retry_limit_reached")
    assert len(receiver.hits_for(task_id)) == 4
    assert [hit.headers["X-Task-Attempt"] for hit in receiver.hits_for(task_id)] == [
        "1",
        "2",
        "3",
        "4",
    ]
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert [entry["attempt"] for entry in log] == [1, 2, 3, 4]
    assert client.get(f"/api/tasks/{task_id}").json()["attempts"] == 4


def test_a_failed_task_with_attempts_left_can_succeed(
    client: httpx.Client, receiver: Receiver
) -> None:
    """Failed -> Retry -> Processing -> Completed when the receiver recovers."""
    task_id = ready_task(client, receiver.url("/fail-first/1"), maxRetries=1)
    first, _ = _execute(client, task_id)
    assert first["status"] == "Failed"
    second, _ = _execute(client, task_id)
    assert second["status"] == "Completed"
    assert second["attempt"] == 2


def test_max_retries_0_allows_one_attempt(client: httpx.Client, receiver: Receiver) -> None:
    """maxRetries 0: one attempt, then 409."""
    task_id = ready_task(client, receiver.url("/status/500"), maxRetries=0)
    _execute(client, task_id)
    assert_problem(client.post(f"/api/tasks/{task_id}/execute"), 409, "retry_limit_reached")
    assert len(receiver.hits_for(task_id)) == 1
