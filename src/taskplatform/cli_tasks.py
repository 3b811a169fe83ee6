"""The ``taskplatform tasks …`` and ``taskplatform stats`` commands: the API from a shell.

Every command talks to a running server through :class:`taskplatform.client.TaskClient` and takes
``--url`` (``TASKPLATFORM_URL``, default ``http://127.0.0.1:8000``), ``--api-key``
(``TASKPLATFORM_API_KEY``) and ``--json`` (print machine-readable JSON on stdout and nothing
else; an error is printed as ``{"error": {...}}``, the problem document when there is one).

Exit codes:

====  ==================================================================================
0     done
1     the server said no (a problem answer such as ``validation_error`` or
      ``task_completed``), or an import had lines that failed
2     usage error: a bad option or argument (Typer's), unreadable ``--data``, an import
      state file that does not match the file or cannot be written
3     not found: no such task (``task_not_found``) or no such route (a wrong ``--url``)
4     cannot reach the server: connection refused or reset, or timed out, after retries
5     ``dequeue`` found the queue empty
6     ``execute`` made the attempt and the callback failed (status Failed or Retry)
130   interrupted (Ctrl-C); ``import`` saves what it settled first
====  ==================================================================================
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from taskplatform.client import (
    ConnectionFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Task,
    TaskClient,
    TaskNotFound,
    TaskPlatformError,
    UnexpectedResponse,
    ValidationError,
)
from taskplatform.client.models import dumps_json, read_number
from taskplatform.models import Status

DEFAULT_URL = "http://127.0.0.1:8000"
"""The server the commands talk to when neither ``--url`` nor ``TASKPLATFORM_URL`` says."""


class ExitCode(enum.IntEnum):
    """What the process's exit status means (the table in the module docstring)."""

    OK = 0  # done
    REFUSED = 1  # the server answered with a problem, or import lines failed
    USAGE = 2  # bad arguments (Typer uses 2 for its own usage errors too)
    NOT_FOUND = 3  # task_not_found or not_found
    UNREACHABLE = 4  # no answer from the server after retries
    QUEUE_EMPTY = 5  # dequeue: nothing to take
    CALLBACK_FAILED = 6  # execute: the attempt was made and failed


class _JsonUsageErrors(TyperGroup):
    """The ``tasks`` group: with ``--json``, a usage error Typer finds before a command runs (a
    bad option value, a missing argument) is printed as ``{"error": {"code": "usage_error",
    ...}}`` on stdout, as the commands' own usage errors are, not only as a box on stderr."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # click.Context (Typer's own)
        ctx.meta["taskplatform.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            format_message = getattr(exc, "format_message", None)
            if (
                exc.exit_code != ExitCode.USAGE
                or format_message is None
                or not self.json_asked(ctx.meta.get("taskplatform.args", []))
            ):
                raise
            _usage(format_message(), as_json=True)

    def json_asked(self, args: list[str]) -> bool:
        """Whether ``args`` (this group's, from its command's name on) ask for JSON."""
        return "--json" in args


class JsonUsageErrorsOfStats(_JsonUsageErrors):
    """The root group: the same for ``stats``, its one command that takes ``--json`` (those of
    ``tasks`` are that group's own)."""

    def json_asked(self, args: list[str]) -> bool:
        return args[:1] == ["stats"] and "--json" in args


tasks_app = typer.Typer(
    help="Create, inspect and run tasks on a taskplatform server (exit codes: see --help of "
    "each command; 0 ok, 1 refused, 2 usage, 3 not found, 4 unreachable, 5 queue empty, "
    "6 callback failed).",
    no_args_is_help=True,
    cls=_JsonUsageErrors,
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="TASKPLATFORM_URL", help="The server's base URL.")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TASKPLATFORM_API_KEY",
        help="Sent as Authorization: Bearer <key>.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON only (on stdout).")
]
TaskIdArgument = Annotated[str, typer.Argument(help="The task's id, as create returned it.")]


# DEL and the C1 controls, which json.dumps(ensure_ascii=False) leaves raw: U+009B alone
# starts a terminal escape sequence. They can only stand inside a JSON string, so \u escapes
# keep the document the same JSON.
_RAW_CONTROLS = re.compile("[\x7f-\x9f]")


def _json_for_terminal(value: object) -> str:
    """``value`` as JSON text, non-ASCII kept readable, but no character that drives a terminal
    (a callback's result and a task's data are other people's text).

    A number the client read with a fraction or an exponent (a :class:`JsonNumber`) is written
    as the server sent it: the API keeps task data as sent, where the float has 17 significant
    digits, and ``1e400`` is infinite, which ``json.dumps`` writes as ``Infinity``, not JSON.
    Any other infinite float is written ``1e999`` (``-1e999``), which reads back as it.
    """
    return _terminal_text(dumps_json(value, infinite_floats=True))


