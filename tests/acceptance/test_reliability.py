"""Reliability: leases and crash recovery, idempotent create, long polls, graceful shutdown,
clients that hang up; against real servers, killed and restarted for real."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.acceptance.helpers import assert_problem, create, ready_task
from tests.support.backends import REDIS_URL, backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server, Worker, store_env

LEASE_EXPIRED = (
    "interrupted: the lease ran out before the callback's outcome was recorded (the server making "
    "it stopped, or could not reach the database)"
)
"""The error the reaper records for an attempt whose Processing lease ran out."""
STOPPED = "interrupted: the server stopped during the callback"
"""The error of an attempt cut off when a stopping server's grace ran out."""

FAST = {
    "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2",
    "TASKPLATFORM_PROCESSING_LEASE_GRACE_SECONDS": "0.5",
    "TASKPLATFORM_QUEUE_RESERVATION_SECONDS": "1",
}


def _wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: an ended process not reaped yet (a zombie) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def test_a_callback_cut_off_by_sigkill_is_recorded_as_interrupted(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """The process making the call dies: the lease runs out, the attempt fails as interrupted
    (it counts), and the task can be executed again."""
    server = start_server(**FAST)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        task_id = ready_task(http, receiver.url("/slow?seconds=3"), timeoutSeconds=1)
        assert (
            http.post(
                f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"}
            ).status_code
            == 202
        )
        _wait_for(lambda: len(receiver.hits_for(task_id)) == 1)
    server.stop(signal.SIGKILL)
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        _wait_for(lambda: http.get(f"/api/tasks/{task_id}").json()["status"] == "Failed")
        task = http.get(f"/api/tasks/{task_id}").json()
        assert task["error"] == LEASE_EXPIRED
        assert task["attempts"] == 1
        log = http.get(f"/api/tasks/{task_id}/executions").json()["items"]
        assert [(entry["attempt"], entry["error"]) for entry in log] == [(1, LEASE_EXPIRED)]
        # Executable again; only the retry is a second callback.
        again = http.post(f"/api/tasks/{task_id}/execute").json()
        assert again["attempt"] == 2
        assert len(receiver.hits_for(task_id)) == 2


def test_an_unexecuted_dequeued_task_returns_to_its_place(
    start_server: Callable[..., Server],
) -> None:
    """Nobody executes a Dequeued task within the lease: it is Queued again, ahead of the tasks
    created after it, and its record says why."""
    server = start_server(TASKPLATFORM_DEQUEUE_LEASE_SECONDS="1", **FAST)
    with httpx.Client(base_url=server.url) as http:
        first = create(http, "http://127.0.0.1:9/x", priority=5)
        second = create(http, "http://127.0.0.1:9/x", priority=5)
        assert http.get("/api/tasks/dequeue").json()["taskId"] == first
        _wait_for(lambda: http.get(f"/api/tasks/{first}").json()["status"] == "Queued")
        record = http.get(f"/api/tasks/{first}").json()
        assert record["error"] == "returned to the queue: not executed within 1 s of dequeue"
        assert record["priority"] == 5
        assert http.get("/api/tasks/dequeue").json()["taskId"] == first
        assert http.get("/api/tasks/dequeue").json()["taskId"] == second


def test_dequeue_lease_zero_keeps_a_task_dequeued(start_server: Callable[..., Server]) -> None:
    """``TASKPLATFORM_DEQUEUE_LEASE_SECONDS=0`` never sends a task back."""
    server = start_server(TASKPLATFORM_DEQUEUE_LEASE_SECONDS="0", **FAST)
    with httpx.Client(base_url=server.url) as http:
        task_id = create(http, "http://127.0.0.1:9/x")
        http.get("/api/tasks/dequeue")
        time.sleep(1.5)
        assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Dequeued"


def test_two_servers_reap_each_expired_lease_once(backend: str, tmp_path: Path) -> None:
    """Two servers reap the same database: each expired task goes back exactly once."""
    env = {**backend_env(backend, tmp_path), **FAST, "TASKPLATFORM_DEQUEUE_LEASE_SECONDS": "1"}
    servers = [Server(env, tmp_path / f"s{n}.log").start() for n in range(2)]
    try:
        with httpx.Client(base_url=servers[0].url) as http:
            ids = [create(http, "http://127.0.0.1:9/x") for _ in range(20)]
            for _ in ids:
                assert http.get("/api/tasks/dequeue").status_code == 200
            _wait_for(lambda: http.get("/api/stats").json()["tasks"]["Queued"] == 20)
            time.sleep(0.5)  # a second reap, had there been one, would show as a duplicate
            # Counted before the second round: its tasks are leased for 1 s as well, and are
            # rightly reaped again when stopping the servers takes longer than that.
            reaped = sum(server.log().count("is Queued again") for server in servers)
            with httpx.Client(base_url=servers[1].url) as other:
                again = [other.get("/api/tasks/dequeue").json()["taskId"] for _ in ids]
                assert_problem(other.get("/api/tasks/dequeue"), 404, "queue_empty")
        assert again == ids
    finally:
        for server in servers:
            server.stop()
    assert reaped == 20


def _delete_redis_keys(prefix: str) -> None:
    """What a Redis that restarts without its data (no AOF, a failover to an empty replica)
    does to the queue: every key under ``prefix`` is gone."""

    async def delete() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            if keys := [key async for key in client.scan_iter(match=f"{prefix}:*")]:
                await client.delete(*keys)
        finally:
            await client.aclose()

    asyncio.run(delete())


@pytest.mark.parametrize("restart", [True, False], ids=["server restarted", "server running"])
def test_a_requeued_task_keeps_its_place_after_redis_lost_its_data(
    backend: str, restart: bool, tmp_path: Path
) -> None:
    """Redis loses its data while three tasks are Dequeued (so only the store has them), then
    three more are created. Redis's counter started again at 1, and was moved past the
    database queue's counter only (0 when Redis was always the queue), once per process: the
    three came back from their leases behind the newer tasks of their priority."""
    if "redis" not in backend:
        pytest.skip("only a Redis queue can lose its data apart from the store")
    env = {**backend_env(backend, tmp_path), **FAST, "TASKPLATFORM_DEQUEUE_LEASE_SECONDS": "1"}
    server = Server(env, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url) as http:
            old = [create(http, "http://127.0.0.1:9/x", task_data={"old": n}) for n in range(3)]
            for task_id in old:
                assert http.get("/api/tasks/dequeue").json()["taskId"] == task_id
            if restart:
                server.stop()
            _delete_redis_keys(env["TASKPLATFORM_REDIS_KEY_PREFIX"])
            if restart:
                server.start()
            new = [create(http, "http://127.0.0.1:9/x", task_data={"new": n}) for n in range(3)]
            _wait_for(lambda: http.get("/api/stats").json()["tasks"]["Queued"] == 6)
            order = [http.get("/api/tasks/dequeue").json()["taskId"] for _ in range(6)]
    finally:
        server.stop()
    assert order == old + new


def test_idempotency_key_returns_the_first_task(client: httpx.Client) -> None:
    """Same key, same body: 200 with the first task; another body: 422; ten at once: one task."""
    body = {"taskData": {"order": 7}, "callbackUrl": "http://127.0.0.1:9/x", "priority": -9}
    key = f"order-7-{time.time_ns()}"
    first = client.post("/api/tasks", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    repeat = client.post("/api/tasks", json=body, headers={"Idempotency-Key": key})
    assert repeat.status_code == 200
    assert repeat.json()["taskId"] == first.json()["taskId"]
    assert repeat.headers["idempotent-replayed"] == "true"
    other = client.post(
        "/api/tasks", json={**body, "priority": 1}, headers={"Idempotency-Key": key}
    )
    problem = assert_problem(other, 422, "idempotency_key_reused")
    assert problem["taskId"] == first.json()["taskId"]
    assert_problem(
        client.post("/api/tasks", json=body, headers={"Idempotency-Key": "has space"}),
        422,
        "validation_error",
    )


def test_batch_items_with_idempotency_keys_come_back_on_a_resend(client: httpx.Client) -> None:
    """Over HTTP: a resent batch gives its keyed items back (``replayed``), another item under
    a used key is that item's 422, a malformed key is that item's problem in words, and the
    batch's Idempotency-Key header is refused with a pointer to the items' keys."""
    run = time.time_ns()
    items = [
        {
            "taskData": {"n": n},
            "callbackUrl": "http://127.0.0.1:9/x",
            "idempotencyKey": f"{run}-{n}",
        }
        for n in range(3)
    ]
    first = client.post("/api/tasks/batch", json={"tasks": items})
    assert first.status_code == 200, first.text
    assert [item.get("replayed", False) for item in first.json()["items"]] == [False] * 3
    again = client.post("/api/tasks/batch", json={"tasks": items})
    assert [item["taskId"] for item in again.json()["items"]] == [
        item["taskId"] for item in first.json()["items"]
    ]
    assert [item["replayed"] for item in again.json()["items"]] == [True] * 3
    other = {**items[0], "taskData": {"n": 99}}
    mixed = client.post(
        "/api/tasks/batch",
        json={"tasks": [other, {**items[1], "idempotencyKey": "has space"}]},
    ).json()["items"]
    assert mixed[0]["error"]["code"] == "idempotency_key_reused"
    assert "this idempotencyKey was used for another item" in mixed[0]["error"]["detail"]
    assert mixed[0]["error"]["taskId"] == first.json()["items"][0]["taskId"]
    assert mixed[1]["error"]["code"] == "validation_error"
    assert mixed[1]["error"]["errors"] == [
        {
            "field": "$.idempotencyKey",
            "message": "must be 1 to 255 printable ASCII characters, without spaces",
        }
    ]
    refused = client.post(
        "/api/tasks/batch", json={"tasks": items}, headers={"Idempotency-Key": f"{run}"}
    )
    problem = assert_problem(refused, 422, "validation_error")
    assert "idempotencyKey" in problem["errors"][0]["message"]
    single = assert_problem(client.post("/api/tasks", json=items[0]), 422, "validation_error")
    assert single["errors"] == [
        {
            "field": "$.idempotencyKey",
            "message": "unknown field: send the key as the Idempotency-Key header",
        }
    ]


def test_ten_identical_requests_at_once_create_one_task(server: Server) -> None:
    key = f"burst-{time.time_ns()}"
    body = {"taskData": {"burst": True}, "callbackUrl": "http://127.0.0.1:9/x", "priority": -9}
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(10)]
    start = threading.Barrier(10)

    def send(http: httpx.Client) -> httpx.Response:
        start.wait()
        return http.post("/api/tasks", json=body, headers={"Idempotency-Key": key})

    try:
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(send, clients))
    finally:
        for http in clients:
            http.close()
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["taskId"] for r in responses}) == 1


