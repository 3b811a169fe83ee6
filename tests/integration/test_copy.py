"""``copy_store`` between the two SQL stores: the counters of the target."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import pytest

from taskplatform.backends import copy, open_backends, prepare_schema
from taskplatform.backends.copy import copy_store
from taskplatform.models import Status
from taskplatform.settings import Settings
from tests.integration.test_contract import _id, _task
from tests.support.backends import backend_env, settings_kwargs


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
async def test_a_copy_moves_the_queue_counter_past_every_stored_task(
    target: str, tmp_path: Path
) -> None:
    """The source's queue is empty and its one stored task holds number 7: a task created in
    the target after the copy gets a later number, so the stored one, requeued, goes first
    (without it the target's counter started at 1). The target's URL may say ``postgres://``;
    a queue's row left by a server started on it once is no obstacle."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = Settings(**settings_kwargs(backend_env("sqlite", tmp_path / "a")))  # type: ignore[arg-type]
    into = Settings(**settings_kwargs(backend_env(target, tmp_path / "b")))  # type: ignore[arg-type]
    if target == "postgres":
        into = into.model_copy(
            update={"database_url": into.database_url.replace("postgresql://", "postgres://")}
        )
    for settings in (source, into):
        await prepare_schema(settings)
    stored = msgspec.structs.replace(
        _task(_id(1)), status=Status.DEQUEUED, sequence=7, lease_token="L"
    )
    backends = open_backends(source)
    try:
        assert await backends.store.insert_dequeued([stored]) == {_id(1)}
    finally:
        await backends.close()
    backends = open_backends(into)
    try:
        await backends.store.set_paused("default", False, now=1)  # as a server leaves it
    finally:
        await backends.close()

    copied = await copy_store(source.database_url, into.database_url)
    assert (copied["tasks"], copied["queued_tasks"]) == (1, 0)
    ids = []
    for settings in (source, into):
        backends = open_backends(settings)
        try:
            ids.append(await backends.store.store_id())
        finally:
            await backends.close()
    assert ids[0] != ids[1]  # a copy is another store, which a Redis queue tells apart
    backends = open_backends(into)
    try:
        await backends.queue.enqueue(_task(_id(2)))
        assert await backends.queue.requeue(backends.store, stored, now=2, note="lease ran out")
        taken = await backends.queue.transfer_many(backends.store, now=3, most=2)
        assert (taken[0].task_id, taken[0].sequence) == (_id(1), 7)
        assert taken[1].sequence > 7
    finally:
        await backends.close()


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
async def test_a_copy_reads_large_rows_a_few_at_a_time(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches follow the rows' size wherever they lie: 30 small tasks, then 30 of 20 KB data
    each, with 100 KB a batch. The small ones and the first large ones go in one batch, then
    four or fewer at a time (sizing each batch by the one before read 2,000 large rows after
    small ones: GiBs), and every task arrives once, with its data."""
    monkeypatch.setattr(copy, "BATCH_BYTES", 100_000)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = Settings(**settings_kwargs(backend_env("sqlite", tmp_path / "a")))  # type: ignore[arg-type]
    into = Settings(**settings_kwargs(backend_env(target, tmp_path / "b")))  # type: ignore[arg-type]
    for settings in (source, into):
        await prepare_schema(settings)
    data = [
        b'{"pad": "' + bytes([97 + n % 26]) * (20_000 if n >= 30 else 10) + b'"}' for n in range(60)
    ]
    tasks = [
        msgspec.structs.replace(
            _task(_id(n), data=data[n]), status=Status.DEQUEUED, sequence=n + 1, lease_token="L"
        )
        for n in range(60)
    ]
    backends = open_backends(source)
    try:
        assert len(await backends.store.insert_dequeued(tasks)) == 60
    finally:
        await backends.close()
    batches: list[int] = []

    def progress(name: str, rows: int) -> None:
        if name == "tasks":
            batches.append(rows)

    copied = await copy.copy_store(source.database_url, into.database_url, progress=progress)
    assert copied["tasks"] == 60
    assert 30 < batches[0] <= 35, batches  # the small ones, and what fits after them
    assert all(0 < b - a <= 5 for a, b in itertools.pairwise(batches)), batches
    assert batches[-1] == 60
    backends = open_backends(into)
    try:
        for n in (0, 29, 30, 47, 59):
            stored = await backends.store.get(_id(n))
            assert stored is not None
            assert stored.task_data == data[n]
    finally:
        await backends.close()