def _terminal_text(text: str) -> str:
    """``text`` with DEL and the C1 controls written as ``\\u`` escapes: a callback URL stored
    before the API refused them, or any other text of others, cannot drive the terminal."""
    return _RAW_CONTROLS.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


def _print_json(value: object) -> None:
    typer.echo(_json_for_terminal(value))


def _stdout() -> Console:
    """The console for tables: as wide as the terminal, or unlimited when piped (Rich would cut
    every line at 80 columns, which spoils ``| grep`` and files)."""
    return Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 100_000)


def _stderr() -> Console:
    # No markup: what is printed holds the user's and the server's text ("[/red]" in a task's
    # data ended a command in Rich's MarkupError).
    return Console(stderr=True, highlight=False, markup=False)


def _fail(code: ExitCode, message: str, as_json: bool, error: dict[str, Any]) -> NoReturn:
    if as_json:
        _print_json({"error": error})
    else:
        _stderr().print(Text.assemble(("error:", "red"), f" {message}"), soft_wrap=True)
    raise typer.Exit(int(code))


@contextlib.contextmanager
def _client(url: str, api_key: str | None, as_json: bool) -> Iterator[TaskClient]:
    """Open a client and turn its errors into a message and the exit code that names them."""
    if not url.lower().startswith(("http://", "https://")):
        _usage(f"--url must start with http:// or https://, not {url!r}", as_json)
    if api_key is not None and (not api_key.isascii() or not api_key.isprintable()):
        _usage("--api-key must be printable ASCII (it travels in an HTTP header)", as_json)
    try:
        client = TaskClient(url, api_key)
    except (httpx.InvalidURL, ValueError) as exc:  # "http://" alone, say
        _usage(f"--url is not a valid URL: {exc}", as_json)
    try:
        with client:
            yield client
    except httpx.InvalidURL as exc:
        _usage(f"--url is not a valid URL: {exc}", as_json)
    except (TaskNotFound, NotFound) as exc:
        _fail(ExitCode.NOT_FOUND, _describe(exc), as_json, exc.problem or {"code": exc.code})
    except UnexpectedResponse as exc:
        # Another web server at --url (a 404 or 405 page, not a problem document): no such
        # route, as the exit codes have it; it was exit 1, "refused" (found in review).
        problem = exc.problem or {"status": exc.status, "code": exc.code, "detail": exc.detail}
        message = _describe(exc)
        if exc.status in (404, 405):
            _fail(
                ExitCode.NOT_FOUND,
                message + f" (is {url} a taskplatform server?)",
                as_json,
                problem,
            )
        _fail(ExitCode.REFUSED, message, as_json, problem)
    except TaskPlatformError as exc:
        problem = exc.problem or {"status": exc.status, "code": exc.code, "detail": exc.detail}
        message = _describe(exc)
        if exc.code == "unauthorized":
            message += " (pass one with --api-key or TASKPLATFORM_API_KEY)"
        _fail(ExitCode.REFUSED, message, as_json, problem)
    except ConnectionFailed as exc:
        detail = f"cannot reach the server at {url}: {exc}"
        if not as_json:
            detail += " (is it running? another server: --url or TASKPLATFORM_URL)"
        _fail(
            ExitCode.UNREACHABLE, detail, as_json, {"code": "connection_failed", "detail": detail}
        )


def _describe(exc: TaskPlatformError) -> str:
    text = f"{exc.status} {exc.code}: {exc.detail}"
    if isinstance(exc, ValidationError):
        text += "".join(f"\n  {name}: {message}" for name, message in exc.errors)
    return text


def _usage(message: str, as_json: bool) -> NoReturn:
    _fail(ExitCode.USAGE, message, as_json, {"code": "usage_error", "detail": message})


