"""Benchmark the outbound callback client: aiohttp versus httpx against a bare local receiver.

Starts a bare ASGI receiver (uvicorn + httptools + uvloop, answers 200 ``{"ok":true}`` to any
POST) in a subprocess on 127.0.0.1, then sends ``--n`` POSTs of a small JSON body at each
concurrency with (a) one ``aiohttp.ClientSession`` on a ``TCPConnector(limit=256)`` and (b) one
``httpx.AsyncClient`` with 256 connections. The two clients alternate (ABBA order) so that drift
on a noisy machine hits both alike; with ``--rounds`` above 1 the table shows medians. A batch
stops early after ``--max-seconds`` (a slow client would otherwise take minutes for 5000
requests); its rate is then what it sent in that time, and the ``sent`` column says how many.

    .venv/bin/python bench/callback_clients.py [--n 5000] [--concurrency 1,16,64] [--rounds 1]

CPU is the client process's own user+system time (``time.process_time``) per 1000 requests; the
receiver's CPU (from ``/proc``) is shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, proc_cpu_seconds, python_script, start_listening, stop

HOST = "127.0.0.1"
BODY = b'{"taskId":"01a22c7b-b2c9-714d-9523-57f31044d03d","orderId":42,"items":[1,2,3]}'
HEADERS = {"Content-Type": "application/json"}
POOL = 256
WARMUP = 200
CLIENTS = ("aiohttp", "httpx")


@contextlib.contextmanager
def receiver_process() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Run the bare receiver in a subprocess; yield it and its port; always stop it."""
    port = free_port()
    proc = start_listening(python_script("receiver.py", str(port)), port)
    try:
        yield proc, port
    finally:
        stop(proc)


@dataclass
class Sample:
    """One measured batch: ``n`` requests by one client at one concurrency."""

    client: str
    concurrency: int
    n: int
    wall_s: float
    cpu_s: float
    receiver_cpu_s: float
    errors: int

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.n / self.wall_s

    @property
    def cpu_per_1k(self) -> float:
        """Client CPU seconds per 1000 requests."""
        return self.cpu_s / self.n * 1000

    @property
    def receiver_cpu_per_1k(self) -> float:
        """Receiver CPU seconds per 1000 requests."""
        return self.receiver_cpu_s / self.n * 1000


async def drive(
    n: int, concurrency: int, post: Callable[[], Awaitable[int]], max_seconds: float
) -> tuple[int, int]:
    """Run up to ``n`` calls of ``post`` over ``concurrency`` workers; return (done, errors).

    No call starts after ``max_seconds``, so a slow client cannot stretch the run. An error is a
    status outside 2xx or an exception.
    """
    remaining = n
    done = errors = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal remaining, done, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                status = await post()
            except (aiohttp.ClientError, httpx.HTTPError, OSError, TimeoutError):
                errors += 1
            else:
                if not 200 <= status < 300:
                    errors += 1
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


