"""The seed's four acceptance scenarios and four edge cases, over HTTP against a real server."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.acceptance.helpers import TIMESTAMP, assert_problem, create, dequeue_until, ready_task
from tests.support.receiver import Receiver
from tests.support.server import Server


def test_create_returns_a_unique_id_and_the_task_is_queued(client: httpx.Client) -> None:
    """Scenario 1: create puts the task into the queue and returns a unique task id."""
    response = client.post(
        "/api/tasks",
        json={"taskData": {"order": 1}, "callbackUrl": "http://127.0.0.1:9/x", "priority": 5},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "Queued"
    assert response.headers["location"] == f"/api/tasks/{body['taskId']}"
    other = create(client, "http://127.0.0.1:9/x")
    assert other != body["taskId"]

    task = client.get(f"/api/tasks/{body['taskId']}").json()
    assert task["status"] == "Queued"
    assert task["taskData"] == {"order": 1}
    assert task["priority"] == 5
    assert task["attempts"] == 0
    assert task["maxRetries"] == 3
    assert task["timeoutSeconds"] == 30
    assert TIMESTAMP.match(task["createdAt"])
    assert task["dequeuedAt"] is None


def test_dequeue_moves_the_task_into_the_database(client: httpx.Client) -> None:
    """Scenario 2: dequeue takes a task from the queue, stores it, and returns its details."""
    task_id = create(client, "http://127.0.0.1:9/x", task_data={"k": "v"}, priority=2**31 - 1)
    task = dequeue_until(client, task_id)
    assert task["status"] == "Dequeued"
    assert task["taskData"] == {"k": "v"}
    assert task["callbackUrl"] == "http://127.0.0.1:9/x"
    assert TIMESTAMP.match(task["dequeuedAt"])
    stored = client.get(f"/api/tasks/{task_id}").json()
    assert stored["status"] == "Dequeued"
    queued_ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {"status": "Queued", "limit": "200", **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/tasks", params=params).json()
        queued_ids += [t["taskId"] for t in page["items"]]
        if not (cursor := page["nextCursor"]):
            break
    assert task_id not in queued_ids


def test_execute_calls_the_callback_and_records_the_result(
    client: httpx.Client, receiver: Receiver
) -> None:
    """Scenarios 3 and 4: execute calls the callback, then status and result are recorded."""
    task_id = ready_task(client, receiver.url("/ok"), task_data={"job": "resize", "size": 3})
    response = client.post(f"/api/tasks/{task_id}/execute")
    assert response.status_code == 200
    outcome = response.json()
    assert outcome == {
        "taskId": task_id,
        "status": "Completed",
        "result": {"ok": True, "bytes": len(b'{"job":"resize","size":3}')},
        "error": None,
        "attempt": 1,
    }
    (hit,) = receiver.hits_for(task_id)
    assert hit.body == b'{"job":"resize","size":3}'
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["webhook-id"] == task_id
    assert hit.headers["X-Task-Attempt"] == "1"
    assert hit.headers["webhook-timestamp"].isdigit()

    task = client.get(f"/api/tasks/{task_id}").json()
    assert task["status"] == "Completed"
    assert task["result"] == outcome["result"]
    assert task["attempts"] == 1
    assert TIMESTAMP.match(task["completedAt"])
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert len(log) == 1
    assert log[0]["attempt"] == 1
    assert log[0]["httpStatus"] == 200
    assert log[0]["error"] is None
    assert log[0]["durationMs"] >= 0
    assert TIMESTAMP.match(log[0]["startedAt"])


def test_empty_queue_answers_queue_empty(start_server: Callable[..., Server]) -> None:
    """Edge case 1: dequeue on an empty queue is a clear error, for GET and POST alike."""
    server = start_server()
    with httpx.Client(base_url=server.url) as http:
        assert_problem(http.get("/api/tasks/dequeue"), 404, "queue_empty")
        assert_problem(http.post("/api/tasks/dequeue"), 404, "queue_empty")


def test_unreachable_callback_fails_the_task_with_the_error_recorded(client: httpx.Client) -> None:
    """Edge case 2: a callback that cannot be reached marks the task Failed with the error."""
    task_id = ready_task(client, "http://127.0.0.1:1/nothing-listens-here")
    outcome = client.post(f"/api/tasks/{task_id}/execute").json()
    assert outcome["status"] == "Failed"
    assert "connection refused" in outcome["error"]
    task = client.get(f"/api/tasks/{task_id}").json()
    assert task["status"] == "Failed"
    assert "connection refused" in task["error"]
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert log[0]["httpStatus"] is None
    assert "connection refused" in log[0]["error"]
    # An IPv6 address is written as a URL writes it: "::1:1" would read as another address.
    task_id = ready_task(client, "http://[::1]:1/nothing-listens-here")
    outcome = client.post(f"/api/tasks/{task_id}/execute").json()
    assert outcome["error"] == "connection refused by [::1]:1"


def test_unknown_task_is_404(client: httpx.Client) -> None:
    """Edge case 3: executing (or reading) a task that does not exist is 404 task_not_found."""
    missing = "01900000-0000-7000-8000-000000000000"
    assert_problem(client.post(f"/api/tasks/{missing}/execute"), 404, "task_not_found")
    assert_problem(client.get(f"/api/tasks/{missing}"), 404, "task_not_found")
    assert_problem(client.get(f"/api/tasks/{missing}/executions"), 404, "task_not_found")
    assert_problem(client.get("/api/tasks/not-even-an-id"), 404, "task_not_found")


def test_execute_while_processing_is_409(client: httpx.Client, receiver: Receiver) -> None:
    """Edge case 4: a second execute while the first callback runs is rejected with 409."""
    task_id = ready_task(client, receiver.url("/slow?seconds=1.5"))
    accepted = client.post(f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"})
    assert accepted.status_code == 202
    assert accepted.json() == {"taskId": task_id, "status": "Processing"}
    assert accepted.headers["preference-applied"] == "respond-async"
    assert client.get(f"/api/tasks/{task_id}").json()["status"] == "Processing"
    assert_problem(client.post(f"/api/tasks/{task_id}/execute"), 409, "task_processing")


def test_respond_async_outcome_appears_on_get(client: httpx.Client, receiver: Receiver) -> None:
    """With Prefer: respond-async the callback runs in the background and GET shows its outcome."""
    task_id = ready_task(client, receiver.url("/ok"))
    response = client.post(
        f"/api/tasks/{task_id}/execute", headers={"Prefer": "wait=5, respond-async"}
    )
    assert response.status_code == 202
    for _ in range(200):
        task = client.get(f"/api/tasks/{task_id}").json()
        if task["status"] != "Processing":
            break
        time.sleep(0.02)
    assert task["status"] == "Completed"
    assert len(receiver.hits_for(task_id)) == 1


def test_execute_before_dequeue_and_after_completion_is_409(
    client: httpx.Client, receiver: Receiver
) -> None:
    """A Queued task cannot be executed yet; a Completed one is not executed again."""
    queued = create(client, receiver.url("/ok"), priority=-(2**31))
    assert_problem(client.post(f"/api/tasks/{queued}/execute"), 409, "task_not_dequeued")
    done = ready_task(client, receiver.url("/ok"))
    assert client.post(f"/api/tasks/{done}/execute").json()["status"] == "Completed"
    assert_problem(client.post(f"/api/tasks/{done}/execute"), 409, "task_completed")
    assert len(receiver.hits_for(done)) == 1
    assert receiver.hits_for(queued) == []
