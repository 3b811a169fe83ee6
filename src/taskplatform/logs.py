"""Logging setup for every command: plain text for people, or one JSON object a line for machines.

Lifecycle events (a task created, dequeued, moved to a new status, re-driven, cancelled) are
logged at INFO by :mod:`taskplatform.service` with ``extra={"task_id", "attempt", "status",
"queue"}``; the JSON format carries those as top-level fields, so a log pipeline can follow one
task without parsing messages. The same dictionary configures uvicorn, whose worker processes
apply it again after they start (``serve --workers N``), so every process logs alike.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, TextIO

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


def stream_handler(stream: TextIO) -> logging.StreamHandler[TextIO]:
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
    return logging.StreamHandler(stream)


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


class TextFormatter(_SecondCache, logging.Formatter):
    """The text format's formatter (see :func:`logging_config`)."""


class JsonFormatter(_SecondCache, MsgspecFormatter):
    """The JSON format's formatter, python-json-logger's msgspec one (see
    :func:`logging_config`)."""
