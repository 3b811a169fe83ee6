"""Chaos: clients create, dequeue and execute while the server is SIGKILLed and restarted.

At the end every acknowledged create is accounted for exactly once, no acknowledged dequeue was
handed out twice, nothing is left Processing or Dequeued past its lease, and the receiver saw at
most one callback per recorded attempt. ``TEST_CHAOS_SECONDS`` (default 15) sets the length of the
run per backend (the test's timeout grows with it); CI runs the default on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.support.backends import backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server

SECONDS = float(os.environ.get("TEST_CHAOS_SECONDS", "15"))
DEQUEUE_LEASE = 15
ENV = {
    "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2",
    "TASKPLATFORM_PROCESSING_LEASE_GRACE_SECONDS": "0.5",
    "TASKPLATFORM_QUEUE_RESERVATION_SECONDS": "1",
    "TASKPLATFORM_DEQUEUE_LEASE_SECONDS": str(DEQUEUE_LEASE),
    "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "1",
}
TIMEOUT = SECONDS + 5 + 30 + 30 + (DEQUEUE_LEASE + 15) + 60
"""pytest-timeout for one run, derived from its length: pyproject's global 120 s would kill a
longer run (``TEST_CHAOS_SECONDS=300``) however healthy. On top of ``SECONDS``: the last kill cycle
(5 s) and its restart (up to 30 s), the clients' joins (30 s), the settle wait (lease + 15 s) and
a minute for restarts' startup and reading every task back."""


class Ledger:
    """What the clients were told, kept under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.created: list[str] = []
        self.dequeued: list[str] = []
        self.executed = 0
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()

    def note(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] += 1


def _client(server: Server, receiver: Receiver, ledger: Ledger, stop: threading.Event) -> None:
    rng = random.Random()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        while not stop.is_set():
            try:
                if rng.random() < 0.55:
                    key = str(uuid.uuid4())
                    body = {
                        "taskData": {"n": rng.randrange(10**9)},
                        "callbackUrl": receiver.url("/slow?seconds=0.05"),
                        "priority": rng.randrange(5),
                        "timeoutSeconds": 1,
                        "maxRetries": 5,
                    }
                    for _ in range(50):  # retry the same key until acknowledged
                        try:
                            response = http.post(
                                "/api/tasks", json=body, headers={"Idempotency-Key": key}
                            )
                        except httpx.TransportError:
                            time.sleep(0.1)
                            continue
                        ledger.note(response)
                        if response.status_code in (200, 201):
                            # 200: a retry replayed the key after the 201 was lost to a kill.
                            with ledger.lock:
                                ledger.created.append(response.json()["taskId"])
                            break
                        time.sleep(0.1)
                else:
                    response = http.get("/api/tasks/dequeue")
                    ledger.note(response)
                    if response.status_code != 200:
                        continue
                    task_id = response.json()["taskId"]
                    with ledger.lock:
                        ledger.dequeued.append(task_id)
                    _execute(http, task_id, ledger)
            except httpx.TransportError as exc:
                with ledger.lock:
                    ledger.errors[type(exc).__name__] += 1
                time.sleep(0.05)


def _execute(http: httpx.Client, task_id: str, ledger: Ledger) -> None:
    """Execute until answered, through restarts, as a careful client would (within the lease)."""
    deadline = time.monotonic() + DEQUEUE_LEASE - 2
    while time.monotonic() < deadline:
        try:
            response = http.post(f"/api/tasks/{task_id}/execute")
        except httpx.TransportError as exc:
            with ledger.lock:
                ledger.errors[type(exc).__name__] += 1
            time.sleep(0.2)
            continue
        ledger.note(response)
        if response.status_code == 409 and response.json()["code"] == "task_processing":
            time.sleep(0.3)  # an attempt cut off by a kill: wait for its lease to be reaped
            continue
        if response.status_code == 200:
            with ledger.lock:
                ledger.executed += 1
        return


def _all_tasks(http: httpx.Client) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = http.get("/api/tasks", params=params).json()
        tasks += page["items"]
        if not (cursor := page["nextCursor"]):
            return tasks


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    backend: str, receiver: Receiver, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server({**backend_env(backend, tmp_path), **ENV}, tmp_path / "server.log").start()
    ledger = Ledger()
    stop = threading.Event()
    clients = [
        threading.Thread(target=_client, args=(server, receiver, ledger, stop)) for _ in range(4)
    ]
    kills = 0
    try:
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + SECONDS
        rng = random.Random()
        # At least three kills however slow the machine's restarts are.
        while time.monotonic() < deadline or kills < 3:
            time.sleep(rng.uniform(1.5, 4.0))
            server.stop(signal.SIGKILL)
            kills += 1
            time.sleep(rng.uniform(0, 0.5))
            server.start()
        stop.set()
        for thread in clients:
            thread.join(30)

        with httpx.Client(base_url=server.url, timeout=30) as http:
            # Let every lease run out and be reaped: nothing may stay Processing or Dequeued.
            settle = time.monotonic() + DEQUEUE_LEASE + 15
            while time.monotonic() < settle:
                counts = http.get("/api/stats").json()["tasks"]
                if counts["Processing"] == 0 and counts["Dequeued"] == 0:
                    break
                time.sleep(0.5)
            tasks = _all_tasks(http)
            attempts = {
                task["taskId"]: len(
                    http.get(f"/api/tasks/{task['taskId']}/executions").json()["items"]
                )
                for task in tasks
                if task["attempts"]
            }
    finally:
        stop.set()
        server.stop()

    ids = [task["taskId"] for task in tasks]
    by_status = Counter(task["status"] for task in tasks)
    created = set(ledger.created)
    callbacks = Counter(
        (hit.task_id, hit.headers.get("X-Task-Attempt")) for hit in receiver.hits_on("/slow")
    )
    callbacks = Counter({key: n for key, n in callbacks.items() if key[0] in set(ids)})
    with capsys.disabled():  # the counts belong in CI's log, pass or fail
        print(
            f"\nchaos on {backend}: {SECONDS:g} s, {kills} SIGKILLs, "
            f"{len(ledger.created)} creates acknowledged, {len(ledger.dequeued)} dequeues "
            f"acknowledged, {ledger.executed} executes answered, {len(tasks)} tasks stored "
            f"({dict(by_status)}), {sum(attempts.values())} attempts recorded, "
            f"{sum(callbacks.values())} callbacks received, client transport errors "
            f"{dict(ledger.errors)}, statuses {dict(ledger.statuses)}"
        )
    assert kills >= 3
    assert len(ids) == len(set(ids)), "a task is listed twice"
    assert created <= set(ids), f"lost: {sorted(created - set(ids))[:5]}"
    assert len(ledger.created) == len(created), "one key made two tasks"
    duplicates = [task for task, n in Counter(ledger.dequeued).items() if n > 1]
    assert not duplicates, f"dequeued twice: {duplicates[:5]}"
    assert by_status["Processing"] == 0
    assert by_status["Dequeued"] == 0
    assert not [s for s in ledger.statuses if s >= 500], ledger.statuses
    assert all(n == 1 for n in callbacks.values()), "two callbacks for one attempt"
    for (task_id, attempt), _ in callbacks.items():
        assert int(attempt or 0) <= attempts.get(task_id, 0), f"unrecorded attempt of {task_id}"
