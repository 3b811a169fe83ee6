"""Atomicity under concurrency, and queue order, against a real server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.acceptance.helpers import assert_problem, create, ready_task
from tests.support.receiver import Receiver
from tests.support.server import Server


def test_100_concurrent_dequeues_over_50_tasks(start_server: Callable[..., Server]) -> None:
    """50 tasks, 100 concurrent dequeues: 50 distinct tasks and 50 queue_empty answers."""
    server = start_server()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = {create(http, "http://127.0.0.1:9/x", task_data={"i": i}) for i in range(50)}

    def dequeue(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            return http.get("/api/tasks/dequeue")

    with ThreadPoolExecutor(max_workers=100) as pool:
        responses = list(pool.map(dequeue, range(100)))
    taken = [r.json()["taskId"] for r in responses if r.status_code == 200]
    empty = [r for r in responses if r.status_code == 404]
    assert len(taken) == 50
    assert set(taken) == created
    assert len(empty) == 50
    for response in empty:
        assert_problem(response, 404, "queue_empty")


def test_10_concurrent_executes_make_exactly_one_callback(
    client: httpx.Client, server: Server, receiver: Receiver
) -> None:
    """Ten executes of one task at once: one callback, one 200, nine 409s."""
    task_id = ready_task(client, receiver.url("/slow?seconds=2"))
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(10)]
    start = threading.Barrier(10)

    def execute(http: httpx.Client) -> httpx.Response:
        start.wait()
        return http.post(f"/api/tasks/{task_id}/execute")

    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(execute, clients))
    finally:
        for http in clients:
            http.close()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 9
    for response in responses:
        if response.status_code == 409:
            # Processing while the callback runs; Completed for a request that came late.
            assert response.json()["code"] in ("task_processing", "task_completed")
    assert len(receiver.hits_for(task_id)) == 1
    assert len(client.get(f"/api/tasks/{task_id}/executions").json()["items"]) == 1


def test_priorities_dequeue_highest_first(start_server: Callable[..., Server]) -> None:
    """Priorities 9, 1, 1000, 10, 50 come out as 1000, 50, 10, 9, 1."""
    server = start_server()
    with httpx.Client(base_url=server.url) as http:
        for priority in (9, 1, 1000, 10, 50):
            create(http, "http://127.0.0.1:9/x", priority=priority)
        order = [http.get("/api/tasks/dequeue").json()["priority"] for _ in range(5)]
    assert order == [1000, 50, 10, 9, 1]


def test_equal_priorities_are_fifo_and_extremes_keep_order(
    start_server: Callable[..., Server],
) -> None:
    """Ten tasks of one priority come out in creation order; the int32 extremes sort right."""
    server = start_server()
    with httpx.Client(base_url=server.url) as http:
        low = create(http, "http://127.0.0.1:9/x", priority=-(2**31))
        fifo = [create(http, "http://127.0.0.1:9/x", priority=7) for _ in range(10)]
        top = create(http, "http://127.0.0.1:9/x", priority=2**31 - 1)
        second = create(http, "http://127.0.0.1:9/x", priority=2**31 - 2)
        order = [http.get("/api/tasks/dequeue").json()["taskId"] for _ in range(13)]
        assert_problem(http.get("/api/tasks/dequeue"), 404, "queue_empty")
    assert order == [top, second, *fifo, low]
