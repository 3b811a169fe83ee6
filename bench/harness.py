"""What every benchmark here shares: ports, processes, fresh backend storage, CPU and memory.

The benchmarks start real processes on 127.0.0.1 (the service with ``.venv/bin/taskplatform``,
receivers and baselines with ``.venv/bin/python``) and give each backend fresh storage that they
remove at the end:

- ``sqlite``: a new SQLite file under a new ``/tmp/bench-*`` folder;
- ``postgres``: queue and store in a new PostgreSQL database ``bench_<random>`` on
  ``127.0.0.1:5432`` (user postgres), dropped at the end;
- ``redis+postgres``: as ``postgres``, with the queue in Redis (``127.0.0.1:6379/14``) under a
  new key prefix ``{bench-<random>}`` whose keys are deleted at the end;
- ``redis+sqlite``: as ``sqlite``, with the queue in Redis likewise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import redis.asyncio

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TASKPLATFORM = BENCH_DIR.parent / ".venv" / "bin" / "taskplatform"
POSTGRES_ADMIN_URL = f"postgresql://postgres@{HOST}:5432/postgres"
REDIS_URL = f"redis://{HOST}:6379/14"
BACKENDS = ("sqlite", "postgres", "redis+postgres", "redis+sqlite")
#: Processes whose CPU counts as "DB CPU" (``/proc/<pid>/comm``).
DB_PROCESS_NAMES = ("postgres", "redis-server")


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


def rss_bytes(pid: int, peak: bool = False) -> int:
    """Resident memory of process ``pid`` in bytes (``VmHWM``, the peak, when ``peak``)."""
    key = "VmHWM:" if peak else "VmRSS:"
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``grace`` seconds) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def python_script(name: str, *args: str) -> list[str]:
    """The command line that runs ``bench/<name>`` with this interpreter."""
    return [sys.executable, str(BENCH_DIR / name), *args]


def start_listening(argv: list[str], port: int, **popen: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` and wait until it listens on ``port``; stop it if it never does."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]
    try:
        wait_listening(proc, port)
    except BaseException:
        stop(proc)
        raise
    return proc  # type: ignore[no-any-return]


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


async def database_bytes(name: str) -> int:
    """``pg_database_size(name)``: the PostgreSQL database's size on disk in bytes."""
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        return int(await conn.fetchval("SELECT pg_database_size($1)", name))
    finally:
        await conn.close()


async def redis_used_bytes() -> int:
    """``used_memory`` of the local Redis server, in bytes."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


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


def machine() -> dict[str, object]:
    """The machine the run is on: CPU model and count, memory, kernel, load average."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
    }


def versions(*names: str) -> dict[str, str]:
    """Versions of Python and of the installed packages ``names`` ("absent" when missing)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


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
