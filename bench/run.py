"""The benchmark suite: every scenario on every backend, against baselines, in one run.

    .venv/bin/python bench/run.py [--quick] [--backends sqlite,postgres,redis+postgres]
        [--scenarios create,batch,dequeue,pull,dispatch,latency,scale] [--no-peers]

Starts, on 127.0.0.1, a counting callback receiver (``receiver.py``), the bare ASGI baseline
(``baseline_asgi.py``) and the bare Starlette + SQLite baseline (``baseline_starlette.py``); runs
RQ's baseline once (``baseline_rq.py``); then for each backend (fresh storage, see
``harness.py``) starts ``taskplatform serve`` (one process, its defaults;
``TASKPLATFORM_DISPATCH=true`` where noted) and measures, with a load generator in this process
(``loadgen.py``: keep-alive HTTP/1.1 parsed by httptools, several times lighter than aiohttp):

a. ``create``: ``POST /api/tasks``, one task per request, ``clients`` concurrent clients, in
   alternating slices with the bare ASGI handler (and on SQLite the Starlette + SQLite handler)
   so drift on a noisy machine hits them alike;
b. ``batch``: ``POST /api/tasks/batch`` with 1,000 tasks per request, 4 concurrent clients;
c. ``dequeue``: ``GET /api/tasks/dequeue``, one per request, on the queue a and b filled;
d. ``pull``: a fresh server; each client loops create, dequeue, execute (the callback to the
   receiver): tasks through per second of one API process;
e. ``dispatch``: a fresh server with the dispatcher (concurrency 50); after a warm-up the clock
   runs from the first batch create of ``n`` tasks until ``/api/stats`` counts them Completed.
   Just before it the peers with targets run (``baseline_aiohttp.py``, ``baseline_celery.py``:
   the same callbacks to the same receiver), so each ratio compares neighbouring minutes;
f. ``latency``: open-loop load at half the rate a (create) and e (dispatch) measured: each
   request leaves at its scheduled time whether or not earlier ones have answered, and its
   latency counts from that time (no coordinated omission). Create: until the 201, in
   alternating slices with the bare handlers of a at the same rate; enqueue to callback: until
   the receiver's arrival time for that task (one machine clock);
g. ``scale``: a fresh server; dequeue latency (200 sequential dequeues, median) at a depth of
   1,000, then after batch-creating 1,000,000 tasks; the server's RSS and the database's size.

Prints a Markdown table of every number with its baseline, ratio and target, and a second of
CPU use (what limits each number); writes everything, with versions and the machine, to
``bench/results/run-<time>.json``. ``--quick`` runs every scenario small (a smoke run, about two
minutes); the full run takes about 20 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    HOST,
    RESULTS_DIR,
    TASKPLATFORM,
    backend_env,
    database_bytes,
    db_cpu_seconds,
    free_port,
    log_problems,
    machine,
    machine_busy_seconds,
    parse_backends,
    proc_cpu_seconds,
    python_script,
    redis_used_bytes,
    rss_bytes,
    start_listening,
    stop,
    versions,
)
from loadgen import Client

SCENARIOS = ("create", "batch", "dequeue", "pull", "dispatch", "latency", "scale")
BATCH_SIZE = 1000
BATCH_CLIENTS = 4
DISPATCH_CONCURRENCY = 50
SCALE_PROBES = 200
#: Workers (and keep-alive connections) of the open-loop generator. A request finding them all
#: busy waits, and that wait counts in its latency (from its scheduled time), so the bound
#: hides nothing; a task per request instead made the generator, on the same two cores, the
#: thing measured (73 % of a core against the server's 45 % at 5,800 creates/s).
OPEN_LOOP_CONNECTIONS = 64
#: RQ's default worker forks a process per job (about 13 jobs/s per worker here), so it runs
#: fewer tasks than the others; its rate is what compares.
RQ_MAX_TASKS = 1000


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does."""

    create: int
    clients: int
    slices: int
    batch: int
    dequeue: int
    pull: int
    dispatch: int
    latency_seconds: float
    scale: int


FULL = Sizes(5000, 32, 5, 100_000, 5000, 5000, 20_000, 20.0, 1_000_000)
QUICK = Sizes(1000, 32, 2, 10_000, 1000, 1000, 2000, 4.0, 20_000)


