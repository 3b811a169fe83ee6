"""Group commit: single writes from concurrent requests, made together.

Used by the PostgreSQL and Redis queues for creates without an idempotency key and (through
:class:`DequeueGroups`) for pull dequeues, by the PostgreSQL queue for creates with a key, and
by the PostgreSQL store for the starts and the outcomes of attempts (SQLite's writer thread
batches its jobs by itself).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from taskplatform.faults import Faults

Row = TypeVar("Row")
Result = TypeVar("Result")


class GroupCommit(Generic[Row, Result]):
    """Single writes from concurrent requests, written together (group commit).

    While one write is in flight, the rows that arrive wait and go into the next one, so under
    load one write (one round trip; on PostgreSQL one commit and WAL flush) carries many rows,
    and a row on its own goes at once. A caller's :meth:`write` returns only after the write
    that holds its row has committed, never before; if that write fails, every caller in it gets
    the error. Rows of the same key never share a write (the later waits for the next), so a
    write may treat its keys as unique. bench/run.py measured PostgreSQL create at 1,629
    requests/s with a transaction per request and 9,163 with this.

    Args:
        write: Writes rows all or none (one transaction) and returns a result by key, for the
            rows that have one (an enqueue's ``seq``; an outcome's task, if its compare-and-set
            held).
        key: The key of a row (its task id).
        most: Rows per write at most.
        name: The name of the writing asyncio task (seen in debuggers and profiles).
    """

    def __init__(
        self,
        write: Callable[[list[Row]], Awaitable[dict[str, Result]]],
        *,
        key: Callable[[Row], str],
        most: int = 1000,
        name: str = "group commit",
    ) -> None:
        self._write = write
        self._name = name
        self._key = key
        self._most = most
        self._waiting: list[tuple[Row, asyncio.Future[Result | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, row: Row) -> Result | None:
        """Write ``row``; return its result once the write holding it has committed (None: the
        write returned nothing for its key).

        Raises:
            BackendUnavailable: the write holding the row failed.
        """
        future: asyncio.Future[Result | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((row, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Row, asyncio.Future[Result | None]]] = []
        try:
            while self._waiting:
                batch, later, keys = [], [], set()
                for row, future in self._waiting:
                    key = self._key(row)
                    if len(batch) == self._most or key in keys:
                        later.append((row, future))
                    # A caller that gave up before its row was written (a client that hung
                    # up) has nothing to wait for: leave its row out.
                    elif not future.done():
                        batch.append((row, future))
                        keys.add(key)
                self._waiting = later
                if not batch:
                    continue
                try:
                    results = await self._write([row for row, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for row, future in batch:
                    if not future.done():
                        future.set_result(results.get(self._key(row)))
                batch = []
        except BaseException:  # cancelled (shutdown): nobody may wait forever
            for _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting = []
            raise
        finally:
            self._writer = None


Task = TypeVar("Task")
Store = TypeVar("Store")
_Request = tuple[str, Store, int, str | None, int | None]
"""A pull dequeue waiting for its group: (request id, store, time, lease token, lease expiry)."""


class DequeueGroups(Generic[Store, Task]):
    """Pull dequeues grouped per queue: concurrent ones become one batch transfer, and each
    caller gets one of its tasks (the first caller the first task, in queue order).

    Under load one round trip moves many tasks instead of one each (bench/README, pull end to
    end: PostgreSQL 716-863 → 1,055-1,070 tasks/s, redis+postgres 778-819 → 1,027-1,065). The
    tasks of a group share the first caller's lease token (the store fences a compare-and-set
    by task id and token together), the latest lease expiry and the latest time of the group,
    all within a round trip of each other.

    Args:
        take_many: The queue's ``transfer_many`` (store, then keywords ``now``, ``most``,
            ``queue``, ``lease_token``, ``lease_expires_at``, ``dispatched``): up to ``most``
            tasks in queue order.
        faults: Test-only faults; ``after_dequeue`` fails a whole group after its transfer
            committed, as a lost answer of its one statement would.
    """

    def __init__(
        self, take_many: Callable[..., Awaitable[list[Task]]], faults: Faults | None = None
    ) -> None:
        self._take_many = take_many
        self._faults = faults or Faults()
        self._groups: dict[tuple[str, bool], GroupCommit[_Request[Store], Task]] = {}
        self._ids = itertools.count()

    async def transfer(
        self,
        store: Store,
        *,
        now: int,
        queue: str,
        lease_token: str | None,
        lease_expires_at: int | None,
        dispatched: bool,
    ) -> Task | None:
        """A queue's ``transfer``: take the next due task of ``queue`` into ``store`` with the
        others waiting now (of the same ``dispatched``); None when the queue had none left for
        this caller.

        Raises:
            BackendUnavailable: the transfer holding this request failed.
        """
        group = self._groups.get((queue, dispatched))
        if group is None:
            group = self._groups[queue, dispatched] = GroupCommit(
                functools.partial(self._take, queue, dispatched),
                key=lambda request: request[0],
                name=f"dequeue group commit {queue}",
            )
        return await group.write((str(next(self._ids)), store, now, lease_token, lease_expires_at))

    async def _take(
        self, queue: str, dispatched: bool, requests: list[_Request[Store]]
    ) -> dict[str, Task]:
        expiries = [expiry for *_, expiry in requests if expiry is not None]
        tasks = await self._take_many(
            requests[0][1],
            now=max(request[2] for request in requests),
            most=len(requests),
            queue=queue,
            lease_token=requests[0][3],
            lease_expires_at=max(expiries) if expiries else None,
            dispatched=dispatched,
        )
        if tasks:
            self._faults.hit("after_dequeue")
        return {request[0]: task for request, task in zip(requests, tasks, strict=False)}