def test_long_poll_waits_and_wakes_on_arrival(start_server: Callable[..., Server]) -> None:
    """waitSeconds waits on an empty queue and answers as soon as a task arrives."""
    server = start_server(TASKPLATFORM_LONG_POLL_FALLBACK_SECONDS="5")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        started = time.monotonic()
        assert_problem(http.get("/api/tasks/dequeue?waitSeconds=1"), 404, "queue_empty")
        assert 0.9 < time.monotonic() - started < 3
        for bad in ("-1", "21", "soon"):
            assert_problem(
                http.get(f"/api/tasks/dequeue?waitSeconds={bad}"), 422, "validation_error"
            )
        for not_finite in ("nan", "inf", "1e400"):  # named as such, not as "more than 20"
            problem = assert_problem(
                http.get(f"/api/tasks/dequeue?waitSeconds={not_finite}"), 422, "validation_error"
            )
            assert problem["errors"][0]["message"] == "Input should be a finite number"

        created_at: list[float] = []

        def create_later() -> None:
            time.sleep(0.5)
            with httpx.Client(base_url=server.url) as other:
                created_at.append(time.monotonic())
                create(other, "http://127.0.0.1:9/x")

        thread = threading.Thread(target=create_later)
        thread.start()
        response = http.get("/api/tasks/dequeue?waitSeconds=10")
        woke = time.monotonic()
        thread.join()
    assert response.status_code == 200
    assert woke - created_at[0] < 1.0  # the fallback check is 5 s away: this was the signal