@dataclass
class Row:
    """One measured number, with what it compares to.

    ``value`` is in ``unit``; ``baseline`` (same unit) and ``ratio`` = value / baseline when the
    scenario has one; ``target`` says what the issue asks, ``met`` whether this run meets it
    (None: no target). ``cpu`` is percent of one core per process group over the measurement.
    """

    backend: str
    scenario: str
    what: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""
    met: bool | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``value / baseline``, or None without a baseline."""
        return None if not self.baseline else self.value / self.baseline


# --- processes


@dataclass
class Service:
    """A running ``taskplatform serve`` on fresh storage."""

    backend: str
    url: str
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def database_file(self) -> Path | None:
        """The SQLite file, for a SQLite store."""
        url = self.env["TASKPLATFORM_DATABASE_URL"]
        return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:") else None

    def database_name(self) -> str | None:
        """The PostgreSQL database, for a PostgreSQL store."""
        url = self.env["TASKPLATFORM_DATABASE_URL"]
        return url.rsplit("/", 1)[1] if url.startswith("postgresql") else None


@contextlib.contextmanager
def service(
    backend: str, runner: asyncio.Runner, extra: dict[str, str] | None = None
) -> Iterator[Service]:
    """Start ``taskplatform serve`` on fresh ``backend`` storage; stop it and remove the storage.

    Warns on stderr about any warning or error line in the service's log.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with backend_env(backend, workdir, runner) as backend_vars:
            port = free_port()
            env = {"PATH": "/usr/bin:/bin", **backend_vars, **(extra or {})}
            log_path = workdir / "serve.log"
            with log_path.open("wb") as log:
                proc = start_listening(
                    [str(TASKPLATFORM), "serve", "--port", str(port)],
                    port,
                    env=env,
                    cwd=workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                yield Service(backend, f"http://{HOST}:{port}", proc, env, log_path)
            finally:
                stop(proc, grace=40)
                problems = log_problems(log_path.read_text(errors="replace"))
                for line in problems[:5]:
                    print(f"[{backend}] service log: {line[:300]}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Helpers:
    """The processes that live for the whole run: receiver and the two HTTP baselines."""

    receiver: subprocess.Popen[bytes]
    receiver_url: str
    bare: subprocess.Popen[bytes]
    bare_url: str
    starlette: subprocess.Popen[bytes]
    starlette_url: str


@contextlib.contextmanager
def helpers() -> Iterator[Helpers]:
    """Start the receiver, the bare ASGI app and the Starlette + SQLite app; stop them after."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = [free_port() for _ in range(3)]
        commands = [
            python_script("receiver.py", str(ports[0])),
            python_script("baseline_asgi.py", str(ports[1])),
            python_script("baseline_starlette.py", str(ports[2]), str(workdir / "bare.db")),
        ]
        for command, port in zip(commands, ports, strict=True):
            procs.append(start_listening(command, port))
        urls = [f"http://{HOST}:{port}" for port in ports]
        yield Helpers(procs[0], urls[0], procs[1], urls[1], procs[2], urls[2])
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


class CpuMeter:
    """CPU seconds of named processes, this process, the databases and the machine, between
    :meth:`start` and :meth:`stop`, as percent of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _sample(self) -> tuple[dict[str, float], dict[int, float], float, float]:
        own = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                own[name] = proc_cpu_seconds(pid)
        return own, db_cpu_seconds(), time.process_time(), machine_busy_seconds()

    def start(self) -> None:
        """Take the first reading."""
        self.began = time.perf_counter()
        self.first = self._sample()

    def stop(self) -> dict[str, float]:
        """Percent of one core used by each process, ``loadgen``, ``db`` and ``rest``."""
        wall = time.perf_counter() - self.began
        own, dbs, me, busy = self._sample()
        own0, dbs0, me0, busy0 = self.first
        out = {name: own[name] - own0.get(name, 0.0) for name in own}
        out["loadgen"] = me - me0
        out["db"] = sum(cpu - dbs0.get(pid, 0.0) for pid, cpu in dbs.items())
        out["rest"] = max(0.0, busy - busy0 - sum(out.values()))
        return {name: round(100 * seconds / wall, 1) for name, seconds in out.items()}


# --- load generation


Send = Callable[[Client, int], Awaitable[None]]


async def closed_loop(
    client: Client, indices: range, clients: int, send: Send
) -> tuple[float, list[float]]:
    """Run ``send(client, i)`` for every i in ``indices`` over ``clients`` workers.

    Returns (wall seconds, latencies in ms). ``send`` raises on any failure; so does this.
    """
    todo = iter(indices)
    latencies: list[float] = []

    async def worker() -> None:
        for i in todo:
            t0 = time.perf_counter()
            await send(client, i)
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, latencies


async def open_loop(
    rate: float, seconds: float, send: Callable[[int, float], Awaitable[float]]
) -> tuple[list[float], float]:
    """Call ``send(i, scheduled)`` at ``rate`` per second for ``seconds`` (open loop).

    Request i is due at a fixed time, ``i / rate`` after the start, whatever happened to the
    others: :data:`OPEN_LOOP_CONNECTIONS` workers (one keep-alive connection each) take the
    requests in order, each waiting until its time if early and sending at once if late, and
    ``send`` returns the latency in ms counted from the scheduled time. So a slow answer delays
    the requests behind it and their latencies say so, rather than holding back the schedule
    (no coordinated omission; the method of wrk2). Returns (latencies, the rate achieved).

    The generator's own garbage collector is off while it runs (its heap collected and frozen
    first): a full collection of this process's heap took 40-50 ms, and the requests due during
    it showed as a cluster of slow answers the server never gave.
    """
    n = max(1, int(rate * seconds))
    todo = iter(range(n))
    latencies: list[float] = []
    gc.collect()
    gc.freeze()
    gc.disable()
    first = time.monotonic() + 0.05

    async def worker() -> None:
        for i in todo:
            scheduled = first + i / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            latencies.append(await send(i, scheduled))

    try:
        await asyncio.gather(*(worker() for _ in range(OPEN_LOOP_CONNECTIONS)))
        return latencies, n / max(time.monotonic() - first, 1e-9)
    finally:
        gc.enable()
        gc.unfreeze()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def create_body(i: int, callback: str) -> bytes:
    """The create request body of task number ``i``."""
    return b'{"taskData":{"n":%d},"callbackUrl":"%s","priority":%d}' % (
        i,
        callback.encode(),
        i % 10,
    )


def batch_body(start: int, count: int, callback: str) -> bytes:
    """A batch create body of tasks ``start`` .. ``start + count - 1``."""
    items = b",".join(create_body(i, callback) for i in range(start, start + count))
    return b'{"tasks":[' + items + b"]}"


async def stats(client: Client) -> dict[str, int]:
    """``/api/stats`` task counts by status."""
    return dict(json.loads(await client.request("GET", "/api/stats", None, 200))["tasks"])


async def wait_completed(client: Client, count: int, timeout: float = 1200) -> float:
    """Poll ``/api/stats`` every 20 ms until ``count`` tasks are Completed; the time it was."""
    deadline = time.monotonic() + timeout
    while (done := (await stats(client)).get("Completed", 0)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {count} tasks Completed after {timeout} s")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def create_batches(client: Client, bodies: list[bytes], clients: int) -> float:
    """POST every batch body with ``clients`` concurrent clients; the seconds taken."""

    async def send(client: Client, i: int) -> None:
        await client.request("POST", "/api/tasks/batch", bodies[i], 200)

    seconds, _ = await closed_loop(client, range(len(bodies)), clients, send)
    return seconds


@contextlib.contextmanager
def connected(base_url: str) -> Iterator[Client]:
    """A load generator :class:`Client` of ``base_url``, its connections closed after."""
    client = Client(base_url)
    try:
        yield client
    finally:
        client.close()


# --- scenarios


class Bench:
    """The scenarios of one run; rows collect in :attr:`rows`."""

    def __init__(self, sizes: Sizes, helpers: Helpers, runner: asyncio.Runner) -> None:
        self.sizes = sizes
        self.helpers = helpers
        self.runner = runner
        self.callback = f"{helpers.receiver_url}/cb"
        self.rows: list[Row] = []
        self.peer_rates: dict[str, float] = {}
        self.create_rate: dict[str, float] = {}
        self.dispatch_rate: dict[str, float] = {}

    def meter(self, srv: Service | None) -> CpuMeter:
        """A CPU meter over the service (when given), the receiver and the baselines."""
        pids = {"receiver": self.helpers.receiver.pid}
        if srv is not None:
            pids["server"] = srv.proc.pid
        return CpuMeter(pids)

    def create_targets(self, srv: Service) -> tuple[dict[str, str], dict[str, int]]:
        """The servers single creates go to, by name (the service first, then the bare ASGI
        handler and, on SQLite, the bare Starlette + SQLite handler): their URLs and pids."""
        targets = {"taskplatform": srv.url, "bare ASGI": self.helpers.bare_url}
        pids = {"taskplatform": srv.proc.pid, "bare ASGI": self.helpers.bare.pid}
        if srv.backend == "sqlite":
            targets["bare Starlette+SQLite"] = self.helpers.starlette_url
            pids["bare Starlette+SQLite"] = self.helpers.starlette.pid
        return targets, pids

    # a, b, c
    async def create_batch_dequeue(self, srv: Service, scenarios: set[str]) -> None:
        """Scenarios a (create vs the baselines), b (batch create), c (dequeue), in that order
        on one server (c dequeues what a and b queued)."""
        sizes, backend = self.sizes, srv.backend
        targets, pids = self.create_targets(srv)
        with contextlib.ExitStack() as stack:
            clients = {name: stack.enter_context(connected(url)) for name, url in targets.items()}
            http = clients["taskplatform"]

            async def create(client: Client, i: int) -> None:
                await client.request("POST", "/api/tasks", create_body(i, self.callback), 201)

            if "create" in scenarios:
                for client in clients.values():  # warm-up, unmeasured
                    await closed_loop(client, range(200), sizes.clients, create)
                rates: dict[str, list[float]] = {name: [] for name in targets}
                latencies: dict[str, list[float]] = {name: [] for name in targets}
                cpu: dict[str, list[float]] = {name: [] for name in targets}
                for k in range(sizes.slices):
                    part = range(
                        sizes.create * k // sizes.slices, sizes.create * (k + 1) // sizes.slices
                    )
                    for name, client in clients.items():
                        meter = CpuMeter({"server": pids[name]})
                        meter.start()
                        wall, lat = await closed_loop(client, part, sizes.clients, create)
                        cpu[name].append(meter.stop()["server"])
                        rates[name].append(len(part) / wall)
                        latencies[name] += lat
                rate = {name: statistics.fmean(r) for name, r in rates.items()}
                self.create_rate[backend] = rate["taskplatform"]
                for name in targets:
                    if name == "taskplatform":
                        continue
                    ratio = rate["taskplatform"] / rate[name]
                    target = "≥ 0.5×" if name == "bare ASGI" else ""
                    self.rows.append(
                        Row(
                            backend,
                            "a create",
                            f"create, 1 task/request, {sizes.clients} clients",
                            rate["taskplatform"],
                            "req/s",
                            name,
                            rate[name],
                            target,
                            (ratio >= 0.5) if target else None,
                            {
                                "server": statistics.fmean(cpu["taskplatform"]),
                                "baseline server": statistics.fmean(cpu[name]),
                            },
                            {
                                "p50_ms": percentile(latencies["taskplatform"], 0.5),
                                "p99_ms": percentile(latencies["taskplatform"], 0.99),
                                "slice_ratios": [
                                    round(a / b, 3)
                                    for a, b in zip(rates["taskplatform"], rates[name], strict=True)
                                ],
                            },
                        )
                    )

            if "batch" in scenarios:
                bodies = [
                    batch_body(start, BATCH_SIZE, self.callback)
                    for start in range(0, sizes.batch, BATCH_SIZE)
                ]
                await create_batches(http, bodies[:2], 2)  # warm-up
                meter = self.meter(srv)
                meter.start()
                seconds = await create_batches(http, bodies, BATCH_CLIENTS)
                batch_rate = len(bodies) * BATCH_SIZE / seconds
                ok = batch_rate >= 50_000 if backend == "sqlite" else None
                self.rows.append(
                    Row(
                        backend,
                        "b batch",
                        f"batch create, {BATCH_SIZE} tasks/request, {BATCH_CLIENTS} clients",
                        batch_rate,
                        "tasks/s",
                        target="≥ 50,000 tasks/s" if backend == "sqlite" else "",
                        met=ok,
                        cpu=meter.stop(),
                    )
                )

            if "dequeue" in scenarios:
                depth = (await stats(http)).get("Queued", 0)
                if depth < sizes.dequeue + 200:
                    await create_batches(
                        http,
                        [
                            batch_body(i, BATCH_SIZE, self.callback)
                            for i in range(0, sizes.dequeue + 200, BATCH_SIZE)
                        ],
                        BATCH_CLIENTS,
                    )

                async def dequeue(client: Client, i: int) -> None:
                    await client.request("GET", "/api/tasks/dequeue", None, 200)

                await closed_loop(http, range(200), sizes.clients, dequeue)  # warm-up
                meter = self.meter(srv)
                meter.start()
                wall, lat = await closed_loop(http, range(sizes.dequeue), sizes.clients, dequeue)
                self.rows.append(
                    Row(
                        backend,
                        "c dequeue",
                        f"dequeue, 1 task/request, {sizes.clients} clients",
                        sizes.dequeue / wall,
                        "req/s",
                        cpu=meter.stop(),
                        extra={
                            "depth": depth,
                            "p50_ms": percentile(lat, 0.5),
                            "p99_ms": percentile(lat, 0.99),
                        },
                    )
                )

    # d
    async def pull(self, srv: Service) -> None:
        """Scenario d: each client loops create, dequeue, execute until ``pull`` tasks are done."""
        sizes = self.sizes

        async def one(client: Client, i: int) -> None:
            await client.request("POST", "/api/tasks", create_body(i, self.callback), 201)
            task_id = json.loads(await client.request("GET", "/api/tasks/dequeue", None, 200))[
                "taskId"
            ]
            answer = await client.request("POST", f"/api/tasks/{task_id}/execute", None, 200)
            if json.loads(answer)["status"] != "Completed":
                raise RuntimeError(f"task {task_id} did not complete")

        with connected(srv.url) as http:
            await closed_loop(http, range(200), sizes.clients, one)  # warm-up
            meter = self.meter(srv)
            meter.start()
            wall, lat = await closed_loop(http, range(sizes.pull), sizes.clients, one)
            cpu = meter.stop()
            done = (await stats(http)).get("Completed", 0)
        rate = sizes.pull / wall
        self.rows.append(
            Row(
                srv.backend,
                "d pull",
                f"pull end to end (create+dequeue+execute), {sizes.clients} clients",
                rate,
                "tasks/s",
                target="≥ 1,500 tasks/s",
                met=rate >= 1500,
                cpu=cpu,
                extra={"completed": done, "p50_ms": percentile(lat, 0.5)},
            )
        )

    # e
    async def dispatch(self, srv: Service) -> None:
        """Scenario e: ``dispatch`` tasks from the first batch create to all Completed."""
        n = self.sizes.dispatch
        with connected(srv.url) as http:
            warm = 200
            await create_batches(http, [batch_body(0, warm, self.callback)], 1)
            await wait_completed(http, warm)
            bodies = [
                batch_body(start, min(BATCH_SIZE, n - start), self.callback)
                for start in range(0, n, BATCH_SIZE)
            ]
            meter = self.meter(srv)
            meter.start()
            began = time.perf_counter()
            created = asyncio.create_task(create_batches(http, bodies, BATCH_CLIENTS))
            ended = await wait_completed(http, warm + n)
            create_seconds = await created
            cpu = meter.stop()
        rate = n / (ended - began)
        self.dispatch_rate[srv.backend] = rate
        extra = {"create_seconds": round(create_seconds, 2)}
        what = f"dispatcher end to end, {n} tasks, concurrency {DISPATCH_CONCURRENCY}"
        for peer, factor in (("Celery+Redis", 2.0), ("aiohttp loop", 0.6), ("RQ", None)):
            if peer not in self.peer_rates:
                continue
            target = f"≥ {factor}×" if factor else ""
            ratio = rate / self.peer_rates[peer]
            self.rows.append(
                Row(
                    srv.backend,
                    "e dispatch",
                    what,
                    rate,
                    "tasks/s",
                    peer,
                    self.peer_rates[peer],
                    target,
                    None if factor is None else ratio >= factor,
                    cpu=cpu,
                    extra=extra,
                )
            )
        if not any(peer in self.peer_rates for peer in ("Celery+Redis", "aiohttp loop", "RQ")):
            self.rows.append(
                Row(srv.backend, "e dispatch", what, rate, "tasks/s", cpu=cpu, extra=extra)
            )

    # f
    async def latency_create(self, srv: Service) -> None:
        """Scenario f, create: open loop at half the create rate of scenario a, in alternating
        slices with the bare ASGI handler at the same rate (on SQLite also the Starlette +
        SQLite handler): on a noisy machine their p99 is the floor this one stands on."""
        rate = 0.5 * self.create_rate.get(srv.backend, 1000.0)
        targets, pids = self.create_targets(srv)
        slices = self.sizes.slices
        lat: dict[str, list[float]] = {name: [] for name in targets}
        achieved: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        with contextlib.ExitStack() as stack:
            clients = {name: stack.enter_context(connected(url)) for name, url in targets.items()}

            def sender(client: Client) -> Callable[[int, float], Awaitable[float]]:
                async def send(i: int, scheduled: float) -> float:
                    await client.request("POST", "/api/tasks", create_body(i, self.callback), 201)
                    return (time.monotonic() - scheduled) * 1000

                return send

            for client in clients.values():
                await open_loop(rate, 1.0, sender(client))  # warm-up
            for _ in range(slices):
                for name, client in clients.items():
                    meter = CpuMeter({"server": pids[name]})
                    meter.start()
                    part, rate_achieved = await open_loop(
                        rate, self.sizes.latency_seconds / slices, sender(client)
                    )
                    cpu[name].append(meter.stop()["server"])
                    lat[name] += part
                    achieved[name].append(rate_achieved)
        ours = lat["taskplatform"]
        p99 = percentile(ours, 0.99)
        mean_rate = statistics.fmean(achieved["taskplatform"])
        extra = latency_extra(ours, mean_rate)
        for name in targets:
            if name != "taskplatform":
                extra[f"{name} p50_ms"] = round(percentile(lat[name], 0.5), 2)
                extra[f"{name} p99_ms"] = round(percentile(lat[name], 0.99), 2)
        for name in targets:
            if name == "taskplatform":
                continue
            target = "≤ 5 ms" if name == "bare ASGI" else ""
            self.rows.append(
                Row(
                    srv.backend,
                    "f latency",
                    f"create p99 at {mean_rate:,.0f} req/s (half of a), open loop",
                    p99,
                    "ms",
                    name,
                    percentile(lat[name], 0.99),
                    target,
                    (p99 <= 5) if target else None,
                    {
                        "server": statistics.fmean(cpu["taskplatform"]),
                        "baseline server": statistics.fmean(cpu[name]),
                    },
                    extra,
                )
            )

    async def latency_dispatch(self, srv: Service) -> None:
        """Scenario f, enqueue to callback: open loop at half the dispatch rate of scenario e."""
        rate = 0.5 * self.dispatch_rate.get(srv.backend, 200.0)
        scheduled_at: dict[str, float] = {}
        with connected(srv.url) as http, connected(self.helpers.receiver_url) as receiver:

            async def send(i: int, scheduled: float) -> float:
                body = create_body(i, self.callback)
                answer = await http.request("POST", "/api/tasks", body, 201)
                scheduled_at[json.loads(answer)["taskId"]] = scheduled
                return 0.0

            before = (await stats(http)).get("Completed", 0)
            await arrivals(receiver)  # forget earlier ones
            meter = self.meter(srv)
            meter.start()
            _, achieved = await open_loop(rate, self.sizes.latency_seconds, send)
            await wait_completed(http, before + len(scheduled_at))
            cpu = meter.stop()
            arrived = await arrivals(receiver)
        lat = [(arrived[t] - s) * 1000 for t, s in scheduled_at.items() if t in arrived]
        if len(lat) != len(scheduled_at):
            raise RuntimeError(f"{len(scheduled_at) - len(lat)} callbacks never arrived")
        self.rows.append(
            Row(
                srv.backend,
                "f latency",
                f"enqueue→callback p99 at {achieved:,.0f} tasks/s (half of e), open loop",
                percentile(lat, 0.99),
                "ms",
                cpu=cpu,
                extra=latency_extra(lat, achieved),
            )
        )

    # g
    async def scale(self, srv: Service) -> None:
        """Scenario g: dequeue latency at depth 1,000 and after filling to ``scale`` tasks."""
        depth = self.sizes.scale
        with connected(srv.url) as http:

            async def probe() -> float:
                samples = []
                for _ in range(SCALE_PROBES):
                    t0 = time.perf_counter()
                    await http.request("GET", "/api/tasks/dequeue", None, 200)
                    samples.append((time.perf_counter() - t0) * 1000)
                return statistics.median(samples)

            small = [batch_body(i, BATCH_SIZE, self.callback) for i in (0, 1)]
            await create_batches(http, small, 1)
            await probe()  # warm-up
            await create_batches(http, small[:1], 1)
            at_small = await probe()  # about 1,000 queued
            redis_before = await redis_used_bytes() if "redis" in srv.backend else 0
            bodies = (batch_body(i, BATCH_SIZE, self.callback) for i in range(0, depth, BATCH_SIZE))
            began = time.perf_counter()
            chunk: list[bytes] = []
            for body in bodies:  # build bodies a few at a time: 1M at once would be 100 MB here
                chunk.append(body)
                if len(chunk) == 40:
                    await create_batches(http, chunk, BATCH_CLIENTS)
                    chunk.clear()
            if chunk:
                await create_batches(http, chunk, BATCH_CLIENTS)
            fill_seconds = time.perf_counter() - began
            queued = (await stats(http)).get("Queued", 0)
            rss_full = rss_bytes(srv.proc.pid)
            at_depth = await probe()
            rss_peak = rss_bytes(srv.proc.pid, peak=True)
        size = await storage_bytes(srv)
        if "redis" in srv.backend:
            size["redis used_memory growth"] = await redis_used_bytes() - redis_before
        ratio = at_depth / at_small
        self.rows.append(
            Row(
                srv.backend,
                "g scale",
                f"dequeue median at depth {queued:,} vs ~800",
                at_depth,
                "ms",
                "at ~800 queued",
                at_small,
                "≤ 2×",
                ratio <= 2,
                extra={"fill_tasks_per_s": round(depth / fill_seconds), **size},
            )
        )
        self.rows.append(
            Row(
                srv.backend,
                "g scale",
                f"server RSS with {queued:,} queued (peak {rss_peak / 2**20:,.0f} MiB)",
                rss_full / 2**20,
                "MiB",
                target="< 200 MiB",
                met=rss_peak < 200 * 2**20,
                extra={"rss_peak_mib": round(rss_peak / 2**20, 1), **size},
            )
        )

    # peers
    def peers(self, n: int, names: tuple[str, ...], backend: str = "-") -> None:
        """Run the ``names`` baselines (of aiohttp loop, Celery+Redis, RQ) now; keep their tasks
        per second for the next dispatcher rows. ``backend``: the dispatcher run they stand
        beside, for the table."""
        runs = [
            ("aiohttp loop", "baseline_aiohttp.py", [str(n), str(DISPATCH_CONCURRENCY)]),
            ("Celery+Redis", "baseline_celery.py", [str(n)]),
            ("RQ", "baseline_rq.py", [str(min(n, RQ_MAX_TASKS))]),
        ]
        for name, script, args in runs:
            if name not in names:
                continue
            print(f"[peers] {name} ...", file=sys.stderr)
            meter = self.meter(None)
            meter.start()
            out = subprocess.run(
                python_script(script, *args, self.helpers.receiver_url),
                check=True,
                capture_output=True,
                text=True,
                timeout=1500,
            )
            cpu = meter.stop()
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rate = result["n"] / result["seconds"]
            self.peer_rates[name] = rate
            self.rows.append(
                Row(
                    backend,
                    "e peers",
                    f"{name}: {result['n']} callbacks to the receiver",
                    rate,
                    "tasks/s",
                    cpu=cpu,
                    extra=result,
                )
            )


def latency_extra(lat: list[float], achieved: float) -> dict[str, Any]:
    """The latency distribution for the JSON and the detail table."""
    return {
        "rate": round(achieved, 1),
        "n": len(lat),
        "p50_ms": round(percentile(lat, 0.5), 2),
        "p99_ms": round(percentile(lat, 0.99), 2),
        "p999_ms": round(percentile(lat, 0.999), 2),
        "max_ms": round(max(lat), 2),
    }


async def arrivals(receiver: Client) -> dict[str, float]:
    """The receiver's arrival times by task id since the last call (it forgets them)."""
    return dict(json.loads(await receiver.request("GET", "/arrivals", None, 200)))


async def storage_bytes(srv: Service) -> dict[str, int]:
    """The size of the service's database: the SQLite file with its WAL, or the PostgreSQL
    database."""
    path = srv.database_file()
    if path is not None:
        files = [path, path.with_name(path.name + "-wal")]
        return {"database_bytes": sum(p.stat().st_size for p in files if p.exists())}
    name = srv.database_name()
    return {"database_bytes": await database_bytes(name)} if name else {}


# --- output


def fmt(value: float, unit: str) -> str:
    """A number for the table."""
    if unit in ("ms",):
        return f"{value:.2f} {unit}"
    if unit == "MiB":
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}"


def render(rows: list[Row], sizes: Sizes, started: str) -> str:
    """The Markdown tables: results with ratios and targets, then CPU use."""
    lines = [
        f"### taskplatform benchmark, {started} ({'quick' if sizes == QUICK else 'full'} run)",
        "",
        "| backend | scenario | what | result | baseline | ratio | target | met |",
        "| --- | --- | --- | ---: | --- | ---: | --- | --- |",
    ]
    for row in rows:
        baseline = (
            f"{row.baseline_name} {fmt(row.baseline, row.unit)}" if row.baseline is not None else ""
        )
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        met = {None: "", True: "yes", False: "**no**"}[row.met]
        lines.append(
            f"| {row.backend} | {row.scenario} | {row.what} | {fmt(row.value, row.unit)} | "
            f"{baseline} | {ratio} | {row.target} | {met} |"
        )
    lines += [
        "",
        "Latency and scale details:",
        "",
        "| backend | scenario | details |",
        "| --- | --- | --- |",
    ]
    shown: set[tuple[str, str, str]] = set()
    for row in rows:
        key = (row.backend, row.scenario, row.what)
        if key in shown:
            continue
        shown.add(key)
        if row.extra and row.scenario.startswith(("a", "c", "f", "g", "e peers")):
            details = ", ".join(
                f"{k} {round(v, 2) if isinstance(v, float) else v}"
                for k, v in row.extra.items()
                if k != "slice_ratios"
            )
            lines.append(f"| {row.backend} | {row.scenario} | {details} |")
    lines += [
        "",
        "CPU while measuring, % of one core (server = the taskplatform process; db = every "
        "postgres and redis-server process; loadgen = this process; rest = everything else, "
        f"including peer workers; the machine has {os.cpu_count()} cores):",
        "",
        "| backend | scenario | CPU % |",
        "| --- | --- | --- |",
    ]
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        key = (row.backend, row.scenario, row.what)
        if row.cpu and key not in seen:
            seen.add(key)
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in row.cpu.items())
            lines.append(f"| {row.backend} | {row.scenario} | {cpu} |")
    return "\n".join(lines)


def write_json(rows: list[Row], args: argparse.Namespace, sizes: Sizes, started: str) -> Path:
    """Write every row with the machine, versions and sizes to ``bench/results/run-*.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"run-{time.strftime('%Y%m%dT%H%M%S')}.json"
    doc = {
        "benchmark": "run",
        "started": started,
        "quick": args.quick,
        "backends": args.backends,
        "server_env": args.server_env,
        "sizes": sizes.__dict__,
        "machine": machine(),
        "versions": versions(
            "taskplatform",
            "fastapi",
            "starlette",
            "pydantic",
            "uvicorn",
            "uvloop",
            "httptools",
            "aiohttp",
            "msgspec",
            "asyncpg",
            "redis",
            "celery",
            "kombu",
            "rq",
            "httpx",
        ),
        "rows": [row.__dict__ | {"ratio": row.ratio} for row in rows],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# --- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every scenario, small")
    parser.add_argument(
        "--backends",
        type=parse_backends,
        default=["sqlite", "postgres", "redis+postgres"],
        help="comma-separated, of sqlite, postgres, redis+postgres, redis+sqlite; or all "
        "(default sqlite,postgres,redis+postgres)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=list(SCENARIOS),
        help=f"comma-separated, of {','.join(SCENARIOS)} (default all)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip aiohttp, Celery and RQ")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every taskplatform server of the run, e.g. "
        "TASKPLATFORM_LOG_LEVEL=warning (repeatable)",
    )
    args = parser.parse_args(argv)
    if malformed := [item for item in args.server_env if "=" not in item]:
        parser.error(f"--server-env takes NAME=VALUE, not {malformed[0]!r}")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    """Run the suite; print the tables; write the JSON."""
    args = parse_args()
    sizes = QUICK if args.quick else FULL
    scenarios = set(args.scenarios)
    server_env = dict(item.split("=", 1) for item in args.server_env)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, helpers() as procs:
        bench = Bench(sizes, procs, runner)
        if "dispatch" in scenarios and not args.no_peers:
            # RQ (no target, 100 s) once; the two with targets beside each dispatcher run below.
            bench.peers(sizes.dispatch, ("RQ",))
        for backend in args.backends:
            print(f"[{backend}] measuring ...", file=sys.stderr)
            if scenarios & {"create", "batch", "dequeue"}:
                with service(backend, runner, server_env) as srv:
                    runner.run(bench.create_batch_dequeue(srv, scenarios))
            if "pull" in scenarios:
                with service(backend, runner, server_env) as srv:
                    runner.run(bench.pull(srv))
            if "latency" in scenarios:
                with service(backend, runner, server_env) as srv:
                    runner.run(bench.latency_create(srv))
            if scenarios & {"dispatch", "latency"}:
                dispatch_env = {
                    "TASKPLATFORM_DISPATCH": "true",
                    "TASKPLATFORM_DISPATCH_CONCURRENCY": str(DISPATCH_CONCURRENCY),
                }
                if "dispatch" in scenarios and not args.no_peers:
                    # Measured next to the dispatcher, not once at the start: this machine's
                    # speed moves within a run, and a ratio should compare one minute's work.
                    bench.peers(sizes.dispatch, ("aiohttp loop", "Celery+Redis"), backend)
                with service(backend, runner, server_env | dispatch_env) as srv:
                    if "dispatch" in scenarios:
                        runner.run(bench.dispatch(srv))
                    if "latency" in scenarios:
                        runner.run(bench.latency_dispatch(srv))
            if "scale" in scenarios:
                with service(backend, runner, server_env) as srv:
                    runner.run(bench.scale(srv))
    print(render(bench.rows, sizes, started))
    path = write_json(bench.rows, args, sizes, started)
    print(f"\nraw results: {path.relative_to(RESULTS_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
