"""Soak the service: a steady mixed load for minutes, watching errors, memory and CPU.

Starts, on 127.0.0.1 and each in a subprocess: ``taskplatform serve`` (the venv's console script,
one process, log level info, no access log) on fresh storage, and a fast callback receiver (a bare
ASGI app under uvicorn that answers every request 200 ``{"ok":true}``). The environment of the
service is empty but for ``PATH`` and its ``TASKPLATFORM_*`` variables. ``--backend``:

- ``sqlite`` (default): a new SQLite file under a new ``/tmp/soak-*`` folder;
- ``postgres``: a new database ``soak_<random>`` on ``127.0.0.1:5432`` (user postgres), created
  through asyncpg and dropped (``WITH (FORCE)``) at the end.

An aiohttp load generator in this process then sends a fixed mix of requests at ``--rate`` per
second, open loop (each request leaves on its schedule whether or not earlier ones have answered,
so a slow server does not slow the load down), first for ``--warmup`` seconds (not measured), then
for ``--seconds``. The mix (see :data:`MIX`): creates (some with an ``Idempotency-Key``, some
repeating an earlier key and body, which must replay the first task), dequeues (some long polls,
``?waitSeconds=1``), executes of the dequeued tasks in the order dequeued (half synchronous, half
``Prefer: respond-async``), gets of recent tasks, lists (``?limit=50``), stats, and bad requests
(malformed JSON, invalid fields, a wrong media type, a reused key, unknown tasks, executing a
completed task, an out-of-range query) that must get their documented 4xx. Unique creates run a
little slower than dequeues, so the queue stays near empty and the long polls really wait. An
execute slot that finds nothing dequeued sends a get instead.

An error is any 5xx, any transport error (connection, timeout), or a status (or body) other than
the one documented for the request. Every 10 s the service's RSS (``VmRSS`` of
``/proc/<pid>/status``, summed over the process and its descendants) and CPU time are sampled.
At the end the load drains, and the script waits for the background callbacks to finish, reads
``/api/stats``, stops everything and prints a Markdown table per request kind and a summary table
(RSS at start, max and end; RSS growth per minute, a least-squares line over each half of the run,
so warm-up can be told from a leak; server CPU; database size). Raw results (every sample) and the
service log go to ``bench/results/soak-<time>.json`` and ``.log``.

    .venv/bin/python bench/soak.py [--quick] [--seconds 300] [--rate 200] [--backend postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, stop
from receiver import answer, lifespan, read_body

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
TASKPLATFORM = BENCH_DIR.parent / ".venv" / "bin" / "taskplatform"
POSTGRES_ADMIN_URL = f"postgresql://postgres@{HOST}:5432/postgres"
JSON_HEADERS = {"Content-Type": "application/json"}
SAMPLE_EVERY_S = 10.0
#: Requests in flight beyond which the generator drops a slot instead of sending (counted).
MAX_IN_FLIGHT = 2000
CLIENT_TIMEOUT_S = 60.0

#: (kind, weight per 1000 operations). Unique creates (create + create-key) run at 27 % and
#: dequeues at 32 %, so the queue stays near empty; executes (28 %) take the dequeued tasks.
MIX: tuple[tuple[str, int], ...] = (
    ("create", 230),
    ("create-key", 40),
    ("create-replay", 20),
    ("dequeue", 230),
    ("dequeue-wait", 90),
    ("execute", 140),
    ("execute-async", 140),
    ("get", 40),
    ("list", 20),
    ("stats", 10),
    ("bad-json", 8),
    ("bad-fields", 12),
    ("bad-media-type", 4),
    ("bad-key-reuse", 4),
    ("bad-unknown-task", 4),
    ("bad-execute-done", 4),
    ("bad-query", 4),
)
KIND_LABELS = {
    "create": "create",
    "create-key": "create, new Idempotency-Key",
    "create-replay": "create, repeated key + body",
    "dequeue": "dequeue",
    "dequeue-wait": "dequeue ?waitSeconds=1",
    "execute": "execute (sync)",
    "execute-async": "execute, respond-async",
    "get": "get",
    "list": "list ?limit=50",
    "stats": "stats",
    "bad-json": "bad: malformed JSON",
    "bad-fields": "bad: invalid fields",
    "bad-media-type": "bad: text/plain body",
    "bad-key-reuse": "bad: key reused, other body",
    "bad-unknown-task": "bad: unknown task id",
    "bad-execute-done": "bad: execute a completed task",
    "bad-query": "bad: query out of range",
}
#: Bodies of ``bad-fields`` create requests: each must be 422 ``validation_error``.
INVALID_FIELDS: tuple[dict[str, Any], ...] = (
    {"taskData": {"n": 1}},
    {"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/", "priority": "high"},
    {"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/", "maxRetries": 101},
    {"taskData": {"n": 1}, "callbackUrl": "ftp://127.0.0.1/x"},
    {"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/", "colour": "red"},
    {"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/", "timeoutSeconds": 0},
    {"taskData": [1, 2], "callbackUrl": "http://127.0.0.1:9/"},
    {"taskData": {"n": 1}, "callbackUrl": "http://127.0.0.1:9/", "priority": 2**31},
)
#: Bodies of ``bad-json`` create requests: each must be 400 ``malformed_json``.
MALFORMED_JSON = (b'{"taskData": {"n": 1}, "callbackUrl": ', b"not json", b"\xff\xfe{}", b"")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --- the callback receiver (a subprocess: ``soak.py --serve-receiver PORT``) ---------------------


async def receiver_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request 200 ``{"ok":true}`` after reading its body."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await read_body(receive)
    await answer(send, 200, b'{"ok":true}')


def serve_receiver(port: int) -> None:
    """Serve :func:`receiver_app` like ``taskplatform serve`` serves the API."""
    import uvicorn

    uvicorn.run(
        receiver_app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# --- processes ---------------------------------------------------------------------------------


async def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    """Wait until ``port`` accepts connections; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout} s")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (by the parent pid of ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of one process, in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process and of its reaped children (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    """One look at the service: seconds since the soak began, RSS, CPU, database size."""

    t: float
    rss_bytes: int
    cpu_s: float
    processes: int
    db_bytes: int
    wal_bytes: int
    in_flight: int
    requests: int


@dataclass
class Storage:
    """Where the service keeps its data, and how to measure it."""

    backend: str
    env: dict[str, str]
    sqlite_path: Path | None = None
    database: str | None = None

    async def size(self) -> tuple[int, int]:
        """(database bytes, WAL bytes): the SQLite file and its ``-wal``, or
        ``pg_database_size`` and 0."""
        if self.sqlite_path is not None:
            wal = self.sqlite_path.with_name(self.sqlite_path.name + "-wal")
            return _file_size(self.sqlite_path), _file_size(wal)
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            return int(await conn.fetchval("SELECT pg_database_size($1)", self.database)), 0
        finally:
            await conn.close()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@contextlib.asynccontextmanager
async def storage(backend: str, workdir: Path) -> AsyncIterator[Storage]:
    """Fresh storage for ``backend``; a PostgreSQL database is dropped on exit."""
    if backend == "sqlite":
        path = workdir / "soak.db"
        yield Storage(backend, {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{path}"}, sqlite_path=path)
        return
    name = f"soak_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    print(f"created database {name}", file=sys.stderr)
    try:
        url = f"postgresql://postgres@{HOST}:5432/{name}"
        yield Storage(backend, {"TASKPLATFORM_DATABASE_URL": url}, database=name)
    finally:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        print(f"dropped database {name}", file=sys.stderr)


@dataclass
class Servers:
    """The service and the receiver, their ports, and the service's log file."""

    service: subprocess.Popen[bytes]
    service_port: int
    receiver: subprocess.Popen[bytes]
    receiver_port: int
    log_path: Path


