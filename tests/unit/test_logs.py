"""The log formatters (the same text as the standard library's, made faster; a record of several
events written as a line each) and the handler that writes those lines, and a loop turn's,
together."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import select
import threading

import pytest
from pythonjsonlogger.msgspec import MsgspecFormatter

from taskplatform.logs import (
    JSON_FIELDS,
    TEXT_FORMAT,
    GroupingStreamHandler,
    JsonFormatter,
    TextFormatter,
    lines_written_per_turn,
    log_events,
    stop_holding_lines,
)


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


class _Writes(io.StringIO):
    """A text stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def _handler() -> tuple[GroupingStreamHandler, _Writes, logging.Logger]:
    stream = _Writes()
    handler = GroupingStreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    logger = logging.Logger("taskplatform.test")  # not registered: no other handler sees it
    logger.addHandler(handler)
    return handler, stream, logger


def _events(count: int) -> list[tuple[str, dict[str, object]]]:
    return [
        (f"task t{n} is Queued (attempt 0)", {"task_id": f"t{n}", "status": "Queued", "attempt": 0})
        for n in range(count)
    ]


def _at_one_time(record: logging.LogRecord) -> bool:
    record.created, record.msecs = 1764547200.25, 250.0
    return True


@pytest.mark.parametrize(
    "formatter",
    [
        TextFormatter(TEXT_FORMAT),
        TextFormatter("%(task_id)s %(levelname)s: %(message)s"),  # a field of each event
        TextFormatter("{levelname} {message}", style="{"),
        TextFormatter("%(levelname)s %(message)-40s|"),  # padded to a width
        JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level"}),
    ],
    ids=["text", "text-with-a-field", "text-braces", "text-padded", "json"],
)
def test_events_are_the_lines_of_records_logged_alone(formatter: logging.Formatter) -> None:
    written = []
    for log in (
        lambda logger: [logger.info(message, extra=fields) for message, fields in _events(3)],
        lambda logger: log_events(logger, logging.INFO, _events(3)),
    ):
        handler, stream, logger = _handler()
        handler.setFormatter(formatter)
        handler.addFilter(_at_one_time)
        log(logger)
        written.append(stream.getvalue())
    alone, together = written
    assert together == alone
    assert together.count("\n") == 3
    assert "t2" in together.splitlines()[2]


def test_events_are_one_write() -> None:
    _, stream, logger = _handler()
    logger.info("before")
    log_events(logger, logging.INFO, _events(3))
    assert stream.calls == [
        "INFO before\n",
        "INFO task t0 is Queued (attempt 0)\n"
        "INFO task t1 is Queued (attempt 0)\n"
        "INFO task t2 is Queued (attempt 0)\n",
    ]


def test_another_formatter_sees_the_messages_as_one() -> None:
    handler, stream, logger = _handler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log_events(logger, logging.INFO, _events(2))
    assert stream.getvalue() == (
        "INFO task t0 is Queued (attempt 0)\ntask t1 is Queued (attempt 0)\n"
    )


def test_events_below_the_level_make_no_record() -> None:
    _, stream, logger = _handler()
    logger.setLevel(logging.WARNING)
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    logger.addFilter(keep)
    log_events(logger, logging.INFO, _events(3))
    log_events(logger, logging.WARNING, [])
    assert seen == []
    assert stream.getvalue() == ""


def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    _, stream, logger = _handler()
    lines = [f"task {n} " + "é" * (n % 90) + "x" * 60 for n in range(300)]
    lines.insert(150, "y" * (2 * select.PIPE_BUF))  # longer than PIPE_BUF: a write of its own
    log_events(logger, logging.INFO, [(line, {}) for line in lines])
    assert "".join(stream.calls) == "".join(f"INFO {line}\n" for line in lines)
    assert 10 < len(stream.calls) < 100
    for call in stream.calls:
        assert call.endswith("\n")
        assert len(call.encode()) <= select.PIPE_BUF or call.count("\n") == 1
    assert f"INFO {'y' * (2 * select.PIPE_BUF)}\n" in stream.calls


async def test_lines_of_one_loop_turn_are_one_write_at_its_end() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        for n in range(3):
            logger.info("task %d is Queued", n)
        assert stream.calls == []  # held until the loop turns
        await asyncio.sleep(0)
        assert stream.calls == [
            "INFO task 0 is Queued\nINFO task 1 is Queued\nINFO task 2 is Queued\n"
        ]
        logger.info("task 3 is Queued")
        await asyncio.sleep(0)
        assert stream.calls[-1] == "INFO task 3 is Queued\n"


async def test_events_of_one_loop_turn_are_held_with_its_other_lines() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("created")
        log_events(logger, logging.INFO, _events(2))
        assert stream.calls == []
        await asyncio.sleep(0)
        assert stream.calls == [
            "INFO created\nINFO task t0 is Queued (attempt 0)\nINFO task t1 is Queued (attempt 0)\n"
        ]


async def test_a_warning_of_the_turn_is_written_at_once_after_what_was_held() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
        logger.warning("sqlite error")
        assert stream.getvalue() == "INFO task 0 is Queued\nWARNING sqlite error\n"


async def test_other_threads_are_not_held_by_the_loop() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
        thread = threading.Thread(target=logger.info, args=("from the SQLite writer",))
        thread.start()
        thread.join()
        assert stream.calls == ["INFO from the SQLite writer\n"]
        await asyncio.sleep(0)
        assert stream.calls[-1] == "INFO task 0 is Queued\n"


async def test_the_block_writes_what_it_held_when_it_ends() -> None:
    # uvicorn's last lines come after the lifespan, and a worker of serve --workers N then ends
    # by its re-raised stop signal before the loop turns again.
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
    assert stream.calls == ["INFO task 0 is Queued\n"]
    logger.info("Finished server process")
    assert stream.calls[-1] == "INFO Finished server process\n"  # no longer held


async def test_close_writes_what_is_held() -> None:
    handler, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
        handler.close()  # logging.shutdown, at exit
        assert stream.calls == ["INFO task 0 is Queued\n"]


async def test_a_warning_of_another_thread_comes_after_what_the_loop_held() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
        thread = threading.Thread(target=logger.warning, args=("sqlite error",))
        thread.start()
        thread.join()
        assert stream.getvalue() == "INFO task 0 is Queued\nWARNING sqlite error\n"


async def test_stop_holding_lines_writes_what_is_held_and_then_each_line() -> None:
    _, stream, logger = _handler()
    with lines_written_per_turn():
        logger.info("task 0 is Queued")
        stop_holding_lines()  # a stop signal
        assert stream.calls == ["INFO task 0 is Queued\n"]
        logger.info("Shutting down")
        assert stream.calls[-1] == "INFO Shutting down\n"
