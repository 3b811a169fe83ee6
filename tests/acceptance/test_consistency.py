"""Queue/database consistency (seed FR-009): failures between queue and store lose nothing.

A fault injected between taking a task out of the queue and storing it, a process killed at
that point, and the database (or Redis) going away during dequeue: in each case the task stays
queued, comes back, and is dequeued exactly once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.acceptance.helpers import assert_problem, create
from tests.support.proxy import Proxy
from tests.support.receiver import Receiver
from tests.support.server import Server

FAST_RECOVERY = {
    "TASKPLATFORM_QUEUE_RESERVATION_SECONDS": "1",
    "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2",
}


def _restarted_without_faults(doomed: Server) -> Server:
    """Wait for ``doomed`` to have killed itself (SIGKILL, its fault), then start it again on
    the same files, database and key prefix, without the fault."""
    assert doomed.process is not None
    assert doomed.process.wait(10) == -9
    env = {
        k: v for k, v in doomed.env.items() if k not in ("TASKPLATFORM_FAULTS", "TASKPLATFORM_PORT")
    }
    return Server(env, doomed.log_path).start()


def _dequeue_all(http: httpx.Client) -> list[str]:
    taken = []
    while (response := http.get("/api/tasks/dequeue")).status_code == 200:
        taken.append(response.json()["taskId"])
    assert_problem(response, 404, "queue_empty")
    return taken


def test_store_failure_after_reserve_leaves_the_task_queued(
    backend: str, start_server: Callable[..., Server]
) -> None:
    """The store fails between reserve and insert: 503, the task stays queued, comes out once."""
    if backend == "postgres":
        pytest.skip("PostgreSQL moves a task in one statement; see the database-down test")
    server = start_server(TASKPLATFORM_FAULTS="after_reserve=fail:1")
    with httpx.Client(base_url=server.url) as http:
        task_id = create(http, "http://127.0.0.1:9/x")
        assert_problem(http.get("/api/tasks/dequeue"), 503, "backend_unavailable")
        assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
        assert _dequeue_all(http) == [task_id]
        assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Dequeued"


@contextlib.contextmanager
def _killed_at(
    fault: str, start_server: Callable[..., Server]
) -> Iterator[tuple[httpx.Client, str, str]]:
    """Create two tasks on a server that SIGKILLs itself at ``fault`` on the first dequeue; yield
    a client of the same backend restarted without the fault (same files, database and key
    prefix), past the reservation's deadline, and the two task ids."""
    doomed = start_server(TASKPLATFORM_FAULTS=f"{fault}=kill", **FAST_RECOVERY)
    with httpx.Client(base_url=doomed.url) as http:
        first = create(http, "http://127.0.0.1:9/x", task_data={"n": 1})
        second = create(http, "http://127.0.0.1:9/x", task_data={"n": 2})
        with pytest.raises(httpx.TransportError):
            http.get("/api/tasks/dequeue")
    revived = _restarted_without_faults(doomed)
    try:
        with httpx.Client(base_url=revived.url) as http:
            time.sleep(1.5)  # past the reservation's deadline: recovery settles it
            yield http, first, second
    finally:
        revived.stop()


def test_process_killed_after_reserve_loses_nothing(
    backend: str, start_server: Callable[..., Server]
) -> None:
    """SIGKILL between reserve and insert: after a restart the task comes back exactly once."""
    if backend == "postgres":
        pytest.skip("PostgreSQL moves a task in one statement; see the database-down test")
    with _killed_at("after_reserve", start_server) as (http, first, second):
        assert _dequeue_all(http) == [first, second]


def test_process_killed_between_insert_and_ack_hands_the_task_out_once(
    backend: str, start_server: Callable[..., Server]
) -> None:
    """Redis: SIGKILL after the store has the task but before the reservation is acked. The
    recovery finds the task in the store and acks the reservation: Dequeued once, never queued
    again, never handed out a second time."""
    if "redis" not in backend:
        pytest.skip("only the Redis queue acknowledges a reservation after the store commits")
    with _killed_at("after_insert", start_server) as (http, first, second):
        assert http.get(f"/api/tasks/{first}").json()["status"] == "Dequeued"
        assert _dequeue_all(http) == [second]
        assert http.get("/api/stats").json()["queueDepth"] == 0
        assert http.get(f"/api/tasks/{first}").json()["status"] == "Dequeued"


