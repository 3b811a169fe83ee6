"""``taskplatform tasks …`` and ``taskplatform stats`` against a real server, through the real
``taskplatform`` Typer app: every command, ``--json``, the exit codes, and resumable import.

SQLite only: the CLI speaks HTTP through the client, whatever the backend.
"""

from __future__ import annotations

import datetime
import http.server
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from taskplatform.cli import app
from taskplatform.cli_tasks import MAX_LINE_BYTES, ExitCode
from taskplatform.client import ConnectionFailed, TaskClient
from tests.support.receiver import Receiver
from tests.support.server import Server, clean_environ, free_port

MISSING = "01900000-0000-7000-8000-000000000000"


@pytest.fixture(scope="module")
def backend() -> str:
    """The CLI only speaks HTTP to the API, whatever the backend: SQLite only."""
    return "sqlite"


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own."""
    return f"cli-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tp(server: Server) -> Iterator[TaskClient]:
    """A client to check what the commands did."""
    with TaskClient(server.url) as client:
        yield client


def run(server: Server | None, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``taskplatform <args>`` with ``--url`` given through ``TASKPLATFORM_URL``."""
    environment = {"COLUMNS": "200"}
    if server is not None:
        environment["TASKPLATFORM_URL"] = server.url
    return CliRunner().invoke(app, list(args), env={**environment, **(env or {})})


def as_json(result: Result) -> Any:
    """Parse stdout, which under ``--json`` must be one JSON document and nothing else."""
    return json.loads(result.stdout)


def test_create_get_list_dequeue_execute_executions_in_json(
    server: Server, receiver: Receiver, queue: str
) -> None:
    created = run(
        server,
        *("tasks", "create", "--json", "-c", receiver.url("/ok"), "-d", '{"orderId": 42}'),
        *("-p", "5", "--queue", queue, "--max-retries", "1", "--timeout", "9"),
    )
    assert created.exit_code == 0, created.output
    body = as_json(created)
    assert body["status"] == "Queued"
    assert body["replayed"] is False
    task_id = body["taskId"]

    got = run(server, "tasks", "get", task_id, "--json")
    assert got.exit_code == 0, got.output
    task = as_json(got)
    assert (task["taskId"], task["taskData"], task["priority"], task["queue"]) == (
        task_id,
        {"orderId": 42},
        5,
        queue,
    )
    assert (task["maxRetries"], task["timeoutSeconds"]) == (1, 9.0)

    listed = as_json(run(server, "tasks", "list", "--queue", queue, "--json"))
    assert [item["taskId"] for item in listed["items"]] == [task_id]
    assert listed["nextCursor"] is None

    dequeued = run(server, "tasks", "dequeue", "--queue", queue, "--json")
    assert dequeued.exit_code == 0, dequeued.output
    assert as_json(dequeued)["status"] == "Dequeued"

    executed = run(server, "tasks", "execute", task_id, "--json")
    assert executed.exit_code == 0, executed.output
    outcome = as_json(executed)
    assert (outcome["status"], outcome["attempt"]) == ("Completed", 1)
    assert outcome["result"]["ok"] is True
    assert len(receiver.hits_for(task_id)) == 1

    log = as_json(run(server, "tasks", "executions", task_id, "--json"))
    assert [(item["attempt"], item["httpStatus"]) for item in log["items"]] == [(1, 200)]


