"""The SQLite backend's WAL: checkpoints run beside the writer, never inside its commits, and the
WAL still starts over while writes never stop."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from taskplatform.backends import prepare_schema
from taskplatform.backends.sqlite import SQLiteDatabase, SQLiteQueue
from taskplatform.models import Status, TaskRecord, now_ms
from taskplatform.settings import Settings

PAGE_BYTES = 4096  # SQLite's default page size


def _tasks(first: int, count: int) -> list[TaskRecord]:
    now = now_ms()
    return [
        TaskRecord(
            task_id=f"01900000-0000-7000-8000-{n:012d}",
            status=Status.QUEUED,
            priority=n % 10,
            task_data=b'{"payload": "%s"}' % (b"x" * 400),
            callback_url="http://127.0.0.1:9/x",
            max_retries=1,
            timeout_seconds=5.0,
            created_at=now,
            updated_at=now,
        )
        for n in range(first, first + count)
    ]


async def _database(tmp_path: Path, **kwargs: Any) -> tuple[SQLiteDatabase, Path]:
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    await prepare_schema(Settings(database_url=url))
    return SQLiteDatabase(url, **kwargs), tmp_path / "tp.db-wal"


async def test_the_writer_leaves_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    database, wal = await _database(tmp_path, checkpoint_interval_seconds=0.05)
    file = tmp_path / "tp.db"
    try:

        def autocheckpoint(conn: sqlite3.Connection) -> int:
            value: int = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            return value

        assert await database.write(autocheckpoint) == 0
        before = file.stat().st_size
        await SQLiteQueue(database).enqueue_many(_tasks(0, 500))
        assert wal.stat().st_size > 500 * 400  # committed to the WAL
        # ... and copied into the database file by the checkpointer, with no further write.
        deadline = time.monotonic() + 10
        while file.stat().st_size < before + 500 * 400:
            assert time.monotonic() < deadline, "no checkpoint copied the WAL"
            await asyncio.sleep(0.05)
    finally:
        database.close()


async def test_the_wal_starts_over_while_writes_never_stop(tmp_path: Path) -> None:
    database, wal = await _database(
        tmp_path, checkpoint_interval_seconds=0.01, wal_restart_pages=64
    )
    queue = SQLiteQueue(database)
    written = 0
    largest = 0

    async def writer(first: int) -> None:
        nonlocal written
        for start in range(first, first + 20_000, 200):
            await queue.enqueue_many(_tasks(start, 200))
            written += 200

    async def watch() -> None:
        nonlocal largest
        while True:
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        # Four writers keep a batch always waiting, so the writer thread never idles.
        await asyncio.gather(*(writer(n * 1_000_000) for n in range(4)))
    finally:
        watcher.cancel()
        database.close()
    # These 80,000 rows take about 19,000 pages: a WAL that never starts over ends that long
    # (measured with the writer's part turned off). Starting over, it stayed near 1,000 pages.
    assert largest < 6_000 * PAGE_BYTES, largest / PAGE_BYTES
    with contextlib.closing(sqlite3.connect(tmp_path / "tp.db")) as conn:
        assert conn.execute("SELECT count(*) FROM queued_tasks").fetchone()[0] == written
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_connections_that_switch_a_new_file_to_wal_together_all_succeed(tmp_path: Path) -> None:
    """Six connections switch one new (rollback-journal) file to WAL at the same moment, 20
    times, as the processes of ``serve --workers 3`` or ``serve`` beside ``worker`` do. SQLite
    answers "database is locked" at once, with no busy wait, to one of two that ask together:
    such a process died at startup ("Child process failed to start") before it tried again."""
    from taskplatform.backends.sqlite import _use_wal

    failures: list[str] = []
    for round_ in range(20):
        path = tmp_path / f"new-{round_}.db"
        with contextlib.closing(sqlite3.connect(path)) as setup:
            setup.execute("CREATE TABLE t (x)")
            setup.commit()
        barrier = threading.Barrier(6)

        def switch(path: Path, barrier: threading.Barrier) -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute("SELECT * FROM t").fetchall()
                barrier.wait()
                _use_wal(conn, 5.0)
            except sqlite3.OperationalError as exc:
                failures.append(str(exc))
            finally:
                conn.close()

        threads = [threading.Thread(target=switch, args=(path, barrier)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with contextlib.closing(sqlite3.connect(path)) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert failures == []
