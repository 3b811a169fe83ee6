"""The group commit of the PostgreSQL and Redis queues (``backends.grouping``), with a stand-in
insert so that its batching, errors and cancellation can be driven exactly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskplatform.backends.grouping import GroupCommit
from taskplatform.exceptions import BackendUnavailable


class Insert:
    """Records each call's rows; fails or blocks on request."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: BaseException | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.next_seq = 1

    async def __call__(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        self.calls.append([row["task_id"] for row in rows])
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        out = {}
        for row in rows:
            out[row["task_id"]] = self.next_seq
            self.next_seq += 1
        return out


async def test_a_lone_write_goes_at_once_and_returns_its_sequence() -> None:
    insert = Insert()
    group = GroupCommit(insert, key=lambda row: row["task_id"])
    assert await group.write({"task_id": "a"}) == 1
    assert insert.calls == [["a"]]


async def test_writes_arriving_during_a_commit_share_the_next_one() -> None:
    insert = Insert()
    insert.gate.clear()
    group = GroupCommit(insert, key=lambda row: row["task_id"], most=3)
    first = asyncio.create_task(group.write({"task_id": "a"}))
    await asyncio.sleep(0)  # "a" is being written; the rest queue behind it
    rest = [asyncio.create_task(group.write({"task_id": name})) for name in "bcdef"]
    await asyncio.sleep(0)
    insert.gate.set()
    assert await first == 1
    assert [await task for task in rest] == [2, 3, 4, 5, 6]
    assert insert.calls == [["a"], ["b", "c", "d"], ["e", "f"]]


async def test_a_failed_commit_fails_every_write_in_it_and_only_those() -> None:
    insert = Insert()
    insert.gate.clear()
    group = GroupCommit(insert, key=lambda row: row["task_id"])
    first = asyncio.create_task(group.write({"task_id": "a"}))
    await asyncio.sleep(0)
    second = [asyncio.create_task(group.write({"task_id": name})) for name in "bc"]
    await asyncio.sleep(0)
    insert.fail = BackendUnavailable("down")
    insert.gate.set()
    with pytest.raises(BackendUnavailable):
        await first
    for task in second:
        with pytest.raises(BackendUnavailable):
            await task
    insert.fail = None
    assert await group.write({"task_id": "d"}) == 1  # the next commit works again


async def test_a_caller_that_gave_up_before_its_commit_is_left_out() -> None:
    insert = Insert()
    insert.gate.clear()
    group = GroupCommit(insert, key=lambda row: row["task_id"])
    first = asyncio.create_task(group.write({"task_id": "a"}))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(group.write({"task_id": "b"}))
    stayer = asyncio.create_task(group.write({"task_id": "c"}))
    await asyncio.sleep(0)
    quitter.cancel()
    insert.gate.set()
    await first
    assert await stayer == 2
    assert insert.calls == [["a"], ["c"]]