def test_human_output_and_the_other_commands(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient
) -> None:
    created = run(server, "tasks", "create", "-c", receiver.url("/status/500"), "--queue", queue)
    assert created.exit_code == 0, created.output
    task_id, status = created.stdout.split()
    assert status == "Queued"
    shown = run(server, "tasks", "get", task_id)
    assert shown.exit_code == 0
    assert task_id in shown.stdout
    assert "Queued" in shown.stdout
    listed = run(server, "tasks", "list", "--queue", queue, "--limit", "1")
    assert task_id in listed.stdout
    dequeued = run(server, "tasks", "dequeue", "--queue", queue)
    assert "Dequeued" in dequeued.stdout
    failed = run(server, "tasks", "execute", task_id)
    assert failed.exit_code == ExitCode.CALLBACK_FAILED, failed.output
    assert f"{task_id} Failed attempt 1" in failed.stdout
    assert "HTTP 500" in failed.stdout
    retried = run(server, "tasks", "retry", task_id)
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.split() == [task_id, "Queued"]
    cancelled = run(server, "tasks", "cancel", task_id, "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert as_json(cancelled)["status"] == "Cancelled"
    assert tp.get(task_id).status.value == "Cancelled"
    attempts = run(server, "tasks", "executions", task_id)
    assert "500" in attempts.stdout

    background = tp.create({}, receiver.url("/ok"), queue=queue).task_id
    tp.dequeue(queue)
    accepted = run(server, "tasks", "execute", background, "--async")
    assert accepted.exit_code == 0, accepted.output
    assert "Processing" in accepted.stdout


def test_text_that_looks_like_rich_markup_is_printed_as_it_is(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient
) -> None:
    """A task's data, a server's detail and a file name are the user's text, not Rich markup:
    ``[/red]`` ended the command in a MarkupError traceback, and ``[bold]`` vanished."""
    data = {"note": "[/red] [bold]b[/bold] [link=http://x/]l[/link]"}
    task_id = tp.create(data, receiver.url("/ok"), queue=queue).task_id
    for command in (["get", task_id], ["dequeue", "--queue", queue]):
        result = run(server, "tasks", *command)
        assert result.exit_code == 0, result.output
        assert json.dumps(data, ensure_ascii=False) in result.stdout
    # U+009B alone starts a terminal escape; json.dumps(ensure_ascii=False) left it raw.
    steered = tp.create({"s": "\u009b31mred"}, receiver.url("/ok"), queue=queue).task_id
    for as_json_too in ([], ["--json"]):
        shown = run(server, "tasks", "get", steered, *as_json_too)
        assert shown.exit_code == 0, shown.output
        assert "\x9b" not in shown.stdout
        assert "\\u009b31mred" in shown.stdout
    missing = run(server, "tasks", "get", "[/red]")
    assert missing.exit_code == ExitCode.NOT_FOUND, missing.output
    assert "[/red]" in missing.output
    assert "Traceback" not in missing.output


def test_retry_dead_letters(server: Server, receiver: Receiver, queue: str, tp: TaskClient) -> None:
    """``tasks retry --dead-letters`` re-drives a queue's dead letters (the API's bulk
    re-drive, which the CLI could not reach: one ``tasks retry ID`` per task)."""
    dead = []
    for _ in range(2):
        task_id = tp.create({}, receiver.url("/status/500"), queue=queue, max_retries=0).task_id
        tp.dequeue(queue)
        assert tp.execute(task_id).status.value == "Failed"
        dead.append(task_id)
    assert tp.get(dead[0]).dead_letter
    for wrong in (
        ["retry"],
        ["retry", dead[0], "--dead-letters"],
        ["retry", dead[0], "--limit", "1"],
    ):
        result = run(server, "tasks", *wrong)
        assert result.exit_code == ExitCode.USAGE, result.output
    one = run(server, "tasks", "retry", "--dead-letters", "--queue", queue, "--limit", "1")
    assert one.exit_code == 0, one.output
    assert one.stdout.splitlines()[0] == "re-drove 1 dead letter"
    rest = run(server, "tasks", "retry", "--dead-letters", "--queue", queue, "--json")
    assert rest.exit_code == 0, rest.output
    assert as_json(rest)["retried"] == 1
    assert {tp.get(task_id).status.value for task_id in dead} == {"Queued"}


def test_list_all_pages(server: Server, receiver: Receiver, queue: str, tp: TaskClient) -> None:
    ids = [tp.create({"i": i}, receiver.url("/ok"), queue=queue).task_id for i in range(3)]
    page = as_json(run(server, "tasks", "list", "--queue", queue, "--limit", "2", "--json"))
    assert len(page["items"]) == 2
    assert page["nextCursor"] is not None
    rest = as_json(
        run(server, "tasks", "list", "--queue", queue, "--cursor", page["nextCursor"], "--json")
    )
    assert [item["taskId"] for item in page["items"] + rest["items"]] == ids[::-1]
    every = as_json(
        run(server, "tasks", "list", "--queue", queue, "--limit", "1", "--all", "--json")
    )
    assert [item["taskId"] for item in every["items"]] == ids[::-1]
    human = run(server, "tasks", "list", "--queue", queue, "--limit", "2")
    assert f"more: --cursor {page['nextCursor']}" in human.stdout


def test_stats(server: Server, receiver: Receiver, queue: str, tp: TaskClient) -> None:
    tp.create({}, receiver.url("/ok"), queue=queue)
    shown = run(server, "stats", "--queue", queue)
    assert shown.exit_code == 0, shown.output
    assert "queue depth" in shown.stdout
    assert queue in shown.stdout
    body = as_json(run(server, "stats", "--queue", queue, "--json"))
    assert body["stats"]["tasks"]["Queued"] == 1
    assert body["stats"]["queueDepth"] == 1
    assert any(item["name"] == queue and item["depth"] == 1 for item in body["queues"])


def test_exit_codes(server: Server, receiver: Receiver, queue: str, tp: TaskClient) -> None:
    missing = run(server, "tasks", "get", MISSING)
    assert missing.exit_code == 3
    assert "task_not_found" in missing.stderr
    missing_json = run(server, "tasks", "get", MISSING, "--json")
    assert missing_json.exit_code == 3
    assert as_json(missing_json)["error"]["code"] == "task_not_found"
    # "dequeue" is no task id, though /api/tasks/dequeue is a route (a GET there takes a task).
    queued = tp.create({}, receiver.url("/ok"), queue=queue).task_id
    not_an_id = run(server, "tasks", "get", "dequeue", "--json")
    assert not_an_id.exit_code == 3
    assert as_json(not_an_id)["error"]["code"] == "task_not_found"
    assert tp.get(queued).status == "Queued"

    refused = run(server, "tasks", "execute", queued, "--json")
    assert refused.exit_code == 1
    assert as_json(refused)["error"]["code"] == "task_not_dequeued"
    invalid = run(server, "tasks", "create", "-c", "ftp://example.com/", "-p", "1")
    assert invalid.exit_code == 1
    assert "validation_error" in invalid.stderr
    assert "$.callbackUrl" in invalid.stderr

    tp.dequeue(queue)
    empty = run(server, "tasks", "dequeue", "--queue", queue)
    assert empty.exit_code == 5
    assert "empty" in empty.stderr
    empty_json = run(server, "tasks", "dequeue", "--queue", queue, "--json")
    assert empty_json.exit_code == 5
    assert as_json(empty_json) is None

    nowhere = f"http://127.0.0.1:{free_port()}"
    unreachable = run(None, "tasks", "get", MISSING, "--url", nowhere)
    assert unreachable.exit_code == 4
    assert nowhere in unreachable.stderr
    assert "--url or TASKPLATFORM_URL" in unreachable.stderr
    unreachable_json = run(None, "stats", "--json", "--url", nowhere)
    assert unreachable_json.exit_code == 4
    assert as_json(unreachable_json)["error"]["code"] == "connection_failed"

    assert run(server, "tasks", "create").exit_code == 2  # no --callback-url
    assert run(server, "tasks", "list", "--limit", "0").exit_code == 2
    bad_data = run(server, "tasks", "create", "-c", receiver.url("/ok"), "-d", "[1]", "--json")
    assert bad_data.exit_code == 2
    assert as_json(bad_data)["error"]["code"] == "usage_error"


def test_api_key_from_option_and_environment(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    keyed = start_server(TASKPLATFORM_API_KEYS="cli-key-1234567890")
    denied = run(keyed, "stats", "--json")
    assert denied.exit_code == 1
    assert as_json(denied)["error"]["code"] == "unauthorized"
    said = run(keyed, "stats")
    assert said.exit_code == 1
    assert "(pass one with --api-key or TASKPLATFORM_API_KEY)" in said.stderr
    assert run(keyed, "stats", "--api-key", "cli-key-1234567890").exit_code == 0
    created = run(
        keyed,
        *("tasks", "create", "-c", receiver.url("/ok"), "--json"),
        env={"TASKPLATFORM_API_KEY": "cli-key-1234567890"},
    )
    assert created.exit_code == 0, created.output


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def task_line(receiver: Receiver, queue: str, i: int, **extra: object) -> str:
    return json.dumps(
        {"taskData": {"i": i}, "callbackUrl": receiver.url("/ok"), "queue": queue, **extra}
    )


def queued_numbers(tp: TaskClient, queue: str) -> list[int]:
    return sorted(task.task_data["i"] for task in tp.iter_tasks(queue=queue, page_size=200))


def test_import_reports_bad_lines_and_a_rerun_creates_nothing_twice(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "tasks.jsonl",
        [
            task_line(receiver, queue, 1),
            task_line(receiver, queue, 2),
            '{"taskData": {"i": 3}, "callbackUrl": ',  # line 3: not JSON
            task_line(receiver, queue, 4, priority=2**31),  # line 4: refused by the server
            "",
            task_line(receiver, queue, 6),
        ],
    )
    first = run(server, "tasks", "import", str(source), "--chunk-size", "2")
    assert first.exit_code == ExitCode.REFUSED, first.output
    assert "created 3 tasks" in first.stdout
    assert "line 3: malformed_json" in first.stdout
    assert "line 4: validation_error" in first.stdout
    assert "$.priority" in first.stdout
    assert queued_numbers(tp, queue) == [1, 2, 6]

    again = run(server, "tasks", "import", str(source), "--json")
    assert again.exit_code == 0, again.output
    summary = as_json(again)
    assert (summary["created"], summary["createdTotal"], summary["failed"]) == (0, 3, [])
    assert [failure["line"] for failure in summary["failedEarlier"]] == [3, 4]
    assert summary["linesAlreadyDone"] == 6
    assert queued_numbers(tp, queue) == [1, 2, 6]
    # A re-run in words still names the lines that failed before (it said nothing of them).
    words = run(server, "tasks", "import", str(source))
    assert words.exit_code == 0, words.output
    assert "2 lines failed in an earlier run and stay failed (line 3, 4)" in words.stdout

    with source.open("a") as appending:  # lines appended later: only they are imported
        appending.write(task_line(receiver, queue, 7) + "\n")
    grown = run(server, "tasks", "import", str(source), "--json")
    assert grown.exit_code == 0, grown.output
    assert (as_json(grown)["created"], as_json(grown)["linesAlreadyDone"]) == (1, 6)
    assert queued_numbers(tp, queue) == [1, 2, 6, 7]

    source.write_text(source.read_text().replace('"i": 1}', '"i": 10}'))  # an imported line
    changed = run(server, "tasks", "import", str(source))
    assert changed.exit_code == ExitCode.USAGE
    assert "--restart" in changed.stderr
    assert queued_numbers(tp, queue) == [1, 2, 6, 7]


def test_import_refuses_a_pipe_or_a_device_instead_of_creating_nothing(
    server: Server, tmp_path: Path
) -> None:
    """The import reads its file twice (the line count, then the lines): a pipe would be empty
    the second time and the import would say "created 0 tasks". /dev/zero never ends."""
    pipe = tmp_path / "tasks.pipe"
    os.mkfifo(pipe)
    for source in (str(pipe), "/dev/zero"):
        refused = run(server, "tasks", "import", source, "--json")
        assert refused.exit_code == ExitCode.USAGE, refused.output
        error = as_json(refused)["error"]
        assert error["code"] == "usage_error"
        assert "is not a regular file" in error["detail"]
    assert not list(tmp_path.glob("*.import-state.json"))


def test_import_of_dev_stdin_redirected_from_a_file_keeps_its_state_beside_that_file(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    """``tasks import /dev/stdin < tasks.jsonl`` imports the file, keeps its progress in
    tasks.jsonl.import-state.json (not in /dev), and a second run creates nothing twice."""
    source = write_lines(tmp_path / "tasks.jsonl", [task_line(receiver, queue, i) for i in (1, 2)])
    command = [sys.executable, "-m", "taskplatform", "tasks", "import", "/dev/stdin", "--json"]
    env = clean_environ({"TASKPLATFORM_URL": server.url})
    for created in (2, 0):
        with source.open("rb") as stdin:
            done = subprocess.run(
                command, stdin=stdin, env=env, capture_output=True, timeout=60, check=False
            )
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["created"] == created
        assert summary["state"] == str(source.resolve()) + ".import-state.json"
    assert queued_numbers(tp, queue) == [1, 2]
    assert not Path("/dev/stdin.import-state.json").exists()
    # Any other link keeps its state beside the link, as before.
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    linked = run(server, "tasks", "import", str(link), "--json")
    assert linked.exit_code == 0, linked.output
    assert as_json(linked)["state"] == str(link) + ".import-state.json"


def test_an_import_leaves_a_last_line_cut_short_for_the_next_run(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    """A file still being written ends in half a line: that line is not settled (it was failed
    as malformed, and the next run read its second half as a line of its own), and the next run,
    once the file has grown, imports it whole; a whole last line without a newline is imported."""
    source = tmp_path / "growing.jsonl"
    fourth = task_line(receiver, queue, 4)
    source.write_text(
        "".join(task_line(receiver, queue, i) + "\n" for i in (1, 2, 3)) + fourth[:20]
    )
    first = run(server, "tasks", "import", str(source), "--json")
    assert first.exit_code == 0, first.output
    summary = as_json(first)
    assert (summary["created"], summary["failed"], summary["unfinishedLine"]) == (3, [], 4)
    assert (summary["interrupted"], summary["nextLine"]) == (False, 4)  # line 4 is read again
    with source.open("a") as growing:
        growing.write(fourth[20:] + "\n" + task_line(receiver, queue, 5))  # 5: no newline
    second = run(server, "tasks", "import", str(source), "--json")
    assert second.exit_code == 0, second.output
    summary = as_json(second)
    assert (summary["created"], summary["failed"], summary["unfinishedLine"]) == (2, [], None)
    assert summary["linesAlreadyDone"] == 3
    assert queued_numbers(tp, queue) == [1, 2, 3, 4, 5]


def test_import_splits_what_the_server_finds_too_large(
    start_server: Callable[..., Server], receiver: Receiver, tmp_path: Path
) -> None:
    """A server taking batches of 4,096 bytes at most: a batch of 20 small lines is answered
    413, so it goes again in halves until each half fits, and a line too large to go alone fails
    on its own, as payload_too_large; the import goes on and a re-run creates nothing twice."""
    small = start_server(TASKPLATFORM_MAX_BATCH_BODY_BYTES="4096")

    def line(i: int, pad: int) -> str:
        body = {"taskData": {"i": i, "pad": "x" * pad}, "callbackUrl": receiver.url("/ok")}
        return json.dumps({**body, "queue": "split"})

    lines = [line(i, 300) for i in range(1, 11)] + [line(11, 5000)]
    lines += [line(i, 300) for i in range(12, 22)]
    source = write_lines(tmp_path / "tasks.jsonl", lines)
    first = run(small, "tasks", "import", str(source), "--json")
    assert first.exit_code == ExitCode.REFUSED, first.output
    summary = as_json(first)
    assert summary["created"] == 20
    assert [(f["line"], f["code"]) for f in summary["failed"]] == [(11, "payload_too_large")]
    with TaskClient(small.url) as client:
        assert queued_numbers(client, "split") == [*range(1, 11), *range(12, 22)]
        again = run(small, "tasks", "import", str(source), "--json")
        assert (again.exit_code, as_json(again)["created"]) == (0, 0), again.output
        assert queued_numbers(client, "split") == [*range(1, 11), *range(12, 22)]


def test_an_import_line_too_long_for_any_batch_fails_alone(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    """A line over MAX_LINE_BYTES is read past in pieces (never held whole) and fails as
    payload_too_large; the lines around it are created, and a re-run creates nothing twice."""
    source = tmp_path / "tasks.jsonl"
    huge = MAX_LINE_BYTES + 1
    with source.open("w") as out:
        out.write(task_line(receiver, queue, 1) + "\n")
        out.write("x" * huge + "\n")
        out.write(task_line(receiver, queue, 3) + "\n")
        out.write(" " * MAX_LINE_BYTES + "\n")  # the longest line sent: blank, so skipped
        out.write(task_line(receiver, queue, 5))  # the last line, without a newline
    first = run(server, "tasks", "import", str(source), "--json")
    assert first.exit_code == ExitCode.REFUSED, first.output
    summary = as_json(first)
    assert summary["created"] == 3
    assert [(f["line"], f["code"]) for f in summary["failed"]] == [(2, "payload_too_large")]
    assert f"{huge:,} bytes" in summary["failed"][0]["detail"]
    assert queued_numbers(tp, queue) == [1, 3, 5]
    again = run(server, "tasks", "import", str(source), "--json")
    assert again.exit_code == 0, again.output
    assert (as_json(again)["created"], as_json(again)["linesAlreadyDone"]) == (0, 5)
    assert queued_numbers(tp, queue) == [1, 3, 5]


def test_an_import_state_that_cannot_be_written_is_a_usage_error_not_a_traceback(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    """Before the first batch nothing is sent; after one, a re-run once the state can be
    written creates nothing twice (the batch goes again under the same idempotency keys)."""
    source = write_lines(tmp_path / "tasks.jsonl", [task_line(receiver, queue, 1)])
    nowhere = run(server, "tasks", "import", str(source), "--state", str(tmp_path / "no/s.json"))
    assert nowhere.exit_code == ExitCode.USAGE, nowhere.output
    assert "cannot write the import state" in nowhere.stderr
    assert "nothing was created" in nowhere.stderr
    assert "Traceback" not in nowhere.output
    assert nowhere.stderr.strip().splitlines()[-1].startswith("error: cannot write")  # last
    assert queued_numbers(tp, queue) == []

    assert run(server, "tasks", "import", str(source)).exit_code == 0
    with source.open("a") as appending:
        appending.write(task_line(receiver, queue, 2) + "\n")
    # Its save writes this name first and renames it: a directory there makes it fail.
    blocker = tmp_path / "tasks.jsonl.import-state.json.tmp"
    blocker.mkdir()
    failed = run(server, "tasks", "import", str(source), "--json")
    assert failed.exit_code == ExitCode.USAGE, failed.output
    error = as_json(failed)["error"]
    assert error["code"] == "usage_error"
    assert "the lines up to 2 were sent" in error["detail"]
    assert queued_numbers(tp, queue) == [1, 2]
    blocker.rmdir()
    again = run(server, "tasks", "import", str(source), "--json")
    assert again.exit_code == 0, again.output
    assert queued_numbers(tp, queue) == [1, 2]


def test_an_interrupted_import_resumes_where_it_stopped(
    server: Server,
    receiver: Receiver,
    queue: str,
    tp: TaskClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is lost before the second batch; the re-run sends only what is left."""
    source = write_lines(tmp_path / "big.jsonl", [task_line(receiver, queue, i) for i in range(7)])
    real_create_batch = TaskClient.create_batch
    batches: list[int] = []

    def cut_after_first(self: TaskClient, items: Any) -> Any:
        items = list(items)
        if batches:
            raise ConnectionFailed("connection lost (test)", attempts=1)
        batches.append(len(items))
        return real_create_batch(self, items)

    monkeypatch.setattr(TaskClient, "create_batch", cut_after_first)
    cut = run(server, "tasks", "import", str(source), "--chunk-size", "3", "--json")
    assert cut.exit_code == ExitCode.UNREACHABLE, cut.output
    assert as_json(cut)["error"]["code"] == "connection_failed"
    assert queued_numbers(tp, queue) == [0, 1, 2]
    monkeypatch.setattr(TaskClient, "create_batch", real_create_batch)

    resumed = run(server, "tasks", "import", str(source), "--chunk-size", "3", "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = as_json(resumed)
    assert (summary["created"], summary["createdTotal"], summary["linesAlreadyDone"]) == (4, 7, 3)
    assert queued_numbers(tp, queue) == list(range(7))

    restarted = run(server, "tasks", "import", str(source), "--restart", "--json")
    assert restarted.exit_code == 0
    assert as_json(restarted)["created"] == 7  # --restart imports again, knowingly
    assert len(queued_numbers(tp, queue)) == 14


def test_a_line_whose_own_key_made_its_task_before_is_counted_as_replayed_not_created(
    server: Server, receiver: Receiver, queue: str, tp: TaskClient, tmp_path: Path
) -> None:
    """Imported again with --restart, a line with its own idempotencyKey gives back the task
    it made the first time: the import said "created 1 task" (and ``"created": 1``) for it."""
    keyed = json.loads(task_line(receiver, queue, 0)) | {"idempotencyKey": f"mine-{queue}"}
    source = write_lines(
        tmp_path / "keyed.jsonl", [json.dumps(keyed), task_line(receiver, queue, 1)]
    )
    first = run(server, "tasks", "import", str(source), "--json")
    assert first.exit_code == 0, first.output
    assert (as_json(first)["created"], as_json(first)["replayed"]) == (2, 0)
    again = run(server, "tasks", "import", str(source), "--restart", "--json")
    assert again.exit_code == 0, again.output
    summary = as_json(again)
    assert (summary["created"], summary["replayed"]) == (1, 1)  # the keyless line is new
    assert (summary["createdTotal"], summary["replayedTotal"]) == (1, 1)
    assert queued_numbers(tp, queue) == [0, 1, 1]
    text = run(server, "tasks", "import", str(source), "--restart")
    assert text.exit_code == 0, text.output
    assert "created 1 task from" in text.output
    assert "1 line whose own idempotencyKey gave back a task made earlier, not now" in text.output


def test_a_batch_whose_answer_was_lost_is_not_created_twice_by_the_resume(
    server: Server,
    receiver: Receiver,
    queue: str,
    tp: TaskClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server creates the second batch but its answer never arrives: the import stops
    before saving that batch, and the re-run sends it again under the same idempotency keys,
    so the server gives those tasks back rather than creating them twice. A line's own
    idempotencyKey is kept; a null one is replaced."""
    lines = [task_line(receiver, queue, i) for i in range(6)]
    lines[4] = json.dumps(json.loads(lines[4]) | {"idempotencyKey": None})  # null: no key
    lines[5] = json.dumps(json.loads(lines[5]) | {"idempotencyKey": f"own-{queue}"})
    source = write_lines(tmp_path / "lost.jsonl", lines)
    real_create_batch = TaskClient.create_batch
    sent: list[list[dict[str, Any]]] = []

    def lose_the_second_answer(self: TaskClient, items: Any) -> Any:
        items = [dict(item) for item in items]
        sent.append(items)
        results = real_create_batch(self, items)
        if len(sent) == 2:
            raise ConnectionFailed("the answer was lost (test)", attempts=1)
        return results

    monkeypatch.setattr(TaskClient, "create_batch", lose_the_second_answer)
    cut = run(server, "tasks", "import", str(source), "--chunk-size", "3", "--json")
    assert cut.exit_code == ExitCode.UNREACHABLE, cut.output
    assert queued_numbers(tp, queue) == list(range(6))  # the server did create batch 2
    resumed = run(server, "tasks", "import", str(source), "--chunk-size", "3", "--json")
    assert resumed.exit_code == 0, resumed.output
    # Replays under the import's own keys are its own tasks; line 6's own key counts apart.
    summary = as_json(resumed)
    assert (summary["createdTotal"], summary["replayedTotal"]) == (5, 1)
    assert summary["linesAlreadyDone"] == 3
    assert queued_numbers(tp, queue) == list(range(6))
    assert sent[1] == sent[2]  # the same items, keys and all
    keys = [item["idempotencyKey"] for batch in sent for item in batch]
    assert keys[5] == f"own-{queue}"
    assert keys[4] is not None
    assert len(set(keys[:6])) == 6


def test_input_the_api_cannot_take_is_a_usage_error_not_a_traceback(
    server: Server, tmp_path: Path
) -> None:
    """NaN and Infinity are not JSON; a bad URL or key is the caller's mistake: each is exit 2
    with a message, never a traceback, and an import reports the line."""
    for data, words in [
        ('{"a": NaN}', "not JSON"),
        ('{"a": Infinity}', "not JSON"),
    ]:
        result = run(server, "tasks", "create", "-c", "http://127.0.0.1:9/x", "-d", data)
        assert result.exit_code == 2, result.output
        assert words in result.output
    for option, value, words in [
        ("--timeout", "nan", "--timeout must be a finite number of seconds"),
        ("--timeout", "inf", "--timeout must be a finite number of seconds"),
        ("--delay", "nan", "--delay must be a finite number of seconds"),
        ("--idempotency-key", "é", "--idempotency-key must be visible ASCII"),
    ]:
        result = run(server, "tasks", "create", "-c", "http://127.0.0.1:9/x", option, value)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert words in " ".join(result.output.split()), result.output
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    result = run(server, "tasks", "create", "-c", "http://127.0.0.1:9/x", "-d", f"@{latin}")
    assert result.exit_code == 2, result.output
    bad_urls = (["--url", "http://[::1"], ["--url", "127.0.0.1:8000"], ["--url", "http://"])
    for args in (*bad_urls, ["--api-key", "ключ"]):
        result = run(None, "tasks", "get", "x", *args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    lines = tmp_path / "nan.jsonl"
    good = '{"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/x"}'
    lines.write_text(
        f'{{"taskData": {{"n": NaN}}, "callbackUrl": "http://127.0.0.1:9/x"}}\n{good}\n'
    )
    result = run(server, "tasks", "import", str(lines))
    assert result.exit_code == 1, result.output
    assert "line 1: malformed_json" in result.output
    assert "created 1 task" in result.output


def test_a_lone_surrogate_is_a_usage_error_as_the_api_refuses_it(
    server: Server, tmp_path: Path
) -> None:
    """JSON may escape a lone surrogate; the API refuses it (422) and UTF-8 cannot carry it, so
    the CLI says so (exit 2, an import names the line) instead of a UnicodeEncodeError."""
    surrogate = "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode"
    for data in ('{"s": "\\ud800"}', '{"s": ["x\\udfffy"]}'):
        result = run(server, "tasks", "create", "-c", "http://127.0.0.1:9/x", "-d", data)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert surrogate in " ".join(result.output.split()), result.output
    lines = tmp_path / "surrogate.jsonl"
    good = '{"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/x"}'
    lines.write_text(f'{{"taskData": {{"s": "\\ud800"}}, "callbackUrl": "http://a/"}}\n{good}\n')
    result = run(server, "tasks", "import", str(lines))
    assert result.exit_code == 1, result.output
    assert "line 1: validation_error" in result.output
    assert "created 1 task" in result.output


def test_json_nested_past_what_python_reads_is_refused_as_the_api_would(
    server: Server, tmp_path: Path
) -> None:
    """2,000 levels made ``json`` raise RecursionError: a traceback and exit 1 for ``--data``,
    and an import that stopped at the line and never sent the lines after it."""
    deep = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"
    data = tmp_path / "deep.json"
    data.write_text(deep)
    for args in (["-d", f"@{data}"], ["-d", f"@{data}", "--json"]):
        result = run(server, "tasks", "create", "-c", "http://127.0.0.1:9/x", *args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert "nested too deep" in result.output
        if "--json" in args:
            assert as_json(result)["error"]["code"] == "usage_error"
    lines = tmp_path / "deep.jsonl"
    good = '{"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/x"}'
    lines.write_text(f'{{"taskData": {deep}, "callbackUrl": "http://a/"}}\n{good}\n')
    result = run(server, "tasks", "import", str(lines))
    assert result.exit_code == 1, result.output
    assert "line 1: validation_error" in result.output
    assert "created 1 task" in result.output


def test_ctrl_c_during_an_import_never_creates_a_task_twice(
    server: Server, tp: TaskClient, tmp_path: Path
) -> None:
    """Ctrl-C lands while batches are in flight: the import stops at a saved point and says
    where, and the resumed import creates every line exactly once."""
    queue = f"sigint-{uuid.uuid4().hex[:8]}"
    lines = tmp_path / "many.jsonl"
    body = {"taskData": {"n": 0}, "callbackUrl": "http://127.0.0.1:9/x", "queue": queue}
    lines.write_text("".join(json.dumps(body | {"taskData": {"n": n}}) + "\n" for n in range(3000)))
    command = [sys.executable, "-m", "taskplatform", "tasks", "import", str(lines)]
    env = clean_environ({"TASKPLATFORM_URL": server.url})
    stopped_at = [0]
    # The signal goes once this run has created tasks, not after a fixed delay: on a loaded
    # machine a delay can land before the command starts, where Typer exits 130 without a word.
    for _ in range(2):
        process = subprocess.Popen([*command, "--chunk-size", "5"], env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while tp.stats(queue=queue).queue_depth <= stopped_at[-1] and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        match = re.search(rb"interrupted after line (\d+)", stderr)
        assert match, stderr
        stopped_at.append(int(match[1]))
        assert stopped_at[-2] < stopped_at[-1] < 3000
        assert tp.stats(queue=queue).queue_depth == stopped_at[-1]  # saved == created
    finished = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert tp.stats(queue=queue).queue_depth == 3000


def test_a_second_ctrl_c_stops_an_import_whose_server_never_answers(tmp_path: Path) -> None:
    """A server that takes the connection and never answers: the first Ctrl-C waited for the
    batch's answer through the client's tries (4 x 30 s), resending it, and every other Ctrl-C
    was swallowed; the import ended 2 minutes later with exit 4 (found in review). A second
    Ctrl-C stops it at once, with exit 130."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x"}) + "\n")
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "taskplatform", "tasks", "import", str(lines), "--url", url],
        env=clean_environ({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(3)  # the batch is in flight
        process.send_signal(signal.SIGINT)
        time.sleep(1)
        assert process.poll() is None  # the first waits for the batch's answer
        process.send_signal(signal.SIGINT)
        began = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert time.monotonic() - began < 10
        assert b"Traceback" not in stderr
    finally:
        process.kill()
        silent.close()


def test_ctrl_c_between_two_batches_says_where_the_import_stopped(
    server: Server, tp: TaskClient, tmp_path: Path
) -> None:
    """A Ctrl-C while the import reads lines, with no batch in flight, also stops at the last
    saved batch with the message and exit code 130, rather than Typer's silent 130; with
    --json, after the summary of what was settled."""
    queue = f"sigint-{uuid.uuid4().hex[:8]}"
    good = "".join(
        json.dumps({"taskData": {"n": n}, "callbackUrl": "http://127.0.0.1:9/x", "queue": queue})
        + "\n"
        for n in range(5)
    )
    lines = tmp_path / "gap.jsonl"
    lines.write_text(good + "\n" * 10_000_000 + good)  # a long stretch with nothing to send
    command = [sys.executable, "-m", "taskplatform", "tasks", "import", str(lines)]
    env = clean_environ({"TASKPLATFORM_URL": server.url})
    process = subprocess.Popen(
        [*command, "--chunk-size", "5", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while tp.stats(queue=queue).queue_depth < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # past the first batch's save, into the blank lines
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert b"interrupted after line 5;" in stderr
    # --json still tells a script where the import stopped.
    summary = json.loads(stdout)
    assert summary["interrupted"] is True
    assert (summary["created"], summary["nextLine"], summary["failed"]) == (5, 6, [])
    finished = subprocess.run(command, env=env, capture_output=True, timeout=120, check=False)
    assert finished.returncode == 0, finished.stderr
    assert b"created 5 tasks" in finished.stdout
    assert tp.stats(queue=queue).queue_depth == 10


def test_ctrl_c_before_the_first_batch_says_nothing_was_created(
    server: Server, tp: TaskClient, tmp_path: Path
) -> None:
    """A Ctrl-C while the import reads its first lines, before any batch: exit 130, no state
    file, no task, and a message that says so rather than pointing to a file that is not there."""
    queue = f"sigint-{uuid.uuid4().hex[:8]}"
    body = {"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x", "queue": queue}
    lines = tmp_path / "late.jsonl"
    lines.write_text("\n" * 10_000_000 + json.dumps(body) + "\n")
    command = [sys.executable, "-m", "taskplatform", "tasks", "import", str(lines)]
    env = clean_environ({"TASKPLATFORM_URL": server.url})
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    # The import opens the file inside its Ctrl-C handling: wait for that, not for a delay.
    fds = Path(f"/proc/{process.pid}/fd")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(_points_to(fd, lines) for fd in _listdir(fds)):
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert b"interrupted before the first batch was sent: nothing was created" in stderr
    assert not lines.with_name(lines.name + ".import-state.json").exists()
    assert tp.stats(queue=queue).queue_depth == 0


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:  # the process is starting or gone
        return []


def _points_to(link: Path, target: Path) -> bool:
    try:
        return link.readlink() == target
    except OSError:
        return False


def test_help_shows_the_defaults_in_brackets() -> None:
    """Rich reads "[default: …]" in a help text as markup and drops it; the defaults must show."""
    shown = {
        ("tasks", "import"): "[default: FILE.import-state.json]",
        ("tasks", "create"): "[server default: 3]",
        ("tasks", "dequeue"): "[default: default]",
    }
    for command, default in shown.items():
        result = run(None, *command, "--help", env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert default in result.output, (command, result.output)


@pytest.mark.parametrize(
    ("args", "detail"),
    [
        (("tasks", "list", "--limit", "0"), "Invalid value for '--limit'"),
        (("tasks", "list", "--status", "Bogus"), "Invalid value for '--status'"),
        (("tasks", "dequeue", "--wait", "30"), "Invalid value for '--wait'"),
        (("tasks", "get"), "Missing argument 'task_id'"),
        (("tasks", "get", "--bogus"), "No such option: --bogus"),
    ],
)
def test_usage_errors_typer_finds_are_json_under_json(args: tuple[str, ...], detail: str) -> None:
    """A bad option value or a missing argument, found before the command runs: under
    ``--json`` one JSON document on stdout as for the commands' own usage errors (stdout was
    empty); without it, Typer's message on stderr."""
    refused = run(None, *args, "--json")
    assert refused.exit_code == ExitCode.USAGE, refused.output
    error = as_json(refused)["error"]
    assert error["code"] == "usage_error"
    assert detail in error["detail"]
    plain = run(None, *args)
    assert plain.exit_code == ExitCode.USAGE
    assert plain.stdout == ""
    assert detail.split("'")[0] in plain.stderr


def test_a_number_past_a_double_prints_as_json(server: Server, receiver: Receiver) -> None:
    """The API keeps a task's data as sent, ``1e999`` too; ``tasks get --json`` printed it as
    ``Infinity``, which no strict JSON parser reads. It prints ``1e999`` and ``-1e999``."""
    body = b'{"taskData": {"big": 1e999, "small": [-1e999]}, "callbackUrl": "%s"}'
    answer = httpx.post(
        f"{server.url}/api/tasks",
        content=body % receiver.url("/ok").encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    shown = run(server, "tasks", "get", answer.json()["taskId"], "--json")
    assert shown.exit_code == 0, shown.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    data = json.loads(shown.stdout, parse_constant=refuse)["taskData"]
    assert data == {"big": math.inf, "small": [-math.inf]}
    assert '"big": 1e999' in shown.stdout


def test_one_line_nested_past_the_servers_depth_fails_alone_in_an_import(
    server: Server, receiver: Receiver, tp: TaskClient, queue: str, tmp_path: Path
) -> None:
    """README: ``tasks import`` "reports failures by line number, and resumes where it
    stopped". One line whose taskData is nested 100 deep (past the server's 64) makes the
    server refuse the whole batch (422 ``$.tasks``); the import stopped there with exit 1 and
    no line created, on every re-run. The line fails on its own, as a line too large does,
    and the others are created."""
    good = {"callbackUrl": receiver.url("/ok"), "queue": queue}
    deep = '{"taskData": ' + '{"a":' * 100 + "1" + "}" * 100
    deep += f', "callbackUrl": "{receiver.url("/ok")}", "queue": "{queue}"}}'
    lines = tmp_path / "deep.jsonl"
    lines.write_text(
        json.dumps({"taskData": {"n": 1}, **good})
        + "\n"
        + deep
        + "\n"
        + json.dumps({"taskData": {"n": 3}, **good})
        + "\n"
    )
    result = run(server, "tasks", "import", str(lines), "--json")
    assert tp.stats(queue=queue).queue_depth == 2, result.output
    summary = as_json(result)
    assert summary["created"] == 2
    assert [failure["line"] for failure in summary["failed"]] == [2]
    assert result.exit_code == ExitCode.REFUSED


def test_stats_usage_errors_are_json_under_json() -> None:
    """docs/client-and-cli.md: "``taskplatform tasks …`` and ``taskplatform stats`` … Every
    command takes … ``--json``, which prints one JSON document on stdout and nothing else
    (… ``{"error": {...}}`` … on an error)". ``stats --json --bogus`` (or a ``--queue``
    without its value) printed nothing on stdout, as ``tasks list --json --bogus`` did before
    its group turned Typer's usage errors into JSON."""
    for args in (("stats", "--json", "--bogus"), ("stats", "--json", "--queue")):
        refused = run(None, *args)
        assert refused.exit_code == ExitCode.USAGE, refused.output
        assert refused.stdout.strip(), f"{args}: nothing on stdout under --json"
        assert as_json(refused)["error"]["code"] == "usage_error"


def test_list_all_starts_at_the_cursor_it_is_given(
    server: Server, receiver: Receiver, tp: TaskClient, queue: str
) -> None:
    """``tasks list`` takes ``--cursor`` (nextCursor of the previous page) and ``--all``
    (follow every page). Together they dropped ``--cursor`` and listed from the first page
    again: a script resuming a listing (``--cursor $saved --all``) counted tasks twice."""
    for n in range(3):
        tp.create({"n": n}, receiver.url("/ok"), queue=queue)
    first = run(server, "tasks", "list", "--queue", queue, "--limit", "1", "--json")
    assert first.exit_code == 0, first.output
    cursor = as_json(first)["nextCursor"]
    seen = {task["taskId"] for task in as_json(first)["items"]}
    rest = run(server, "tasks", "list", "--queue", queue, "--cursor", cursor, "--all", "--json")
    assert rest.exit_code == 0, rest.output
    ids = [task["taskId"] for task in as_json(rest)["items"]]
    assert not seen & set(ids), "the page before the cursor was listed again"
    assert len(ids) == 2


def test_create_takes_an_rfc3339_time_with_a_lower_case_t_and_z(
    server: Server, receiver: Receiver, tp: TaskClient, queue: str
) -> None:
    """``--scheduled-at`` is documented as "an RFC 3339 time with a zone". RFC 3339 section
    5.6: "T" and "Z" may be lower case, and the API takes ``2027-01-01t09:00:00z``. The command
    refused it (exit 2, "not an RFC 3339 time": ``datetime.fromisoformat`` wants upper case)."""
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    text = when.strftime("%Y-%m-%dt%H:%M:%Sz")
    created = run(
        server, "tasks", "create", "-c", receiver.url("/ok"), "--queue", queue,
        "--scheduled-at", text, "--json",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    task = tp.get(as_json(created)["taskId"])
    assert task.scheduled_at is not None
    assert abs((task.scheduled_at - when).total_seconds()) < 1


def test_executions_json_names_the_task_by_its_own_id(
    server: Server, receiver: Receiver, tp: TaskClient, queue: str
) -> None:
    """Under ``--json`` a command prints "the API's JSON". ``tasks executions`` rebuilds the
    document with ``taskId``: as typed on the command line, it named a task given in upper
    case (which the API accepts, RFC 9562) otherwise than the API and ``tasks get --json``
    do, and a script joining the two on ``taskId`` found no match."""
    task_id = tp.create({"n": 1}, receiver.url("/ok"), queue=queue).task_id
    shown = run(server, "tasks", "executions", task_id.upper(), "--json")
    assert shown.exit_code == 0, shown.output
    api = httpx.get(f"{server.url}/api/tasks/{task_id.upper()}/executions", timeout=30).json()
    assert as_json(shown)["taskId"] == api["taskId"] == task_id


def test_tasks_get_shows_task_data_numbers_as_they_were_sent(
    server: Server, receiver: Receiver
) -> None:
    """taskData "is kept exactly as sent" (README). ``tasks get`` (table and --json, "the API's
    JSON") printed ``123456789012345678901234567890.5`` as ``1.2345678901234568e+29`` and
    ``0.1000000000000000000001`` as ``0.1``, values the task does not hold (found in review):
    the client's JsonNumber keeps the digits as sent."""
    body = (
        b'{"taskData": {"amount": 123456789012345678901234567890.5,'
        b' "rate": 0.1000000000000000000001},'
        b' "callbackUrl": "%s"}'
    )
    answer = httpx.post(
        f"{server.url}/api/tasks",
        content=body % receiver.url("/ok").encode(),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    task_id = answer.json()["taskId"]
    for args in (("--json",), ()):
        shown = run(server, "tasks", "get", task_id, *args)
        assert shown.exit_code == 0, shown.output
        assert "123456789012345678901234567890.5" in shown.stdout, shown.stdout
        assert "0.1000000000000000000001" in shown.stdout, shown.stdout


def test_create_and_import_send_numbers_as_they_were_written(
    server: Server, receiver: Receiver, tmp_path: Path, queue: str
) -> None:
    """``tasks create --data`` and ``tasks import`` send a number a float cannot hold as
    written, as the API keeps it: they sent ``0.1000000000000000000001`` as ``0.1`` (the task
    silently held other data than given) and refused ``1e999``."""
    data = '{"rate": 0.1000000000000000000001, "big": [1e999, -1e400], "n": 12345678901234567890}'
    url = receiver.url("/ok")
    created = run(server, "tasks", "create", "-c", url, "-d", data, "--queue", queue)
    assert created.exit_code == 0, created.output
    lines = tmp_path / "tasks.jsonl"
    lines.write_text(f'{{"taskData": {data}, "callbackUrl": "{url}", "queue": "{queue}"}}\n')
    imported = run(server, "tasks", "import", str(lines))
    assert imported.exit_code == 0, imported.output
    listed = httpx.get(f"{server.url}/api/tasks", params={"queue": queue}).json()["items"]
    assert len(listed) == 2
    for task_id in (task["taskId"] for task in listed):
        raw = httpx.get(f"{server.url}/api/tasks/{task_id}").content
        assert b'"taskData":' + data.replace(": ", ":").replace(", ", ",").encode() in raw.replace(
            b" ", b""
        ), raw


def test_a_url_that_names_another_web_server_is_exit_3(tmp_path: Path) -> None:
    """--url at a web server that is not taskplatform (its own 404 page, or a 405): exit 3, "no
    such route (a wrong --url)" as the exit codes say; it was 1, refused (found in review)."""
    other = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port := free_port())],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        result = run(None, "tasks", "get", "01a23e21-6fef-7684-bebd-cdcb94751e87", "--url", url)
        assert result.exit_code == ExitCode.NOT_FOUND, result.output
        assert f"is {url} a taskplatform server?" in result.output
    finally:
        other.kill()
        other.wait()


def test_an_import_over_the_rate_limit_waits_and_goes_on(tmp_path: Path) -> None:
    """Over the key's request rate (5 a second here), the import stopped at the first 429 with
    exit 1, and a resume at once hit the next (found in review). It waits as Retry-After asks
    and sends the batch again: every line is created once."""
    key = "0123456789abcdef0123"
    server = Server(
        {
            "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TASKPLATFORM_API_KEYS": key,
            "TASKPLATFORM_RATE_LIMIT_PER_SECOND": "5",
            "TASKPLATFORM_RATE_LIMIT_BURST": "5",
        },
        tmp_path / "server.log",
    ).start()
    try:
        lines = tmp_path / "t.jsonl"
        body = {"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x"}
        lines.write_text(
            "".join(json.dumps(body | {"taskData": {"n": n}}) + "\n" for n in range(12))
        )
        result = run(
            server,
            "tasks",
            "import",
            str(lines),
            "--chunk-size",
            "1",
            "--json",
            env={"TASKPLATFORM_API_KEY": key},
        )
        assert result.exit_code == 0, result.output
        assert as_json(result)["created"] == 12
        with TaskClient(server.url, key) as client:
            assert client.stats().queue_depth == 12
    finally:
        server.stop()


def test_ctrl_c_while_an_import_waits_out_a_429_ends_as_interrupted(tmp_path: Path) -> None:
    """Ctrl-C while a batch waits out its 429: the import ended in a silent exit 130, with no
    "interrupted" line and no --json summary (found in review). It ends as any interrupted
    import does, the batch not saved."""

    class Always429(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps(
                {"title": "Too many requests", "status": 429, "code": "rate_limited", "detail": "x"}
            ).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "30")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    limited = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Always429)
    threading.Thread(target=limited.serve_forever, daemon=True).start()
    lines = tmp_path / "t.jsonl"
    lines.write_text(json.dumps({"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x"}) + "\n")
    url = f"http://127.0.0.1:{limited.server_address[1]}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskplatform",
            "tasks",
            "import",
            str(lines),
            "--json",
            "--url",
            url,
        ],
        env=clean_environ({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(4)  # the batch got its 429 and waits 30 s
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=20)
        assert process.returncode == 130, stderr
        assert b"interrupted" in stderr, stderr
        summary = json.loads(stdout)
        assert (summary["interrupted"], summary["created"], summary["nextLine"]) == (True, 0, 1)
    finally:
        process.kill()
        limited.shutdown()
        limited.server_close()
