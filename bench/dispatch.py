"""Benchmark automatic dispatch against pull mode on the same backend, in the same run.

For each backend of ``--backends`` (as in ``bench/rates.py``: fresh storage, removed at the
end), starts ``taskplatform serve`` and a bare callback receiver (from ``bench/rates.py``), then:

1. pull (the baseline): ``--n`` tasks are created with the batch endpoint, then ``--clients``
   concurrent HTTP clients each loop ``GET /api/tasks/dequeue`` + ``POST .../execute`` until the
   queue is empty: what a caller-driven deployment gets;
2. dispatch: on a server started with ``TASKPLATFORM_DISPATCH=true`` and
   ``TASKPLATFORM_DISPATCH_CONCURRENCY=--concurrency``, the queue is paused, ``--n`` tasks are
   created, the queue is resumed, and the clock runs until ``/api/stats`` counts them all
   Completed.

Prints a Markdown table: tasks per second through each mode and their ratio (dispatch / pull),
so a noisy machine hits both alike.

    .venv/bin/python bench/dispatch.py [--n 3000] [--clients 32] [--concurrency 50]
        [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rates import (
    HOST,
    JSON_HEADERS,
    TASKPLATFORM,
    backend_env,
    free_port,
    parse_backends,
    stop,
    wait_listening,
)


@contextlib.contextmanager
def service(
    backend: str, runner: asyncio.Runner, extra: dict[str, str]
) -> Iterator[tuple[str, str]]:
    """Start the service on fresh ``backend`` storage and a receiver; yield their base URLs."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with backend_env(backend, workdir, runner) as env_vars:
            ports = [free_port(), free_port()]
            env = {"PATH": "/usr/bin:/bin", **env_vars, **extra}
            with (workdir / "serve.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [str(TASKPLATFORM), "serve", "--port", str(ports[0])],
                        env=env,
                        cwd=workdir,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            rates = Path(__file__).resolve().parent / "rates.py"
            procs.append(
                subprocess.Popen([sys.executable, str(rates), "--serve", "receiver", str(ports[1])])
            )
            try:
                for proc, port in zip(procs, ports, strict=True):
                    wait_listening(proc, port)
                yield f"http://{HOST}:{ports[0]}", f"http://{HOST}:{ports[1]}/"
            finally:
                for proc in procs:
                    stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def create(session: aiohttp.ClientSession, api: str, callback: str, n: int) -> None:
    """Create ``n`` tasks through ``POST /api/tasks/batch``, 1,000 at a time."""
    for start in range(0, n, 1000):
        tasks = [
            {"taskData": {"i": i}, "callbackUrl": callback}
            for i in range(start, min(n, start + 1000))
        ]
        async with session.post(
            f"{api}/api/tasks/batch", data=json.dumps({"tasks": tasks}), headers=JSON_HEADERS
        ) as response:
            assert response.status == 200, await response.text()


async def completed(session: aiohttp.ClientSession, api: str) -> int:
    """Return how many tasks ``/api/stats`` counts Completed."""
    async with session.get(f"{api}/api/stats") as response:
        return int((await response.json())["tasks"]["Completed"])


async def pull(api: str, callback: str, n: int, clients: int) -> float:
    """Create ``n`` tasks, then dequeue and execute them all with ``clients`` clients; seconds."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 4)) as session:
        await create(session, api, callback, n)

        async def client() -> None:
            while True:
                async with session.get(f"{api}/api/tasks/dequeue") as response:
                    if response.status == 404:
                        return
                    task_id = (await response.json())["taskId"]
                async with session.post(f"{api}/api/tasks/{task_id}/execute") as response:
                    assert response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        assert await completed(session, api) == n
    return elapsed


async def dispatch(api: str, callback: str, n: int) -> float:
    """Create ``n`` tasks on a paused queue, resume it, and time until all are Completed."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api}/api/queues/default/pause") as response:
            assert response.status == 200
        await create(session, api, callback, n)
        await asyncio.sleep(1)  # every process sees the pause; nothing may have started
        assert await completed(session, api) == 0
        started = time.perf_counter()
        async with session.post(f"{api}/api/queues/default/resume") as response:
            assert response.status == 200
        while await completed(session, api) < n:
            await asyncio.sleep(0.05)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="tasks per mode")
    parser.add_argument("--clients", type=int, default=32, help="pull-mode HTTP clients")
    parser.add_argument("--concurrency", type=int, default=50, help="dispatcher concurrency")
    parser.add_argument("--backends", type=parse_backends, default=["sqlite", "postgres"])
    args = parser.parse_args()
    rows = []
    with asyncio.Runner() as runner:
        for backend in args.backends:
            with service(backend, runner, {}) as (api, callback):
                pulled = runner.run(pull(api, callback, args.n, args.clients))
            dispatch_env = {
                "TASKPLATFORM_DISPATCH": "true",
                "TASKPLATFORM_DISPATCH_CONCURRENCY": str(args.concurrency),
            }
            with service(backend, runner, dispatch_env) as (api, callback):
                pushed = runner.run(dispatch(api, callback, args.n))
            rows.append((backend, args.n / pulled, args.n / pushed))
            print(f"[{backend}] pull {args.n / pulled:.0f}/s, dispatch {args.n / pushed:.0f}/s")
    print(
        f"\n{args.n} tasks per mode; pull with {args.clients} clients, "
        f"dispatch with concurrency {args.concurrency}\n"
    )
    print("| backend | pull (dequeue+execute), tasks/s | dispatch, tasks/s | dispatch / pull |")
    print("| --- | ---: | ---: | ---: |")
    for backend, pull_rate, dispatch_rate in rows:
        ratio = dispatch_rate / pull_rate
        print(f"| {backend} | {pull_rate:,.0f} | {dispatch_rate:,.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
