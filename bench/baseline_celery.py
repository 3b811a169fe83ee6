"""Peer baseline: Celery with a Redis broker, its worker POSTing each task to the receiver.

What a user would pick instead of a dispatcher: a Celery task that makes the HTTP callback. The
broker is ``redis://127.0.0.1:6379/13`` (flushed before and after a run); results are ignored;
the worker runs Celery's defaults for a machine (prefork pool, one process per core, prefetch
multiplier 4, acknowledgement before the task runs) with one keep-alive ``httpx.Client`` per
worker process. Run by ``bench/run.py``; by hand:

    .venv/bin/python bench/baseline_celery.py N RECEIVER_URL   # prints {"seconds": ..., ...}

The clock runs from the first enqueue (``post.delay`` in a loop, as user code would) until the
receiver has counted N callbacks, after a warm-up of 100 tasks through the started worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from celery import Celery

BROKER = "redis://127.0.0.1:6379/13"
WARMUP = 100

app = Celery("bench", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_client: httpx.Client | None = None


@app.task(name="bench.post")  # type: ignore[untyped-decorator]  # Celery ships no types
def post(url: str, data: dict[str, Any], task_id: str) -> None:
    """POST ``data`` to ``url`` with ``X-Task-Id``; raise on a status outside 2xx."""
    global _client
    if _client is None:
        _client = httpx.Client(timeout=30)
    _client.post(url, json=data, headers={"X-Task-Id": task_id}).raise_for_status()


def received(receiver: str) -> int:
    """How many callbacks the receiver has counted."""
    with urllib.request.urlopen(f"{receiver}/count", timeout=10) as response:
        return int(json.load(response)["count"])


def wait_for(receiver: str, count: int, timeout: float) -> None:
    """Poll the receiver every 10 ms until it has counted ``count``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while received(receiver) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"receiver counted {received(receiver)} of {count}")
        time.sleep(0.01)


def time_peer(
    n: int, receiver: str, warmup: int, enqueue_one: Callable[[int, str], object]
) -> dict[str, float]:
    """Warm the started workers up with ``warmup`` tasks, then time ``n``: enqueue them from a
    thread (``enqueue_one(i, task_id)``, as user code would) while polling the receiver, from the
    first enqueue until it has counted all ``n``. Returns the JSON the suite reads."""
    start = received(receiver)
    for i in range(warmup):
        enqueue_one(i, f"warm-{i}")
    wait_for(receiver, start + warmup, 120)
    start += warmup
    began = time.perf_counter()
    enqueued: list[float] = []

    def enqueue() -> None:
        for i in range(n):
            enqueue_one(i, f"peer-{i}")
        enqueued.append(time.perf_counter() - began)

    thread = threading.Thread(target=enqueue)
    thread.start()
    wait_for(receiver, start + n, 1200)
    seconds = time.perf_counter() - began
    thread.join()
    return {"seconds": seconds, "enqueue_seconds": enqueued[0], "n": n}


def flush() -> None:
    """Empty the broker's Redis database."""
    import redis

    redis.Redis.from_url(BROKER).flushdb()


def main() -> None:
    """Start a worker, warm it up, time N tasks from first enqueue to last callback."""
    n, receiver = int(sys.argv[1]), sys.argv[2].rstrip("/")
    url = f"{receiver}/celery"
    flush()
    celery = Path(sys.executable).with_name("celery")
    worker = subprocess.Popen(
        [str(celery), "-A", "baseline_celery", "worker", "--loglevel", "WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=Path(__file__).resolve().parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result = time_peer(n, receiver, WARMUP, lambda i, tag: post.delay(url, {"n": i}, tag))
        print(json.dumps(result))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        flush()


if __name__ == "__main__":
    main()
