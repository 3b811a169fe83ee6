"""The log formatters (the same text as the standard library's, made faster) and the handler that
writes a batch's lines, and a loop turn's, together."""

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
    stop_holding_lines,
    written_together,
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
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger("taskplatform.test")  # not registered: no other handler sees it
    logger.addHandler(handler)
    return handler, stream, logger


def test_lines_logged_together_are_one_write_at_the_end() -> None:
    _, stream, logger = _handler()
    logger.info("before")
    with written_together():
        for n in range(3):
            logger.info("task %d is Queued", n)
        assert stream.calls == ["INFO before\n"]  # held until the block ends
    assert stream.calls == [
        "INFO before\n",
        "INFO task 0 is Queued\nINFO task 1 is Queued\nINFO task 2 is Queued\n",
    ]
    logger.info("after")
    assert stream.calls[-1] == "INFO after\n"


def test_a_warning_is_written_at_once_after_what_was_held() -> None:
    _, stream, logger = _handler()
    with written_together():
        logger.info("task 0 is Queued")
        logger.warning("sqlite error")
        assert stream.getvalue() == "INFO task 0 is Queued\nWARNING sqlite error\n"
        logger.info("task 1 is Queued")
    assert stream.getvalue().endswith("WARNING sqlite error\nINFO task 1 is Queued\n")


def test_lines_are_written_when_the_block_fails() -> None:
    _, stream, logger = _handler()

    def log_and_fail() -> None:
        with written_together():
            logger.info("task 0 is Queued")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        log_and_fail()
    assert stream.getvalue() == "INFO task 0 is Queued\n"


def test_other_threads_log_as_usual_meanwhile() -> None:
    _, stream, logger = _handler()
    with written_together():
        logger.info("task 0 is Queued")
        thread = threading.Thread(target=logger.info, args=("from the SQLite writer",))
        thread.start()
        thread.join()
        assert stream.calls == ["INFO from the SQLite writer\n"]
    assert stream.calls[-1] == "INFO task 0 is Queued\n"


async def test_other_tasks_log_as_usual_meanwhile() -> None:
    _, stream, logger = _handler()
    go = asyncio.Event()

    async def other() -> None:
        await go.wait()
        logger.info("from another request")

    task = asyncio.create_task(other())
    with written_together():
        logger.info("task 0 is Queued")
        go.set()
        await task
        assert stream.calls == ["INFO from another request\n"]
    assert stream.calls[-1] == "INFO task 0 is Queued\n"


def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    _, stream, logger = _handler()
    lines = [f"task {n} " + "é" * (n % 90) + "x" * 60 for n in range(300)]
    lines.insert(150, "y" * (2 * select.PIPE_BUF))  # longer than PIPE_BUF: a write of its own
    with written_together():
        for line in lines:
            logger.info("%s", line)
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