def test_long_poll_wakes_for_a_task_created_through_another_server(
    backend: str, tmp_path: Path
) -> None:
    """Across processes: PostgreSQL LISTEN/NOTIFY, Redis pub/sub, or SQLite's fallback check."""
    fallback = "0.5" if backend == "sqlite" else "10"
    env = {**backend_env(backend, tmp_path), "TASKPLATFORM_LONG_POLL_FALLBACK_SECONDS": fallback}
    servers = [Server(env, tmp_path / f"s{n}.log").start() for n in range(2)]
    try:
        with httpx.Client(base_url=servers[0].url, timeout=30) as waiting:
            waiting.get("/api/tasks/dequeue?waitSeconds=0")  # connections warm
            created_at: list[float] = []

            def create_elsewhere() -> None:
                time.sleep(1.0)  # let the listener subscribe and the long poll start
                with httpx.Client(base_url=servers[1].url) as other:
                    created_at.append(time.monotonic())
                    create(other, "http://127.0.0.1:9/x")

            thread = threading.Thread(target=create_elsewhere)
            thread.start()
            response = waiting.get("/api/tasks/dequeue?waitSeconds=15")
            woke = time.monotonic()
            thread.join()
    finally:
        for server in servers:
            server.stop()
    assert response.status_code == 200
    assert woke - created_at[0] < 2.0


