"""Prometheus metrics and JSON logs, read from a real server as a monitoring system would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.helpers import assert_problem, create, dequeue_until, run_taskplatform
from tests.support.receiver import Receiver
from tests.support.server import Server, Worker, free_port

KEY = "metrics_key_0123456789"


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of ``/metrics`` by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_work_planned_for_later_is_not_waiting(
    client: httpx.Client, receiver: Receiver, backend: str
) -> None:
    """A queue holding only a task scheduled an hour ahead: depth 1, but no task waits, so the
    oldest age is null in the API and 0 in the gauge (it grew from the task's creation, and an
    alert on it fired for planned work); a due task beside it is what the age measures."""
    queue = f"planned-{backend.replace('+', '-')}"
    create(client, receiver.url("/ok"), queue=queue, delaySeconds=3600)
    time.sleep(1.2)
    [view] = [q for q in client.get("/api/queues").json()["items"] if q["name"] == queue]
    assert (view["depth"], view["oldestQueuedAgeSeconds"]) == (1, None)
    assert value(scrape(client), "taskplatform_queue_oldest_age_seconds", queue=queue) == 0
    create(client, receiver.url("/ok"), queue=queue)
    [view] = [q for q in client.get("/api/queues").json()["items"] if q["name"] == queue]
    assert view["depth"] == 2
    assert 0 <= view["oldestQueuedAgeSeconds"] < 1.0


def test_counters_and_gauges_follow_the_tasks(
    client: httpx.Client, receiver: Receiver, backend: str
) -> None:
    queue = f"metrics-{backend.replace('+', '-')}"
    before = scrape(client)
    ids = [create(client, receiver.url("/ok"), queue=queue) for _ in range(3)]
    failing = create(client, receiver.url("/status/500"), queue=queue, priority=1)
    after_create = scrape(client)
    assert value(after_create, "taskplatform_tasks_created_total", queue=queue) == 4
    assert value(after_create, "taskplatform_queue_depth", queue=queue) == 4
    assert value(after_create, "taskplatform_queue_oldest_age_seconds", queue=queue) >= 0
    assert value(after_create, "taskplatform_backends_up") == 1
    assert not [name for name, _ in after_create if name.endswith("_created")]  # no timestamps

    for task_id in (failing, ids[0]):  # the higher priority first
        response = client.get("/api/tasks/dequeue", params={"queue": queue})
        assert response.status_code == 200, response.text
        assert response.json()["taskId"] == task_id
        assert client.post(f"/api/tasks/{task_id}/execute").status_code == 200
    time.sleep(0.05)
    after = scrape(client)

    assert value(after, "taskplatform_tasks_dequeued_total", queue=queue, mode="pull") == 2
    assert value(after, "taskplatform_tasks_finished_total", queue=queue, outcome="completed") == 1
    assert value(after, "taskplatform_tasks_finished_total", queue=queue, outcome="failed") == 1
    assert value(after, "taskplatform_queue_depth", queue=queue) == 2
    assert value(after, "taskplatform_queue_processing", queue=queue) == 0
    for result in ("success", "failure"):
        count = value(
            after, "taskplatform_callback_duration_seconds_count", queue=queue, result=result
        )
        assert count == 1, result
        total = value(
            after, "taskplatform_callback_duration_seconds_sum", queue=queue, result=result
        )
        assert 0 <= total < 10  # milliseconds, whole: a fast local callback can take 0 ms
    assert value(after, "taskplatform_callbacks_in_flight") == 0
    # Another queue's counters did not move.
    assert value(after, "taskplatform_tasks_created_total", queue="default") == value(
        before, "taskplatform_tasks_created_total", queue="default"
    )

    # Its caller executes the failed task again and it fails again: two failures and no
    # outcome "retry" ("failed, retry scheduled"), as no retry was ever scheduled; its step
    # Failed -> Retry on the way to Processing ends no attempt.
    again = client.post(f"/api/tasks/{failing}/execute")
    assert (again.status_code, again.json()["status"]) == (200, "Failed"), again.text
    time.sleep(0.05)
    finished = scrape(client)
    assert value(finished, "taskplatform_tasks_finished_total", queue=queue, outcome="failed") == 2
    assert value(finished, "taskplatform_tasks_finished_total", queue=queue, outcome="retry") == 0


def test_in_flight_gauge_counts_a_running_callback(
    client: httpx.Client, receiver: Receiver
) -> None:
    task_id = create(client, receiver.url("/slow?seconds=1.5"), priority=2**31 - 1)
    dequeue_until(client, task_id)
    response = client.post(f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    during = scrape(client)
    assert value(during, "taskplatform_callbacks_in_flight") >= 1
    assert value(during, "taskplatform_queue_processing", queue="default") >= 1
    deadline = time.monotonic() + 10
    while client.get(f"/api/tasks/{task_id}").json()["status"] == "Processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert value(scrape(client), "taskplatform_callbacks_in_flight") == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_batch_and_dispatch_are_counted(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = start_server(TASKPLATFORM_DISPATCH="true", TASKPLATFORM_DISPATCH_QUEUES="auto")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        items = [
            {"taskData": {"n": n}, "callbackUrl": receiver.url("/ok"), "queue": "auto"}
            for n in range(5)
        ]
        items.append({"taskData": {}, "callbackUrl": "not a url", "queue": "auto"})
        # Counted per queue: a batch may mix them (this one is not dispatched).
        items += [{"taskData": {}, "callbackUrl": receiver.url("/ok"), "queue": "held"}] * 2
        response = client.post("/api/tasks/batch", json={"tasks": items})
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 15
        while True:
            samples = scrape(client)
            done = value(
                samples, "taskplatform_tasks_finished_total", queue="auto", outcome="completed"
            )
            if done == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done == 5
        assert value(samples, "taskplatform_tasks_created_total", queue="auto") == 5
        assert value(samples, "taskplatform_tasks_created_total", queue="held") == 2
        assert (
            value(samples, "taskplatform_tasks_dequeued_total", queue="auto", mode="dispatch") == 5
        )
        assert value(samples, "taskplatform_tasks_dequeued_total", queue="auto", mode="pull") == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_metrics_need_a_key_unless_made_public(start_server: Callable[..., Server]) -> None:
    locked = start_server(TASKPLATFORM_API_KEYS=KEY)
    assert_problem(httpx.get(f"{locked.url}/metrics"), 401, "unauthorized")
    allowed = httpx.get(f"{locked.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert allowed.status_code == 200
    assert "taskplatform_tasks_created_total" in allowed.text

    public = start_server(TASKPLATFORM_API_KEYS=KEY, TASKPLATFORM_METRICS_PUBLIC="true")
    assert httpx.get(f"{public.url}/metrics").status_code == 200
    assert_problem(httpx.get(f"{public.url}/api/stats"), 401, "unauthorized")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_several_workers_report_the_sum_of_all(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """``serve --workers 2``: counters summed over the processes; every task dequeued once."""
    server = start_server(TASKPLATFORM_WORKERS="2")
    created = set()
    # New connections, so the kernel spreads them over both workers.
    for n in range(20):
        with httpx.Client(base_url=server.url) as fresh:
            created.add(create(fresh, receiver.url("/ok"), task_data={"n": n}))
    for _ in range(6):
        with httpx.Client(base_url=server.url) as fresh:
            samples = scrape(fresh)
        assert value(samples, "taskplatform_tasks_created_total", queue="default") == 20

    def dequeue_one(_: int) -> str | None:
        with httpx.Client(base_url=server.url, timeout=30) as fresh:
            response = fresh.post("/api/tasks/dequeue")
        assert response.status_code in (200, 404), response.text
        return response.json()["taskId"] if response.status_code == 200 else None

    with ThreadPoolExecutor(8) as pool:
        taken = [task_id for task_id in pool.map(dequeue_one, range(30)) if task_id]
    assert sorted(taken) == sorted(created)  # each once, none lost
    with httpx.Client(base_url=server.url) as fresh:
        samples = scrape(fresh)
    assert value(samples, "taskplatform_tasks_dequeued_total", queue="default", mode="pull") == 20
    # Every process exports its clock offset, SQLite's too (0: it shares the host's clock).
    # (present, not defaulted: ``value`` gives 0 for a missing series)
    assert samples[("taskplatform_clock_offset_seconds", ())] == pytest.approx(0, abs=1)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_callbacks_in_flight_forget_a_worker_that_was_killed(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """``serve --workers 2`` with 6 callbacks in flight: both workers are SIGKILLed (uvicorn
    starts new ones), and the in-flight gauge drops to the living workers' 0. Before, the dead
    workers' counts stayed in the sum for as long as the server ran."""
    server = start_server(TASKPLATFORM_WORKERS="2")
    assert server.process is not None
    for n in range(6):
        with httpx.Client(base_url=server.url, timeout=30) as fresh:
            task_id = create(fresh, receiver.url("/slow?seconds=60"), task_data={"n": n})
            dequeue_until(fresh, task_id)
            started = fresh.post(
                f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"}
            )
            assert started.status_code == 202, started.text

    def in_flight() -> float:
        with httpx.Client(base_url=server.url, timeout=30) as fresh:
            return value(scrape(fresh), "taskplatform_callbacks_in_flight")

    assert in_flight() == 6
    parent = server.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    # uvicorn's workers, not multiprocessing's resource tracker
    workers = [
        pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, children
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError, AssertionError):
            if in_flight() == 0:
                break
        assert time.monotonic() < deadline, "the killed workers' callbacks are still counted"
        time.sleep(0.5)