def _time(value: datetime.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _task_table(task: Task) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows: list[tuple[str, object]] = [
        ("task id", task.task_id),
        ("status", task.status.value + (" (dead letter)" if task.dead_letter else "")),
        ("queue", task.queue),
        ("priority", task.priority),
        ("callback url", _terminal_text(task.callback_url)),
        ("attempts", f"{task.attempts} of {task.max_retries + 1}"),
        ("timeout", f"{task.timeout_seconds:g} s"),
        ("created", _time(task.created_at)),
        ("updated", _time(task.updated_at)),
        ("dequeued", _time(task.dequeued_at)),
        ("completed", _time(task.completed_at)),
        ("next attempt", _time(task.next_attempt_at)),
        ("scheduled", _time(task.scheduled_at)),
        ("task data", _json_for_terminal(task.task_data)),
        ("result", "" if task.result is None else _json_for_terminal(task.result)),
        ("error", _terminal_text(task.error or "")),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number")


class _LoneSurrogate(ValueError):
    """JSON text that decodes to a string UTF-8 cannot encode (an escaped lone surrogate)."""


class _TooDeep(ValueError):
    """JSON text nested deeper than Python's recursion limit lets ``json`` read."""


def _strict_loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses what the API refuses (NaN, Infinity, lone UTF-16
    surrogates), and reads a number a float cannot hold (``0.10000000000000000001``,
    ``1e999``) as a :class:`JsonNumber`, which the client sends as written: the API keeps data
    as sent, and a float would have changed it.

    Raises:
        ValueError: ``text`` is not JSON, or holds one of those (:class:`_TooDeep` for JSON
            nested past about 900 levels, which ``json`` cannot read; the API refuses data
            nested past ``TASKPLATFORM_MAX_JSON_DEPTH``, 64 by default, anyway).
    """
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=read_number)
        # "\ud800" reads as a str that UTF-8 cannot encode: refuse it here.
        encoded = dumps_json(value)
    except RecursionError as exc:
        raise _TooDeep(
            "nested too deep to read (the server refuses data nested deeper than its "
            "TASKPLATFORM_MAX_JSON_DEPTH, 64 levels by default)"
        ) from exc
    try:
        encoded.encode()
    except UnicodeEncodeError as exc:
        raise _LoneSurrogate(
            "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode"
        ) from exc
    return value


def _read_data(text: str, as_json: bool) -> dict[str, Any]:
    """Parse ``--data``: JSON text, ``@path`` for a file's content, or ``-`` for stdin."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _usage(f"cannot read --data file {text[1:]}: {exc}", as_json)
    try:
        data = _strict_loads(text)
    except (_LoneSurrogate, _TooDeep) as exc:
        _usage(f"--data: {exc}", as_json)
    except ValueError as exc:
        _usage(f"--data is not JSON: {exc}", as_json)
    if not isinstance(data, dict):
        _usage("--data must be a JSON object, such as '{\"orderId\": 42}'", as_json)
    return data


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_RFC3339_LOWER = re.compile(r"(?<=\d)t(?=\d)|(?<=\d)z\Z")  # the date-time "t", the zone "z"


@tasks_app.command("create")
def create_command(
    callback_url: Annotated[
        str, typer.Option("--callback-url", "-c", help="Absolute http(s) URL execute POSTs to.")
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data", "-d", help="taskData: a JSON object, @FILE for a file's, or - for stdin."
        ),
    ] = "{}",
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher goes first.")] = 0,
    queue: Annotated[
        str | None, typer.Option(help="Named queue \\[server default: default].")
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Seconds before it may be dequeued or dispatched.")
    ] = None,
    scheduled_at: Annotated[
        str | None,
        typer.Option(help="Not before this RFC 3339 time with a zone, e.g. 2027-01-01T09:00Z."),
    ] = None,
    max_retries: Annotated[
        int | None, typer.Option(help="Retries after the first attempt \\[server default: 3].")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds for one callback attempt \\[server default: 30].")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Makes a repeat return the first task \\[default: a fresh uuid4]."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create (enqueue) a task. Prints its id; --json: {"taskId", "status", "replayed"}."""
    task_data = _read_data(data, as_json)
    for option, seconds in (("--delay", delay), ("--timeout", timeout)):
        if seconds is not None and not math.isfinite(seconds):
            _usage(f"{option} must be a finite number of seconds, not {seconds}", as_json)
    if idempotency_key is not None and not _VISIBLE_ASCII.fullmatch(idempotency_key):
        _usage(
            "--idempotency-key must be visible ASCII characters, no spaces "
            "(it travels in an HTTP header)",
            as_json,
        )
    when: datetime.datetime | None = None
    if scheduled_at is not None:
        try:
            # RFC 3339 section 5.6 allows "t" and "z" in lower case; fromisoformat does not.
            when = datetime.datetime.fromisoformat(
                _RFC3339_LOWER.sub(lambda found: found[0].upper(), scheduled_at)
            )
        except ValueError as exc:
            _usage(f"--scheduled-at is not an RFC 3339 time: {exc}", as_json)
        if when.tzinfo is None:
            _usage("--scheduled-at needs a time zone, such as Z or +02:00", as_json)
    with _client(url, api_key, as_json) as client:
        created = client.create(
            task_data,
            callback_url,
            priority,
            queue=queue,
            delay_seconds=delay,
            scheduled_at=when,
            max_retries=max_retries,
            timeout_seconds=timeout,
            idempotency_key=idempotency_key,
        )
    if as_json:
        _print_json({**created.raw, "replayed": created.replayed})
    else:
        note = " (replayed: the idempotency key had created it)" if created.replayed else ""
        typer.echo(f"{created.task_id} {created.status.value}{note}")


@tasks_app.command("get")
def get_command(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a task, in any status."""
    with _client(url, api_key, as_json) as client:
        task = client.get(task_id)
    if as_json:
        _print_json(task.raw)
    else:
        _stdout().print(_task_table(task))


def _list_table(tasks: list[Task]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    # An id or a time cut short is useless to copy: those columns never wrap; the error does.
    table.add_column("task id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("queue", no_wrap=True)
    table.add_column("prio", justify="right", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("error", overflow="fold", min_width=10)
    for task in tasks:
        table.add_row(
            task.task_id,
            task.status.value + (" (dead)" if task.dead_letter else ""),
            task.queue,
            str(task.priority),
            str(task.attempts),
            _time(task.created_at)[:19],
            _terminal_text(task.error or "")[:60],
        )
    return table


@tasks_app.command("list")
def list_command(
    status: Annotated[Status | None, typer.Option(help="Only tasks in this status.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only tasks of this queue.")] = None,
    dead_letter: Annotated[
        bool | None,
        typer.Option(
            "--dead-letter/--no-dead-letter",
            help="Only dead letters, or only others.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Tasks per page.")] = 50,
    cursor: Annotated[str | None, typer.Option(help="nextCursor of the previous page.")] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow nextCursor to the last page.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first, a page at a time. --json: {"items", "nextCursor"}."""
    with _client(url, api_key, as_json) as client:
        if all_pages:
            tasks = list(client.iter_tasks(status, queue, dead_letter, limit, cursor))
            next_cursor = None
        else:
            page = client.list(status, queue, dead_letter, limit, cursor)
            tasks, next_cursor = page.items, page.next_cursor
    if as_json:
        _print_json({"items": [task.raw for task in tasks], "nextCursor": next_cursor})
        return
    _stdout().print(_list_table(tasks))
    if next_cursor is not None:
        typer.echo(f"more: --cursor {next_cursor}")


@tasks_app.command("dequeue")
def dequeue_command(
    queue: Annotated[str | None, typer.Option(help="Named queue \\[default: default].")] = None,
    wait: Annotated[
        float | None, typer.Option(min=0, max=20, help="Long-poll this many seconds.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take the next task out of the queue (Dequeued); exit 5 if empty (--json: null)."""
    with _client(url, api_key, as_json) as client:
        task = client.dequeue(queue, wait)
    if task is None:
        if as_json:
            _print_json(None)
        else:
            _stderr().print(f"queue {queue or 'default'} is empty")
        raise typer.Exit(int(ExitCode.QUEUE_EMPTY))
    if as_json:
        _print_json(task.raw)
    else:
        _stdout().print(_task_table(task))


@tasks_app.command("execute")
def execute_command(
    task_id: TaskIdArgument,
    background: Annotated[
        bool, typer.Option("--async", help="Return at once; the outcome shows on get.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Call the task's callback once (never retried); exit 6 if the callback failed."""
    with _client(url, api_key, as_json) as client:
        outcome = client.execute(task_id, respond_async=background)
    if as_json:
        _print_json(outcome.raw)
    elif outcome.accepted:
        typer.echo(f"{outcome.task_id} {outcome.status.value} (running in the background)")
    else:
        result = "" if outcome.result is None else _json_for_terminal(outcome.result)
        typer.echo(f"{outcome.task_id} {outcome.status.value} attempt {outcome.attempt}")
        if result:
            typer.echo(f"result: {result}")
        if outcome.error:
            typer.echo(f"error: {outcome.error}")
    if outcome.status in (Status.FAILED, Status.RETRY):
        raise typer.Exit(int(ExitCode.CALLBACK_FAILED))


@tasks_app.command("retry")
def retry_command(
    task_id: Annotated[
        str | None,
        typer.Argument(help="The Failed task's id; leave it out with --dead-letters."),
    ] = None,
    dead_letters: Annotated[
        bool,
        typer.Option(
            "--dead-letters", help="Re-drive the dead letters instead (of --queue, or of all)."
        ),
    ] = False,
    queue: Annotated[
        str | None, typer.Option(help="With --dead-letters: only this queue's.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(help="With --dead-letters: at most this many (1..1000; server default 1000)."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-drive a Failed task, or with --dead-letters up to 1,000 dead letters: back to their
    queue with their attempts reset."""
    if dead_letters and task_id is not None:
        _usage("give a task id or --dead-letters, not both", as_json)
    if not dead_letters and task_id is None:
        _usage("give the id of the task to re-drive, or --dead-letters", as_json)
    if not dead_letters and (queue is not None or limit is not None):
        _usage("--queue and --limit go with --dead-letters", as_json)
    with _client(url, api_key, as_json) as client:
        if task_id is None:
            result = client.retry_dead_letters(queue, limit)
        else:
            task = client.retry(task_id)
    if task_id is None:
        if as_json:
            _print_json(result.raw)
        else:
            count = result.retried
            typer.echo(f"re-drove {count} dead letter{'' if count == 1 else 's'}")
            for retried in result.task_ids:
                typer.echo(f"{retried} Queued")
    elif as_json:
        _print_json(task.raw)
    else:
        typer.echo(f"{task.task_id} {task.status.value}")


@tasks_app.command("cancel")
def cancel_command(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a Queued, Dequeued, Retry or Failed task: it is never called back."""
    with _client(url, api_key, as_json) as client:
        task = client.cancel(task_id)
    if as_json:
        _print_json(task.raw)
    else:
        typer.echo(f"{task.task_id} {task.status.value}")


@tasks_app.command("executions")
def executions_command(
    task_id: TaskIdArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a task's attempt log, oldest first."""
    with _client(url, api_key, as_json) as client:
        attempts = client.executions(task_id)
    if as_json:
        # The id as the API names it (lower case), whatever case it was typed in.
        _print_json({"taskId": task_id.lower(), "items": [attempt.raw for attempt in attempts]})
        return
    table = Table("attempt", "started", "ms", "http")
    table.add_column("error", overflow="fold")
    for attempt in attempts:
        table.add_row(
            str(attempt.attempt),
            _time(attempt.started_at),
            str(attempt.duration_ms),
            "" if attempt.http_status is None else str(attempt.http_status),
            _terminal_text(attempt.error or ""),
        )
    _stdout().print(table)


# --- import ----------------------------------------------------------------------------------


@dataclass
class ImportState:
    """Progress of one import, kept in a JSON file beside the input so a re-run resumes.

    ``next_line`` is the first line (1-based) not yet settled: every line before it was either
    created in a batch the server acknowledged or recorded in ``failed``. Those lines are the
    file's first ``done_bytes`` bytes, whose SHA-256 is ``done_sha256``: a re-run resumes only
    if they are unchanged (lines appended since are imported; an edit above is refused).

    ``run_id`` names this import in the idempotency key of each line it sends
    (``import-<run_id>-<line>``), so a batch resent after its answer was lost gives its tasks
    back instead of creating them twice; ``--restart`` starts a new run, with new keys.

    ``created`` counts the tasks this run made (a task given back under the run's key included:
    that was its batch sent again); ``replayed`` the lines whose own ``idempotencyKey`` gave
    back a task made earlier: before this run, or by a request of it whose answer was lost
    (the server's answer cannot tell which).
    """

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_line: int = 1
    done_bytes: int = 0
    done_sha256: str = hashlib.sha256().hexdigest()
    created: int = 0
    replayed: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write the state atomically (a crash leaves the old state or the new, never half)."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(
            json.dumps(
                {
                    "version": 1,
                    "runId": self.run_id,
                    "nextLine": self.next_line,
                    "doneBytes": self.done_bytes,
                    "doneSha256": self.done_sha256,
                    "created": self.created,
                    "replayed": self.replayed,
                    "failed": self.failed,
                }
            )
        )
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> ImportState:
        """Read a state :meth:`save` wrote.

        Raises:
            OSError: the file cannot be read.
            ValueError, KeyError, TypeError: it is not such a state.
        """
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not an import state of this version")
        return cls(
            # A state written before run ids has none: its lines are sent under a new one.
            run_id=str(data.get("runId") or uuid.uuid4().hex),
            next_line=int(data["nextLine"]),
            done_bytes=int(data["doneBytes"]),
            done_sha256=str(data["doneSha256"]),
            created=int(data["created"]),
            replayed=int(data.get("replayed", 0)),  # absent from states before it was counted
            failed=list(data["failed"]),
        )


def _count_lines(path: Path) -> int:
    """The lines of ``path`` (a last line without a newline counts), for the progress bar; stops
    early, with a partial count, once Ctrl-C asked the import to stop."""
    count = 0
    last = b"\n"
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
            if _interrupted.is_set():
                break
    return count + (last != b"\n")


_interrupted = threading.Event()


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Turn Ctrl-C (SIGINT) inside the block into a request to stop: ``_interrupted`` is set,
    and the import stops at its next saved point.

    A batch sent is a batch the server may have created: a Ctrl-C between sending it and saving
    the state would make the resume send it again (its lines' idempotency keys give the tasks
    back, but the count of created tasks would be the resume's). The block spans the whole
    import rather than each batch, so a Ctrl-C between two batches also ends with the
    "interrupted after line N" message rather than Typer's silent exit 130.

    A second Ctrl-C stops at once (exit 130), the batch in flight unsaved: a server that took
    the connection and never answers held the first for the client's tries, about 2 minutes,
    and swallowed every other Ctrl-C (found in review). The resume sends that batch again, and
    its lines' idempotency keys give back the tasks it made.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        if _interrupted.is_set():
            raise KeyboardInterrupt
        _interrupted.set()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


RATE_LIMIT_WAIT_MAX = 60.0
"""The longest an import waits after a 429 before it sends the batch again, in seconds,
whatever its ``Retry-After`` asks."""

MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest import line sent, in bytes (its newline aside): the default largest batch body
(``TASKPLATFORM_MAX_BATCH_BODY_BYTES``), so a longer line fits in no batch. It is read past, not
kept, and fails as ``payload_too_large``."""

BATCH_BYTES = MAX_LINE_BYTES - 256 * 1024
"""The most bytes of lines an import puts in one batch (the rest of the default largest batch
body is room for the batch's own JSON and each line's idempotency key). A batch the server still
finds too large (413) is sent again in halves, down to one line, which then fails alone."""


def _run_key(state: ImportState, line: int) -> str:
    """The idempotency key an import run gives ``line`` when the line has none of its own."""
    return f"import-{state.run_id}-{line}"


def _failure(line: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"line": line, "code": code, "detail": detail, **extra}


def _parse_line(line_number: int, raw: bytes) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Return ``(create body, {})`` for a good line, or ``(None, failure record)``."""
    try:
        body = _strict_loads(raw)
    except json.JSONDecodeError as exc:
        detail = f"not JSON: {exc.msg} at byte {exc.pos}"
        return None, _failure(line_number, "malformed_json", detail)
    except UnicodeDecodeError as exc:
        return None, _failure(line_number, "malformed_json", f"not UTF-8: {exc.reason}")
    except (_LoneSurrogate, _TooDeep) as exc:  # JSON the API refuses, as it would (422)
        return None, _failure(line_number, "validation_error", str(exc))
    except ValueError as exc:  # NaN, Infinity
        return None, _failure(line_number, "malformed_json", f"not JSON: {exc}")
    if not isinstance(body, dict):
        return None, _failure(line_number, "validation_error", "a line must hold a JSON object")
    return body, {}


@tasks_app.command("import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSON Lines: one create body a line; a regular file, not a pipe.",
        ),
    ],
    chunk_size: Annotated[
        int, typer.Option(min=1, max=1000, help="Tasks per batch request.")
    ] = 500,
    state_file: Annotated[
        Path | None,
        typer.Option("--state", help="Where progress is kept \\[default: FILE.import-state.json]."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Ignore an earlier run's state: import it all again.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create the tasks of a JSON Lines file through the batch endpoint, resumably.

    Each non-blank line is a create body as the API takes it
    ({"taskData": {...}, "callbackUrl": "...", "priority": 5, ...}). Progress is saved after
    every batch the server acknowledged, so running the same command again (after a crash, a
    lost connection, a finished import, or with lines appended) sends only the lines not
    settled yet. Each line goes with an idempotency key of this import and its line number (a
    line's own ``idempotencyKey`` is kept), so a batch sent again after its answer was lost
    gives its tasks back: nothing is created twice. Lines that fail (not JSON, or refused by
    the server) are reported by line number, and the exit code is then 1.
    """
    if not file.is_file():
        # A pipe would be read up by the line count and then yield no line: "created 0 tasks".
        _usage(
            f"{file} is not a regular file: the import reads it twice (to count its lines, and "
            "again to resume from a byte offset); save the stream to a file and import that",
            as_json,
        )
    # /dev/stdin redirected from a file links to that file: keep the state beside it, not in
    # /dev. (Any other link keeps it beside the link, where earlier versions kept it.)
    source = file.resolve() if file.absolute().parts[1:2] in (("dev",), ("proc",)) else file
    state_path = state_file or source.with_name(source.name + ".import-state.json")
    state = ImportState()
    resumed = state_path.exists() and not restart
    if resumed:
        try:
            state = ImportState.load(state_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _usage(f"cannot read the import state {state_path} ({exc}); or pass --restart", as_json)
    first_line = state.next_line
    failed_before = len(state.failed)
    created_before, replayed_before = state.created, state.replayed
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lines"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=as_json,
    )
    _interrupted.clear()
    with (
        _interrupt_after(),
        file.open("rb") as stream,
        _client(url, api_key, as_json) as client,
        progress,
    ):
        # The digest runs over every byte read, so at each save it covers exactly the settled
        # lines; resuming re-reads that prefix and must find the same digest.
        digest = hashlib.sha256()
        done = stream.read(state.done_bytes)
        digest.update(done)
        if len(done) != state.done_bytes or digest.hexdigest() != state.done_sha256:
            _usage(
                f"the first {first_line - 1} lines of {file} changed since the import state "
                f"{state_path} was written; pass --restart to import the whole file again, or "
                "--state for another state file",
                as_json,
            )
        bar = progress.add_task("import", total=_count_lines(file), completed=first_line - 1)
        pending: list[tuple[int, dict[str, Any]]] = []
        pending_bytes = 0
        offset = state.done_bytes

        run_saved = resumed

        def save() -> None:
            try:
                state.save(state_path)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                progress.stop()  # the bar's last frame before the error, not after it
                if not run_saved:  # the first save comes before the first batch is sent
                    _usage(
                        f"cannot write the import state {state_path} ({reason}): nothing was "
                        "created; pass --state with a path that can be written",
                        as_json,
                    )
                _usage(
                    f"cannot write the import state {state_path} ({reason}); the lines up to "
                    f"{state.next_line - 1} were sent. Once it can be written, run the same "
                    "command: the lines sent since its last save go again under the same "
                    "idempotency keys, so none is created twice",
                    as_json,
                )

        def send(lines: list[tuple[int, dict[str, Any]]]) -> bool:
            """Send ``lines`` as batches and count what came of them; False when a Ctrl-C
            stopped the wait for a 429 to pass, the lines not sent."""
            while True:
                try:
                    results = client.create_batch([body for _, body in lines])
                    break
                except RateLimited as exc:
                    # Over the key's request rate (several importers on one key, a low limit):
                    # the batch was not taken, so it waits as the server asks and goes again.
                    # It ended the import with exit 1 at the first 429 (found in review).
                    # Ctrl-C stops the wait: the batch is not saved, and a resume sends it.
                    if _interrupted.wait(min(RATE_LIMIT_WAIT_MAX, exc.retry_after or 1.0)):
                        return False
                except (PayloadTooLarge, ValidationError) as exc:
                    # Refusals of the whole batch for what its lines hold: one over a server's
                    # smaller limit, or nested deeper than its depth limit ("$.tasks"), which
                    # the server judges over the whole body. Halved until the line is alone.
                    whole = exc.problem.get("errors", [])
                    if isinstance(exc, ValidationError) and not any(
                        isinstance(error, dict) and error.get("field") == "$.tasks"
                        for error in whole
                    ):
                        raise
                    if len(lines) == 1:
                        extra = {"errors": whole} if whole else {}
                        state.failed.append(_failure(lines[0][0], exc.code, exc.detail, **extra))
                        return True
                    # The second half waits for the first; a stop between leaves both unsaved
                    # (what the first made is given back by its keys on resume).
                    return send(lines[: len(lines) // 2]) and send(lines[len(lines) // 2 :])
            for (line, body), result in zip(lines, results, strict=True):
                if result.error is None:
                    if result.replayed and body["idempotencyKey"] != _run_key(state, line):
                        # The line's own key had made its task: not new now.
                        state.replayed += 1
                    else:  # a replay under this run's key is this run's batch sent again
                        state.created += 1
                elif isinstance(result.error, TaskPlatformError):
                    problem = result.error.problem
                    extra = {"errors": problem["errors"]} if "errors" in problem else {}
                    state.failed.append(
                        _failure(line, result.error.code, result.error.detail, **extra)
                    )
            return True

        def flush(last_line: int) -> None:
            nonlocal run_saved, pending_bytes
            if pending:
                if not run_saved:
                    # The run id must be on disk before its first batch is: a crash with that
                    # batch's answer lost resumes under the same keys.
                    save()
                    run_saved = True
                for line, body in pending:
                    if body.get("idempotencyKey") is None:  # absent or null: no key of its own
                        body["idempotencyKey"] = _run_key(state, line)
                if not send(pending):
                    return  # stopped by Ctrl-C, nothing saved: the import ends as interrupted
                pending.clear()
                pending_bytes = 0
            state.next_line = last_line + 1
            state.done_bytes = offset
            state.done_sha256 = digest.hexdigest()
            save()
            progress.update(bar, completed=last_line)

        line_number = first_line - 1
        unfinished: int | None = None  # a last line cut short, not settled
        # One byte over the limit and its newline: a longer line is cut short there.
        while raw := stream.readline(MAX_LINE_BYTES + 2):
            if _interrupted.is_set():
                # Lines read since the last batch are not saved: the resume reads them again.
                break
            if pending and pending_bytes + len(raw) > BATCH_BYTES:
                flush(line_number)  # before this line counts as read: it goes in the next
            if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES and raw.strip():
                # The last line, with no newline: complete, it is imported; cut short (a file
                # still being written), it is left unsettled, for a later run to read whole.
                body, failure = _parse_line(line_number + 1, raw)
                if body is None and failure["code"] == "malformed_json":
                    unfinished = line_number + 1
                    continue
            line_number += 1
            digest.update(raw)
            offset += len(raw)
            size = len(raw) - raw.endswith(b"\n")
            if size > MAX_LINE_BYTES:
                while not raw.endswith(b"\n") and (raw := stream.readline(1 << 20)):
                    digest.update(raw)
                    offset += len(raw)
                    size += len(raw) - raw.endswith(b"\n")
                detail = (
                    f"the line is {size:,} bytes, over the {MAX_LINE_BYTES:,} a batch can carry"
                )
                state.failed.append(_failure(line_number, "payload_too_large", detail))
                continue
            if not raw.strip():
                continue
            body, failure = _parse_line(line_number, raw)
            if body is None:
                state.failed.append(failure)
            else:
                pending.append((line_number, body))
                pending_bytes += len(raw)
            if len(pending) >= chunk_size:
                flush(line_number)
        else:
            flush(line_number)
    interrupted = _interrupted.is_set()
    # Lines read after the last saved batch are not settled: a resume reads them again.
    new_failures = [f for f in state.failed[failed_before:] if f["line"] < state.next_line]
    summary = {
        "file": str(file),
        "created": state.created - created_before,
        "createdTotal": state.created,
        "replayed": state.replayed - replayed_before,
        "replayedTotal": state.replayed,
        "linesAlreadyDone": first_line - 1,
        "failed": new_failures,
        "failedEarlier": state.failed[:failed_before],
        "unfinishedLine": None if interrupted else unfinished,
        "interrupted": interrupted,
        "nextLine": state.next_line,
        "state": str(state_path),
    }
    if interrupted:
        if resumed or state.next_line > first_line:  # a state file holds this run's progress
            message = (
                f"interrupted after line {state.next_line - 1}; progress kept in {state_path}: "
                "run the same command to go on"
            )
        else:
            message = "interrupted before the first batch was sent: nothing was created"
        _stderr().print(message)
        if as_json:  # a script still learns where the import stopped
            _print_json(summary)
        raise typer.Exit(130)
    if as_json:
        _print_json(summary)
    else:
        earlier = f" ({first_line - 1} lines were done before)" if first_line > 1 else ""
        count = state.created - created_before
        typer.echo(f"created {count} task{'' if count == 1 else 's'} from {file}{earlier}")
        if replayed := state.replayed - replayed_before:
            # Made before this import, or by a request of it whose answer was lost (the client
            # resends a batch of keyed items): the server's answer cannot tell which.
            typer.echo(
                f"{replayed} line{' whose' if replayed == 1 else 's whose'} own idempotencyKey "
                f"gave back {'a task' if replayed == 1 else 'tasks'} made earlier, not now "
                "(before this import, or by a request of it whose answer was lost)"
            )
        for failure in new_failures:
            typer.echo(f"line {failure['line']}: {failure['code']}: {failure['detail']}")
            for item in failure.get("errors") or []:
                text = f"{item.get('field')}: {item.get('message')}"
                if text not in failure["detail"]:
                    typer.echo(f"  {text}")
        if unfinished is not None:
            typer.echo(
                f"line {unfinished}: no newline at its end and not whole JSON (a file still "
                "being written?): left for the next run"
            )
        if failed_before:
            # Settled lines are not read again, so these stay failed: say so on every run.
            lines = ", ".join(str(failure["line"]) for failure in state.failed[:failed_before])
            typer.echo(
                f"{failed_before} line{'' if failed_before == 1 else 's'} failed in an earlier run "
                f"and stay failed (line {lines}): put them in a new file, or pass --restart"
            )
        typer.echo(f"progress kept in {state_path} (delete it or pass --restart to import again)")
    if new_failures:
        raise typer.Exit(int(ExitCode.REFUSED))


# --- stats -----------------------------------------------------------------------------------


def stats_command(
    queue: Annotated[str | None, typer.Option(help="Count only this queue's tasks.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show tasks per status, the queue depth and every queue; --json: {"stats", "queues"}."""
    with _client(url, api_key, as_json) as client:
        stats = client.stats(queue)
        queues = client.queues()
    if as_json:
        _print_json({"stats": stats.raw, "queues": [item.raw for item in queues]})
        return
    console = _stdout()
    counts = Table("status", "tasks", title=f"tasks ({queue or 'all queues'})")
    for status, count in stats.tasks.items():
        counts.add_row(status, str(count))
    counts.add_row("queue depth", str(stats.queue_depth), style="bold")
    console.print(counts)
    table = Table("queue", "paused", "depth", "in flight", "oldest queued", "attempts/s")
    for item in queues:
        age = item.oldest_queued_age_seconds
        table.add_row(
            item.name,
            "yes" if item.paused else "no",
            str(item.depth),
            str(item.in_flight),
            "" if age is None else f"{age:.1f} s",
            f"{item.dispatch_rate_per_second:.2f}",
        )
    console.print(table)
