"""Baseline: a plain aiohttp loop POSTing to the receiver, the ceiling for callbacks.

One process, one ``aiohttp.ClientSession`` with CONCURRENCY keep-alive connections, each of
CONCURRENCY coroutines POSTing a small JSON body (with ``X-Task-Id``) until N are sent: the
callbacks per second the machine allows with no queue, no state and no records. Run by
``bench/run.py``; by hand:

    .venv/bin/python bench/baseline_aiohttp.py N CONCURRENCY RECEIVER_URL  # prints {"seconds": ...}
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import uvloop


async def run(n: int, concurrency: int, url: str) -> float:
    """POST ``n`` times to ``url`` over ``concurrency`` coroutines; return the seconds taken."""
    todo = iter(range(n))
    failed = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        for i in todo:
            body = b'{"n":%d}' % i
            headers = {"Content-Type": "application/json", "X-Task-Id": f"aiohttp-{i}"}
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                failed += response.status >= 300

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    if failed:
        raise RuntimeError(f"{failed} callbacks failed")
    return seconds


if __name__ == "__main__":
    n, concurrency, receiver = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].rstrip("/")
    uvloop.run(run(min(200, n), concurrency, f"{receiver}/aiohttp"))  # warm-up
    seconds = uvloop.run(run(n, concurrency, f"{receiver}/aiohttp"))
    print(json.dumps({"seconds": seconds, "n": n}))
