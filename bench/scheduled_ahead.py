"""Benchmark a dequeue behind tasks scheduled for later, against one behind none, in one run.

A queue holds ``--ahead`` tasks scheduled an hour ahead, created before the due ones (so they
come first in priority-then-FIFO order). Each round creates one due task and dequeues it
(``Queue.transfer_many`` of one, what ``GET /api/tasks/dequeue`` and a dispatcher's claim do,
without HTTP), ``--n`` rounds; the same on an empty queue first is the baseline. Prints the
median dequeue in ms per backend and the ratio; a dequeue that walked past the waiting tasks
(before migration 0007) was 43x slower at 50,000 of them on SQLite, 21x on PostgreSQL.

    .venv/bin/python bench/scheduled_ahead.py [--backends sqlite,postgres,redis+postgres]
        [--ahead 50000] [--n 300]

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) as for ``run.py``; each
backend gets fresh storage that is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import backend_env, parse_backends

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.models import Status, TaskRecord, now_ms
from taskplatform.settings import Settings


def _task(scheduled_at: int | None = None) -> TaskRecord:
    now = now_ms()
    return TaskRecord(
        task_id=str(uuid.uuid4()),
        status=Status.QUEUED,
        priority=0,
        task_data=b"{}",
        callback_url="http://127.0.0.1:9/x",
        max_retries=1,
        timeout_seconds=5.0,
        created_at=now,
        updated_at=now,
        scheduled_at=scheduled_at,
    )


async def _median_dequeue_ms(backends: Backends, rounds: int) -> float:
    """Create one due task and dequeue it, ``rounds`` times; the median dequeue in ms."""
    times = []
    for _ in range(rounds):
        await backends.queue.enqueue(_task())
        started = time.perf_counter()
        taken = await backends.queue.transfer_many(backends.store, now=now_ms(), most=1)
        times.append(time.perf_counter() - started)
        assert len(taken) == 1, "the due task was not dequeued"
    return statistics.median(times) * 1000


async def _measure(env: dict[str, str], ahead: int, rounds: int) -> tuple[float, float]:
    settings = Settings(
        database_url=env["TASKPLATFORM_DATABASE_URL"],
        queue_url=env.get("TASKPLATFORM_QUEUE_URL"),
        redis_key_prefix=env.get("TASKPLATFORM_REDIS_KEY_PREFIX", "{taskplatform}"),
        database_pool_size=2,
        database_pool_overflow=1,
    )
    await prepare_schema(settings)
    backends = open_backends(settings)
    try:
        alone = await _median_dequeue_ms(backends, rounds)
        later = now_ms() + 3_600_000
        for start in range(0, ahead, 5_000):
            count = min(5_000, ahead - start)
            await backends.queue.enqueue_many([_task(later) for _ in range(count)])
        behind = await _median_dequeue_ms(backends, rounds)
    finally:
        await backends.close()
    return alone, behind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgres,redis+postgres")
    parser.add_argument("--ahead", type=int, default=50_000)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    print(f"| backend | dequeue, none ahead | dequeue, {args.ahead:,} scheduled ahead | ratio |")
    print("| --- | ---: | ---: | ---: |")
    with asyncio.Runner() as runner, tempfile.TemporaryDirectory() as folder:
        for backend in parse_backends(args.backends):
            with backend_env(backend, Path(folder) / backend, runner) as env:
                alone, behind = runner.run(_measure(env, args.ahead, args.n))
            print(f"| {backend} | {alone:.2f} ms | {behind:.2f} ms | {behind / alone:.2f}x |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
