"""Time-bound state through real servers: idempotency keys that expire, and a Processing lease
left behind by a server killed mid-callback, reaped by two other servers on the same database."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from tests.acceptance.helpers import ready_task
from tests.support.backends import backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server

LEASE_EXPIRED = (
    "interrupted: the lease ran out before the callback's outcome was recorded (the server making "
    "it stopped, or could not reach the database)"
)
KEY_TTL = 2.0
"""Seconds an Idempotency-Key is remembered in these tests: room for a replay well inside it."""


def _wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _remembered_keys(env: dict[str, str]) -> int:
    """How many idempotency keys the backends of ``env`` hold right now, expired or not."""
    if "TASKPLATFORM_QUEUE_URL" in env:  # the Redis queue keeps them, each with its own TTL
        client = redis.Redis.from_url(env["TASKPLATFORM_QUEUE_URL"])
        try:
            prefix = env["TASKPLATFORM_REDIS_KEY_PREFIX"]
            return len(list(client.scan_iter(match=f"{prefix}:idempotency:*", count=1000)))
        finally:
            client.close()
    url = env["TASKPLATFORM_DATABASE_URL"]
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            count: int = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
        return count

    async def count_postgres() -> int:
        connection = await asyncpg.connect(url, timeout=5)
        try:
            rows: int = await connection.fetchval("SELECT count(*) FROM idempotency_keys")
            return rows
        finally:
            await connection.close()

    return asyncio.run(count_postgres())


def _create(http: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
    return http.post("/api/tasks", json=body, headers={"Idempotency-Key": key})


def test_an_idempotency_key_is_purged_after_its_ttl_and_then_creates_anew(
    backend: str, tmp_path: Path
) -> None:
    """Within IDEMPOTENCY_KEY_TTL_SECONDS the key replays the first task, even after reaper
    rounds; once the TTL is over the reaper (or Redis) forgets it, and the same key and body
    create a new task, which the key then replays."""
    env = {
        **backend_env(backend, tmp_path),
        "TASKPLATFORM_IDEMPOTENCY_KEY_TTL_SECONDS": str(KEY_TTL),
        "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.1",
    }
    server = Server(env, tmp_path / "server.log").start()
    body = {"taskData": {"order": 7}, "callbackUrl": "http://127.0.0.1:9/x"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            sent_at = time.monotonic()  # the server's clock for the TTL starts after this
            first = _create(http, body, "order-7")
            created_at = time.monotonic()  # and before this
            assert first.status_code == 201, first.text
            assert "idempotent-replayed" not in first.headers
            first_id = first.json()["taskId"]
            assert _remembered_keys(env) == 1
            time.sleep(0.5)  # several reaper rounds, all well inside the TTL
            replay = _create(http, body, "order-7")
            assert time.monotonic() - created_at < KEY_TTL - 0.5, "too slow to test the TTL"
            assert replay.status_code == 200, replay.text
            assert replay.json()["taskId"] == first_id
            assert replay.headers["idempotent-replayed"] == "true"
            assert _remembered_keys(env) == 1

            _wait_for(lambda: _remembered_keys(env) == 0)  # forgotten without being asked
            assert time.monotonic() - sent_at >= KEY_TTL - 0.05  # and not before its time
            second = _create(http, body, "order-7")
            assert second.status_code == 201, second.text
            assert "idempotent-replayed" not in second.headers
            second_id = second.json()["taskId"]
            assert second_id != first_id
            again = _create(http, body, "order-7")
            assert (again.status_code, again.json()["taskId"]) == (200, second_id)
            assert again.headers["idempotent-replayed"] == "true"
            assert http.get(f"/api/tasks/{first_id}").status_code == 200
            assert http.get("/api/stats").json()["tasks"]["Queued"] == 2
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_expired_idempotency_key_is_taken_over_before_any_purge(
    backend: str, tmp_path: Path
) -> None:
    """With no reaper round yet (SQL stores), a key whose TTL is over is still stored but no
    longer binds: the same key and body create a new task."""
    env = {
        **backend_env(backend, tmp_path),
        "TASKPLATFORM_IDEMPOTENCY_KEY_TTL_SECONDS": "1",
        "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "3600",
    }
    server = Server(env, tmp_path / "server.log").start()
    body = {"taskData": {"order": 8}, "callbackUrl": "http://127.0.0.1:9/x"}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            first = _create(http, body, "order-8")
            assert first.status_code == 201, first.text
            replay = _create(http, body, "order-8")
            assert (replay.status_code, replay.json()["taskId"]) == (200, first.json()["taskId"])
            time.sleep(1.2)
            assert _remembered_keys(env) == 1  # no purge ran: the expired claim is still there
            second = _create(http, body, "order-8")
            assert second.status_code == 201, second.text
            assert second.json()["taskId"] != first.json()["taskId"]
            again = _create(http, body, "order-8")
            assert (again.status_code, again.json()["taskId"]) == (200, second.json()["taskId"])
    finally:
        server.stop()


REAPING = {
    "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.03",
    "TASKPLATFORM_PROCESSING_LEASE_GRACE_SECONDS": "0.5",
    "TASKPLATFORM_QUEUE_RESERVATION_SECONDS": "1",
}
TASKS = 8


@pytest.mark.parametrize("backend", ["postgres", "redis+postgres"])
def test_two_servers_reap_a_killed_servers_processing_leases_once(
    backend: str, tmp_path: Path, receiver: Receiver
) -> None:
    """A server dies by SIGKILL mid-callback; two others reaping the same database every 30 ms
    record each attempt as interrupted exactly once, and of two executes racing afterwards
    exactly one runs the task again, to completion."""
    env = {**backend_env(backend, tmp_path), **REAPING}
    victim, *reapers = (Server(env, tmp_path / f"s{n}.log") for n in range(3))
    try:
        victim.start()  # creates the schema; the reapers then start side by side
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Server.start, reapers))
        with httpx.Client(base_url=victim.url, timeout=30) as http:
            # Each callback takes 1.5 s; the lease is timeoutSeconds 2 + grace 0.5 s. Several
            # tasks expire together, so the two reapers' rounds overlap on the same candidates.
            ids = [
                ready_task(http, receiver.url("/slow?seconds=1.5"), timeoutSeconds=2)
                for _ in range(TASKS)
            ]
            for task_id in ids:
                started = http.post(
                    f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"}
                )
                assert started.status_code == 202, started.text
            _wait_for(lambda: all(len(receiver.hits_for(task_id)) == 1 for task_id in ids))
        victim.stop(signal.SIGKILL)
        with (
            httpx.Client(base_url=reapers[0].url, timeout=30) as one,
            httpx.Client(base_url=reapers[1].url, timeout=30) as other,
        ):

            def status(task_id: str) -> str:
                found: str = one.get(f"/api/tasks/{task_id}").json()["status"]
                return found

            assert {status(task_id) for task_id in ids} == {"Processing"}
            _wait_for(lambda: {status(task_id) for task_id in ids} == {"Failed"})
            time.sleep(0.5)  # many more rounds of each reaper: a second reap would show now
            for task_id in ids:
                task = other.get(f"/api/tasks/{task_id}").json()
                assert (task["status"], task["error"], task["attempts"]) == (
                    "Failed",
                    LEASE_EXPIRED,
                    1,
                )
                log = other.get(f"/api/tasks/{task_id}/executions").json()["items"]
                assert [(entry["attempt"], entry["error"]) for entry in log] == [(1, LEASE_EXPIRED)]

            barrier = threading.Barrier(2 * TASKS)

            def execute(call: tuple[httpx.Client, str]) -> tuple[str, httpx.Response]:
                client, task_id = call
                barrier.wait()
                return task_id, client.post(f"/api/tasks/{task_id}/execute")

            calls = [(client, task_id) for task_id in ids for client in (one, other)]
            with ThreadPoolExecutor(len(calls)) as pool:
                answers = list(pool.map(execute, calls))
            for task_id in ids:
                mine = [answer for owner, answer in answers if owner == task_id]
                codes = sorted(answer.status_code for answer in mine)
                assert codes == [200, 409], [answer.text for answer in mine]
                (winner,) = [answer.json() for answer in mine if answer.status_code == 200]
                assert (winner["status"], winner["attempt"]) == ("Completed", 2)
                log = one.get(f"/api/tasks/{task_id}/executions").json()["items"]
                assert [(e["attempt"], e["error"], e["httpStatus"]) for e in log] == [
                    (1, LEASE_EXPIRED, None),
                    (2, None, 200),
                ]
                assert status(task_id) == "Completed"
                assert len(receiver.hits_for(task_id)) == 2
    finally:
        for server in (victim, *reapers):
            server.stop()
    logs = "".join(server.log() for server in reapers)
    reaped = {task_id: logs.count(f"task {task_id}: attempt 1 interrupted") for task_id in ids}
    assert set(reaped.values()) == {1}, reaped
