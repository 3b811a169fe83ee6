"""Automatic dispatch: the in-process dispatcher of ``serve`` and ``taskplatform worker``, retries
with backoff, scheduling, queues (pause, resume), cancel, dead letters and batch create; against
real server and worker processes and the real receiver.

Most tests share one dispatching server per backend combination (``dispatching``), each on queues
of its own, so that a server start (about 2 s) is paid once per combination rather than per test.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import itertools
import random
import secrets
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.acceptance.helpers import TIMESTAMP, assert_problem, create
from tests.support.backends import backend_env
from tests.support.receiver import Hit, Receiver
from tests.support.server import Server, Worker, store_env

# Queues the shared server's dispatcher serves. TIMED is shared by the tests that only look at
# their own tasks (retries, scheduling, cancel); the others have a queue each. "default" is left
# to the worker of the priority test.
BULK = "bulk"
TIMED = "timed"
PAUSED = "pause-me"
RACE = "race"
DEAD = "dead"
DISPATCHED = [BULK, TIMED, PAUSED, RACE, DEAD]
"""Each queue is a claim loop that polls when idle: few queues keep the idle server quiet."""

# Queues nobody dispatches: tasks there wait for a pull-mode dequeue (or a worker of the test's).
MANUAL = "manual"
MANUAL_SCHEDULED = "manual.scheduled"
MANUAL_DEAD = "manual.dead"
MANUAL_CANCEL = "manual.cancel"
MANUAL_BATCH = "manual.batch"
MANUAL_TOO_MANY = "manual.too-many"
WORKERS = "workers_shared"
RATED = "rated"

POLL_SECONDS = 0.1
SLACK = POLL_SECONDS + 0.35
"""How late a due task may start: one poll interval, plus claim and scheduling overhead."""
BACKOFF_DEFAULTS = {"min": 0.1, "max": 0.2, "multiplier": 2.0}
RETRY_AFTER_CAP = 2.0

SHARED_ENV = {
    "TASKPLATFORM_DISPATCH": "true",
    "TASKPLATFORM_DISPATCH_CONCURRENCY": "50",
    "TASKPLATFORM_DISPATCH_QUEUES": ",".join(DISPATCHED),
    "TASKPLATFORM_DISPATCH_POLL_SECONDS": str(POLL_SECONDS),
    "TASKPLATFORM_BACKOFF_MIN_SECONDS": str(BACKOFF_DEFAULTS["min"]),
    "TASKPLATFORM_BACKOFF_MAX_SECONDS": str(BACKOFF_DEFAULTS["max"]),
    "TASKPLATFORM_BACKOFF_MULTIPLIER": str(BACKOFF_DEFAULTS["multiplier"]),
    "TASKPLATFORM_RETRY_AFTER_MAX_SECONDS": str(RETRY_AFTER_CAP),
}
QUEUE_KEYS = {
    "name",
    "paused",
    "depth",
    "inFlight",
    "oldestQueuedAgeSeconds",
    "dispatchRatePerSecond",
}
MISSING = "01900000-0000-7000-8000-000000000000"


# ---------------------------------------------------------------------------------------------
# Helpers


def wait_for(
    check: Callable[[], bool], seconds: float = 15.0, what: str = "condition", every: float = 0.05
) -> None:
    """Poll ``check`` every ``every`` s until it holds; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {seconds} s")
        time.sleep(every)


def body(callback_url: str, **fields: Any) -> dict[str, Any]:
    """A create body."""
    return {"taskData": fields.pop("task_data", {"n": 1}), "callbackUrl": callback_url, **fields}


def create_batch(http: httpx.Client, bodies: list[dict[str, Any]]) -> list[str]:
    """Create ``bodies`` with ``POST /api/tasks/batch``, 1,000 a request; returns the ids."""
    ids: list[str] = []
    for start in range(0, len(bodies), 1000):
        chunk = bodies[start : start + 1000]
        response = http.post("/api/tasks/batch", json={"tasks": chunk})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [item["index"] for item in items] == list(range(len(chunk)))
        assert all(item["status"] == "Queued" for item in items), items
        ids.extend(item["taskId"] for item in items)
    return ids