def test_50_idle_long_polls_cost_almost_no_cpu(start_server: Callable[..., Server]) -> None:
    """No busy loop: 50 long polls waiting 4 s on an empty queue use little server CPU."""
    server = start_server()
    assert server.process is not None
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(50)]
    try:
        clients[0].get("/api/tasks/dequeue")
        before = _cpu_seconds(server.process.pid)
        with ThreadPoolExecutor(50) as pool:
            responses = list(
                pool.map(lambda http: http.get("/api/tasks/dequeue?waitSeconds=4"), clients)
            )
        used = _cpu_seconds(server.process.pid) - before
    finally:
        for http in clients:
            http.close()
    assert all(r.status_code == 404 for r in responses)
    print(f"server CPU for 50 idle long polls of 4 s: {used:.2f} s")
    assert used < 1.0


def test_sigterm_lets_callbacks_finish_and_interrupts_the_rest(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """SIGTERM: a callback that ends within the grace completes; one that does not is recorded
    as interrupted (retryable). Nothing stays Processing."""
    server = start_server(TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="2", **FAST)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        quick = ready_task(http, receiver.url("/slow?seconds=1"))
        stuck = ready_task(http, receiver.url("/slow?seconds=30"), timeoutSeconds=60)
        for task_id in (quick, stuck):
            http.post(f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"})
        _wait_for(lambda: len(receiver.hits_for(stuck)) == 1)
    started = time.monotonic()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status shows it.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    assert "Application shutdown complete" in server.log()
    server.start()
    with httpx.Client(base_url=server.url) as http:
        assert http.get(f"/api/tasks/{quick}").json()["status"] == "Completed"
        interrupted = http.get(f"/api/tasks/{stuck}").json()
        assert interrupted["status"] == "Failed"
        assert interrupted["error"] == STOPPED
        assert http.get("/api/stats").json()["tasks"]["Processing"] == 0


def _refuses_connections(port: int) -> bool:
    """Whether a TCP connect to ``port`` is refused: the listening socket is closed."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_answers_a_synchronous_execute_in_flight_without_a_500(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """SIGTERM while two synchronous executes wait on their callbacks: the server stops accepting
    connections at once; the callback that ends within the grace answers its outcome; the one
    that does not answers 503 ``shutting_down`` at the grace (no 500, no traceback), recorded
    as interrupted. The server is gone within one grace (not two: the drain and the callbacks
    share the deadline), and after a restart the interrupted task runs again to completion."""
    grace = 2.0
    server = start_server(TASKPLATFORM_SHUTDOWN_GRACE_SECONDS=f"{grace:g}", **FAST)
    assert server.process is not None
    answers: dict[str, httpx.Response] = {}

    def execute(task_id: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            answers[task_id] = own.post(f"/api/tasks/{task_id}/execute")

    with httpx.Client(base_url=server.url, timeout=30) as http:
        quick = ready_task(http, receiver.url("/slow?seconds=1"))
        stuck = ready_task(http, receiver.url("/slow?seconds=3.5"), timeoutSeconds=60)
    callers = [threading.Thread(target=execute, args=(task_id,)) for task_id in (quick, stuck)]
    for caller in callers:
        caller.start()
    _wait_for(lambda: all(receiver.hits_for(task_id) for task_id in (quick, stuck)))
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    _wait_for(lambda: _refuses_connections(server.port), seconds=1.5)
    assert server.process.poll() is None, "refused only because it had exited: no drain"
    assert server.process.wait(grace + 5) in (0, -signal.SIGTERM)
    stopped_after = time.monotonic() - started
    for caller in callers:
        caller.join(10)
    print(f"stopped {stopped_after:.2f} s after SIGTERM (grace {grace:g} s)")
    assert grace - 0.2 < stopped_after < grace + 1.5

    finished = answers[quick]
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] == "Completed"
    problem = assert_problem(answers[stuck], 503, "shutting_down")
    assert problem["taskId"] == stuck
    assert "recorded as interrupted" in problem["detail"]
    assert "executed again" in problem["detail"]
    log = server.log()
    for sign_of_a_crash in (
        "Traceback",
        "Exception in ASGI application",
        "graceful shutdown exceeded",
    ):
        assert sign_of_a_crash not in log, log

    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get(f"/api/tasks/{quick}").json()["status"] == "Completed"
        interrupted = http.get(f"/api/tasks/{stuck}").json()
        assert (interrupted["status"], interrupted["attempts"]) == ("Failed", 1)
        assert interrupted["error"] == STOPPED
        assert http.get("/api/stats").json()["tasks"]["Processing"] == 0
        again = http.post(f"/api/tasks/{stuck}/execute")
        assert again.status_code == 200, again.text
        assert (again.json()["status"], again.json()["attempt"]) == ("Completed", 2)
    assert len(receiver.hits_for(stuck)) == 2


def test_a_second_stop_signal_interrupts_the_callbacks_at_once(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """Ctrl-C twice while a synchronous execute waits on a callback of 10 s, with a grace of
    30 s: the server is gone within seconds, not the grace; the execute answers 503
    ``shutting_down``, not uvicorn's 500 of a dropped request; the attempt is recorded as
    interrupted, so after a restart the task is Failed with one attempt, nothing Processing."""
    server = start_server(TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="30", **FAST)
    assert server.process is not None
    answers: list[httpx.Response] = []
    with httpx.Client(base_url=server.url, timeout=60) as http:
        stuck = ready_task(http, receiver.url("/slow?seconds=10"), timeoutSeconds=60)

    def execute() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            answers.append(own.post(f"/api/tasks/{stuck}/execute"))

    caller = threading.Thread(target=execute)
    caller.start()
    _wait_for(lambda: bool(receiver.hits_for(stuck)))
    started = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    _wait_for(lambda: "waiting up to" in server.log(), seconds=5)
    server.process.send_signal(signal.SIGINT)
    server.process.wait(15)
    stopped_after = time.monotonic() - started
    caller.join(10)
    print(f"stopped {stopped_after:.2f} s after the first SIGINT (grace 30 s)")
    assert stopped_after < 5
    problem = assert_problem(answers[0], 503, "shutting_down")
    assert problem["taskId"] == stuck
    log = server.log()
    assert "second stop signal: interrupting 1 callback now" in log
    assert "Exception in ASGI application" not in log, log

    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        interrupted = http.get(f"/api/tasks/{stuck}").json()
        assert (interrupted["status"], interrupted["attempts"]) == ("Failed", 1)
        assert interrupted["error"] == STOPPED
        assert http.get("/api/stats").json()["tasks"]["Processing"] == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_stop_signal_cuts_the_grace_of_dispatched_callbacks(
    start_server: Callable[..., Server], receiver: Receiver, second: signal.Signals
) -> None:
    """A dispatching server with no request open goes from the first SIGTERM straight into the
    lifespan's shutdown, where its callbacks get the grace; a second SIGTERM, as a second
    SIGINT, interrupts them at once (it waited out the callbacks before)."""
    server = start_server(
        TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="30", TASKPLATFORM_DISPATCH="true", **FAST
    )
    assert server.process is not None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        task_id = create(http, receiver.url("/slow?seconds=10"), timeoutSeconds=60)
    _wait_for(lambda: bool(receiver.hits_for(task_id)))
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    _wait_for(lambda: "Waiting for application shutdown" in server.log(), seconds=5)
    server.process.send_signal(second)
    server.process.wait(15)
    stopped_after = time.monotonic() - started
    print(f"stopped {stopped_after:.2f} s after the first SIGTERM (grace 30 s)")
    assert stopped_after < 5
    assert "second stop signal: interrupting 1 callback now" in server.log()


def test_a_second_stop_signal_stops_a_worker_at_once(
    server: Server, receiver: Receiver, start_worker: Callable[..., Worker]
) -> None:
    """``taskplatform worker`` with a grace of 30 s, its callback taking 10 s: one SIGTERM waits
    (the callback may finish within the grace), a second one interrupts it at once, records the
    attempt as interrupted and the worker exits within seconds."""
    queue = f"stop-twice-{time.time_ns()}"
    worker = start_worker(
        {**store_env(server), "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "30"}, "--queue", queue
    )
    assert worker.process is not None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        stuck = create(http, receiver.url("/slow?seconds=10"), queue=queue, timeoutSeconds=60)
        _wait_for(lambda: bool(receiver.hits_for(stuck)), seconds=15)
        worker.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: "waiting up to" in worker.log(), seconds=5)
        time.sleep(0.5)
        assert worker.alive(), "the first signal waits for the callback"
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(15)
        print(f"stopped {time.monotonic() - started:.2f} s after the second SIGTERM")
        assert time.monotonic() - started < 5
        assert "second stop signal: interrupting 1 callback now" in worker.log()
        interrupted = http.get(f"/api/tasks/{stuck}").json()
        assert (interrupted["status"], interrupted["attempts"]) == ("Retry", 1), interrupted
        assert interrupted["error"] == STOPPED


def test_the_workers_of_serve_stop_when_it_is_killed_and_free_the_port(tmp_path: Path) -> None:
    """``kill -9`` of ``serve --workers 2`` (the OOM killer, a service manager that signals the
    main process only) sends its workers nothing: they kept serving and dispatching with no
    supervisor, and held the port, so the next ``serve`` failed with "address already in use".
    They notice within a second or two and stop as after SIGTERM."""
    env = backend_env("sqlite", tmp_path)
    server = Server(env, tmp_path / "killed.log", "--workers", "2").start()
    assert server.process is not None
    workers = [
        int(pid)
        for pid in Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        .read_text()
        .split()
    ]
    assert len(workers) >= 2  # the API processes, and multiprocessing's resource tracker
    server.process.kill()
    server.process.wait(5)
    _wait_for(lambda: not any(_running(pid) for pid in workers), 15)
    assert "that started this API process is gone: stopping" in server.log()
    again = Server(env, tmp_path / "again.log")
    again.use_port(server.port)  # the port the killed server's workers held
    again.start()
    again.stop()


def test_ctrl_c_while_the_workers_of_serve_start_ends_them_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A Ctrl-C while ``serve --workers 2`` spawns its workers (each imports the app, about a
    second) reached them mid-import: each died in a KeyboardInterrupt traceback. They start with
    SIGINT and SIGTERM blocked until their handlers are in place, so the same Ctrl-C stops
    everything quietly, and gracefully. Five moments after the parent's "Started parent
    process", so one lands mid-import on a fast machine too."""
    for round_, delay in enumerate((0.0, 0.15, 0.3, 0.45, 0.6)):
        server = Server(backend_env("sqlite", tmp_path), tmp_path / f"ctrl-c-{round_}.log")
        with server.log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "taskplatform", "serve", "--workers", "2"],
                env=server.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        try:
            _wait_for(lambda: "Started parent process" in server.log())  # noqa: B023
            time.sleep(delay)
            os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
            process.wait(20)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        output = server.log()
        assert "Traceback" not in output, output
        assert "Stopping parent process" in output
        # One stop, not two: the parent's SIGTERM taken before the Ctrl-C's own SIGINT forced
        # the exit, and skipped the shutdown of an app that had started (and dispatched).
        started = output.count("Application startup complete")
        assert output.count("Application shutdown complete") == started, output


@pytest.mark.parametrize("backend", ["sqlite"])  # signals, not storage: one backend will do
@pytest.mark.parametrize("second", ["Ctrl-C again", "SIGTERM to the parent"])
def test_serve_with_workers_keeps_the_grace_at_one_ctrl_c_and_cuts_it_at_a_second_signal(
    backend: str, tmp_path: Path, receiver: Receiver, second: str
) -> None:
    """``serve --workers 2``: a terminal's Ctrl-C reaches the parent and both workers, and the
    parent then sends each worker SIGTERM. That copy is no second signal: the callbacks in
    flight keep their grace (they were interrupted at once). A second Ctrl-C, or a second
    signal to the parent alone (which the parent passes on), cuts the grace."""
    env = {
        **backend_env(backend, tmp_path),
        **FAST,
        "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "30",
        "TASKPLATFORM_DISPATCH": "true",
    }
    server = Server(env, tmp_path / "serve.log", "--workers", "2", own_group=True).start()
    assert server.process is not None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            quick = create(http, receiver.url("/slow?seconds=2"), timeoutSeconds=60)
            stuck = create(http, receiver.url("/slow?seconds=60"), timeoutSeconds=120)
        _wait_for(lambda: bool(receiver.hits_for(quick) and receiver.hits_for(stuck)))
        os.killpg(server.process.pid, signal.SIGINT)  # Ctrl-C
        _wait_for(lambda: f"task {quick} is Completed" in server.log())
        assert server.process.poll() is None, "the other callback still has its grace"
        assert "second stop signal" not in server.log()
        assert "SIGTERM ignored: this worker is stopping already" in server.log()

        started = time.monotonic()
        if second == "Ctrl-C again":
            os.killpg(server.process.pid, signal.SIGINT)
        else:
            server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)
        print(f"stopped {time.monotonic() - started:.2f} s after the second signal (grace 30 s)")
        assert time.monotonic() - started < 8
        assert "second stop signal: interrupting 1 callback now" in server.log()
    finally:
        server.stop()

    again = Server({**env, "TASKPLATFORM_DISPATCH": "false"}, tmp_path / "again.log").start()
    try:
        with httpx.Client(base_url=again.url, timeout=30) as http:
            assert http.get(f"/api/tasks/{quick}").json()["status"] == "Completed"
            interrupted = http.get(f"/api/tasks/{stuck}").json()
            assert (interrupted["status"], interrupted["error"]) == ("Retry", STOPPED)
    finally:
        again.stop()