@contextlib.asynccontextmanager
async def servers(store: Storage, workdir: Path) -> AsyncIterator[Servers]:
    """Start the service on ``store`` and the receiver; stop both (SIGTERM) on exit."""
    service_port, receiver_port = free_port(), free_port()
    log_path = workdir / "serve.log"
    procs: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        try:
            env = {"PATH": "/usr/bin:/bin", "TASKPLATFORM_LOG_LEVEL": "info", **store.env}
            service = subprocess.Popen(
                [str(TASKPLATFORM), "serve", "--port", str(service_port)],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(service)
            receiver = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-receiver",
                    str(receiver_port),
                ],
                stdin=subprocess.DEVNULL,
            )
            procs.append(receiver)
            try:
                await wait_listening(service, service_port)
                await wait_listening(receiver, receiver_port)
            except RuntimeError:
                log.flush()
                print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
            yield Servers(service, service_port, receiver, receiver_port, log_path)
        finally:
            for proc in procs:
                stop(proc, grace=40)


def log_problems(text: str) -> list[str]:
    """The lines of a service log that say something went wrong."""
    marks = (" ERROR ", " CRITICAL ", " WARNING ", "Traceback", "Exception")
    return [line for line in text.splitlines() if any(m in line for m in marks)]


# --- the load --------------------------------------------------------------------------------


