"""Logging setup for every command: plain text for people, or one JSON object a line for machines.

Lifecycle events (a task created, dequeued, moved to a new status, re-driven, cancelled) are
logged at INFO by :mod:`taskplatform.service` with ``extra={"task_id", "attempt", "status",
"queue"}``; the JSON format carries those as top-level fields, so a log pipeline can follow one
task without parsing messages. The same dictionary configures uvicorn, whose worker processes
apply it again after they start (``serve --workers N``), so every process logs alike. The events of
a batch (a batch create, a dispatcher's claim) are one record of :class:`EventLines` that the
formatters here write as a line per event, and while the server runs, the lines its event loop logs
in one turn go out together at the turn's end (:func:`lines_written_per_turn`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import select
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.msgspec import MsgspecFormatter

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The JSON formatter adds every ``extra`` field after these.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """Return a :func:`logging.config.dictConfig` dictionary for the service and uvicorn.

    Args:
        level: A logging level name (``"info"``, ``"DEBUG"``...), for the root logger.
        log_format: ``"text"``: one readable line per record; ``"json"``: one JSON object per
            line with ``asctime``, ``levelname``, ``name``, ``message``, any ``extra`` fields
            (``task_id``, ``attempt``, ``status``, ``queue``) and ``exc_info`` when there is one.

    Returns:
        The configuration; uvicorn's own loggers propagate to the root handler, so its lines come
        out in the same format.
    """
    formatter: dict[str, Any]
    if log_format == "json":
        formatter = {
            "()": "taskplatform.logs.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn passes its messages again with terminal colours (extra "color_message",
            # its arguments not yet filled in); a log pipeline wants the plain message only.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
    else:
        formatter = {"()": "taskplatform.logs.TextFormatter", "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "()": "taskplatform.logs.stream_handler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
        "loggers": {
            # uvicorn configures handlers of its own on these; hand them to the root instead.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "alembic": {"level": "WARNING"},
        },
    }


def stream_handler(stream: TextIO) -> GroupingStreamHandler:
    """Return the log handler of :func:`logging_config`, writing to ``stream``.

    Built by :func:`logging.config.dictConfig` in every process that applies the configuration
    (uvicorn's workers too), so it is also where each process stops making records look up what
    no format here shows: the caller's file and line, thread and process (the "Optimization"
    section of Python's logging HOWTO). That is a third of a record's cost, 12 → 8 µs, paid on
    the event loop for every lifecycle event.
    """
    logging._srcfile = None  # the documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    return GroupingStreamHandler(stream)


@dataclass(frozen=True, slots=True)
class EventLines:
    """The message of one record that stands for several events of the same level and logger,
    each with its own message and ``extra`` fields: the formatters of this module write a line
    for each, as if each had been logged alone (:func:`log_events`).

    Why: a batch create has 1,000 lifecycle events, and making and formatting a record for each
    was about half of the event loop's time on that request; one record with a line per event
    costs a tenth of that in text (``bench/README.md``). Any other formatter sees the events'
    messages, a line each, as one message (``str``), without their fields.

    Args:
        events: ``(message, fields)`` per event, in order: the message as text (no ``%``
            arguments left) and the fields a record of it would carry as ``extra``.
    """

    events: Sequence[tuple[str, Mapping[str, object]]]

    def __str__(self) -> str:
        return "\n".join(message for message, _ in self.events)


def log_events(
    logger: logging.Logger, level: int, events: Sequence[tuple[str, Mapping[str, object]]]
) -> None:
    """Log ``events`` (see :class:`EventLines`) at ``level`` as one record, if any and enabled."""
    if events and logger.isEnabledFor(level):
        logger.log(level, EventLines(events))


def _event_record(
    record: logging.LogRecord, message: str, fields: Mapping[str, object]
) -> logging.LogRecord:
    """A copy of ``record`` that is one of its events: ``message``, with ``fields`` as extras."""
    event = logging.LogRecord.__new__(logging.LogRecord)  # the attributes come from ``record``
    event.__dict__.update(record.__dict__)
    event.__dict__.update(fields)
    event.msg, event.args = message, ()
    return event


# The attributes a record of each event has as the record of them all has them (all but the
# message and the events' fields), and a mark that stands for the message.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_SHARED_FIELDS = (_RECORD_FIELDS - {"msg", "args"}) | {"message", "asctime"}
_MESSAGE_MARK = "\x00message\x00"

# Inside lines_written_per_turn(): the event loop whose lines wait for the end of its turn, and
# the thread that runs it.
_turn: tuple[asyncio.AbstractEventLoop, int] | None = None
_handlers: weakref.WeakSet[GroupingStreamHandler] = weakref.WeakSet()


@contextlib.contextmanager
def lines_written_per_turn() -> Iterator[None]:
    """Within the block, hold the lines that the running event loop's thread logs through a
    :class:`GroupingStreamHandler`, and write them together at the end of the loop's turn.

    For the server while it serves (the app's lifespan): each create logs a lifecycle line, and
    its own ``write`` system call was a tenth of the server's CPU in a profile of single creates;
    under load many requests share a turn, and so one write. A line waits at most for the loop's
    next turn: the callbacks that were ready when it was logged. A record at WARNING or above is
    written at once, after the lines held before it; a lower one of another thread is written at
    once, ahead of them. When the block ends, the held lines are written, before anything logged
    after: uvicorn logs its last lines after the lifespan and a worker of ``serve --workers N``
    then re-raises the stop signal, which ends the process before the loop turns again. A process
    killed outright (SIGKILL) loses at most one turn's lines. A line keeps the time it was logged;
    a turn that one request holds long (a large batch) holds the lines as long.

    Must be entered on the event loop's thread, with the loop running. See also
    :func:`stop_holding_lines`.
    """
    global _turn
    previous, _turn = _turn, (asyncio.get_running_loop(), threading.get_ident())
    try:
        yield
    finally:
        _turn = previous
        _write_all_held()


def stop_holding_lines() -> None:
    """End :func:`lines_written_per_turn` early: write what is held, and every line at once
    from now on.

    For a stop signal: a second SIGINT or SIGTERM makes uvicorn skip the lifespan's shutdown
    (where the block would end) and then re-raise the signal in the same turn, which ends the
    process with its last lines still held. Call it on the event loop's thread.
    """
    global _turn
    _turn = None
    _write_all_held()


def _write_all_held() -> None:
    for handler in list(_handlers):
        handler.write_held()


class GroupingStreamHandler(logging.StreamHandler[TextIO]):
    """A :class:`logging.StreamHandler` that writes a record of several lines (an
    :class:`EventLines`), and on the event loop's thread inside :func:`lines_written_per_turn`
    the lines of a whole turn, in as few ``write`` calls as it can.

    Each call writes whole lines, at most :data:`select.PIPE_BUF` bytes of them (a longer line
    goes alone). POSIX makes a write of at most that many bytes to a pipe atomic, so with
    ``serve --workers N`` sharing one stderr pipe the processes' lines never cut into each other,
    as with a write per line. Any other record is written as :class:`logging.StreamHandler`
    writes it.

    Args:
        stream: A text stream (``sys.stderr``).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        # Lines only: holding the records too would keep a batch's worth of objects alive for
        # the garbage collector to scan, which cost more than the writes it saves.
        self._held: list[str] = []
        self._last_record: logging.LogRecord | None = None  # what a failed write reports
        self._turn_end_scheduled = False
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``'s lines, or hold them on the event loop's thread inside
        :func:`lines_written_per_turn`. Called by :meth:`logging.Handler.handle` with the
        handler's lock held."""
        try:
            formatter = self.formatter
            if isinstance(record.msg, EventLines) and isinstance(formatter, _EventLinesFormatter):
                lines = [line + self.terminator for line in formatter.format_lines(record)]
            else:
                lines = [self.format(record) + self.terminator]
        except Exception:
            self.handleError(record)
            return
        turn = _turn
        if turn is None or threading.get_ident() != turn[1]:
            if record.levelno >= logging.WARNING and self._held:
                self._write_held()  # a warning keeps its place after what was logged before it
            self._write_lines(lines, record)
            return
        self._held.extend(lines)
        self._last_record = record
        if record.levelno >= logging.WARNING:
            self._write_held()
        elif not self._turn_end_scheduled:
            try:
                turn[0].call_soon(self.write_held)
            except RuntimeError:  # the loop is closed: no turn will come
                self._write_held()
                return
            self._turn_end_scheduled = True

    def close(self) -> None:
        """Write the lines still held, then close (:func:`logging.shutdown` calls this at exit)."""
        self.write_held()
        super().close()

    def write_held(self) -> None:
        """Write every held line (the end of a loop's turn)."""
        self.acquire()
        try:
            self._write_held()
        finally:
            self.release()

    def _write_held(self) -> None:
        """Write the held lines. Called with the handler's lock held."""
        self._turn_end_scheduled = False
        if self._held and self._last_record is not None:
            held, self._held = self._held, []
            self._write_lines(held, self._last_record)

    def _write_lines(self, lines: list[str], record: logging.LogRecord) -> None:
        """Write ``lines`` (each ending with the terminator) in order, whole lines of at most
        ``PIPE_BUF`` bytes a write. Called with the handler's lock held; a failure goes to
        :meth:`logging.Handler.handleError` with ``record``, as
        :meth:`logging.StreamHandler.emit` reports its own failures."""
        start = size = 0
        for index, line in enumerate(lines):
            length = len(line) if line.isascii() else len(line.encode("utf-8", "replace"))
            if index > start and size + length > select.PIPE_BUF:
                self._write_chunk(lines[start:index], record)
                start, size = index, 0
            size += length
        if start < len(lines):
            self._write_chunk(lines[start:], record)

    def _write_chunk(self, lines: list[str], record: logging.LogRecord) -> None:
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except RecursionError:  # as logging.StreamHandler.emit does
            raise
        except Exception:
            self.handleError(record)


class _EventLinesFormatter(logging.Formatter):
    """A formatter that writes a record of :class:`EventLines` as a line per event."""

    def format_lines(self, record: logging.LogRecord) -> list[str]:
        """Return the lines of ``record``: one per event of an :class:`EventLines` message, each
        the text :meth:`format` gives a record of that event alone; otherwise ``[format()]``."""
        if not isinstance(record.msg, EventLines):
            return [self.format(record)]
        lines = []
        for message, fields in record.msg.events:
            lines.append(super().format(_event_record(record, message, fields)))
        return lines

    def format(self, record: logging.LogRecord) -> str:
        """As :meth:`logging.Formatter.format`; the lines of :meth:`format_lines` for a record
        of :class:`EventLines`."""
        if isinstance(record.msg, EventLines):
            return "\n".join(self.format_lines(record))
        return super().format(record)


class _SecondCache:
    """``formatTime`` as :class:`logging.Formatter` writes it by default, its date and time
    (``time.strftime`` of ``time.localtime``) made once per second rather than once per record:
    the records of a burst (a batch create logs one per task) share them. Same text, byte for
    byte, as the method it replaces."""

    default_time_format: str
    default_msec_format: str | None
    # One attribute, replaced whole: threads that log at a second's turn never mix two seconds.
    _cached: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """Return the record's time as ``YYYY-MM-DD HH:MM:SS,mmm`` (``datefmt`` if given)."""
        if datefmt:
            return time.strftime(datefmt, time.localtime(record.created))
        second = int(record.created)
        cached_second, text = self._cached
        if second != cached_second:
            text = time.strftime(self.default_time_format, time.localtime(second))
            self._cached = (second, text)
        if self.default_msec_format:
            return self.default_msec_format % (text, record.msecs)
        return text


class TextFormatter(_SecondCache, _EventLinesFormatter):
    """The text format's formatter (see :func:`logging_config`).

    When its format shows no field of an event but the message (as ``TEXT_FORMAT``), the events
    of one record share all the rest of their lines: that is formatted once, and each line is
    that text around the event's message.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fmt = self._fmt or ""
        fields = re.findall(r"%\((\w+)\)", fmt)
        self._shared_around_message = (
            self._style.__class__ is logging.PercentStyle
            and "%(message)s" in fmt  # as is: no width or precision to apply to each message
            and fields.count("message") == 1
            and set(fields) <= _SHARED_FIELDS
        )

    def format_lines(self, record: logging.LogRecord) -> list[str]:
        """As :meth:`_EventLinesFormatter.format_lines`; the line once, when the events share it."""
        if not (
            self._shared_around_message
            and isinstance(record.msg, EventLines)
            and not (record.exc_info or record.exc_text or record.stack_info)  # one per record
        ):
            return super().format_lines(record)
        head, _, tail = (
            super().format(_event_record(record, _MESSAGE_MARK, {})).partition(_MESSAGE_MARK)
        )
        return [head + message + tail for message, _ in record.msg.events]


class JsonFormatter(_SecondCache, _EventLinesFormatter, MsgspecFormatter):
    """The JSON format's formatter, python-json-logger's msgspec one (see
    :func:`logging_config`)."""