def test_a_task_whose_dequeue_was_killed_can_be_cancelled_at_once(
    backend: str, start_server: Callable[..., Server]
) -> None:
    """Redis: SIGKILL between reserve and insert leaves the task reserved until
    TASKPLATFORM_QUEUE_RESERVATION_SECONDS (30 s) run out. GET said Queued all along, and cancel
    answered 409 task_processing ("being handed out right now") for all of those 30 s, for a
    task nobody was handing out."""
    if "redis" not in backend:
        pytest.skip("only the Redis queue reserves a task before the store has it")
    doomed = start_server(TASKPLATFORM_FAULTS="after_reserve=kill")
    with httpx.Client(base_url=doomed.url) as http:
        task_id = create(http, "http://127.0.0.1:9/x")
        with pytest.raises(httpx.TransportError):
            http.get("/api/tasks/dequeue")
    revived = _restarted_without_faults(doomed)
    try:
        with httpx.Client(base_url=revived.url) as http:
            assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
            response = http.post(f"/api/tasks/{task_id}/cancel")
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "Cancelled"
            assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Cancelled"
            assert _dequeue_all(http) == []
    finally:
        revived.stop()


@pytest.fixture
def cut_backend(backend: str) -> Iterator[Callable[[dict[str, str]], tuple[dict[str, str], Proxy]]]:
    """Route the backend's network service (PostgreSQL, or Redis when it is the queue) through a
    proxy that the test can cut."""
    proxies: list[Proxy] = []

    def route(env: dict[str, str], variable: str | None = None) -> tuple[dict[str, str], Proxy]:
        if variable is None:
            redis = "redis" in backend
            variable = "TASKPLATFORM_QUEUE_URL" if redis else "TASKPLATFORM_DATABASE_URL"
        url = urlsplit(env[variable])
        proxy = Proxy(url.hostname or "127.0.0.1", url.port or 0).start()
        proxies.append(proxy)
        netloc = url.netloc.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        return {**env, variable: urlunsplit(url._replace(netloc=netloc))}, proxy

    yield route
    for proxy in proxies:
        proxy.stop()


