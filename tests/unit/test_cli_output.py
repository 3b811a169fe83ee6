"""What the command line prints of other people's text: never a character that drives a
terminal."""

from __future__ import annotations

import io

from rich.console import Console

from taskplatform.cli_tasks import _list_table, _task_table
from taskplatform.client import Task

TASK = {
    "taskId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "status": "Failed",
    "taskData": {"csi": "\u009b31m"},
    "callbackUrl": "http://127.0.0.1:9/ok?x=\u009b2J\u009b31mowned",
    "priority": 0,
    "maxRetries": 3,
    "timeoutSeconds": 30,
    "attempts": 1,
    "createdAt": "2026-12-03T10:00:00.000Z",
    "updatedAt": "2026-12-03T10:00:01.000Z",
    "error": "HTTP 500 \u009b0m",
}


def _printed(table: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True).print(table)
    return out.getvalue()


def test_a_stored_callback_url_or_error_cannot_drive_the_terminal() -> None:
    """The API refuses a callbackUrl with a C1 control (U+009B alone starts an escape sequence),
    but did not always: a task stored before is printed with it escaped, as task data and
    results are."""
    task = Task.from_json(TASK)
    for printed in (_printed(_task_table(task)), _printed(_list_table([task]))):
        assert "\u009b" not in printed
    assert "\\u009b2J" in _printed(_task_table(task))
