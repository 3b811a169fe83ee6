"""Benchmark the service's baseline rates: create, dequeue and execute, against a bare ASGI app.

For each backend of ``--backends`` in turn, starts, on 127.0.0.1 and each in a subprocess:
``taskplatform serve`` on fresh storage (the environment is empty but for ``PATH`` and the
backend's ``TASKPLATFORM_*`` variables), a bare callback receiver, and a bare ASGI app that answers
201 with a fixed small JSON body, served by uvicorn with the service's settings (uvloop, httptools,
one process, no access log). The backends (``all`` = the four):

- ``sqlite``: a new SQLite file under a new ``/tmp/bench-*`` folder;
- ``postgres``: queue and store in a new PostgreSQL database ``bench_<random>`` on
  ``127.0.0.1:5432`` (user postgres), dropped at the end;
- ``redis+postgres``: as ``postgres``, with the queue in Redis (``127.0.0.1:6379/14``) under a
  new key prefix ``{bench-<random>}`` whose keys are deleted at the end;
- ``redis+sqlite``: as ``sqlite``, with the queue in Redis likewise.

An aiohttp load generator in this process then runs, with ``--clients`` concurrent clients:

1. bare and create, in ``--slices`` alternating slices (bare, create, bare, create, ...) that
   add up to ``--n`` requests each, so that the load of a noisy machine hits both alike: the
   same create request against the bare app (the ceiling of server stack plus generator) and
   against ``POST /api/tasks``;
2. dequeue: ``--n`` ``GET /api/tasks/dequeue``;
3. execute: ``POST /api/tasks/{id}/execute`` for each dequeued id (callbacks go to the receiver).

Every phase is preceded by a short unmeasured warm-up of the same request. Prints one Markdown
table (a row per backend and operation; "DB CPU" is every ``postgres`` and ``redis-server``
process of the machine) and writes raw results (with every latency) to
``bench/results/rates-<time>.json``.

    .venv/bin/python bench/rates.py [--quick] [--n 5000] [--clients 32] [--backends all]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio
import uvloop

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
TASKPLATFORM = BENCH_DIR.parent / ".venv" / "bin" / "taskplatform"
JSON_HEADERS = {"Content-Type": "application/json"}
POSTGRES_ADMIN_URL = f"postgresql://postgres@{HOST}:5432/postgres"
REDIS_URL = f"redis://{HOST}:6379/14"
BACKENDS = ("sqlite", "postgres", "redis+postgres", "redis+sqlite")
#: Processes whose CPU counts as "DB CPU" (``/proc/<pid>/comm``).
DB_PROCESS_NAMES = ("postgres", "redis-server")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _fixed_response_app(
    status: int, body: bytes
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole request body, as a real handler would
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


BARE_BODY = b'{"taskId":"01a22c7b-b2c9-714d-9523-57f31044d03d","status":"Queued"}'
#: The baseline: answers every request 201 with a body the size of a real create answer.
bare_app = _fixed_response_app(201, BARE_BODY)
#: The callback receiver: answers every request 200 ``{"ok":true}``.
receiver_app = _fixed_response_app(200, b'{"ok":true}')


def serve_app(name: str, port: int) -> None:
    """Serve ``bare_app`` or ``receiver_app`` like ``taskplatform serve`` serves the API."""
    import uvicorn

    uvicorn.run(
        bare_app if name == "bare" else receiver_app,
        host=HOST,
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    """Block until ``port`` accepts connections; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout} s")


def proc_cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds used so far by process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after 10 s) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Servers:
    """The three subprocesses and their ports; the service log's problem lines once stopped."""

    backend: str
    service: subprocess.Popen[bytes]
    service_port: int
    receiver: subprocess.Popen[bytes]
    receiver_port: int
    bare: subprocess.Popen[bytes]
    bare_port: int
    log_problems: list[str] = field(default_factory=list)