@dataclass
class KindStats:
    """What one kind of request met: statuses, errors and latencies."""

    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    #: (seconds since the phase began, milliseconds)
    latencies: list[tuple[float, float]] = field(default_factory=list)

    def percentile(self, q: float, since: float = -1.0, until: float = float("inf")) -> float:
        """The ``q`` quantile (nearest rank) of the latencies sent in [since, until), in ms."""
        ordered = sorted(ms for t, ms in self.latencies if since <= t < until)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Phase:
    """The requests of one phase (warm-up or soak), by kind."""

    name: str
    seconds: float
    start: float = 0.0
    kinds: dict[str, KindStats] = field(default_factory=lambda: {k: KindStats() for k, _ in MIX})
    slots: int = 0
    dropped: int = 0
    max_lag_s: float = 0.0
    execute_fallbacks: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def errors(self) -> int:
        return sum(sum(k.errors.values()) for k in self.kinds.values())

    def requests(self) -> int:
        return sum(k.requests for k in self.kinds.values())


Check = Callable[[int, bytes, Mapping[str, str]], str | None]


def _code(body: bytes) -> str | None:
    """The problem ``code`` of an error body, if it has one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("code") if isinstance(doc, dict) else None


def expect_code(*codes: str) -> Check:
    """A check that the answer is a problem with one of ``codes``."""

    def check(status: int, body: bytes, headers: Mapping[str, str]) -> str | None:
        code = _code(body)
        return None if code in codes else f"HTTP {status} code {code!r}, want {codes}"

    return check


class Load:
    """The load generator: one aiohttp session, the pools of task ids, the open-loop schedule."""

    def __init__(self, session: aiohttp.ClientSession, srv: Servers, seed: int) -> None:
        self.session = session
        self.base = f"http://{HOST}:{srv.service_port}"
        self.callback = f"http://{HOST}:{srv.receiver_port}/cb"
        self.rng = random.Random(seed)
        self.n = 0
        self.recent: deque[str] = deque(maxlen=5000)  # created task ids, for get
        self.keyed: deque[tuple[str, bytes, str]] = deque(maxlen=1000)  # key, body, task id
        self.dequeued: deque[str] = deque()  # to execute, oldest first
        self.completed: deque[str] = deque(maxlen=1000)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]

    def create_body(self) -> bytes:
        """A valid create body, unique, of varying size and priority."""
        self.n += 1
        doc: dict[str, Any] = {
            "taskData": {"n": self.n, "pad": "x" * self.rng.randrange(0, 400)},
            "callbackUrl": f"{self.callback}/{self.n % 16}",
            "priority": self.rng.randrange(10),
        }
        if self.n % 3 == 0:
            doc["maxRetries"] = self.rng.randrange(0, 5)
            doc["timeoutSeconds"] = 10
        return json.dumps(doc, separators=(",", ":")).encode()

    async def request(
        self,
        phase: Phase,
        kind: str,
        method: str,
        path: str,
        expect: Collection[int],
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        check: Check | None = None,
    ) -> tuple[int, bytes] | None:
        """Send one request and record it under ``kind``; return (status, body) if it went as
        documented, else None (and count the error)."""
        stats = phase.kinds[kind]
        sent = time.perf_counter()
        t = time.monotonic() - phase.start
        try:
            async with self.session.request(
                method, self.base + path, data=data, headers=headers
            ) as r:
                body = await r.read()
                status = r.status
                answer_headers = r.headers.copy()  # case-insensitive
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            stats.requests += 1
            self._error(phase, kind, f"transport {type(exc).__name__}", f"{method} {path}: {exc!r}")
            return None
        stats.requests += 1
        stats.latencies.append((t, (time.perf_counter() - sent) * 1000))
        stats.statuses[str(status)] = stats.statuses.get(str(status), 0) + 1
        problem = None
        if status >= 500:
            problem = f"HTTP {status}"
        elif status not in expect:
            problem = f"unexpected HTTP {status}"
        elif check is not None:
            problem = check(status, body, answer_headers)
        if problem is not None:
            self._error(phase, kind, problem, f"{method} {path} -> {status} {body[:300]!r}")
            return None
        return status, body

    @staticmethod
    def _error(phase: Phase, kind: str, what: str, example: str) -> None:
        errors = phase.kinds[kind].errors
        errors[what] = errors.get(what, 0) + 1
        if len(phase.error_examples) < 30:
            phase.error_examples.append(f"{kind}: {example}")

    async def one(self, phase: Phase, kind: str) -> None:
        """Send one request of ``kind``."""
        rng = self.rng
        if kind in ("create-replay", "bad-key-reuse") and not self.keyed:
            kind = "create-key"
        if kind in ("execute", "execute-async") and not self.dequeued:
            phase.execute_fallbacks += 1
            kind = "get"
        if kind == "get" and not self.recent:
            kind = "stats"

        if kind in ("create", "create-key"):
            body = self.create_body()
            key = f"soak-{uuid.uuid4().hex}" if kind == "create-key" else None
            headers = JSON_HEADERS | ({"Idempotency-Key": key} if key else {})
            got = await self.request(
                phase, kind, "POST", "/api/tasks", (201,), data=body, headers=headers
            )
            if got is not None:
                task_id = json.loads(got[1])["taskId"]
                self.recent.append(task_id)
                if key is not None:
                    self.keyed.append((key, body, task_id))
        elif kind == "create-replay":
            key, body, task_id = rng.choice(self.keyed)

            def same_task(status: int, answer: bytes, headers: Mapping[str, str]) -> str | None:
                if headers.get("Idempotent-Replayed") != "true":
                    return "replay without Idempotent-Replayed: true"
                replayed = json.loads(answer).get("taskId")
                return None if replayed == task_id else f"replayed {replayed}, want {task_id}"

            headers = JSON_HEADERS | {"Idempotency-Key": key}
            await self.request(
                phase,
                kind,
                "POST",
                "/api/tasks",
                (200,),
                data=body,
                headers=headers,
                check=same_task,
            )
        elif kind in ("dequeue", "dequeue-wait"):
            path = "/api/tasks/dequeue" + ("?waitSeconds=1" if kind == "dequeue-wait" else "")

            def empty_is_queue_empty(status: int, body: bytes, h: Mapping[str, str]) -> str | None:
                return None if status == 200 else expect_code("queue_empty")(status, body, h)

            got = await self.request(
                phase, kind, "GET", path, (200, 404), check=empty_is_queue_empty
            )
            if got is not None and got[0] == 200:
                task_id = json.loads(got[1])["taskId"]
                self.dequeued.append(task_id)
        elif kind == "execute":
            task_id = self.dequeued.popleft()
            got = await self.request(phase, kind, "POST", f"/api/tasks/{task_id}/execute", (200,))
            if got is not None:
                outcome = json.loads(got[1])["status"]
                phase.outcomes[outcome] = phase.outcomes.get(outcome, 0) + 1
                if outcome == "Completed":
                    self.completed.append(task_id)
        elif kind == "execute-async":
            task_id = self.dequeued.popleft()
            headers = {"Prefer": "respond-async"}
            path = f"/api/tasks/{task_id}/execute"
            await self.request(phase, kind, "POST", path, (202,), headers=headers)
        elif kind == "get":
            task_id = rng.choice(self.recent)
            await self.request(phase, kind, "GET", f"/api/tasks/{task_id}", (200,))
        elif kind == "list":

            def page(status: int, body: bytes, headers: Mapping[str, str]) -> str | None:
                items = json.loads(body)["items"]
                return None if 0 < len(items) <= 50 else f"list of {len(items)} items"

            await self.request(phase, kind, "GET", "/api/tasks?limit=50", (200,), check=page)
        elif kind == "stats":
            await self.request(phase, kind, "GET", "/api/stats", (200,))
        elif kind == "bad-json":
            body = rng.choice(MALFORMED_JSON)
            await self.request(
                phase,
                kind,
                "POST",
                "/api/tasks",
                (400,),
                data=body,
                headers=JSON_HEADERS,
                check=expect_code("malformed_json"),
            )
        elif kind == "bad-fields":
            fields = dict(rng.choice(INVALID_FIELDS))
            if "callbackUrl" in fields and fields["callbackUrl"].startswith("http"):
                fields["callbackUrl"] = self.callback
            body = json.dumps(fields).encode()
            await self.request(
                phase,
                kind,
                "POST",
                "/api/tasks",
                (422,),
                data=body,
                headers=JSON_HEADERS,
                check=expect_code("validation_error"),
            )
        elif kind == "bad-media-type":
            await self.request(
                phase,
                kind,
                "POST",
                "/api/tasks",
                (415,),
                data=self.create_body(),
                headers={"Content-Type": "text/plain"},
                check=expect_code("unsupported_media_type"),
            )
        elif kind == "bad-key-reuse":
            key = rng.choice(self.keyed)[0]
            await self.request(
                phase,
                kind,
                "POST",
                "/api/tasks",
                (422,),
                data=self.create_body(),
                headers=JSON_HEADERS | {"Idempotency-Key": key},
                check=expect_code("idempotency_key_reused"),
            )
        elif kind == "bad-unknown-task":
            path = f"/api/tasks/{uuid.uuid4()}" + ("/execute" if rng.random() < 0.5 else "")
            method = "POST" if path.endswith("/execute") else "GET"
            await self.request(
                phase, kind, method, path, (404,), check=expect_code("task_not_found")
            )
        elif kind == "bad-execute-done":
            if self.completed:
                task_id = rng.choice(self.completed)
                await self.request(
                    phase,
                    kind,
                    "POST",
                    f"/api/tasks/{task_id}/execute",
                    (409,),
                    check=expect_code("task_completed"),
                )
            else:
                path = f"/api/tasks/{uuid.uuid4()}/execute"
                await self.request(phase, kind, "POST", path, (404,))
        elif kind == "bad-query":
            path = rng.choice(
                ("/api/tasks/dequeue?waitSeconds=50", "/api/tasks?limit=0", "/api/tasks?limit=x")
            )
            await self.request(
                phase, kind, "GET", path, (422,), check=expect_code("validation_error")
            )
        else:
            raise AssertionError(kind)

    async def run(self, phase: Phase, rate: float) -> None:
        """Send ``rate`` requests per second for ``phase.seconds``, open loop."""
        loop = asyncio.get_running_loop()
        phase.start = time.monotonic()
        start = loop.time()
        total = round(phase.seconds * rate)
        for i in range(total):
            due = start + i / rate
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                phase.max_lag_s = max(phase.max_lag_s, now - due)
            phase.slots += 1
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                phase.dropped += 1
                continue
            kind = self.rng.choices(self.kinds, self.weights)[0]
            task = asyncio.create_task(self.one(phase, kind))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        remaining = start + total / rate - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        phase.wall_s = time.monotonic() - phase.start

    async def drain(self, timeout: float = 30.0) -> int:
        """Wait for the requests in flight; return how many were still going at ``timeout``."""
        if self.in_flight:
            _, pending = await asyncio.wait(set(self.in_flight), timeout=timeout)
            return len(pending)
        return 0


async def sample(pid: int, store: Storage, load: Load, phase: Phase) -> Sample:
    """Measure the service process tree now."""
    pids = descendants(pid)
    db, wal = await store.size()
    return Sample(
        t=round(time.monotonic() - phase.start, 3),
        rss_bytes=sum(rss_bytes(p) for p in pids),
        cpu_s=sum(cpu_seconds(p) for p in pids),
        processes=len(pids),
        db_bytes=db,
        wal_bytes=wal,
        in_flight=len(load.in_flight),
        requests=phase.requests(),
    )


async def sampler(
    pid: int, store: Storage, load: Load, phase: Phase, samples: list[Sample]
) -> None:
    """Append a :class:`Sample` every :data:`SAMPLE_EVERY_S` seconds of the phase."""
    k = 1
    while True:
        await asyncio.sleep(max(0.0, phase.start + k * SAMPLE_EVERY_S - time.monotonic()))
        if k * SAMPLE_EVERY_S >= phase.seconds:
            return  # the final sample is taken by the caller, at the end of the load
        samples.append(await sample(pid, store, load, phase))
        k += 1


async def settle(session: aiohttp.ClientSession, base: str, timeout: float = 60.0) -> Any:
    """Wait until no task is Processing (the background callbacks are done); return the stats."""
    deadline = time.monotonic() + timeout
    while True:
        async with session.get(f"{base}/api/stats") as r:
            stats = await r.json()
        if not _stats_count(stats, "Processing") or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.5)


def _stats_count(stats: Any, status: str) -> int:
    """The number of tasks in ``status`` from an ``/api/stats`` document."""
    return int(stats.get("tasks", {}).get(status, 0))


# --- report -------------------------------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute (nan if under 3 points)."""
    if len(points) < 3:
        return float("nan")
    xs, ys = zip(*points, strict=True)
    return 60 * statistics.linear_regression(xs, ys).slope


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def render(
    args: argparse.Namespace,
    warm: Phase,
    soak: Phase,
    samples: list[Sample],
    final_stats: Any,
    not_drained: int,
    problems: list[str],
    loadgen_cpu_s: float,
) -> str:
    """The Markdown report: a row per kind of request, then the summary."""
    last = soak.seconds - 60
    lines = [
        f"### Soak: {args.backend}, {args.seconds:.0f} s at {args.rate:.0f} req/s open loop "
        f"(after {args.warmup:.0f} s warm-up), 1 uvicorn process",
        "",
        "| request | n | statuses | errors | p50 ms | p99 ms | p99 ms first / last minute |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, _ in MIX:
        k = soak.kinds[kind]
        statuses = ", ".join(f"{s}: {c}" for s, c in sorted(k.statuses.items())) or "-"
        lines.append(
            f"| {KIND_LABELS[kind]} | {k.requests} | {statuses} | {sum(k.errors.values())} | "
            f"{k.percentile(0.5):.1f} | {k.percentile(0.99):.1f} | "
            f"{k.percentile(0.99, until=60):.1f} / {k.percentile(0.99, since=last):.1f} |"
        )
    all_latencies = KindStats(latencies=[x for k in soak.kinds.values() for x in k.latencies])
    lines.append(
        f"| **all** | **{soak.requests()}** | | **{soak.errors()}** | "
        f"{all_latencies.percentile(0.5):.1f} | {all_latencies.percentile(0.99):.1f} | "
        f"{all_latencies.percentile(0.99, until=60):.1f} / "
        f"{all_latencies.percentile(0.99, since=last):.1f} |"
    )

    first, end = samples[0], samples[-1]
    half = soak.seconds / 2
    rss = [(s.t, s.rss_bytes / 2**20) for s in samples]
    growth_1st = slope_per_minute([p for p in rss if p[0] <= half])
    growth_2nd = slope_per_minute([p for p in rss if p[0] >= half])
    cpu_pct = 100 * (end.cpu_s - first.cpu_s) / (end.t - first.t)
    by_kind_errors: dict[str, int] = {}
    for kind, k in soak.kinds.items():
        for what, count in k.errors.items():
            by_kind_errors[f"{kind} {what}"] = count
    warm_errors = {
        f"{kind} {what}": c for kind, k in warm.kinds.items() for what, c in k.errors.items()
    }
    db = (
        f"{mib(end.db_bytes)} + WAL {mib(end.wal_bytes)}"
        if args.backend == "sqlite"
        else mib(end.db_bytes)
    )
    rows = [
        (
            "requests sent (achieved rate)",
            f"{soak.requests()} ({soak.requests() / soak.wall_s:.1f}/s)",
        ),
        (
            "errors (5xx, transport, unexpected status/body)",
            f"{soak.errors()}" + (f": {_counts(by_kind_errors)}" if by_kind_errors else ""),
        ),
        ("warm-up errors", _counts(warm_errors) if warm_errors else "0"),
        (
            "generator: dropped slots / max lag / still in flight after drain",
            f"{soak.dropped} / {1000 * soak.max_lag_s:.0f} ms / {not_drained}",
        ),
        ("execute slots with nothing dequeued (sent a get)", str(soak.execute_fallbacks)),
        ("sync execute outcomes", _counts(soak.outcomes) or "-"),
        ("RSS at start (after warm-up)", mib(first.rss_bytes)),
        ("RSS max", mib(max(s.rss_bytes for s in samples))),
        ("RSS at end", mib(end.rss_bytes)),
        (
            "RSS growth, 2nd half (1st half)",
            f"{growth_2nd:+.2f} MiB/min ({growth_1st:+.2f} MiB/min)",
        ),
        ("server CPU (of one core)", f"{cpu_pct:.1f} %"),
        ("server CPU per request", f"{1000 * (end.cpu_s - first.cpu_s) / soak.requests():.2f} ms"),
        ("load generator CPU (of one core)", f"{100 * loadgen_cpu_s / soak.wall_s:.1f} %"),
        ("database size at end", db),
        ("tasks at end (/api/stats)", json.dumps(final_stats, separators=(",", ":"))),
        (
            "service log: warning/error lines",
            f"{len(problems)}" + (f", first: `{problems[0][:200]}`" if problems else ""),
        ),
    ]
    lines += ["", "| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


# --- main --------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace) -> None:
    """Start everything, run warm-up and soak, print the report, write the raw results."""
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    try:
        async with storage(args.backend, workdir) as store, servers(store, workdir) as srv:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
            timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                load = Load(session, srv, args.seed)
                warm = Phase("warm-up", args.warmup)
                print(f"warm-up {args.warmup:.0f} s ...", file=sys.stderr)
                await load.run(warm, args.rate)
                soak_phase = Phase("soak", args.seconds)
                print(f"soak {args.seconds:.0f} s at {args.rate:.0f}/s ...", file=sys.stderr)
                soak_phase.start = time.monotonic()
                samples = [await sample(srv.service.pid, store, load, soak_phase)]
                cpu0 = time.process_time()
                sampling = asyncio.create_task(
                    sampler(srv.service.pid, store, load, soak_phase, samples)
                )
                await load.run(soak_phase, args.rate)
                samples.append(await sample(srv.service.pid, store, load, soak_phase))
                loadgen_cpu_s = time.process_time() - cpu0
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
                not_drained = await load.drain()
                final_stats = await settle(session, load.base)
            # the servers stop here (SIGTERM; callbacks in flight may finish)
        problems = log_problems(srv.log_path.read_text(errors="replace"))
        shutil.copy(srv.log_path, out_dir / f"soak-{stamp}.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        render(args, warm, soak_phase, samples, final_stats, not_drained, problems, loadgen_cpu_s)
    )
    if soak_phase.error_examples:
        print("\nfirst errors:\n" + "\n".join(f"- `{e}`" for e in soak_phase.error_examples[:10]))
    if problems:
        print("\nservice log problems:\n" + "\n".join(f"    {p}" for p in problems[:20]))
    path = out_dir / f"soak-{stamp}.json"
    doc = {
        "benchmark": "soak",
        "args": {k: v for k, v in vars(args).items() if k != "serve_receiver"},
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "samples": [asdict(s) for s in samples],
        "final_stats": final_stats,
        "log_problems": {"count": len(problems), "first": problems[:200]},
        "phases": [
            {
                "name": p.name,
                "wall_s": p.wall_s,
                "slots": p.slots,
                "dropped": p.dropped,
                "max_lag_s": p.max_lag_s,
                "execute_fallbacks": p.execute_fallbacks,
                "outcomes": p.outcomes,
                "error_examples": p.error_examples,
                "kinds": {
                    kind: {
                        "requests": k.requests,
                        "statuses": k.statuses,
                        "errors": k.errors,
                        "p50_ms": k.percentile(0.5),
                        "p99_ms": k.percentile(0.99),
                    }
                    for kind, k in p.kinds.items()
                },
            }
            for p in (warm, soak_phase)
        ],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nraw results: {path.relative_to(BENCH_DIR.parent)} (+ .log)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, help="soak length (default 300; 60 --quick)")
    parser.add_argument("--quick", action="store_true", help="a 60 s soak")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s (default 200)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument("--seed", type=int, default=1, help="of the request mix (default 1)")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 60.0 if args.quick else 300.0
    if args.seconds < 30 or args.rate <= 0:
        parser.error("--seconds must be at least 30 and --rate positive")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Run the soak (or, with ``--serve-receiver``, be the callback receiver)."""
    args = parse_args()
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return
    # A SIGTERM unwinds like Ctrl-C, so the servers are stopped and the database dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(soak(args))


if __name__ == "__main__":
    main()