@pytest.mark.parametrize("backend", ["sqlite", "redis+postgres"], indirect=True)
def test_json_logs_carry_every_lifecycle_event(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    server = start_server(TASKPLATFORM_LOG_FORMAT="json")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        task_id = create(client, receiver.url("/status/500"), maxRetries=1)
        dequeue_until(client, task_id)
        assert client.post(f"/api/tasks/{task_id}/execute").json()["status"] == "Failed"
        assert client.post(f"/api/tasks/{task_id}/execute").json()["status"] == "Failed"
        assert client.post(f"/api/tasks/{task_id}/retry").status_code == 200
        assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200
    server.stop()

    records: list[dict[str, Any]] = []
    for line in server.log().splitlines():
        if line.strip():
            records.append(json.loads(line))  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records)
    events = [
        (record["status"], record["attempt"])
        for record in records
        if record.get("task_id") == task_id and "status" in record
    ]
    assert events == [
        ("Queued", 0),
        ("Dequeued", 0),
        ("Processing", 1),
        ("Failed", 1),
        ("Retry", 1),
        ("Processing", 2),
        ("Failed", 2),
        ("Queued", 0),
        ("Cancelled", 0),
    ], events
    assert all(
        record["queue"] == "default" for record in records if record.get("task_id") == task_id
    )
    assert any("Uvicorn running on" in record["message"] for record in records)
    # uvicorn's coloured copy of its messages stays out of the JSON (ANSI escapes, a bare %d)
    assert not [record for record in records if "color_message" in record]


