"""Servers on hosts whose clocks disagree share one database, and so one clock: the database's.

A second host is stood for by a real server whose clock libfaketime moves two minutes ahead
(``LD_PRELOAD``, Debian's ``faketime`` package; ``.ci/run`` installs it). Without the shared
clock that server took the leases of the other for expired and ran their tasks again.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import glob
import re
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import ready_task
from tests.support.backends import backend_env, in_ci
from tests.support.receiver import Receiver
from tests.support.server import Server

SKEW_SECONDS = 120
"""How far ahead the skewed server's clock runs: past a task's lease (timeoutSeconds plus the
30 s grace), so that a server going by its own clock finds the lease of another run out."""


def _faketime_library() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        message = "libfaketime is not installed (Debian package faketime)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found[0]


def _skewed(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a server whose wall clock runs :data:`SKEW_SECONDS` ahead of this host's."""
    return {
        **env,
        "LD_PRELOAD": _faketime_library(),
        "FAKETIME": f"+{SKEW_SECONDS}s",
        # The event loop's timers and timeouts stay true: only the wall clock is wrong.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def _offset_gauge(server: Server) -> float:
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(r"^taskplatform_clock_offset_seconds (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return float(found[1])


@pytest.mark.parametrize("backend", ["postgres", "redis+postgres"])
def test_a_server_whose_clock_runs_ahead_leaves_the_leases_of_others_alone(
    backend: str, tmp_path: Path, receiver: Receiver
) -> None:
    """While one server's callback runs, a server two minutes ahead reaps every 0.1 s: the
    lease stays the first server's, the callback is made once and the task is Completed."""
    env = {
        **backend_env(backend, tmp_path),
        "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.1",
    }
    first = Server(env, tmp_path / "first.log").start()
    ahead = Server(_skewed(env), tmp_path / "ahead.log")
    try:
        ahead.start()
        with httpx.Client(base_url=first.url, timeout=60) as http:
            task_id = ready_task(http, receiver.url("/slow?seconds=2"), timeoutSeconds=10)
            executed = http.post(f"/api/tasks/{task_id}/execute")
            assert executed.status_code == 200, executed.text
            task = http.get(f"/api/tasks/{task_id}").json()
        assert (task["status"], task["attempts"]) == ("Completed", 1), task
        assert len(receiver.hits_for(task_id)) == 1
        assert "lease expired" not in ahead.log()
    finally:
        ahead.stop()
        first.stop()


@pytest.mark.parametrize("backend", ["postgres", "redis+postgres"])
def test_a_server_whose_clock_runs_ahead_keeps_time_by_the_database(
    backend: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The skewed server stamps tasks with the database's time, exports its offset, warns once
    that the host's time sync is broken; a server on a true clock reports no offset."""
    env = backend_env(backend, tmp_path)
    first = Server(env, tmp_path / "first.log").start()
    ahead = Server(_skewed(env), tmp_path / "ahead.log")
    try:
        ahead.start()
        before = time.time()
        created = httpx.post(
            f"{ahead.url}/api/tasks",
            json={"taskData": {}, "callbackUrl": receiver.url("/ok")},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        task = httpx.get(f"{first.url}/api/tasks/{created.json()['taskId']}", timeout=10).json()
        stamped = datetime.datetime.fromisoformat(task["createdAt"]).timestamp()
        assert before - 1 <= stamped <= time.time() + 1, (before, task["createdAt"])
        assert _offset_gauge(ahead) == pytest.approx(-SKEW_SECONDS, abs=1)
        assert abs(_offset_gauge(first)) < 1
        warnings = [line for line in ahead.log().splitlines() if "time sync" in line]
        assert len(warnings) == 1, warnings
        assert re.search(r"clock is (119\.9|120\.0) s ahead of the database server's", warnings[0])
        assert "time sync" not in first.log()
    finally:
        ahead.stop()
        first.stop()


def test_a_clock_that_jumps_while_serving_is_measured_again_at_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The host's clock is stepped two minutes ahead while the server runs: its next
    maintenance round measures the database's clock again (not a minute later), so the tasks
    it stamps keep the database's time."""
    env = {
        **backend_env("postgres", tmp_path),
        "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2",
    }
    clock = tmp_path / "faketime"
    clock.write_text("+0s\n")
    jumping = {
        **{key: value for key, value in _skewed(env).items() if key != "FAKETIME"},
        "FAKETIME_TIMESTAMP_FILE": str(clock),  # read again at every clock call:
        "FAKETIME_NO_CACHE": "1",
    }
    server = Server(jumping, tmp_path / "server.log").start()
    try:
        assert abs(_offset_gauge(server)) < 1
        clock.write_text(f"+{SKEW_SECONDS}s\n")
        deadline = time.monotonic() + 10
        while _offset_gauge(server) > -SKEW_SECONDS + 1:
            assert time.monotonic() < deadline, "the jump was not followed within 10 s"
            time.sleep(0.2)
        before = time.time()
        created = httpx.post(
            f"{server.url}/api/tasks",
            json={"taskData": {}, "callbackUrl": receiver.url("/ok")},
            timeout=10,
        )
        stamped = datetime.datetime.fromisoformat(
            httpx.get(f"{server.url}/api/tasks/{created.json()['taskId']}").json()["createdAt"]
        ).timestamp()
        assert before - 1 <= stamped <= time.time() + 1
    finally:
        server.stop()


def test_a_server_whose_clock_runs_ahead_stamps_callbacks_and_reads_retry_after_by_the_database(
    tmp_path: Path, receiver: Receiver
) -> None:
    """README, Clocks: a process "adds the offset to every lease, schedule, backoff and
    timestamp". Two places went by the host's clock instead (found in review): the
    ``webhook-timestamp`` a callback is stamped and signed with (two minutes off here; past
    five, a Standard Webhooks receiver refuses every signed callback as a replay, a 4xx that
    ends the task), and the HTTP date of a ``Retry-After``, read against the host's clock and
    added to the database's (a retry asked for 20 s on came 0.2 s on)."""
    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + base64.b64encode(b"a" * 32).decode()
    env = {
        **backend_env("postgres", tmp_path),
        "TASKPLATFORM_SIGNING_SECRET": secret,
        "TASKPLATFORM_DISPATCH": "true",
        "TASKPLATFORM_DISPATCH_QUEUES": "timed",
        "TASKPLATFORM_DISPATCH_POLL_SECONDS": "0.1",
        "TASKPLATFORM_RETRY_AFTER_MAX_SECONDS": "3600",
    }
    ahead = Server(_skewed(env), tmp_path / "ahead.log").start()
    try:
        assert _offset_gauge(ahead) == pytest.approx(-SKEW_SECONDS, abs=1)
        with httpx.Client(base_url=ahead.url, timeout=30) as http:
            task_id = ready_task(http, receiver.url("/ok"), task_data={"n": 1})
            executed = http.post(f"/api/tasks/{task_id}/execute")
            assert executed.status_code == 200, executed.text
            (hit,) = receiver.hits_for(task_id)
            headers = {name.lower(): value for name, value in hit.headers.items()}
            stamped = int(headers["webhook-timestamp"])
            assert abs(time.time() - stamped) < 5, f"stamped {stamped - time.time():+.0f} s off"
            assert Webhook(secret).verify(hit.body, headers) == {"n": 1}

            not_before = time.time() + 20
            date = email.utils.formatdate(not_before, usegmt=True)
            url = receiver.url("/status/503?retry_after=" + urllib.parse.quote(date))
            created = http.post(
                "/api/tasks",
                json={
                    "taskData": {},
                    "callbackUrl": url,
                    "queue": "timed",
                    "maxRetries": 1,
                    "backoffMinSeconds": 0.1,
                    "backoffMaxSeconds": 0.2,
                },
            )
            assert created.status_code == 201, created.text
            retried = created.json()["taskId"]
            deadline = time.monotonic() + 10
            while (task := http.get(f"/api/tasks/{retried}").json())["status"] != "Retry":
                assert time.monotonic() < deadline, task
                time.sleep(0.05)
            time.sleep(1)  # time for a retry, were it due
        assert len(receiver.hits_for(retried)) == 1
        next_attempt = datetime.datetime.fromisoformat(task["nextAttemptAt"]).timestamp()
        assert next_attempt >= not_before - 1, (task["nextAttemptAt"], date)
    finally:
        ahead.stop()