def get(http: httpx.Client, task_id: str) -> dict[str, Any]:
    """``GET /api/tasks/{id}``."""
    response = http.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def list_all(http: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """Every task ``GET /api/tasks`` lists with ``params``, following the cursor."""
    tasks: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": "200", **({"cursor": cursor} if cursor else {})}
        response = http.get("/api/tasks", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        tasks.extend(page["items"])
        cursor = page["nextCursor"]
        if not cursor:
            return tasks


def statuses(http: httpx.Client, queue: str) -> dict[str, str]:
    """Task id -> status of every task in ``queue``."""
    return {task["taskId"]: task["status"] for task in list_all(http, queue=queue)}


def count_in(http: httpx.Client, queue: str, status: str) -> int:
    """How many tasks of ``queue`` are in ``status``."""
    return len(list_all(http, queue=queue, status=status))


def settled(http: httpx.Client, queue: str) -> bool:
    """Whether no task of ``queue`` is waiting or running (cheap: one row a status at most)."""
    for status in ("Queued", "Dequeued", "Processing", "Retry"):
        response = http.get("/api/tasks", params={"queue": queue, "status": status, "limit": "1"})
        assert response.status_code == 200, response.text
        if response.json()["items"]:
            return False
    return True


def dequeue(http: httpx.Client, queue: str) -> httpx.Response:
    """Pull-mode dequeue from ``queue``."""
    return http.get("/api/tasks/dequeue", params={"queue": queue})


def hits_of(receiver: Receiver, ids: Iterable[str]) -> list[Hit]:
    """The receiver's hits of the tasks ``ids``, in arrival order."""
    wanted = set(ids)
    return sorted((hit for hit in list(receiver.hits) if hit.task_id in wanted), key=_at)


def hit_counts(receiver: Receiver, ids: Iterable[str]) -> Counter[str]:
    """How many hits each of ``ids`` got (0 included)."""
    wanted = list(ids)
    counts = Counter({task_id: 0 for task_id in wanted})
    counts.update(hit.task_id for hit in hits_of(receiver, wanted))
    return counts


def _at(hit: Hit) -> float:
    return hit.at


def gaps(hits: list[Hit]) -> list[float]:
    """Seconds between consecutive hits, by the wall clock the server schedules by."""
    return [later.wall - earlier.wall for earlier, later in itertools.pairwise(hits)]


def wall(hit: Hit) -> float:
    """The wall-clock time (Unix seconds) of ``hit``."""
    return hit.wall


def parse_time(text: str) -> float:
    """An RFC 3339 timestamp as Unix seconds."""
    return datetime.datetime.fromisoformat(text).timestamp()


def gauge(receiver: Receiver, name: str) -> dict[str, int]:
    """The in-flight gauge ``name`` of the receiver: ``inFlight`` and ``peak``."""
    answer: dict[str, int] = httpx.get(receiver.url(f"/gauge/{name}"), timeout=10).json()
    return answer


def unique(prefix: str) -> str:
    """A name no other test (nor backend combination) of the session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def pause(http: httpx.Client, queue: str) -> dict[str, Any]:
    """Pause ``queue``; checks the answer's shape."""
    response = http.post(f"/api/queues/{queue}/pause")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    assert set(view) == QUEUE_KEYS, view
    assert view["name"] == queue
    assert view["paused"] is True
    return view


def resume(http: httpx.Client, queue: str) -> dict[str, Any]:
    """Resume ``queue``; checks the answer's shape."""
    response = http.post(f"/api/queues/{queue}/resume")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    assert set(view) == QUEUE_KEYS, view
    assert view["name"] == queue
    assert view["paused"] is False
    return view


def signed_by(hit: Hit, keys: dict[str, bytes]) -> str | None:
    """The name of the key whose Standard Webhooks signature ``hit`` carries, if any."""
    headers = {name.lower(): value for name, value in hit.headers.items()}
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + hit.body
    sent = headers.get("webhook-signature", "").split()
    for name, key in keys.items():
        digest = hmac.new(key, content, hashlib.sha256).digest()
        if f"v1,{base64.b64encode(digest).decode()}" in sent:
            return name
    return None


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def dispatching(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the dispatcher on (:data:`SHARED_ENV`), shared by this module's tests."""
    workdir = tmp_path_factory.mktemp(f"dispatch-{backend}")
    running = Server({**backend_env(backend, workdir), **SHARED_ENV}, workdir / "server.log")
    running.start()
    yield running
    running.stop()


@pytest.fixture
def api(dispatching: Server) -> Iterator[httpx.Client]:
    """An HTTP client bound to the shared dispatching server."""
    with httpx.Client(base_url=dispatching.url, timeout=60) as http:
        yield http


# ---------------------------------------------------------------------------------------------
# Throughput and exactly-once


def test_1000_tasks_with_concurrency_50_each_get_exactly_one_callback(
    backend: str, api: httpx.Client, receiver: Receiver
) -> None:
    """1,000 tasks on a dispatching server (concurrency 50) all end Completed after exactly one
    callback each, as attempt 1. Never more than 50 callbacks are in flight at once, and at
    least 40 are while the first 60 tasks (1 s callbacks) run: the setting takes effect."""
    if backend not in ("sqlite", "postgres"):
        pytest.skip("1,000 tasks run on sqlite and postgres; redis: the two-worker test's 5,000")
    name = unique("bulk")
    slow = receiver.url(f"/gauge/{name}?seconds=1")
    fast = receiver.url(f"/gauge/{name}?seconds=0.02")
    started = time.monotonic()
    ids = create_batch(api, [body(slow, queue=BULK, task_data={"i": i}) for i in range(60)])
    ids += create_batch(api, [body(fast, queue=BULK, task_data={"i": i}) for i in range(60, 1000)])
    wait_for(lambda: settled(api, BULK), 60, "all 1,000 called back", every=0.2)
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # a duplicate callback, had there been one, would show now
    counts = hit_counts(receiver, ids)
    assert {task_id: n for task_id, n in counts.items() if n != 1} == {}
    assert {hit.headers.get("X-Task-Attempt") for hit in hits_of(receiver, ids)} == {"1"}
    tasks = list_all(api, queue=BULK)
    assert len(tasks) == 1000
    assert {(t["status"], t["attempts"], t["deadLetter"]) for t in tasks} == {
        ("Completed", 1, False)
    }
    peak = gauge(receiver, name)["peak"]
    print(f"1,000 tasks dispatched in {elapsed:.2f} s, at most {peak} callbacks in flight")
    assert 40 <= peak <= 50


# ---------------------------------------------------------------------------------------------
# Retries: backoff with full jitter, Retry-After


def test_retries_back_off_with_full_jitter_within_bounds(
    api: httpx.Client, receiver: Receiver
) -> None:
    """A receiver failing twice is called a third time and the task completes; each wait before
    a retry lies within [min, min(max, min * multiplier^n)] (plus one poll of slack): for the
    task's own backoff fields, for a low backoffMaxSeconds cap, and for the server defaults.
    The waits are jittered, the first retry included."""
    main = create(
        api,
        receiver.url("/fail-first/2"),
        queue=TIMED,
        maxRetries=3,
        backoffMinSeconds=0.5,
        backoffMultiplier=2,
        backoffMaxSeconds=10,
    )
    capped = create(
        api,
        receiver.url("/fail-first/3"),
        queue=TIMED,
        maxRetries=3,
        backoffMinSeconds=0.2,
        backoffMultiplier=10,
        backoffMaxSeconds=0.3,
    )
    defaults = [
        create(api, receiver.url("/fail-first/2"), queue=TIMED, maxRetries=2) for _ in range(4)
    ]
    jittered = [
        create(
            api,
            receiver.url("/fail-first/1"),
            queue=TIMED,
            maxRetries=1,
            backoffMinSeconds=1,
            backoffMaxSeconds=10,
        )
        for _ in range(10)
    ]
    every = [main, capped, *defaults, *jittered]
    wait_for(
        lambda: all(get(api, task_id)["status"] == "Completed" for task_id in every),
        20,
        "every retried task Completed",
    )

    hits = hits_of(receiver, [main])
    assert [hit.headers.get("X-Task-Attempt") for hit in hits] == ["1", "2", "3"]
    assert {hit.headers.get("webhook-id") for hit in hits} == {main}
    waits = gaps(hits)
    print(f"backoff 0.5 x 2: waits {[round(w, 3) for w in waits]}")
    # After attempt n the wait is drawn from [min, min(max, min * multiplier**n)].
    assert 0.5 <= waits[0] <= 1.0 + SLACK
    assert 0.5 <= waits[1] <= 2.0 + SLACK
    task = get(api, main)
    assert (task["attempts"], task["deadLetter"], task["queue"]) == (3, False, TIMED)
    assert (task["backoffMinSeconds"], task["backoffMaxSeconds"]) == (0.5, 10)
    assert task["backoffMultiplier"] == 2
    assert (task["retryOn"], task["permanentOn"]) == (None, None)
    log = api.get(f"/api/tasks/{main}/executions").json()["items"]
    assert [entry["httpStatus"] for entry in log] == [500, 500, 200]

    capped_waits = gaps(hits_of(receiver, [capped]))
    print(f"backoff 0.2 x 10 capped at 0.3: waits {[round(w, 3) for w in capped_waits]}")
    assert len(capped_waits) == 3
    assert all(w >= 0.2 for w in capped_waits)
    # The median, and a looser bound for each: a start late by a busy machine (0.87 s once in
    # CI, with the two cores shared) is not a missing cap. Uncapped, the waits would be drawn
    # from [0.2, 2], [0.2, 20] and [0.2, 200]: both checks pass that about once in a thousand.
    assert statistics.median(capped_waits) <= 0.3 + SLACK
    assert max(capped_waits) <= 0.3 + SLACK + 0.75

    low, high = BACKOFF_DEFAULTS["min"], BACKOFF_DEFAULTS["max"]
    default_waits = [gaps(hits_of(receiver, [task_id])) for task_id in defaults]
    assert all(len(waits) == 2 for waits in default_waits), default_waits
    assert all(low <= wait for waits in default_waits for wait in waits), default_waits
    # The medians: a start late by a busy machine (one of four was 0.9 s late while the suite
    # shared two cores with a server) must not pass for the built-in 1 s minimum.
    assert statistics.median(w[0] for w in default_waits) <= min(high, low * 2) + SLACK
    assert statistics.median(w[1] for w in default_waits) <= min(high, low * 4) + SLACK
    for task_id in defaults:
        view = get(api, task_id)
        assert view["backoffMinSeconds"] in (None, BACKOFF_DEFAULTS["min"])
        assert view["backoffMaxSeconds"] in (None, BACKOFF_DEFAULTS["max"])

    first_waits = [gaps(hits_of(receiver, [task_id]))[0] for task_id in jittered]
    print(f"backoff 1 s, first waits: {sorted(round(w, 3) for w in first_waits)}")
    assert all(1.0 <= w <= 2.0 + SLACK for w in first_waits)
    # Full jitter above the floor draws from [1, 2]: ten waits all within 0.2 s of each other
    # has a chance of about 1e-6; no spread means the first retry is not jittered at all.
    assert max(first_waits) - min(first_waits) > 0.2, f"no spread: {sorted(first_waits)}"


def test_retry_after_on_429_and_503_is_honoured_up_to_the_cap(
    api: httpx.Client, receiver: Receiver
) -> None:
    """429 with ``Retry-After: 2``: the second attempt is no sooner than 2 s after the first,
    though the task's own backoff is 0.1 s, and nextAttemptAt says so while it waits. 503 with
    ``Retry-After: 3600`` is cut to TASKPLATFORM_RETRY_AFTER_MAX_SECONDS (2). Both fail twice
    with maxRetries 1: Failed dead letters after 2 attempts."""
    fast = {"queue": TIMED, "maxRetries": 1, "backoffMinSeconds": 0.1, "backoffMaxSeconds": 0.1}
    limited = create(api, receiver.url("/status/429?retry_after=2"), **fast)
    unavailable = create(api, receiver.url("/status/503?retry_after=3600"), **fast)
    wait_for(lambda: len(hits_of(receiver, [limited])) == 1, 10, "first attempt of the 429 task")
    first = hits_of(receiver, [limited])[0]
    wait_for(lambda: get(api, limited)["status"] == "Retry", 1.5, "the 429 task in Retry")
    next_attempt = get(api, limited)["nextAttemptAt"]
    assert TIMESTAMP.match(next_attempt)
    assert 2.0 - 0.01 <= parse_time(next_attempt) - wall(first) <= 2.0 + 0.5
    wait_for(
        lambda: {get(api, limited)["status"], get(api, unavailable)["status"]} == {"Failed"},
        10,
        "both second attempts failed",
    )
    for task_id in (limited, unavailable):
        hits = hits_of(receiver, [task_id])
        assert len(hits) == 2
        wait = hits[1].wall - hits[0].wall
        print(f"Retry-After wait of {task_id}: {wait:.3f} s")
        assert RETRY_AFTER_CAP - 0.01 <= wait <= RETRY_AFTER_CAP + 0.1 + SLACK
        task = get(api, task_id)
        assert (task["attempts"], task["deadLetter"]) == (2, True)


def test_a_failure_on_the_last_attempt_or_a_permanent_one_is_a_dead_letter(
    api: httpx.Client, receiver: Receiver
) -> None:
    """404 is permanent (1 attempt) and ``permanentOn: [500]`` makes a 500 permanent; with
    ``retryOn: [404]`` a 404 is retried; all end Failed with deadLetter true and are listed by
    ``?status=Failed&deadLetter=true``. A pull-mode execute that fails with attempts left is
    Failed but no dead letter. ``POST /{id}/retry`` re-drives one task (attempts 0, Queued) and
    the dispatcher runs it again; ``POST /api/tasks/retry`` re-drives a queue's dead letters in
    bulk, ``limit`` at a time; re-driving a task that is not Failed is 409 task_not_failed."""
    fast = {"backoffMinSeconds": 0.1, "backoffMaxSeconds": 0.1}
    permanent_404 = create(api, receiver.url("/status/404"), queue=DEAD, maxRetries=3)
    permanent_500 = create(
        api, receiver.url("/status/500"), queue=DEAD, maxRetries=3, permanentOn=[500], **fast
    )
    retried_404 = create(
        api, receiver.url("/status/404"), queue=DEAD, maxRetries=1, retryOn=[404], **fast
    )
    dead = {permanent_404, permanent_500, retried_404}

    def all_dead() -> bool:
        return all(
            (task["status"], task["deadLetter"]) == ("Failed", True)
            for task in (get(api, task_id) for task_id in dead)
        )

    wait_for(all_dead, 10, "three dead letters")
    assert {task_id: get(api, task_id)["attempts"] for task_id in dead} == {
        permanent_404: 1,
        permanent_500: 1,
        retried_404: 2,
    }
    assert hit_counts(receiver, dead) == {permanent_404: 1, permanent_500: 1, retried_404: 2}
    assert get(api, permanent_500)["permanentOn"] == [500]
    assert get(api, retried_404)["retryOn"] == [404]
    listed = list_all(api, status="Failed", deadLetter="true", queue=DEAD)
    assert {task["taskId"] for task in listed} == dead
    assert dead <= {task["taskId"] for task in list_all(api, status="Failed", deadLetter="true")}

    # Pull mode is as before: a failed execute with attempts left is no dead letter.
    pulled = create(api, receiver.url("/status/500"), queue=MANUAL_DEAD, maxRetries=2)
    assert dequeue(api, MANUAL_DEAD).json()["taskId"] == pulled
    assert api.post(f"/api/tasks/{pulled}/execute").json()["status"] == "Failed"
    assert (get(api, pulled)["deadLetter"], get(api, pulled)["attempts"]) == (False, 1)
    assert pulled not in {t["taskId"] for t in list_all(api, status="Failed", deadLetter="true")}

    # One task re-driven: attempts reset, Queued, dispatched again (404 again: dead again).
    redriven = api.post(f"/api/tasks/{permanent_404}/retry")
    assert redriven.status_code == 200, redriven.text
    view = redriven.json()
    assert (view["taskId"], view["status"], view["attempts"], view["deadLetter"]) == (
        permanent_404,
        "Queued",
        0,
        False,
    )
    wait_for(lambda: len(hits_of(receiver, [permanent_404])) == 2, 10, "the re-driven callback")
    wait_for(all_dead, 10, "the re-driven task dead again")
    assert get(api, permanent_404)["attempts"] == 1

    # A Failed pull-mode task can be re-driven too; a task that is not Failed cannot.
    again = api.post(f"/api/tasks/{pulled}/retry")
    assert (again.status_code, again.json()["status"], again.json()["attempts"]) == (
        200,
        "Queued",
        0,
    )
    assert_problem(api.post(f"/api/tasks/{pulled}/retry"), 409, "task_not_failed")
    assert dequeue(api, MANUAL_DEAD).json()["taskId"] == pulled
    assert_problem(api.post(f"/api/tasks/{MISSING}/retry"), 404, "task_not_found")

    # Bulk, with the queue paused so that re-driven tasks cannot die again in between.
    for limit in (0, 1001):
        assert_problem(
            api.post("/api/tasks/retry", json={"queue": DEAD, "limit": limit}),
            422,
            "validation_error",
        )
    pause(api, DEAD)
    try:
        first = api.post("/api/tasks/retry", json={"queue": DEAD, "limit": 2})
        assert first.status_code == 200, first.text
        assert first.json()["retried"] == 2
        rest = api.post("/api/tasks/retry", json={"queue": DEAD})
        assert rest.status_code == 200, rest.text
        assert rest.json()["retried"] == 1
        assert set(first.json()["taskIds"]) | set(rest.json()["taskIds"]) == dead
        assert api.post("/api/tasks/retry", json={"queue": DEAD}).json() == {
            "retried": 0,
            "taskIds": [],
        }
        for task_id in dead:
            task = get(api, task_id)
            assert (task["status"], task["attempts"], task["deadLetter"]) == ("Queued", 0, False)
        assert list_all(api, status="Failed", deadLetter="true", queue=DEAD) == []
    finally:
        resume(api, DEAD)
    wait_for(all_dead, 10, "the bulk re-driven tasks dead again")
    assert hit_counts(receiver, dead) == {permanent_404: 3, permanent_500: 2, retried_404: 4}


# ---------------------------------------------------------------------------------------------
# Order and time


def test_a_later_high_priority_task_overtakes_the_backlog(
    api: httpx.Client,
    dispatching: Server,
    start_worker: Callable[..., Worker],
    receiver: Receiver,
) -> None:
    """A dispatcher with concurrency 1 (``worker --concurrency 1``, on the default queue) and a
    backlog of 20 tasks at priority 0: a priority-10 task created while the backlog drains is
    called back next (at most the one callback already being claimed goes first), the backlog
    is FIFO, and never two callbacks are in flight."""
    name = unique("priority")
    url = receiver.url(f"/gauge/{name}?seconds=0.05")
    backlog = [create(api, url, task_data={"i": i}) for i in range(20)]
    worker = start_worker(store_env(dispatching), "--concurrency", "1")
    wait_for(lambda: len(hits_of(receiver, backlog)) >= 3, 15, "the backlog draining")
    before_create = time.monotonic()
    urgent = create(api, url, priority=10)
    wait_for(lambda: settled(api, "default"), 15, "all 21 called back")
    assert get(api, urgent)["queue"] == "default"
    assert worker.alive()
    order = [hit.task_id for hit in hits_of(receiver, [*backlog, urgent])]
    assert len(order) == 21
    started_before = sum(1 for hit in hits_of(receiver, backlog) if hit.at < before_create)
    position = order.index(urgent)
    print(f"{started_before} backlog callbacks had started; the urgent one was number {position}")
    assert position <= started_before + 1
    assert [task_id for task_id in order if task_id != urgent] == backlog
    assert gauge(receiver, name)["peak"] == 1


def test_scheduled_tasks_are_neither_dispatched_nor_dequeued_early(
    api: httpx.Client, receiver: Receiver
) -> None:
    """``delaySeconds: 1.5`` and a ``scheduledAt`` 2 s ahead (given with a -05:00 offset): the
    callback comes no sooner than the scheduled time, and not much later than that of a task
    created at that time with no delay (so that a machine too busy to call anything back on time
    does not count against scheduling). In pull mode a task delayed 1 s is 404 queue_empty until
    its time, then dequeued."""
    t0 = time.time()
    url = receiver.url("/ok")
    delayed = create(api, url, queue=TIMED, delaySeconds=1.5)
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2)
    at_text = at.astimezone(datetime.timezone(datetime.timedelta(hours=-5))).isoformat(
        timespec="milliseconds"
    )
    timed = create(api, url, queue=TIMED, scheduledAt=at_text)
    pulled = create(api, url, queue=MANUAL_SCHEDULED, delaySeconds=1.0)

    delayed_view, timed_view, pulled_view = (get(api, i) for i in (delayed, timed, pulled))
    assert delayed_view["status"] == "Queued"
    assert TIMESTAMP.match(delayed_view["scheduledAt"])
    delayed_at = parse_time(delayed_view["scheduledAt"])
    assert t0 + 1.5 - 0.01 <= delayed_at <= time.time() + 1.5 + 0.01
    assert abs(parse_time(timed_view["scheduledAt"]) - at.timestamp()) < 0.002
    pulled_at = parse_time(pulled_view["scheduledAt"])

    assert_problem(dequeue(api, MANUAL_SCHEDULED), 404, "queue_empty")
    time.sleep(max(0.0, pulled_at - 0.25 - time.time()))
    assert_problem(dequeue(api, MANUAL_SCHEDULED), 404, "queue_empty")
    time.sleep(max(0.0, pulled_at + 0.05 - time.time()))
    response = dequeue(api, MANUAL_SCHEDULED)
    assert response.status_code == 200, response.text
    assert response.json()["taskId"] == pulled
    assert time.time() >= pulled_at

    # A task with no delay, created at each scheduled time: how long a callback takes right now.
    controls: list[tuple[str, float]] = []
    for due in (delayed_at, at.timestamp()):
        time.sleep(max(0.0, due - time.time()))
        created = time.time()
        controls.append((create(api, url, queue=TIMED), created))
    wait_for(
        lambda: {get(api, i)["status"] for i in (delayed, timed)} == {"Completed"},
        10,
        "both scheduled tasks called back",
    )
    (delayed_hit,) = hits_of(receiver, [delayed])
    (timed_hit,) = hits_of(receiver, [timed])
    wait_for(lambda: len(hits_of(receiver, [c for c, _ in controls])) == 2, 10, "the controls")
    control_seconds = [hits_of(receiver, [c])[0].wall - created for c, created in controls]
    lateness = (wall(delayed_hit) - delayed_at, wall(timed_hit) - at.timestamp())
    print(
        f"callbacks late by {lateness[0]:.3f} s and {lateness[1]:.3f} s; "
        f"tasks with no delay called back after {control_seconds[0]:.3f} s and "
        f"{control_seconds[1]:.3f} s"
    )
    assert delayed_hit.wall - t0 >= 1.5
    assert wall(delayed_hit) >= delayed_at - 0.01
    assert wall(timed_hit) >= at.timestamp() - 0.01
    assert lateness[0] <= control_seconds[0] + SLACK + 0.5
    assert lateness[1] <= control_seconds[1] + SLACK + 0.5


def test_create_validates_the_new_fields_and_shows_them(api: httpx.Client) -> None:
    """Each bad value of queue, delaySeconds, scheduledAt, backoff*, retryOn or permanentOn
    (and delaySeconds with scheduledAt) is 422 validation_error and stores nothing; good values
    are echoed by GET."""
    url = "http://127.0.0.1:9/x"
    bad: dict[str, dict[str, Any]] = {
        "empty queue": {"queue": ""},
        "queue with a space": {"queue": "a b"},
        "queue of 65": {"queue": "q" * 65},
        "queue not a string": {"queue": 5},
        "negative delay": {"delaySeconds": -1},
        "delay over a year": {"delaySeconds": 31536001},
        "delay not a number": {"delaySeconds": "soon"},
        "delay and scheduledAt": {"delaySeconds": 1, "scheduledAt": "2030-01-01T00:00:00Z"},
        "scheduledAt not a time": {"scheduledAt": "tomorrow"},
        "backoffMin 0": {"backoffMinSeconds": 0},
        "backoffMax 0": {"backoffMaxSeconds": 0},
        "backoffMax below min": {"backoffMinSeconds": 2, "backoffMaxSeconds": 1},
        "multiplier below 1": {"backoffMultiplier": 0.5},
        "retryOn 99": {"retryOn": [99]},
        "retryOn 600": {"retryOn": [600]},
        "retryOn not a list": {"retryOn": 500},
        "permanentOn 600": {"permanentOn": [600]},
    }
    before = sum(api.get("/api/stats").json()["tasks"].values())
    for label, fields in bad.items():
        response = api.post("/api/tasks", json=body(url, **fields))
        assert response.status_code == 422, f"{label}: {response.text}"
        assert response.json()["code"] == "validation_error", label
    assert sum(api.get("/api/stats").json()["tasks"].values()) == before

    queue = "Q" * 60 + "_.-9"
    full = create(
        api,
        url,
        queue=queue,
        delaySeconds=31536000,
        backoffMinSeconds=0.25,
        backoffMaxSeconds=7,
        backoffMultiplier=1,
        retryOn=[404, 409],
        permanentOn=[500],
    )
    task = get(api, full)
    assert task["queue"] == queue
    assert task["status"] == "Queued"
    assert 31536000 - 5 < parse_time(task["scheduledAt"]) - time.time() <= 31536000
    assert task["deadLetter"] is False
    assert (task["backoffMinSeconds"], task["backoffMaxSeconds"]) == (0.25, 7)
    assert task["backoffMultiplier"] == 1
    assert (task["retryOn"], task["permanentOn"]) == ([404, 409], [500])
    assert api.post("/api/tasks", json=body(url, queue=MANUAL, delaySeconds=0)).status_code == 201
    plain = get(api, create(api, url, queue=MANUAL))
    assert (plain["scheduledAt"], plain["retryOn"], plain["permanentOn"]) == (None, None, None)
    assert plain["deadLetter"] is False
    # One bound given, beyond the other's default (0.1 to 0.2 s here): the given one wins and
    # the default moves to it, both ways, rather than the given one being changed.
    low = get(api, create(api, url, queue=MANUAL, backoffMaxSeconds=0.05))
    assert (low["backoffMinSeconds"], low["backoffMaxSeconds"]) == (0.05, 0.05)
    high = get(api, create(api, url, queue=MANUAL, backoffMinSeconds=5))
    assert (high["backoffMinSeconds"], high["backoffMaxSeconds"]) == (5, 5)


# ---------------------------------------------------------------------------------------------
# Queues: pause and resume


def test_pause_stops_dispatch_within_a_second_and_resume_restarts_it(
    api: httpx.Client, receiver: Receiver
) -> None:
    """Tasks come due every 50 ms for 2 s; once the queue is paused no callback starts more than 1 s
    later, pull dequeue on it is 409 queue_paused, GET /api/queues shows it paused, and the
    tasks wait Queued; resumed, every task is called back exactly once."""
    url = receiver.url("/ok")
    ids = [create(api, url, queue=PAUSED, delaySeconds=0.05 * n) for n in range(1, 41)]
    wait_for(lambda: len(hits_of(receiver, ids)) >= 2, 10, "dispatch under way")
    view = pause(api, PAUSED)
    paused_at = time.monotonic()
    assert isinstance(view["depth"], int)
    assert isinstance(view["inFlight"], int)
    assert_problem(dequeue(api, PAUSED), 409, "queue_paused")
    listed = {item["name"]: item for item in api.get("/api/queues").json()["items"]}
    assert set(listed[PAUSED]) == QUEUE_KEYS
    assert listed[PAUSED]["paused"] is True
    time.sleep(max(0.0, paused_at + 1.6 - time.monotonic()))

    hits = hits_of(receiver, ids)
    late = [round(hit.at - paused_at, 3) for hit in hits if hit.at > paused_at + 1.1]
    print(f"{len(hits)} callbacks before the pause took hold; after 1.1 s: {late}")
    assert late == []
    assert len(hits) < 40
    waiting = {task_id for task_id in ids if task_id not in {hit.task_id for hit in hits}}
    assert {get(api, task_id)["status"] for task_id in waiting} == {"Queued"}

    resume(api, PAUSED)
    listed = {item["name"]: item for item in api.get("/api/queues").json()["items"]}
    assert listed[PAUSED]["paused"] is False
    # Generous: once in CI (two test workers and their servers on a loaded 2-core machine) some
    # were not Completed 10 s after the resume; a failure now shows the server's log.
    wait_for(lambda: count_in(api, PAUSED, "Completed") == 40, 30, "all 40 after resume")
    assert set(hit_counts(receiver, ids).values()) == {1}


# ---------------------------------------------------------------------------------------------
# Cancel


def test_cancel_in_each_status(api: httpx.Client, receiver: Receiver) -> None:
    """Queued, Dequeued, scheduled, Retry and Failed tasks cancel (200, Cancelled; again: 200)
    and are never called back nor dequeued afterwards; Processing is 409 task_processing,
    Completed 409 task_completed, an unknown id 404 task_not_found."""
    ok = receiver.url("/ok")

    def cancel(task_id: str) -> httpx.Response:
        return api.post(f"/api/tasks/{task_id}/cancel")

    def cancelled(task_id: str) -> None:
        response = cancel(task_id)
        assert response.status_code == 200, response.text
        assert (response.json()["taskId"], response.json()["status"]) == (task_id, "Cancelled")

    queued = create(api, ok, queue=MANUAL_CANCEL)
    cancelled(queued)
    assert get(api, queued)["status"] == "Cancelled"
    cancelled(queued)  # idempotent
    assert_problem(dequeue(api, MANUAL_CANCEL), 404, "queue_empty")
    assert_problem(api.post(f"/api/tasks/{queued}/retry"), 409, "task_not_failed")

    dequeued = create(api, ok, queue=MANUAL_CANCEL)
    assert dequeue(api, MANUAL_CANCEL).json()["taskId"] == dequeued
    cancelled(dequeued)
    refused = api.post(f"/api/tasks/{dequeued}/execute")
    assert 400 <= refused.status_code < 500, refused.text

    scheduled = create(api, ok, queue=TIMED, delaySeconds=0.5)
    cancelled(scheduled)
    due = time.monotonic() + 0.5

    retrying = create(
        api,
        receiver.url("/status/500"),
        queue=TIMED,
        maxRetries=3,
        backoffMinSeconds=3600,
        backoffMaxSeconds=3600,
    )
    wait_for(lambda: get(api, retrying)["status"] == "Retry", 10, "the task waiting in Retry")
    cancelled(retrying)

    failed = create(api, receiver.url("/status/404"), queue=TIMED)
    wait_for(lambda: get(api, failed)["status"] == "Failed", 10, "the 404 task Failed")
    cancelled(failed)
    assert failed not in {t["taskId"] for t in list_all(api, status="Failed", deadLetter="true")}

    processing = create(api, receiver.url("/slow?seconds=1"), queue=TIMED)
    wait_for(lambda: len(hits_of(receiver, [processing])) == 1, 10, "the slow callback")
    assert (
        "not during one" in (assert_problem(cancel(processing), 409, "task_processing")["detail"])
    )
    wait_for(lambda: get(api, processing)["status"] == "Completed", 10, "the slow task done")
    assert assert_problem(cancel(processing), 409, "task_completed")["detail"] == (
        "the task has completed; it can no longer be cancelled"
    )
    assert_problem(cancel(MISSING), 404, "task_not_found")

    time.sleep(max(0.0, due + 0.5 - time.monotonic()))  # the scheduled one came due long ago
    counts = hit_counts(receiver, [queued, dequeued, scheduled, retrying, failed])
    assert counts == {queued: 0, dequeued: 0, scheduled: 0, retrying: 1, failed: 1}
    for task_id in (queued, dequeued, scheduled, retrying, failed):
        assert get(api, task_id)["status"] == "Cancelled"
    assert_problem(dequeue(api, MANUAL_CANCEL), 404, "queue_empty")


def test_cancels_racing_the_dispatcher_never_let_a_callback_through(
    api: httpx.Client, dispatching: Server, receiver: Receiver
) -> None:
    """200 tasks being dispatched while 8 clients cancel them in random order: a task whose
    cancel answered 200 ends Cancelled and was never called back; one whose cancel answered 409
    (task_processing, task_completed) ends Completed after exactly one callback."""
    # 0.2 s callbacks, 50 at a time: the 200 take about 0.8 s, so the cancels (sent once the
    # first callback lands) still find some tasks Queued on a loaded machine. With 0.05 s (0.2 s
    # in all) a slow start of the cancel threads once let every task be claimed first.
    url = receiver.url("/slow?seconds=0.2")
    ids = create_batch(api, [body(url, queue=RACE, task_data={"i": i}) for i in range(200)])
    order = ids[:]
    random.Random(7).shuffle(order)
    wait_for(lambda: bool(hits_of(receiver, ids)), 10, "dispatch under way")

    def cancel_all(chunk: list[str]) -> list[tuple[str, httpx.Response]]:
        with httpx.Client(base_url=dispatching.url, timeout=30) as http:
            return [(task_id, http.post(f"/api/tasks/{task_id}/cancel")) for task_id in chunk]

    with ThreadPoolExecutor(8) as pool:
        answers = [
            pair
            for chunk in pool.map(cancel_all, [order[i::8] for i in range(8)])
            for pair in chunk
        ]
    won: set[str] = set()
    lost: set[str] = set()
    for task_id, response in answers:
        if response.status_code == 200:
            assert response.json()["status"] == "Cancelled"
            won.add(task_id)
        else:
            assert response.status_code == 409, response.text
            assert response.json()["code"] in ("task_processing", "task_completed"), response.text
            lost.add(task_id)
    print(f"cancelled {len(won)}, too late for {len(lost)}")
    wait_for(
        lambda: set(statuses(api, RACE).values()) <= {"Cancelled", "Completed"},
        15,
        "every task Cancelled or Completed",
    )
    time.sleep(0.5)  # a callback let through late would show now
    final = statuses(api, RACE)
    counts = hit_counts(receiver, ids)
    assert {task_id: final[task_id] for task_id in won if final[task_id] != "Cancelled"} == {}
    assert {task_id: final[task_id] for task_id in lost if final[task_id] != "Completed"} == {}
    assert {task_id: counts[task_id] for task_id in won if counts[task_id]} == {}
    assert {task_id: counts[task_id] for task_id in lost if counts[task_id] != 1} == {}
    assert won, "no cancel won: the cancels did not race the dispatcher"
    assert lost, "no cancel lost: the cancels did not race the dispatcher"


# ---------------------------------------------------------------------------------------------
# Batch create


def test_batch_create_answers_per_item(api: httpx.Client) -> None:
    """A batch of 3 with one invalid item: the two valid ones are created (Queued, in their
    queue) and the invalid one gets a 422 problem of its own; 1,001 items are 422 and create
    nothing."""
    url = "http://127.0.0.1:9/x"
    tasks = [
        body(url, queue=MANUAL_BATCH, priority=3),
        body(url, queue=MANUAL_BATCH, priority="high"),
        body(url, queue=MANUAL_BATCH, task_data={"third": True}),
    ]
    response = api.post("/api/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [item["index"] for item in items] == [0, 1, 2]
    assert items[0]["status"] == items[2]["status"] == "Queued"
    assert "error" not in items[0] or items[0]["error"] is None
    error = items[1]["error"]
    assert (error["status"], error["code"]) == (422, "validation_error")
    assert error["detail"]
    assert error["errors"]
    assert "taskId" not in items[1] or items[1]["taskId"] is None
    created = [items[0]["taskId"], items[2]["taskId"]]
    first, third = (get(api, task_id) for task_id in created)
    assert (first["status"], first["queue"], first["priority"]) == ("Queued", MANUAL_BATCH, 3)
    assert third["taskData"] == {"third": True}
    assert {task["taskId"] for task in list_all(api, queue=MANUAL_BATCH)} == set(created)

    too_many = api.post(
        "/api/tasks/batch", json={"tasks": [body(url, queue=MANUAL_TOO_MANY)] * 1001}
    )
    assert too_many.status_code == 422, too_many.text
    assert too_many.headers["content-type"].startswith("application/problem+json")
    assert list_all(api, queue=MANUAL_TOO_MANY) == []


# ---------------------------------------------------------------------------------------------
# Workers


def test_two_workers_share_5000_tasks_without_a_duplicate_callback(
    backend: str, dispatching: Server, start_worker: Callable[..., Worker], receiver: Receiver
) -> None:
    """Two ``taskplatform worker`` processes on one queue: 5,000 tasks all end Completed after
    exactly one callback each, and both workers made some of the calls (told apart by each
    signing with a secret of its own)."""
    if backend not in ("postgres", "redis+postgres"):
        pytest.skip("two workers sharing a queue are checked on postgres and redis+postgres")
    keys = {name: secrets.token_bytes(32) for name in ("first", "second")}
    workers = [
        start_worker(
            {
                **store_env(dispatching),
                "TASKPLATFORM_SIGNING_SECRET": "whsec_" + base64.b64encode(key).decode(),
            },
            "--concurrency",
            "25",
            "--queue",
            WORKERS,
        )
        for key in keys.values()
    ]
    with httpx.Client(base_url=dispatching.url, timeout=60) as http:
        started = time.monotonic()
        ids = create_batch(
            http,
            [body(receiver.url("/ok"), queue=WORKERS, task_data={"i": i}) for i in range(5000)],
        )
        created = time.monotonic() - started

        def done() -> bool:
            assert all(worker.alive() for worker in workers), [w.log() for w in workers]
            return settled(http, WORKERS)

        wait_for(done, 100, "5,000 tasks called back", every=0.5)
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # a duplicate callback, had there been one, would show now
        assert count_in(http, WORKERS, "Completed") == 5000
    counts = hit_counts(receiver, ids)
    assert {task_id: n for task_id, n in counts.items() if n != 1} == {}
    signers = Counter(signed_by(hit, keys) for hit in hits_of(receiver, ids))
    print(f"created in {created:.2f} s, all Completed after {elapsed:.2f} s; calls: {signers}")
    assert None not in signers
    assert signers["first"] > 0
    assert signers["second"] > 0
    assert all(worker.alive() for worker in workers)


def test_workers_keep_to_their_queue_and_share_its_rate(
    backend: str, dispatching: Server, start_worker: Callable[..., Worker], receiver: Receiver
) -> None:
    """Two ``worker --queue rated --rate 20`` processes: the rate holds for the queue over both
    (a bucket in the database), not per process. The bucket holds one second's worth, so any
    stretch of T seconds holds at most 20 + 20T callbacks, stalls of a busy machine included
    (a stall refills the bucket, and the last 40 once came in 1.1 s): 100 callbacks span at
    least (100 - 20) / 20 = 4 s, 3.4 s with slack; two per-process buckets (40/s, 40 saved
    up) would allow 1.5 s. A task on another queue is left alone."""
    if backend not in ("sqlite", "postgres"):
        pytest.skip("the rate bucket lives in the SQL store; sqlite and postgres cover it")
    workers = [
        start_worker(
            store_env(dispatching), "--queue", RATED, "--rate", "20", "--concurrency", "10"
        )
        for _ in range(2)
    ]
    with httpx.Client(base_url=dispatching.url, timeout=60) as http:
        other = create(http, receiver.url("/ok"), queue=MANUAL)
        ids = create_batch(http, [body(receiver.url("/ok"), queue=RATED) for _ in range(100)])
        wait_for(lambda: settled(http, RATED), 30, "100 rated tasks called back", every=0.2)
        assert count_in(http, RATED, "Completed") == 100
        assert get(http, other)["status"] == "Queued"
    hits = hits_of(receiver, ids)
    assert len(hits) == 100
    span = hits[-1].wall - hits[0].wall  # the bucket refills by the server's wall clock
    print(f"100 callbacks over {span:.2f} s")
    assert span >= 3.4
    assert hit_counts(receiver, [other])[other] == 0
    assert all(worker.alive() for worker in workers)


def test_a_queue_whose_callbacks_hang_leaves_slots_to_the_others(
    dispatching: Server, start_worker: Callable[..., Worker], receiver: Receiver
) -> None:
    """A worker of concurrency 8 over three queues: 12 callbacks of one hang, yet a task of
    another is called back at once. The hanging queue holds at most 6 slots (one kept back for
    each other queue); before, it took all 8 and the others waited for the hanging callbacks'
    timeout."""
    hang, other = f"fair.hang.{time.time_ns()}", f"fair.other.{time.time_ns()}"
    start_worker(
        {**store_env(dispatching), "TASKPLATFORM_SHUTDOWN_GRACE_SECONDS": "0.5"},
        "--concurrency",
        "8",
        "--queue",
        hang,
        "--queue",
        other,
        "--queue",
        f"fair.idle.{time.time_ns()}",
    )
    with httpx.Client(base_url=dispatching.url, timeout=60) as http:
        slow = receiver.url("/slow?seconds=20")
        hanging = create_batch(
            http, [body(slow, queue=hang, task_data={"i": i}, timeoutSeconds=30) for i in range(12)]
        )
        wait_for(lambda: len(hits_of(receiver, hanging)) >= 6, 15, "the hanging callbacks")
        time.sleep(0.5)  # a claim beyond the cap would have called back by now
        assert len(hits_of(receiver, hanging)) == 6
        quick = create(http, receiver.url("/ok"), queue=other)
        started = time.monotonic()
        wait_for(lambda: get(http, quick)["status"] == "Completed", 10, "the other queue's task")
        print(f"the other queue's task completed {time.monotonic() - started:.2f} s after create")