@pytest.mark.parametrize("service", ["queue", "store"])
def test_backend_down_during_dequeue_is_503_and_keeps_the_task(
    backend: str,
    service: str,
    tmp_path_factory: pytest.TempPathFactory,
    cut_backend: Callable[..., tuple[dict[str, str], Proxy]],
) -> None:
    """With the queue or the store unreachable, dequeue is 503; once back, the task is there.

    Cutting the store under a Redis queue fails the insert after the reservation: the task must
    go back to its place, not be lost or handed out twice.
    """
    variable = {"queue": "TASKPLATFORM_QUEUE_URL", "store": "TASKPLATFORM_DATABASE_URL"}[service]
    if backend == "sqlite" or (service == "store" and backend == "redis+sqlite"):
        pytest.skip("the embedded database cannot be unreachable")
    if service == "queue" and "redis" not in backend:
        pytest.skip("the queue is the store's database: the store case cuts it")
    from tests.support.backends import backend_env

    workdir = tmp_path_factory.mktemp("down")
    env, proxy = cut_backend(backend_env(backend, workdir), variable)
    server = Server({**env, **FAST_RECOVERY}, workdir / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            task_id = create(http, "http://127.0.0.1:9/x")
            proxy.cut()
            assert_problem(http.get("/api/tasks/dequeue"), 503, "backend_unavailable")
            assert_problem(http.get("/readyz"), 503, "backend_unavailable")
            proxy.restore()
            for _ in range(50):
                if http.get("/readyz").status_code == 200:
                    break
                time.sleep(0.2)
            assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
            assert _dequeue_all(http) == [task_id]
    finally:
        server.stop()


def test_a_redrive_answered_503_while_redis_is_down_is_dequeued_once_redis_is_back(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    cut_backend: Callable[..., tuple[dict[str, str], Proxy]],
) -> None:
    """A re-drive with Redis cut off: the store's row is marked Queued (fresh attempts), then
    Redis fails and the answer is 503. Once Redis answered again, GET said Queued and a second
    re-drive 409 task_not_failed, yet the task could not be dequeued (nor cancelled) until
    recovery finished the re-drive TASKPLATFORM_QUEUE_RESERVATION_SECONDS (30 s) later: the
    server that answered 503 finishes it in its next maintenance round."""
    if "redis" not in backend:
        pytest.skip("only a Redis queue is reached apart from the store")
    from tests.support.backends import backend_env

    workdir = tmp_path_factory.mktemp("redrive")
    env, proxy = cut_backend(backend_env(backend, workdir))
    settings = {**env, "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2"}  # reservations: 30 s
    server = Server(settings, workdir / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            task_id = create(http, "http://127.0.0.1:9/", maxRetries=0)
            assert http.get("/api/tasks/dequeue").json()["taskId"] == task_id
            assert http.post(f"/api/tasks/{task_id}/execute").json()["status"] == "Failed"
            proxy.cut()
            assert_problem(http.post(f"/api/tasks/{task_id}/retry"), 503, "backend_unavailable")
            proxy.restore()
            for _ in range(50):
                if http.get("/readyz").status_code == 200:
                    break
                time.sleep(0.2)
            time.sleep(1)  # five maintenance rounds
            seen = http.get(f"/api/tasks/{task_id}").json()
            assert (seen["status"], seen["attempts"]) == ("Queued", 0)  # the re-drive was done
            assert _dequeue_all(http) == [task_id]
    finally:
        server.stop()


def test_a_database_that_stops_answering_is_503_in_bounded_time_and_keeps_the_task(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    cut_backend: Callable[..., tuple[dict[str, str], Proxy]],
) -> None:
    """PostgreSQL stops answering on open connections (a stalled network, a paused VM): every
    request waited for its statement's answer with no end; a dequeue's, committed once the
    database answered again, left the task Dequeued for nobody until its lease ran out (a
    newcomer's finding). Past ``TASKPLATFORM_DATABASE_STATEMENT_TIMEOUT_SECONDS`` a request
    is a 503; once the database answers, the task is Queued and dequeued exactly once."""
    if "postgres" not in backend:
        pytest.skip("only PostgreSQL is reached over the network as the store")
    from tests.support.backends import backend_env

    workdir = tmp_path_factory.mktemp("stalled")
    env, proxy = cut_backend(backend_env(backend, workdir), "TASKPLATFORM_DATABASE_URL")
    settings = {
        **env,
        **FAST_RECOVERY,
        "TASKPLATFORM_DATABASE_STATEMENT_TIMEOUT_SECONDS": "1",
        "TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
    }
    server = Server(settings, workdir / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            task_id = create(http, "http://127.0.0.1:9/x")
            proxy.stall()
            try:
                for method, path in [
                    ("GET", "/api/tasks/dequeue"),
                    ("GET", f"/api/tasks/{task_id}"),
                    ("GET", "/api/stats"),
                ]:
                    started = time.monotonic()
                    answer = http.request(method, path)
                    assert_problem(answer, 503, "backend_unavailable")
                    assert time.monotonic() - started < 15, (path, time.monotonic() - started)
            finally:
                proxy.resume()
            status = None
            for _ in range(100):  # a dequeue committed late is given back once it is seen
                answer = http.get(f"/api/tasks/{task_id}")
                status = answer.json().get("status") if answer.status_code == 200 else None
                if status == "Queued":
                    break
                time.sleep(0.2)
            assert status == "Queued"
            assert _dequeue_all(http) == [task_id]
    finally:
        server.stop()


def test_an_answered_callback_is_recorded_when_the_store_comes_back_within_its_lease(
    backend: str,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
    cut_backend: Callable[..., tuple[dict[str, str], Proxy]],
) -> None:
    """The store goes away while a callback is in flight. Back within the attempt's lease, the
    answer is recorded (one call, one attempt, Completed); away past it, a synchronous execute
    is a 503 saying the callback was made, and the reaper records the attempt as interrupted.
    Neither leaves an unretrieved asyncio error in the log."""
    if "postgres" not in backend:
        pytest.skip("the embedded database cannot be unreachable")
    from tests.support.backends import backend_env

    workdir = tmp_path_factory.mktemp("outcome")
    env, proxy = cut_backend(backend_env(backend, workdir), "TASKPLATFORM_DATABASE_URL")
    settings = {"TASKPLATFORM_PROCESSING_LEASE_GRACE_SECONDS": "1", **FAST_RECOVERY}
    server = Server({**env, **settings}, workdir / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            # Within the lease (10 s + 1 s): cut for about 2.5 s around the answer.
            kept = create(http, receiver.url("/slow?seconds=1"), timeoutSeconds=10, priority=9)
            assert http.get("/api/tasks/dequeue").json()["taskId"] == kept
            async_execute = {"Prefer": "respond-async"}
            assert http.post(f"/api/tasks/{kept}/execute", headers=async_execute).status_code == 202
            _wait_for(lambda: len(receiver.hits_for(kept)) == 1)
            proxy.cut()
            time.sleep(2.5)
            proxy.restore()
            _wait_for(lambda: _status(http, kept) == "Completed")
            task = http.get(f"/api/tasks/{kept}").json()
            assert task["attempts"] == 1
            log = http.get(f"/api/tasks/{kept}/executions").json()["items"]
            assert [(e["attempt"], e["httpStatus"], e["error"]) for e in log] == [(1, 200, None)]
            assert len(receiver.hits_for(kept)) == 1
            assert "outcome (Completed, HTTP 200) cannot be recorded yet" in server.log()

            # Past the lease (2 s + 1 s): the execute answers 503 and says what happened.
            lost = create(http, receiver.url("/slow?seconds=1"), timeoutSeconds=2, priority=9)
            assert http.get("/api/tasks/dequeue").json()["taskId"] == lost
            cutter = threading.Timer(0.5, proxy.cut)
            cutter.start()
            answer = http.post(f"/api/tasks/{lost}/execute")
            cutter.join()
            problem = assert_problem(answer, 503, "backend_unavailable")
            assert f"the callback of task {lost} was made (HTTP 200)" in problem["detail"]
            proxy.restore()
            _wait_for(lambda: _status(http, lost) == "Failed")
            task = http.get(f"/api/tasks/{lost}").json()
            assert (task["attempts"], task["error"]) == (
                1,
                "interrupted: the lease ran out before the callback's outcome was recorded "
                "(the server making it stopped, or could not reach the database)",
            )
    finally:
        server.stop()
    assert "never retrieved" not in server.log()
    assert " ERROR " not in server.log()


def _status(http: httpx.Client, task_id: str) -> str | None:
    response = http.get(f"/api/tasks/{task_id}")
    return str(response.json()["status"]) if response.status_code == 200 else None


def _wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_store_outage_pauses_dispatch_with_one_warning_a_second_per_queue(
    backend: str,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
    cut_backend: Callable[..., tuple[dict[str, str], Proxy]],
) -> None:
    """The dispatcher's claim loops of a queue fail together when the database goes away: the
    log says so once a second for the queue (it said it once a loop), and dispatch resumes."""
    if "postgres" not in backend:
        pytest.skip("the embedded database cannot be unreachable")
    from tests.support.backends import backend_env

    workdir = tmp_path_factory.mktemp("paused")
    env, proxy = cut_backend(backend_env(backend, workdir), "TASKPLATFORM_DATABASE_URL")
    server = Server({**env, "TASKPLATFORM_DISPATCH": "true"}, workdir / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            proxy.cut()
            time.sleep(3.5)
            proxy.restore()
            _wait_for(lambda: http.get("/readyz").status_code == 200)
            task_id = create(http, receiver.url("/ok"))
            _wait_for(lambda: _status(http, task_id) == "Completed")
    finally:
        server.stop()
    warned = [line for line in server.log().splitlines() if "dispatch of queue default" in line]
    stamps = [line[:19] for line in warned]  # to the second
    assert 2 <= len(warned) <= 5, warned
    assert len(stamps) == len(set(stamps)), warned


def _wait_status(http: httpx.Client, task_id: str, status: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        task: dict[str, Any] = http.get(f"/api/tasks/{task_id}").json()
        if task["status"] == status:
            return task
        assert time.monotonic() < deadline, f"{task_id} is {task['status']}, not {status}"
        time.sleep(0.1)


def test_an_execute_whose_start_was_not_confirmed_is_withdrawn(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """The database commits the move to Processing but its answer is lost: the execute answers
    503 and makes no callback, and the attempt is withdrawn at once (Retry, attempts back to
    0, the error says why), where the task sat Processing until its lease ran out and a
    ``maxRetries: 0`` task then ended a dead letter that no callback had reached. Executed
    again, it completes with one callback."""
    server = start_server(TASKPLATFORM_FAULTS="after_start=fail:1")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        task_id = create(http, receiver.url("/ok"), maxRetries=0)
        assert http.get("/api/tasks/dequeue").json()["taskId"] == task_id
        assert_problem(http.post(f"/api/tasks/{task_id}/execute"), 503, "backend_unavailable")
        task = _wait_status(http, task_id, "Retry", 5)
        assert (task["attempts"], task["deadLetter"]) == (0, False)
        assert task["error"].startswith("attempt withdrawn: the database did not confirm")
        assert receiver.hits_for(task_id) == []
        done = http.post(f"/api/tasks/{task_id}/execute")
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["attempt"]) == ("Completed", 1)
        assert len(receiver.hits_for(task_id)) == 1
        assert len(http.get(f"/api/tasks/{task_id}/executions").json()["items"]) == 1
        # The withdrawn attempt was never made: no outcome "retry" ("failed, retry scheduled").
        metrics = http.get("/metrics").text
    assert 'taskplatform_tasks_finished_total{outcome="completed",queue="default"} 1.0' in metrics
    assert 'outcome="retry"' not in metrics
    assert "attempt withdrawn: the database did not confirm its start" in server.log()


def test_a_dispatch_whose_start_was_not_confirmed_is_withdrawn_and_dispatched_again(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """The same in a dispatcher's claim: the claimed tasks go back to Retry, due at once, and
    the dispatcher calls each back once; none is counted an attempt it never made."""
    server = start_server(TASKPLATFORM_FAULTS="after_start=fail:1", TASKPLATFORM_DISPATCH="true")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [create(http, receiver.url("/ok"), maxRetries=0) for _ in range(3)]
        for task_id in ids:
            task = _wait_status(http, task_id, "Completed", 10)
            assert task["attempts"] == 1
            assert len(receiver.hits_for(task_id)) == 1
    assert "attempt withdrawn: the database did not confirm its start" in server.log()


@pytest.mark.parametrize("lease", ["300", "0"])
def test_a_dequeue_whose_answer_was_lost_returns_its_task_to_the_queue(
    start_server: Callable[..., Server], lease: str
) -> None:
    """The database commits a pull dequeue but its answer is lost: the caller gets 503 and
    never the task, which went back to its place only when its lease ran out (5 minutes), or
    never with leases off. It is back in the queue within seconds, first again."""
    server = start_server(
        TASKPLATFORM_FAULTS="after_dequeue=fail:1", TASKPLATFORM_DEQUEUE_LEASE_SECONDS=lease
    )
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = create(http, "http://127.0.0.1:9/x", priority=5)
        second = create(http, "http://127.0.0.1:9/x")
        assert_problem(http.get("/api/tasks/dequeue"), 503, "backend_unavailable")
        task = _wait_status(http, first, "Queued", 5)
        assert task["error"] == "returned to the queue: its dequeue's answer was lost (503)"
        assert _dequeue_all(http) == [first, second]
    assert f"task {first} is Queued (attempt 0) again (its dequeue's answer was lost (503))" in (
        server.log()
    )


def test_concurrent_executes_whose_starts_were_not_confirmed_are_all_withdrawn(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """Twelve executes at once, every start unconfirmed: all twelve withdrawn. On PostgreSQL
    concurrent starts share one statement, which wrote the first caller's lease token on every
    row, so each other caller's withdrawal found nothing and its task became a dead letter."""
    server = start_server(TASKPLATFORM_FAULTS="after_start=fail:12")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        ids = [create(http, receiver.url("/ok"), maxRetries=0) for _ in range(12)]
        assert sorted(_dequeue_all(http)) == sorted(ids)
        with ThreadPoolExecutor(12) as pool:
            answers = list(
                pool.map(lambda task_id: http.post(f"/api/tasks/{task_id}/execute"), ids)
            )
        assert [answer.status_code for answer in answers] == [503] * 12
        for task_id in ids:
            task = _wait_status(http, task_id, "Retry", 5)
            assert task["attempts"] == 0
        assert all(receiver.hits_for(task_id) == [] for task_id in ids)


def test_a_server_stopping_right_after_a_lost_dequeue_answer_returns_the_task_first(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Leases off, a dequeue's answer lost, SIGTERM at once: the stop makes the return's last
    try itself rather than cancel it in its first pause, so the task is queued when the server
    comes back (with no lease, nothing else would ever return it)."""
    doomed = start_server(
        TASKPLATFORM_FAULTS="after_dequeue=fail:1", TASKPLATFORM_DEQUEUE_LEASE_SECONDS="0"
    )
    with httpx.Client(base_url=doomed.url, timeout=30) as http:
        task_id = create(http, "http://127.0.0.1:9/x")
        assert_problem(http.get("/api/tasks/dequeue"), 503, "backend_unavailable")
    doomed.stop()  # SIGTERM
    env = {
        k: v for k, v in doomed.env.items() if k not in ("TASKPLATFORM_FAULTS", "TASKPLATFORM_PORT")
    }
    revived = Server(env, tmp_path / "revived.log").start()
    try:
        with httpx.Client(base_url=revived.url, timeout=30) as http:
            assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
            assert _dequeue_all(http) == [task_id]
    finally:
        revived.stop()