async def measure(
    client: str, url: str, args: argparse.Namespace, concurrency: int, receiver_pid: int
) -> Sample:
    """Open one pooled client, warm it up, then time ``args.n`` POSTs at ``concurrency``."""
    post: Callable[[], Awaitable[int]]
    if client == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL))

        async def post() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as resp:
                await resp.read()
                return resp.status

        close: Callable[[], Awaitable[None]] = session.close
    else:
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        hclient = httpx.AsyncClient(limits=limits, timeout=30.0)

        async def post() -> int:
            resp = await hclient.post(url, content=BODY, headers=HEADERS)
            return resp.status_code

        close = hclient.aclose
    try:
        await drive(min(WARMUP, args.n), concurrency, post, args.max_seconds / 4)
        cpu0, rcpu0 = time.process_time(), proc_cpu_seconds(receiver_pid)
        t0 = time.perf_counter()
        n, errors = await drive(args.n, concurrency, post, args.max_seconds)
        wall = time.perf_counter() - t0
        cpu, rcpu = time.process_time() - cpu0, proc_cpu_seconds(receiver_pid) - rcpu0
    finally:
        await close()
    return Sample(client, concurrency, n, wall, cpu, rcpu, errors)


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that take part ("absent" when not installed).

    sniffio is listed because httpcore tries to import it on every pooled request: when it is
    absent, each of those imports fails after a search of ``sys.path``.
    """
    names = ("aiohttp", "httpx", "httpcore", "anyio", "sniffio", "uvicorn", "httptools", "uvloop")
    found: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


@dataclass
class Cell:
    """The rounds of one (client, concurrency), summarised by medians."""

    samples: list[Sample]

    @property
    def sent(self) -> int:
        """Requests timed, over all rounds."""
        return sum(s.n for s in self.samples)

    @property
    def errors(self) -> int:
        """Errors, over all rounds."""
        return sum(s.errors for s in self.samples)

    @property
    def rps(self) -> float:
        """Median requests per second."""
        return statistics.median(s.rps for s in self.samples)

    @property
    def cpu_per_1k(self) -> float:
        """Median client CPU seconds per 1000 requests."""
        return statistics.median(s.cpu_per_1k for s in self.samples)

    @property
    def receiver_cpu_per_1k(self) -> float:
        """Median receiver CPU seconds per 1000 requests."""
        return statistics.median(s.receiver_cpu_per_1k for s in self.samples)


def render(results: dict[tuple[str, int], Cell], args: argparse.Namespace) -> str:
    """Format the results as Markdown tables (per client, then aiohttp/httpx ratios)."""
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    lines = [
        f"### Callback client: aiohttp vs httpx (N={args.n} per batch, at most "
        f"{args.max_seconds:g} s per batch, rounds={args.rounds}, medians; POST {len(BODY)} B "
        "JSON to a bare uvicorn receiver; client loop uvloop)",
        "",
        f"Versions: {vers}; {os.cpu_count()} CPUs",
        "",
        "| concurrency | client | sent | req/s | client CPU s/1k req | receiver CPU s/1k req "
        "| errors |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in args.concurrency:
        for client in CLIENTS:
            cell = results[client, c]
            lines.append(
                f"| {c} | {client} | {cell.sent} | {cell.rps:,.0f} | {cell.cpu_per_1k:.3f} | "
                f"{cell.receiver_cpu_per_1k:.3f} | {cell.errors} |"
            )
    lines += [
        "",
        "| concurrency | req/s aiohttp/httpx | client CPU per req aiohttp/httpx |",
        "| ---: | ---: | ---: |",
    ]
    for c in args.concurrency:
        a, h = results["aiohttp", c], results["httpx", c]
        lines.append(f"| {c} | {a.rps / h.rps:.2f} | {a.cpu_per_1k / h.cpu_per_1k:.2f} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace, url: str, receiver_pid: int) -> str:
    """Measure every (round, concurrency, client) and return the rendered tables.

    The order of the two clients flips from one batch pair to the next (ABBA), so slow drift of
    the machine's load does not favour either.
    """
    results: dict[tuple[str, int], Cell] = {}
    flip = False
    for r in range(args.rounds):
        for c in args.concurrency:
            order = CLIENTS[::-1] if flip else CLIENTS
            flip = not flip
            for client in order:
                sample = await measure(client, url, args, c, receiver_pid)
                results.setdefault((client, c), Cell([])).samples.append(sample)
                print(
                    f"  round {r + 1} c={c:<3} {client:<7} {sample.n:5} sent "
                    f"{sample.rps:8,.0f} req/s cpu {sample.cpu_per_1k:.3f} s/1k "
                    f"errors {sample.errors}",
                    file=sys.stderr,
                )
    return render(results, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=5000, help="requests per batch (default 5000)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 64],
        help="comma-separated concurrencies (default 1,16,64)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds per cell (default 1)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=12.0,
        help="stop a batch early after this long; its rate counts what was sent (default 12)",
    )
    parser.add_argument("--quick", action="store_true", help="N=1000, at most 5 s per batch")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.max_seconds = 1000, 5.0
    return args


def main() -> None:
    """Run the benchmark and print the Markdown tables."""
    args = parse_args()
    with receiver_process() as (proc, port):
        url = f"http://{HOST}:{port}/cb"
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            table = runner.run(run(args, url, proc.pid))
    print(table)


if __name__ == "__main__":
    main()