def test_a_client_that_hangs_up_does_not_cancel_the_callback(
    client: httpx.Client, server: Server, receiver: Receiver
) -> None:
    """The caller disconnects mid-execute: the attempt completes and is recorded, and the
    server keeps serving."""
    task_id = ready_task(client, receiver.url("/slow?seconds=1.5"))
    with (
        httpx.Client(base_url=server.url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post(f"/api/tasks/{task_id}/execute")
    _wait_for(lambda: client.get(f"/api/tasks/{task_id}").json()["status"] == "Completed")
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert [(entry["attempt"], entry["httpStatus"]) for entry in log] == [(1, 200)]
    assert len(receiver.hits_for(task_id)) == 1
    for _ in range(20):
        assert client.get("/healthz").status_code == 200
    assert (
        client.post(f"/api/tasks/{ready_task(client, receiver.url('/ok'))}/execute").json()[
            "status"
        ]
        == "Completed"
    )


def test_a_long_poll_whose_client_left_takes_no_task(server: Server) -> None:
    """A client gives up on a 10 s long poll after 1 s (a proxy's timeout, say); a task created
    after that stays Queued for the next client. Before, the abandoned poll woke, took it, and it
    sat Dequeued for nobody until its lease ran out (300 s by default)."""
    queue = f"gone-{time.time_ns()}"
    with (
        httpx.Client(base_url=server.url, timeout=1.0) as leaving,
        pytest.raises(httpx.ReadTimeout),
    ):
        leaving.get(f"/api/tasks/dequeue?queue={queue}&waitSeconds=10")
    time.sleep(0.5)  # the server sees the connection close
    with httpx.Client(base_url=server.url, timeout=30) as http:
        task_id = create(http, "http://127.0.0.1:9/x", queue=queue)
        time.sleep(0.5)  # an abandoned poll would have woken and taken it by now
        assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
        taken = http.get(f"/api/tasks/dequeue?queue={queue}")
        assert (taken.status_code, taken.json()["taskId"]) == (200, task_id)


def test_a_long_poll_ends_when_its_queue_is_paused(server: Server) -> None:
    """A pause made while a long poll waits ends the poll with 409 queue_paused, and a task
    created in the paused queue stays Queued (the poll handed it out before)."""
    queue = f"paused-{time.time_ns()}"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http.get, f"/api/tasks/dequeue?queue={queue}&waitSeconds=10")
            time.sleep(0.5)
            with httpx.Client(base_url=server.url, timeout=30) as other:
                assert other.post(f"/api/queues/{queue}/pause").status_code == 200
                task_id = create(other, "http://127.0.0.1:9/x", queue=queue)
            started = time.monotonic()
            response = waiting.result()
        assert time.monotonic() - started < 2.0
        assert_problem(response, 409, "queue_paused")
        assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sigterm_to_serve_with_workers_stops_accepting_connections_at_once(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """README (Graceful shutdown): "On SIGTERM the server stops accepting connections". One
    process does (a connect is refused at once: a load balancer or client goes elsewhere).
    With ``--workers 2`` the parent keeps the listening socket it bound open while its workers
    drain: the kernel went on accepting connections that nobody would ever answer, so every
    request and probe sent during the grace hung until the process exited, then was reset
    (found in review). The parent closes its copy at the stop now."""
    server = start_server(TASKPLATFORM_WORKERS="2", TASKPLATFORM_SHUTDOWN_GRACE_SECONDS="6")
    assert server.process is not None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        task_id = ready_task(http, receiver.url("/slow?seconds=5"), timeoutSeconds=60)

    def execute() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            own.post(f"/api/tasks/{task_id}/execute")

    caller = threading.Thread(target=execute)
    caller.start()
    _wait_for(lambda: bool(receiver.hits_for(task_id)))
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert server.process.poll() is None, "still draining its callback"
    try:
        answered = httpx.get(f"{server.url}/readyz", timeout=2)
        outcome = f"answered {answered.status_code}"
    except httpx.ConnectError:
        outcome = "refused"
    except httpx.TimeoutException:
        outcome = "accepted, then no answer within 2 s"
    finally:
        caller.join(15)
    assert outcome in ("refused", "answered 503"), outcome
