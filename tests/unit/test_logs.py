"""The log formatters: the same text as the standard library's, made faster."""

from __future__ import annotations

import json
import logging

import pytest
from pythonjsonlogger.msgspec import MsgspecFormatter

from taskplatform.logs import JSON_FIELDS, TEXT_FORMAT, JsonFormatter, TextFormatter


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("taskplatform.service", logging.INFO, "", 0, "task %s", ("a",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


# A burst within one second, the turn of a second, and a jump back (a clock set back).
_TIMES = [1764547200.0, 1764547200.25, 1764547200.999, 1764547201.0, 1764547201.5, 1700000000.123]


@pytest.mark.parametrize("datefmt", [None, "%H:%M:%S"])
def test_the_text_formatter_writes_what_logging_writes(datefmt: str | None) -> None:
    ours, stdlib = TextFormatter(TEXT_FORMAT, datefmt), logging.Formatter(TEXT_FORMAT, datefmt)
    for created in _TIMES:
        assert ours.format(_record(created)) == stdlib.format(_record(created))


def test_the_json_formatter_writes_what_python_json_logger_writes() -> None:
    renamed = {"asctime": "time", "levelname": "level", "name": "logger"}
    ours = JsonFormatter(JSON_FIELDS, rename_fields=renamed)
    theirs = MsgspecFormatter(JSON_FIELDS, rename_fields=renamed)
    for created in _TIMES:
        line = ours.format(_record(created))
        assert line == theirs.format(_record(created))
        assert json.loads(line)["time"].startswith("20")