async def create_database(name: str) -> None:
    """``CREATE DATABASE name`` on the local PostgreSQL."""
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    """``DROP DATABASE name WITH (FORCE)`` on the local PostgreSQL."""
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def delete_redis_keys(prefix: str) -> int:
    """Delete every key ``{prefix}:*`` (SCAN + DEL); return how many there were."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


@contextlib.contextmanager
def backend_env(backend: str, workdir: Path, runner: asyncio.Runner) -> Iterator[dict[str, str]]:
    """Provision ``backend``'s fresh storage; yield its ``TASKPLATFORM_*`` variables.

    On exit deletes the Redis keys and drops the PostgreSQL database (the SQLite file goes with
    ``workdir``), and says so on stderr.
    """
    tag = uuid.uuid4().hex[:12]
    database = f"bench_{tag}" if "postgres" in backend else None
    prefix = f"{{bench-{tag}}}" if "redis" in backend else None
    env = {
        "TASKPLATFORM_DATABASE_URL": (
            f"postgresql://postgres@{HOST}:5432/{database}"
            if database
            else f"sqlite:///{workdir / 'tp.db'}"
        )
    }
    if prefix is not None:
        env |= {"TASKPLATFORM_QUEUE_URL": REDIS_URL, "TASKPLATFORM_REDIS_KEY_PREFIX": prefix}
    created = False
    try:
        if database is not None:
            runner.run(create_database(database))
            created = True
        yield env
    finally:
        if prefix is not None:
            try:
                deleted = runner.run(delete_redis_keys(prefix))
                print(f"[{backend}] deleted {deleted} Redis keys {prefix}:*", file=sys.stderr)
            except Exception as exc:  # still drop the database
                print(f"[{backend}] deleting Redis keys failed: {exc!r}", file=sys.stderr)
        if created and database is not None:
            runner.run(drop_database(database))
            print(f"[{backend}] dropped database {database}", file=sys.stderr)


def log_problems(text: str) -> list[str]:
    """The lines of a service log that say something went wrong."""
    marks = (" ERROR ", " CRITICAL ", " WARNING ", "Traceback")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


@contextlib.contextmanager
def servers(backend: str, runner: asyncio.Runner) -> Iterator[Servers]:
    """Start the service on ``backend``, the receiver and the bare app.

    On exit stops them, keeps the service log's problem lines in ``Servers.log_problems``, and
    removes the storage (SQLite folder, PostgreSQL database, Redis keys).
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    log_path = workdir / "serve.log"
    log = log_path.open("wb")
    srv: Servers | None = None
    try:
        with backend_env(backend, workdir, runner) as backend_vars:
            try:
                ports = [free_port() for _ in range(3)]
                env = {"PATH": "/usr/bin:/bin", **backend_vars}
                service = subprocess.Popen(
                    [str(TASKPLATFORM), "serve", "--port", str(ports[0])],
                    env=env,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                procs.append(service)
                me = [sys.executable, str(Path(__file__).resolve()), "--serve"]
                receiver = subprocess.Popen(
                    [*me, "receiver", str(ports[1])], stdin=subprocess.DEVNULL
                )
                procs.append(receiver)
                bare = subprocess.Popen([*me, "bare", str(ports[2])], stdin=subprocess.DEVNULL)
                procs.append(bare)
                try:
                    for proc, port in zip(procs, ports, strict=True):
                        wait_listening(proc, port)
                except RuntimeError:
                    log.flush()
                    print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                    raise
                srv = Servers(backend, service, ports[0], receiver, ports[1], bare, ports[2])
                yield srv
            finally:
                for proc in procs:
                    stop(proc)
                log.flush()
                if srv is not None:
                    srv.log_problems = log_problems(log_path.read_text(errors="replace"))
    finally:
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


def db_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of every ``postgres`` and ``redis-server`` process, by pid."""
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm") as f:
                comm = f.read().strip()
            if comm.startswith(DB_PROCESS_NAMES):
                out[int(entry.name)] = proc_cpu_seconds(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return out


def machine_busy_seconds() -> float:
    """Return CPU seconds the whole machine has spent busy (all cores, from ``/proc/stat``)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass
class Phase:
    """One measured operation: ``n`` requests of one kind, possibly in several slices.

    CPU seconds: ``server_cpu_s`` of the process answering, ``loadgen_cpu_s`` of this process,
    ``receiver_cpu_s`` of the callback receiver, ``db_cpu_s`` of the PostgreSQL and Redis
    processes (those that exit within a slice are missed), ``others_cpu_s`` of the rest of the
    machine (its busy time, other processes and kernel interrupts, minus all of the above).
    ``failures`` counts failed requests by HTTP status or exception name.
    """

    name: str
    backend: str = ""
    n: int = 0
    wall_s: float = 0.0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    server_cpu_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    receiver_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    slice_rps: list[float] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Requests per second."""
        return self.n / self.wall_s

    def percentile(self, q: float) -> float:
        """Latency in ms at quantile ``q`` (0..1), nearest rank."""
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def cpu_percent(self, seconds: float) -> float:
        """CPU ``seconds`` as a percentage of one core over the phase's wall time."""
        return 100 * seconds / self.wall_s


SendOne = Callable[[aiohttp.ClientSession, int], Awaitable[int]]


async def load(
    session: aiohttp.ClientSession, indices: range, clients: int, send_one: SendOne
) -> tuple[float, dict[str, int], list[float]]:
    """Run ``send_one(session, i)`` for every i in ``indices`` over ``clients`` workers.

    Returns (wall seconds, failures, latencies in ms). A failure is a status outside 2xx from
    ``send_one`` (counted by status) or an exception (counted by its type name).
    """
    todo = iter(indices)
    failures: dict[str, int] = {}
    latencies: list[float] = []

    async def worker() -> None:
        for i in todo:
            t0 = time.perf_counter()
            try:
                status = await send_one(session, i)
                failure = None if 200 <= status < 300 else str(status)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                failure = type(exc).__name__
            latencies.append((time.perf_counter() - t0) * 1000)
            if failure is not None:
                failures[failure] = failures.get(failure, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, failures, latencies


def create_body(i: int, receiver_port: int) -> bytes:
    """The create request body of task number ``i``."""
    return json.dumps(
        {
            "taskData": {"n": i},
            "callbackUrl": f"http://{HOST}:{receiver_port}/cb",
            "priority": i % 10,
        },
        separators=(",", ":"),
    ).encode()


class Bench:
    """The load generator and its phases, over one aiohttp session."""

    def __init__(self, srv: Servers, args: argparse.Namespace) -> None:
        self.srv = srv
        self.args = args
        self.service = f"http://{HOST}:{srv.service_port}"
        self.bare = f"http://{HOST}:{srv.bare_port}"
        self.dequeued: list[str] = []
        self.outcomes: dict[str, int] = {}
        self.warmup_failures: dict[str, int] = {}
        self.pids = [srv.service.pid, srv.bare.pid, srv.receiver.pid]

    def creator(self, base: str) -> SendOne:
        """A request sender for ``POST {base}/api/tasks``."""
        url = f"{base}/api/tasks"
        port = self.srv.receiver_port

        async def send_one(session: aiohttp.ClientSession, i: int) -> int:
            async with session.post(url, data=create_body(i, port), headers=JSON_HEADERS) as r:
                await r.read()
                return r.status

        return send_one

    async def dequeue_one(self, session: aiohttp.ClientSession, i: int) -> int:
        """``GET /api/tasks/dequeue``; keep the task id for execute."""
        async with session.get(f"{self.service}/api/tasks/dequeue") as r:
            body = await r.read()
            if not 200 <= r.status < 300:
                return r.status
        self.dequeued.append(json.loads(body)["taskId"])
        return r.status

    async def execute_one(self, session: aiohttp.ClientSession, i: int) -> int:
        """``POST /api/tasks/{id}/execute`` of the ``i``-th dequeued task; tally its status."""
        task_id = self.dequeued[i]
        async with session.post(f"{self.service}/api/tasks/{task_id}/execute") as r:
            body = await r.read()
            if not 200 <= r.status < 300:
                return r.status
        status = json.loads(body)["status"]
        self.outcomes[status] = self.outcomes.get(status, 0) + 1
        return r.status

    def _cpu(self) -> tuple[list[float], dict[int, float]]:
        """CPU seconds so far: [service, bare app, receiver, this process, whole machine], and
        each database process's."""
        ours = [proc_cpu_seconds(pid) for pid in self.pids]
        return [*ours, time.process_time(), machine_busy_seconds()], db_cpu_seconds()

    async def measure(
        self,
        session: aiohttp.ClientSession,
        phase: Phase,
        server_pid: int,
        indices: range,
        send: SendOne,
    ) -> None:
        """Run ``send`` over ``indices`` and add the outcome to ``phase`` (one slice of it)."""
        before, db_before = self._cpu()
        wall, failures, latencies = await load(session, indices, self.args.clients, send)
        after, db_after = self._cpu()
        used = [b - a for a, b in zip(before, after, strict=True)]
        db = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
        phase.n += len(indices)
        phase.wall_s += wall
        phase.errors += sum(failures.values())
        for key, count in failures.items():
            phase.failures[key] = phase.failures.get(key, 0) + count
        phase.latencies_ms += latencies
        phase.server_cpu_s += used[self.pids.index(server_pid)]
        phase.receiver_cpu_s += used[2]
        phase.loadgen_cpu_s += used[3]
        phase.db_cpu_s += db
        phase.others_cpu_s += max(0.0, used[4] - sum(used[:4]) - db)
        phase.slice_rps.append(len(indices) / wall)

    async def run(self) -> list[Phase]:
        """Warm up; measure bare and create in alternating slices, then dequeue, execute."""
        n, warm, clients = self.args.n, self.args.warmup, self.args.clients
        service_pid, bare_pid = self.srv.service.pid, self.srv.bare.pid
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            bare, create = self.creator(self.bare), self.creator(self.service)
            # Warm-up (unmeasured): the same requests, so every code path is imported and hot.
            first = range(-warm, 0)
            for what, indices, send in (
                ("bare create", first, bare),
                ("create", first, create),
                ("dequeue", first, self.dequeue_one),
                ("execute", None, self.execute_one),
            ):
                indices = range(len(self.dequeued)) if indices is None else indices
                _, failures, _ = await load(session, indices, clients, send)
                for key, count in failures.items():
                    self.warmup_failures[f"{what} {key}"] = count
            self.dequeued.clear()
            self.outcomes.clear()

            backend = self.srv.backend
            bare_phase, create_phase = Phase("bare create", backend), Phase("create", backend)
            slices = self.args.slices
            for k in range(slices):
                part = range(n * k // slices, n * (k + 1) // slices)
                await self.measure(session, bare_phase, bare_pid, part, bare)
                await self.measure(session, create_phase, service_pid, part, create)
            dequeue = Phase("dequeue", backend)
            await self.measure(session, dequeue, service_pid, range(n), self.dequeue_one)
            execute = Phase("execute", backend)
            executed = range(len(self.dequeued))
            await self.measure(session, execute, service_pid, executed, self.execute_one)
            execute.notes = dict(self.outcomes)
        return [bare_phase, create_phase, dequeue, execute]


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that take part."""
    names = (
        "taskplatform",
        "aiohttp",
        "uvicorn",
        "httptools",
        "uvloop",
        "fastapi",
        "msgspec",
        "asyncpg",
        "redis",
    )
    return {"python": platform.python_version()} | {
        name: importlib.metadata.version(name) for name in names
    }


@dataclass
class Run:
    """The phases measured on one backend, and what went wrong beside them."""

    backend: str
    phases: list[Phase]
    warmup_failures: dict[str, int]
    log_problems: list[str]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def render(runs: list[Run], args: argparse.Namespace) -> str:
    """Format the runs as one Markdown table plus the create/bare ratio lines of each backend."""
    lines = [
        f"### Service rates (N={args.n}, {args.clients} clients, aiohttp load generator; "
        "1 uvicorn process, uvloop+httptools)",
        "",
        "| backend | operation | n | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        "| server CPU % | DB CPU % | loadgen CPU % | rest of machine CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for p in run.phases:
            lines.append(
                f"| {run.backend} | {p.name} | {p.n} | {p.rps:,.0f} | {p.percentile(0.5):.2f} | "
                f"{p.percentile(0.99):.2f} | {p.errors} | {1000 * p.server_cpu_s / p.n:.3f} | "
                f"{p.cpu_percent(p.server_cpu_s):.0f} | {p.cpu_percent(p.db_cpu_s):.0f} | "
                f"{p.cpu_percent(p.loadgen_cpu_s):.0f} | {p.cpu_percent(p.others_cpu_s):.0f} |"
            )
    lines.append("")
    for run in runs:
        by_name = {p.name: p for p in run.phases}
        bare, create, execute = by_name["bare create"], by_name["create"], by_name["execute"]
        pairs = [c / b for b, c in zip(bare.slice_rps, create.slice_rps, strict=True)]
        failures = {f"{p.name} {k}": v for p in run.phases for k, v in p.failures.items()} | {
            f"warm-up {k}": v for k, v in run.warmup_failures.items()
        }
        line = (
            f"- **{run.backend}**: create / bare = **{create.rps / bare.rps:.2f}** "
            f"(per-slice {min(pairs):.2f}..{max(pairs):.2f}, median "
            f"{statistics.median(pairs):.2f}); server CPU per request, create / bare = "
            f"**{create.server_cpu_s / create.n / (bare.server_cpu_s / bare.n):.1f}**; "
            f"execute outcomes: {_counts(execute.notes)}; receiver CPU during execute "
            f"{execute.cpu_percent(execute.receiver_cpu_s):.0f} %"
        )
        if failures:
            line += f"; failures: {_counts(failures)}"
        if run.log_problems:
            line += (
                f"; service log: {len(run.log_problems)} warning/error lines, first: "
                f"`{run.log_problems[0][:200]}`"
            )
        lines.append(line)
    lines += [
        "",
        f"Bare and create run in {args.slices} alternating slices per backend. CPU % is of one "
        f"core ({os.cpu_count()} cores); 'DB CPU' is every postgres and redis-server process of "
        "the machine; 'rest of machine' is every other process plus kernel interrupts.",
    ]
    return "\n".join(lines)


def write_json(runs: list[Run], args: argparse.Namespace) -> Path:
    """Write the raw results (every latency) to ``bench/results/rates-<time>.json``."""
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"rates-{time.strftime('%Y%m%dT%H%M%S')}.json"
    doc = {
        "benchmark": "rates",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {
            "n": args.n,
            "clients": args.clients,
            "warmup": args.warmup,
            "slices": args.slices,
            "backends": args.backends,
        },
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "versions": versions(),
        "runs": [
            {
                "backend": run.backend,
                "warmup_failures": run.warmup_failures,
                "log_problems": run.log_problems,
                "phases": [
                    asdict(p)
                    | {
                        "rps": p.rps,
                        "p50_ms": p.percentile(0.5),
                        "p99_ms": p.percentile(0.99),
                        "latencies_ms": [round(x, 3) for x in p.latencies_ms],
                    }
                    for p in run.phases
                ],
            }
            for run in runs
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def parse_backends(text: str) -> list[str]:
    """``--backends``: comma-separated names of :data:`BACKENDS`, or ``all``."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(BACKENDS)
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(BACKENDS)}, or all"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, help="requests per phase (default 5000; 1000 --quick)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--quick", action="store_true", help="N=1000")
    parser.add_argument(
        "--slices", type=int, default=5, help="alternating bare/create slices (default 5)"
    )
    parser.add_argument(
        "--backends",
        type=parse_backends,
        default=["sqlite"],
        help=f"comma-separated, of {', '.join(BACKENDS)}; or all (default sqlite)",
    )
    parser.add_argument("--serve", nargs=2, metavar=("APP", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 1000 if args.quick else 5000
    args.warmup = max(args.clients, min(200, args.n // 10))
    return args


def main() -> None:
    """Run the benchmark, print the Markdown table, write the JSON."""
    args = parse_args()
    if args.serve is not None:
        serve_app(args.serve[0], int(args.serve[1]))
        return
    runs: list[Run] = []
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        for backend in args.backends:
            print(f"[{backend}] measuring ...", file=sys.stderr)
            with servers(backend, runner) as srv:
                bench = Bench(srv, args)
                phases = runner.run(bench.run())
            runs.append(Run(backend, phases, bench.warmup_failures, srv.log_problems))
    print(render(runs, args))
    print(f"\nraw results: {write_json(runs, args).relative_to(BENCH_DIR.parent)}")


if __name__ == "__main__":
    main()