def test_json_logs_carry_each_task_of_a_batch_and_of_a_claim(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """A batch create and a dispatcher's batch claim log their tasks as one record each
    (``logs.EventLines``): each task still gets a JSON line of its own with its fields."""
    server = start_server(TASKPLATFORM_LOG_FORMAT="json", TASKPLATFORM_DISPATCH="true")
    items = [{"taskData": {"n": n}, "callbackUrl": receiver.url("/ok")} for n in range(40)]
    items.insert(7, {"taskData": {}, "callbackUrl": "not a url"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post("/api/tasks/batch", json={"tasks": items})
        assert response.status_code == 200, response.text
        task_ids = [item["taskId"] for item in response.json()["items"] if "taskId" in item]
        assert len(task_ids) == 40
        deadline = time.monotonic() + 20
        while client.get("/api/stats").json()["tasks"].get("Completed", 0) < 40:
            assert time.monotonic() < deadline, "the dispatcher did not complete the batch"
            time.sleep(0.05)
    server.stop()

    events: dict[str, list[tuple[str, int]]] = {task_id: [] for task_id in task_ids}
    for line in server.log().splitlines():
        record = json.loads(line)  # every line is one JSON object
        if record.get("task_id") in events:
            assert record["message"].startswith(f"task {record['task_id']} is {record['status']}")
            assert record["queue"] == "default"
            events[record["task_id"]].append((record["status"], record["attempt"]))
    for task_id in task_ids:
        assert events[task_id] == [("Queued", 0), ("Processing", 1), ("Completed", 1)], task_id


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_worker_serves_its_own_metrics(
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    receiver: Receiver,
) -> None:
    server = start_server()
    port = free_port()
    worker = start_worker(server.env, "--queue", "worked", "--metrics-port", str(port))
    with httpx.Client(base_url=server.url, timeout=30) as api:
        for n in range(4):
            create(api, receiver.url("/ok"), queue="worked", task_data={"n": n})
    deadline = time.monotonic() + 20
    done = 0.0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as metrics:
        while time.monotonic() < deadline:
            try:
                samples = scrape(metrics)
            except httpx.ConnectError:  # still starting
                time.sleep(0.1)
                continue
            done = value(
                samples, "taskplatform_tasks_finished_total", queue="worked", outcome="completed"
            )
            if done == 4:
                break
            time.sleep(0.1)
    assert done == 4, worker.log()
    assert value(samples, "taskplatform_tasks_dequeued_total", queue="worked", mode="dispatch") == 4
    assert (
        value(
            samples,
            "taskplatform_callback_duration_seconds_count",
            queue="worked",
            result="success",
        )
        == 4
    )
    assert value(samples, "taskplatform_backends_up") == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_worker_will_not_serve_open_metrics_beyond_loopback(
    start_server: Callable[..., Server], start_worker: Callable[..., Worker]
) -> None:
    server = start_server()
    worker = start_worker(
        {**server.env, "TASKPLATFORM_WORKER_METRICS_HOST": "0.0.0.0"}, "--metrics-port", "0"
    )
    assert worker.process is not None
    assert worker.process.wait(30) == 2
    assert "TASKPLATFORM_METRICS_PUBLIC=true" in worker.log()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_worker_whose_metrics_port_is_taken_says_so_in_one_line(
    start_server: Callable[..., Server], start_worker: Callable[..., Worker]
) -> None:
    """Exit code 3 and one line naming the address, as ``serve`` on a port in use; it was a
    traceback of 84 lines."""
    server = start_server()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(server.env, "--metrics-port", str(port))
        assert worker.process is not None
        assert worker.process.wait(30) == 3
    log = worker.log()
    assert f"error: cannot start the worker: cannot serve /metrics on 127.0.0.1:{port}: " in log
    assert "address already in use" in log
    assert "Traceback" not in log


def test_queue_labels_are_bounded(start_server: Callable[..., Server]) -> None:
    """Queue names are the clients' to choose: with TASKPLATFORM_METRICS_MAX_QUEUES=3, tasks in
    6 queues give 3 queues series of their own and sum the rest under queue="(other)", in the
    counters (the first 3 queues counted) and in the scrape's gauges (the 3 deepest)."""
    server = start_server(TASKPLATFORM_METRICS_MAX_QUEUES="3")
    sizes = {f"q{n}": n for n in range(1, 7)}  # q1 holds 1 task ... q6 holds 6
    tasks = [
        {"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x", "queue": name}
        for name, size in sizes.items()
        for _ in range(size)
    ]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/api/tasks/batch", json={"tasks": tasks}).status_code == 200
        samples = scrape(http)

    def series(name: str) -> dict[str, float]:
        return {
            dict(labels)["queue"]: sample
            for (metric, labels), sample in samples.items()
            if metric == name
        }

    assert series("taskplatform_tasks_created_total") == {
        "q1": 1,
        "q2": 2,
        "q3": 3,
        "(other)": 4 + 5 + 6,
    }
    assert series("taskplatform_queue_depth") == {"q6": 6, "q5": 5, "q4": 4, "(other)": 1 + 2 + 3}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_workers_write_their_last_lines_when_stopped(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """While serving, a worker holds the lines of a loop turn until the turn ends
    (``logs.lines_written_per_turn``). uvicorn logs its last lines after the lifespan, and a
    worker of ``serve --workers 2`` then ends by re-raising SIGTERM, before its loop turns again:
    those lines, and every lifecycle line, must still reach the log."""
    server = start_server(TASKPLATFORM_WORKERS="2")
    created = []
    for n in range(6):  # new connections, so both workers serve some
        with httpx.Client(base_url=server.url) as fresh:
            created.append(create(fresh, receiver.url("/ok"), task_data={"n": n}))
    assert server.process is not None
    parent = server.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    workers = [
        pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, children
    server.stop()
    log = server.log()
    for task_id in created:
        assert f"task {task_id} is Queued" in log
    for pid in workers:
        assert f"Finished server process [{pid}]" in log, log[-3000:]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_forced_stop_still_writes_the_last_lines(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """A second stop signal while uvicorn drains makes it skip the lifespan's shutdown and end
    the process by the re-raised signal: the lines of the last turns must not stay held. The
    first signal ends the holding (``logs.stop_holding_lines``)."""
    server = start_server()
    with httpx.Client(base_url=server.url) as client:
        task_id = create(client, receiver.url("/ok"))
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    server.stop(signal.SIGINT)
    log = server.log()
    assert f"task {task_id} is Queued" in log
    assert f"Finished server process [{server.process.pid}]" in log, log[-3000:]


def test_json_logs_are_json_on_every_line_when_the_start_fails(tmp_path: Path) -> None:
    """README: ``--log-format json`` on ``serve`` and ``worker`` "writes one JSON object a line
    to stderr". The lines that matter most to a log pipeline at a failed start, the warning of
    a misspelt variable and the one-line reason the start failed, came out as plain text
    ("warning: ...", "error: ..."), which a JSON pipeline drops or cannot parse (found in
    review)."""
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TASKPLATFORM_QUEUE_URL": f"redis://127.0.0.1:{free_port()}/8",  # nothing listens
        "TASKPLATFORM_PORT": str(free_port()),
        "TASKPLATFORM_LOG_FORMAT": "json",
        "TASKPLATFORM_DATABSE_URL": "sqlite:///typo.db",
    }
    for command in ("serve", "worker"):
        result = run_taskplatform(command, env=env)
        assert result.returncode == 3, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines
        not_json = []
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                not_json.append(line)
        assert not not_json, f"{command}: {not_json}"


def test_a_failed_start_says_why_whatever_the_log_level(tmp_path: Path) -> None:
    """With ``--log-format json`` the reason a start failed is a log record of level ERROR,
    which ``TASKPLATFORM_LOG_LEVEL=critical`` dropped for a while: the process exited 2 with
    nothing on stderr. It is written past the level, as the text line always was."""
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TASKPLATFORM_HOST": "0.0.0.0",  # no API key: refused
        "TASKPLATFORM_PORT": str(free_port()),
        "TASKPLATFORM_LOG_FORMAT": "json",
        "TASKPLATFORM_LOG_LEVEL": "critical",
    }
    result = run_taskplatform("serve", env=env)
    assert result.returncode == 2, result.stderr
    assert "refusing to serve" in result.stderr, repr(result.stderr)
    [record] = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert record["level"] == "ERROR"
