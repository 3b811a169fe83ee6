"""Peer baseline: RQ, its workers POSTing each task to the receiver.

What a user would pick instead of a dispatcher: an RQ job that makes the HTTP callback, on
``redis://127.0.0.1:6379/12`` (flushed before and after a run), with RQ's default worker (a
forked "work horse" per job), one worker process per core. Run by ``bench/run.py``; by hand:

    .venv/bin/python bench/baseline_rq.py N RECEIVER_URL   # prints {"seconds": ..., ...}

The clock runs from the first enqueue (``Queue.enqueue`` in a loop, as user code would) until
the receiver has counted N callbacks, after a warm-up of 20 jobs through the started workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from baseline_celery import time_peer
from redis import Redis
from rq import Queue

REDIS = "redis://127.0.0.1:6379/12"
WARMUP = 20


def post(url: str, data: dict[str, Any], task_id: str) -> None:
    """POST ``data`` to ``url`` with ``X-Task-Id``; raise on a status outside 2xx."""
    httpx.post(url, json=data, headers={"X-Task-Id": task_id}, timeout=30).raise_for_status()


def main() -> None:
    """Start the workers, warm them up, time N jobs from first enqueue to last callback."""
    n, receiver = int(sys.argv[1]), sys.argv[2].rstrip("/")
    url = f"{receiver}/rq"
    connection = Redis.from_url(REDIS)
    connection.flushdb()
    queue = Queue("bench", connection=connection)
    here = Path(__file__).resolve().parent
    rq = Path(sys.executable).with_name("rq")
    workers = [
        subprocess.Popen(
            [str(rq), "worker", "--url", REDIS, "--logging_level", "WARNING", "bench"],
            cwd=here,
            env={**os.environ, "PYTHONPATH": str(here)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(os.cpu_count() or 1)
    ]
    try:

        def enqueue_one(i: int, task_id: str) -> object:
            return queue.enqueue("baseline_rq.post", url, {"n": i}, task_id)

        result = time_peer(n, receiver, WARMUP, enqueue_one)
        print(json.dumps(result))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        connection.flushdb()


if __name__ == "__main__":
    main()
