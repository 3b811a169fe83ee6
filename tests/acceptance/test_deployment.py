"""Deployment: several API processes on one database, configuration errors, schema revisions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from taskplatform.backends import migrate
from taskplatform.backends.migrate import head_revision
from tests.acceptance.helpers import create, run_taskplatform
from tests.support.backends import REDIS_URL, backend_env
from tests.support.proxy import Proxy
from tests.support.receiver import Receiver
from tests.support.server import Server, clean_environ, free_port


@pytest.mark.parametrize("combination", ["postgres", "redis+postgres"])
def test_two_servers_share_5000_tasks_without_a_duplicate(combination: str, tmp_path: Path) -> None:
    """Two servers, one database: 4 clients create and dequeue 5,000 tasks through both.

    Every task is dequeued exactly once and no response is a 5xx.
    """
    env = backend_env(combination, tmp_path)
    servers = [Server(env, tmp_path / f"server-{n}.log").start() for n in range(2)]
    created: list[str] = []
    dequeued: list[str] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def client(number: int) -> None:
        https = [httpx.Client(base_url=server.url, timeout=60) for server in servers]
        mine_created, mine_dequeued, mine_statuses = [], [], Counter[int]()
        try:
            for i in range(1250):
                http = https[(i + number) % 2]
                response = http.post(
                    "/api/tasks",
                    json={"taskData": {"c": number, "i": i}, "callbackUrl": "http://127.0.0.1:9/"},
                )
                mine_statuses[response.status_code] += 1
                if response.status_code == 201:
                    mine_created.append(response.json()["taskId"])
                response = https[(i + number + 1) % 2].get("/api/tasks/dequeue")
                mine_statuses[response.status_code] += 1
                if response.status_code == 200:
                    mine_dequeued.append(response.json()["taskId"])
        finally:
            for http in https:
                http.close()
        with lock:
            created.extend(mine_created)
            dequeued.extend(mine_dequeued)
            statuses.update(mine_statuses)

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=servers[0].url, timeout=60) as http:
            while (response := http.get("/api/tasks/dequeue")).status_code == 200:
                dequeued.append(response.json()["taskId"])
            statuses[response.status_code] += 1
    finally:
        for server in servers:
            server.stop()
    assert not [status for status in statuses if status >= 500], statuses
    assert len(created) == 5000
    assert len(dequeued) == len(set(dequeued)), "a task was dequeued twice"
    assert set(dequeued) == set(created)


_taskplatform = run_taskplatform


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKPLATFORM_DATABASE_URL": "mysql://127.0.0.1/db"}, "does not support as a store"),
        (
            {"TASKPLATFORM_DATABASE_URL": "sqlite:///x.db", "TASKPLATFORM_QUEUE_URL": "kafka://h"},
            "does not support as a queue",
        ),
        ({"TASKPLATFORM_PORT": "eighty"}, "invalid configuration"),
        (
            {"TASKPLATFORM_LOG_LEVEL": "bogus"},
            "TASKPLATFORM_LOG_LEVEL: use one of critical, error, warning, info, debug",
        ),
        # Test-only, but a typo in it was a 94-line traceback after the schema was migrated.
        ({"TASKPLATFORM_FAULTS": "bogus"}, "TASKPLATFORM_FAULTS: unknown fault point 'bogus'"),
        (
            {"TASKPLATFORM_DISPATCH_QUEUES": "default,.."},
            "TASKPLATFORM_DISPATCH_QUEUES: each comma-separated queue name must be 1 to 64",
        ),
        # Each started: on a database that kept nothing, on a file named as the folder, and in
        # the maintenance database "postgres" (libpq's default for the user postgres).
        ({"TASKPLATFORM_DATABASE_URL": "sqlite:///:memory:"}, "is an in-memory database"),
        ({"TASKPLATFORM_DATABASE_URL": "sqlite:///data/"}, "names a folder: name a file in it"),
        (
            {"TASKPLATFORM_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/"},
            "TASKPLATFORM_DATABASE_URL: the URL names no database",
        ),
    ],
)
def test_serve_refuses_bad_configuration_and_says_why(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    """Bad settings stop ``serve`` at once with exit code 2 and a one-line reason."""
    result = subprocess.run(
        [sys.executable, "-m", "taskplatform", "serve"],
        env=clean_environ(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "Background on this error" not in result.stderr


def test_a_misspelt_variable_is_named_with_the_one_meant(tmp_path: Path) -> None:
    """TASKPLATFORM_DATABSE_URL was ignored without a word, and the command used the default
    ./taskplatform.db; it still is ignored (other versions' variables may be about), but said."""
    result = _taskplatform(
        "db",
        "upgrade",
        env={
            "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TASKPLATFORM_DATABSE_URL": f"sqlite:///{tmp_path / 'typo.db'}",
            "TASKPLATFORM_NOTHING_LIKE_IT": "1",
            "TASKPLATFORM_URL": "http://127.0.0.1:8000",  # the tasks commands'
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: TASKPLATFORM_DATABSE_URL is not a setting and is ignored "
        "(did you mean TASKPLATFORM_DATABASE_URL?)",
        "warning: TASKPLATFORM_NOTHING_LIKE_IT is not a setting and is ignored",
    ]


def test_the_client_key_given_to_a_server_without_its_keys_is_said_to_be_ignored(
    tmp_path: Path,
) -> None:
    """TASKPLATFORM_API_KEY (the tasks commands' key) where TASKPLATFORM_API_KEYS was meant:
    the server ran with no key, without a word, as the client's variables are never unknown
    (found in review). With the server's keys set too, nothing is said."""
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}
    key = "0123456789abcdef0123"
    alone = _taskplatform("db", "upgrade", env={**env, "TASKPLATFORM_API_KEY": key})
    assert alone.returncode == 0, alone.stderr
    assert alone.stderr.splitlines() == [
        "warning: TASKPLATFORM_API_KEY is the key the `tasks` commands send, not a setting of "
        "this command, and is ignored here: a server's keys are TASKPLATFORM_API_KEYS"
    ]
    keys_file = tmp_path / "keys"
    keys_file.write_text(key + "\n")
    for server_keys in (
        {"TASKPLATFORM_API_KEYS": key},
        {"TASKPLATFORM_API_KEYS_FILE": str(keys_file)},
    ):
        both = _taskplatform(
            "db", "upgrade", env={**env, "TASKPLATFORM_API_KEY": key, **server_keys}
        )
        assert both.returncode == 0, both.stderr
        assert both.stderr == ""


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45])
def test_ctrl_c_while_the_command_starts_is_quiet(delay: float, tmp_path: Path) -> None:
    """A Ctrl-C in the first half second, while Python imports the command's libraries, printed
    a 20 to 50 line KeyboardInterrupt traceback; it stops as quietly as one later does. (One in
    the interpreter's own first tens of milliseconds, before any of ours runs, still prints.)"""
    process = subprocess.Popen(
        [sys.executable, "-m", "taskplatform", "serve", "--port", "0"],
        env=clean_environ({"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job ignores SIGINT, and its children inherit that: a terminal's
        # Ctrl-C reaches a process with the default disposition.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    # -SIGINT: Python ends by the signal itself (the shell's convention) when the interrupt came
    # while an extension module ran its init code, even though the entry point caught it.
    assert process.returncode in (130, -signal.SIGINT), stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


@pytest.mark.parametrize("command", [["db", "upgrade"], ["serve"], ["worker"]])
@pytest.mark.parametrize(
    ("database_url", "message"),
    [
        ("sqlite:////proc/no/such/dir/x.db", "cannot create the SQLite database's folder"),
        (  # the server's words alone: not SQLAlchemy's wrapping and its "Background" line
            "postgresql://postgres@127.0.0.1:5432/no_such_db_x",
            'error: cannot use the PostgreSQL database: database "no_such_db_x" does not exist '
            "(create it first, as with createdb, or fix TASKPLATFORM_DATABASE_URL)\n",
        ),
        ("postgresql://postgres@127.0.0.1:{closed}/x", "error: cannot reach the PostgreSQL"),
    ],
)
def test_a_database_that_cannot_be_reached_or_used_exits_3_as_a_queue_does(
    command: list[str], database_url: str, message: str, tmp_path: Path
) -> None:
    """Settings that are fine but name a database that is down or cannot be used: one line and
    exit code 3, as for a Redis queue that does not answer, not 2, which says the settings are
    wrong (a supervisor retries the one, not the other). PostgreSQL's were 2, Redis's 3."""
    database_url = database_url.format(closed=free_port())
    result = _taskplatform(*command, env={"TASKPLATFORM_DATABASE_URL": database_url})
    assert result.returncode == 3, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("parameter", "words"),
    [
        ("command_timeout=5", 'unrecognized configuration parameter "command_timeout"'),
        ("options=-c%20statement_timeout%3Dabc", 'invalid value for parameter "statement_timeout"'),
    ],
)
def test_a_url_parameter_the_server_refuses_exits_2_as_settings_do(
    parameter: str, words: str, tmp_path: Path
) -> None:
    """The server refuses the connection for a parameter of the URL: the settings as written,
    which no retry mends. It exited 3, which a supervisor retries for ever (a newcomer's
    finding); 2 says to fix the settings."""
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": f"{url}?{parameter}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "error: TASKPLATFORM_DATABASE_URL has a parameter the PostgreSQL server does not take: "
    )
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("parameter", "words"),
    [
        ("sslmode=bogus", "`sslmode` parameter must be one of"),
        ("target_session_attrs=bogus", "one of any, primary, standby"),
    ],
)
def test_a_url_parameter_value_the_driver_refuses_exits_2_as_settings_do(
    parameter: str, words: str, tmp_path: Path
) -> None:
    """asyncpg refuses such a value before it connects: the settings as written, which no retry
    mends. It exited 3 ("cannot use the PostgreSQL database"), which a supervisor retries for
    ever, and named target_session_attrs' values by "<built-in method values of ...>"."""
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": f"{url}?{parameter}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: TASKPLATFORM_DATABASE_URL: "), result.stderr
    assert words in result.stderr
    assert "built-in method" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_database_that_accepts_but_never_answers_says_which_timeout(tmp_path: Path) -> None:
    """A port that takes the connection and stays silent (a stalled network, another
    service's port): the line ended in "cannot reach the PostgreSQL database: " and nothing,
    a TimeoutError having no words of its own (a newcomer's finding)."""
    stalled = Proxy("127.0.0.1", 5432).start()
    stalled.stall()
    try:
        result = _taskplatform(
            "db",
            "upgrade",
            env={
                "TASKPLATFORM_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{stalled.port}/x",
                "TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
            },
        )
    finally:
        stalled.stop()
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip() == (
        "error: cannot reach the PostgreSQL database: no answer within the connect timeout "
        "(TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_SECONDS, now 1 s, or the URL's connect_timeout=)"
    )


def test_a_certificate_file_the_url_names_that_is_missing_is_named(tmp_path: Path) -> None:
    """``sslrootcert=`` naming a file that is not there, a folder, or a file that holds no
    certificate: the line said only "cannot reach the PostgreSQL database: [Errno 2] No such
    file or directory" (or "Is a directory", or OpenSSL's words), with no file, and exit code 3,
    which a supervisor retries for ever as if the database were down (found in review)."""
    missing, folder, not_a_certificate = tmp_path / "no-such-ca.pem", tmp_path, tmp_path / "x"
    not_a_certificate.write_text("hello\n")
    cases = [
        (missing, "cannot be read: [Errno 2] No such file or directory"),
        (folder, "cannot be read: [Errno 21] Is a directory"),
        (not_a_certificate, "cannot be used: [X509: NO_CERTIFICATE_OR_CRL_FOUND]"),
    ]
    for path, said in cases:
        url = f"postgresql://postgres@127.0.0.1:5432/no_such_db_x?sslmode=verify-ca&sslrootcert={path}"
        result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": url})
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            f"error: TASKPLATFORM_DATABASE_URL: sslrootcert={path} {said}"
        ), result.stderr
    # A client certificate and key that are not PEM: OpenSSL says only "PEM lib".
    pair = f"sslcert={not_a_certificate}&sslkey={not_a_certificate}"
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x?sslmode=require&{pair}"
    result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": url})
    assert result.returncode == 2, result.stderr
    assert f"sslkey={not_a_certificate} cannot be used: [SSL] PEM lib" in result.stderr


@pytest.mark.parametrize(
    "query", ["sslmode=disable&sslrootcert=/nonexistent/ca.pem", "passfile=/x"]
)
def test_a_database_that_is_down_exits_3_whatever_files_the_url_names(
    query: str, tmp_path: Path
) -> None:
    """A file the URL names but the connection never reads (sslmode=disable, a passfile asyncpg
    skips when missing) was blamed for a refused connection, exit 2, and a supervisor never
    restarted the server once the database was back (found in review)."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x?{query}"
    result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": url})
    assert result.returncode == 3, result.stderr
    assert "cannot reach the PostgreSQL database" in result.stderr
    # A Unix socket's folder that is not there fails as "No such file" too: not the folder an
    # unused sslrootcert names.
    socket_url = f"postgresql://postgres@/x?host={tmp_path / 'no-sockets'}&sslrootcert={tmp_path}"
    result = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": socket_url})
    assert result.returncode == 3, result.stderr


@pytest.mark.parametrize("command", [["db", "upgrade"], ["serve"], ["worker"]])
def test_a_sqlite_file_that_cannot_be_used_is_one_line_not_a_traceback(
    command: list[str], tmp_path: Path
) -> None:
    """A file that is not a database, or a folder, ended each command in a 235-line
    traceback; a read-only file (another user's) did too, in each API process of serve."""
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("hello\n")
    folder = tmp_path / "folder.db"
    folder.mkdir()
    cases = [
        (not_a_database, "file is not a database"),
        (folder, "unable to open database file (it is a folder: name a file in it"),
    ]
    for path, reason in cases:
        result = _taskplatform(*command, env={"TASKPLATFORM_DATABASE_URL": f"sqlite:///{path}"})
        assert result.returncode == 3, result.stderr
        assert f"error: cannot use the SQLite database {path}: {reason}" in result.stderr
        assert "Traceback" not in result.stderr
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return  # a read-only file needs a user the permission bits bind
    shared = Path(tempfile.mkdtemp(prefix="taskplatform-ro-"))  # pytest's folders are 0700
    try:
        read_only = shared / "tasks.db"
        created = _taskplatform(
            "db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": f"sqlite:///{read_only}"}
        )
        assert created.returncode == 0, created.stderr
        shared.chmod(0o755)
        read_only.chmod(0o644)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = subprocess.run(
            [*nobody, sys.executable, "-m", "taskplatform", *command],
            env=clean_environ({"TASKPLATFORM_DATABASE_URL": f"sqlite:///{read_only}"}),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(shared)
    assert "Traceback" not in result.stderr, result.stderr
    if command != ["db", "upgrade"]:  # which has nothing to write: the schema is current
        assert result.returncode == 3, result.stderr
        assert "attempt to write a readonly database" in result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize(
    ("queue_url", "reason"),
    [
        ("redis://127.0.0.1:{closed}/9", "Connect call failed"),
        ("redis://127.0.0.1:6379/99", "DB index is out of range"),
    ],
)
def test_a_redis_queue_that_does_not_answer_stops_the_start(
    command: str, queue_url: str, reason: str, tmp_path: Path
) -> None:
    """A Redis queue on a port where nothing listens, or at a database index past the server's:
    one line and exit code 3, where the server started and answered 503 to every call."""
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TASKPLATFORM_QUEUE_URL": queue_url.format(closed=free_port()),
        "TASKPLATFORM_PORT": str(free_port()),
    }
    result = _taskplatform(command, env=env)
    assert result.returncode == 3, result.stderr
    name = {"serve": "server", "worker": "worker"}[command]
    assert f"error: cannot start the {name}: the Redis queue failed: " in result.stderr
    assert reason in result.stderr
    assert "(the queue at TASKPLATFORM_QUEUE_URL, redis://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
    # One line, not the backend's warning first and then the same failure again.
    assert result.stderr.count(reason) == 1, result.stderr


@contextlib.contextmanager
def _own_redis(*options: str) -> Iterator[str]:
    """A ``redis-server`` of the test's own on a free loopback port, without persistence, run
    with ``options`` (settings the shared one must not be given); yields its URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"redis://127.0.0.1:{port}/0"

        async def answers() -> bool:
            client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
            try:
                return bool(await client.ping())
            except redis.exceptions.ConnectionError:
                return False
            finally:
                await client.aclose()

        deadline = time.monotonic() + 10
        while not asyncio.run(answers()):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_redis_that_evicts_any_key_stops_the_start(command: str, tmp_path: Path) -> None:
    """A Redis with ``maxmemory-policy allkeys-lru`` (a cache's setting) evicts task hashes once
    full: tasks whose create was answered 201 vanished without a word. One line naming the
    policy and its fix, and exit code 3, as for a queue that does not answer."""
    with _own_redis("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru") as url:
        env = {
            "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TASKPLATFORM_QUEUE_URL": url,
            "TASKPLATFORM_PORT": str(free_port()),
        }
        result = _taskplatform(command, env=env)
    assert result.returncode == 3, result.stderr
    name = {"serve": "server", "worker": "worker"}[command]
    assert (
        f"error: cannot start the {name}: the Redis queue's maxmemory-policy is allkeys-lru, "
        "which evicts queued tasks once Redis is full and loses them; set maxmemory-policy "
        f"noeviction (the queue at TASKPLATFORM_QUEUE_URL, {url})"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("maxmemory-policy is") == 1, result.stderr


def test_a_redis_that_evicts_keys_with_a_ttl_is_warned_of(tmp_path: Path) -> None:
    """``volatile-lru`` (the default of several hosted Redis services) evicts only keys with a
    TTL, the idempotency keys: the server starts, and says what is at stake."""
    with _own_redis("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru") as url:
        env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}
        server = Server({**env, "TASKPLATFORM_QUEUE_URL": url}, tmp_path / "server.log").start()
        try:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                create(http, "http://127.0.0.1:9/")
        finally:
            server.stop()
    assert (
        "the Redis queue's maxmemory-policy is volatile-lru: once Redis is full it evicts the "
        "keys that have a TTL, the idempotency keys, and a create repeated with its "
        "Idempotency-Key can then make a second task; set maxmemory-policy noeviction"
    ) in server.log()


def test_serve_logs_where_its_store_and_queue_are(tmp_path: Path) -> None:
    """The first line names the SQLite file by its absolute path (a relative URL depends on the
    folder serve ran in) and a Redis queue without its password."""
    env = {
        "TASKPLATFORM_DATABASE_URL": "sqlite:///./here.db",
        "TASKPLATFORM_QUEUE_URL": "redis://:s3cret@127.0.0.1:6379/9",
    }
    server = Server(env, tmp_path / "server.log", cwd=tmp_path)
    try:
        server.start()
    finally:
        server.stop()
    expected = f"store: SQLite file {tmp_path / 'here.db'}; queue: redis://127.0.0.1:6379/9"
    assert expected in server.log()
    assert "s3cret" not in server.log()


@pytest.mark.parametrize(
    ("module", "extra", "queue_url"),
    [("redis", "redis", "redis://127.0.0.1:6379/15"), ("asyncpg", "postgres", None)],
)
def test_a_missing_driver_stops_serve_with_the_extra_to_install(
    module: str, extra: str, queue_url: str | None, tmp_path: Path
) -> None:
    """As if the driver were not installed: one line naming the extra, exit 2, no traceback."""
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}
    if module == "asyncpg":
        env["TASKPLATFORM_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    if queue_url is not None:
        env["TASKPLATFORM_QUEUE_URL"] = queue_url
    hide = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['taskplatform', 'serve']; "
        "from taskplatform.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide],
        env=clean_environ(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert f"pip install 'taskplatform[{extra}]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_creates_the_schema_and_serve_refuses_an_unknown_revision(
    tmp_path: Path,
) -> None:
    """``db upgrade`` makes the schema; a revision from a newer release stops serve and upgrade."""
    database = tmp_path / "nested" / "dir" / "tp.db"
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{database}"}
    result = _taskplatform("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert f"schema at revision {head_revision()}" in result.stdout
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert {"tasks", "queued_tasks", "task_executions", "alembic_version"} <= tables
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for command in (["db", "upgrade"], ["serve", "--port", "0"]):
        refused = _taskplatform(*command, env=env)
        assert refused.returncode == 3, refused.stderr  # the database cannot be used
        assert "'9999_from_the_future'" in refused.stderr
        assert "does not know" in refused.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_that_start_at_once_on_a_new_database_all_migrate_it(
    backend: str, tmp_path: Path
) -> None:
    """Four ``db upgrade`` (as ``serve --workers 4`` would) on one new database, twice: each
    exits 0 and the schema is made once.

    On SQLite another connection holds the file's write lock while they start, so all four reach
    the migration before any can write: before the migration took that lock first, the ones after
    the first failed with "table ... already exists" and a traceback.
    """
    for round_ in range(2):
        env = backend_env(backend, tmp_path / f"round-{round_}")
        holder = None
        if backend == "sqlite":
            path = env["TASKPLATFORM_DATABASE_URL"].removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True)
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "taskplatform", "db", "upgrade"],
                env=clean_environ(env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        if holder is not None:
            time.sleep(2.5)  # the processes start (about a second) and wait on the lock (5 s)
            holder.execute("ROLLBACK")
            holder.close()
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            assert f"schema at revision {head_revision()}" in out


def test_serve_refuses_an_unknown_revision_on_postgres(tmp_path: Path) -> None:
    """The same refusal on PostgreSQL, whose schema Alembic keeps in the same table."""
    env = backend_env("postgres", tmp_path)
    assert _taskplatform("db", "upgrade", env=env).returncode == 0

    async def from_the_future() -> None:
        url = env["TASKPLATFORM_DATABASE_URL"]
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("UPDATE alembic_version SET version_num = '9999_future'")
        finally:
            await connection.close()

    asyncio.run(from_the_future())
    for command in (["db", "upgrade"], ["serve", "--port", "0"]):
        refused = _taskplatform(*command, env=env)
        assert refused.returncode == 3, refused.stderr
        assert "'9999_future'" in refused.stderr
        assert "does not know" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_a_postgres_url_with_libpq_parameters_is_read_as_libpq_reads_it(tmp_path: Path) -> None:
    """Managed PostgreSQL hands out URLs with libpq's parameters (``sslmode=require``). Each of
    them made every command end in a 300-line traceback ("connect() got an unexpected keyword
    argument 'sslmode'"): SQLAlchemy passed them to asyncpg as keywords.

    Now asyncpg reads the URL: the server starts with ``sslmode=disable``, ``application_name``,
    ``connect_timeout`` and ``options``, and its connections carry the name; ``sslmode=require``
    against a server without TLS is a one-line refusal."""
    url = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    name = f"tp-{tmp_path.name[-12:]}"
    query = f"sslmode=disable&application_name={name}&connect_timeout=5"
    query += "&options=-c%20statement_timeout%3D54321"
    server = Server({"TASKPLATFORM_DATABASE_URL": f"{url}?{query}"}, tmp_path / "s.log").start()
    try:
        response = httpx.post(
            f"{server.url}/api/tasks",
            json={"taskData": {}, "callbackUrl": "http://127.0.0.1:9/"},
        )
        assert response.status_code == 201, response.text

        async def session_names() -> set[str]:
            connection = await asyncpg.connect(url)
            try:
                rows = await connection.fetch(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = $1",
                    url.rsplit("/", 1)[1],
                )
            finally:
                await connection.close()
            return {str(row["application_name"]) for row in rows}

        assert name in asyncio.run(session_names())
    finally:
        server.stop()

    async def ssl_is_off() -> bool:
        connection = await asyncpg.connect(url)
        try:
            return str(await connection.fetchval("SHOW ssl")) == "off"
        finally:
            await connection.close()

    if asyncio.run(ssl_is_off()):
        refused = _taskplatform(
            "db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": f"{url}?sslmode=require"}
        )
        assert refused.returncode == 3, refused.stderr
        assert "rejected SSL upgrade" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_demo_receiver_says_where_it_listens_and_logs_each_callback(tmp_path: Path) -> None:
    """The quick start's receiver: a newcomer must see that it is up, then each callback."""
    port = free_port()
    log_path = tmp_path / "receiver.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskplatform", "receiver", "--port", str(port)],
            env=clean_environ({}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while f"127.0.0.1:{port}" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"running on http://127.0.0.1:{port}" in log_path.read_text()
        response = httpx.post(
            f"http://127.0.0.1:{port}/orders",
            json={"orderId": 42},
            headers={"X-Task-Id": "t-1", "X-Task-Attempt": "1"},
        )
        assert response.status_code == 200
        assert response.json() == {"received": True, "taskId": "t-1", "attempt": 1, "bytes": 14}
        time.sleep(0.2)
        assert "callback /orders task=t-1 attempt=1" in log_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_switching_the_queue_to_redis_moves_the_tasks_left_in_the_database(
    tmp_path: Path,
) -> None:
    """The way up by configuration alone: tasks still Queued in SQLite's own queue when
    TASKPLATFORM_QUEUE_URL points at Redis were read by nothing (GET 404, never dequeued; the
    server only logged how many). They move into Redis at start, each at its place, a task
    scheduled for later with its time, once across the API processes; a task already taken
    stays where it is, and tasks created after the switch queue behind them."""
    first = backend_env("sqlite", tmp_path / "a")
    server = Server(first, tmp_path / "first.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            low = create(http, "http://127.0.0.1:9/x")
            high = create(http, "http://127.0.0.1:9/x", priority=5)
            later = create(http, "http://127.0.0.1:9/x", delaySeconds=3600)
            taken = create(http, "http://127.0.0.1:9/x", priority=9)
            assert http.get("/api/tasks/dequeue").json()["taskId"] == taken
    finally:
        server.stop()
    switched = {
        **backend_env("redis+sqlite", tmp_path / "b"),
        "TASKPLATFORM_DATABASE_URL": first["TASKPLATFORM_DATABASE_URL"],
    }
    server = Server(switched, tmp_path / "switched.log", "--workers", "2").start()
    pattern = re.compile(r"moved (\d+) tasks from the database's own queue into the queue at")
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for task_id in (low, high, later):  # moved or not yet, found all the same
                assert http.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
            assert http.get(f"/api/tasks/{taken}").json()["status"] == "Dequeued"
            deadline = time.monotonic() + 20  # moved in the background, just after the start
            while time.monotonic() < deadline:
                if sum(int(count) for count in pattern.findall(server.log())) == 3:
                    break
                time.sleep(0.05)
            assert http.get("/api/tasks/dequeue").json()["taskId"] == high
            newer = create(http, "http://127.0.0.1:9/x")
            assert http.get("/api/tasks/dequeue").json()["taskId"] == low
            assert http.get("/api/tasks/dequeue").json()["taskId"] == newer
            assert http.get("/api/tasks/dequeue").status_code == 404  # later is not due
            waiting = http.get(f"/api/tasks/{later}").json()
            assert (waiting["status"], waiting["scheduledAt"] is not None) == ("Queued", True)
            assert http.get("/api/stats").json()["queueDepth"] == 1
        log = server.log()
    finally:
        server.stop()
    assert sum(int(count) for count in pattern.findall(log)) == 3, log


def _snapshot(server: Server) -> dict[str, Any]:
    """Everything a client can read of the tasks, their attempts and the queues."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        tasks = http.get("/api/tasks", params={"limit": 100}).json()["items"]
        return {
            "tasks": tasks,
            "executions": {
                task["taskId"]: http.get(f"/api/tasks/{task['taskId']}/executions").json()
                for task in tasks
            },
            "queues": [
                {key: queue[key] for key in ("name", "paused", "depth")}
                for queue in http.get("/api/queues").json()["items"]
            ],
            "stats": http.get("/api/stats").json(),
        }


@pytest.mark.parametrize(("source", "target"), [("sqlite", "postgres"), ("postgres", "sqlite")])
def test_db_copy_moves_a_store_with_every_task_into_another_database(
    source: str, target: str, tmp_path: Path, receiver: Receiver
) -> None:
    """Tasks in every status, the attempt log, the database's queue in its order, a task
    scheduled for later, idempotency keys and a paused queue: after ``db copy`` and a restart
    on the other database a client reads the same, a key replays, and a new task queues after
    the copied ones of its priority. A copy while a server uses the source, and a second copy
    into the now full target, are refused."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    before_env = backend_env(source, tmp_path / "a")
    after_env = backend_env(target, tmp_path / "b")
    if target == "postgres":  # libpq takes a password there too: it must not be shown
        after_env["TASKPLATFORM_DATABASE_URL"] += "?password=s3cret"
    first = Server(before_env, tmp_path / "source.log").start()
    body = {"taskData": {"n": 1}, "callbackUrl": receiver.url("/ok")}
    with httpx.Client(base_url=first.url, timeout=30) as http:
        keyed = http.post("/api/tasks", json=body, headers={"Idempotency-Key": "k-1"}).json()
        for priority in (5, 5, 0):
            create(http, receiver.url("/ok"), priority=priority)
        create(http, receiver.url("/ok"), delaySeconds=3600)
        done = http.get("/api/tasks/dequeue").json()["taskId"]  # the first of priority 5
        assert http.post(f"/api/tasks/{done}/execute").status_code == 200
        failing = create(http, receiver.url("/status/500"), priority=9, maxRetries=0)
        assert http.get("/api/tasks/dequeue").json()["taskId"] == failing
        assert http.post(f"/api/tasks/{failing}/execute").status_code == 200
        assert http.post("/api/queues/emails/pause").status_code == 200
    before = _snapshot(first)
    live = _taskplatform(
        "db", "copy", "--to", after_env["TASKPLATFORM_DATABASE_URL"], env=before_env
    )
    assert live.returncode == 1, live.stderr  # its later writes would be missing from a copy
    assert "error: 1 process used the source in the last 30 s (" in live.stderr
    assert "stop every server and worker on it first" in live.stderr
    first.stop()  # a clean stop takes its row out: no wait

    copied = _taskplatform(
        "db", "copy", "--to", after_env["TASKPLATFORM_DATABASE_URL"], env=before_env
    )
    assert copied.returncode == 0, copied.stderr
    assert "s3cret" not in copied.stderr + copied.stdout
    assert "copied tasks 2, task_executions 2, queued_tasks 4, idempotency_keys 1" in copied.stdout

    second = Server(after_env, tmp_path / "target.log").start()
    try:
        assert _snapshot(second) == before
        with httpx.Client(base_url=second.url, timeout=30) as http:
            replay = http.post("/api/tasks", json=body, headers={"Idempotency-Key": "k-1"})
            assert replay.headers.get("Idempotent-Replayed") == "true"
            assert replay.json()["taskId"] == keyed["taskId"]
            newest = create(http, receiver.url("/ok"), priority=5)
            order = [http.get("/api/tasks/dequeue").json()["taskId"] for _ in range(4)]
            assert order[1] == newest  # after the copied task of priority 5 still queued
            assert order[2] == keyed["taskId"]  # the first created of priority 0
            assert http.get("/api/tasks/dequeue").status_code == 404  # the delayed one: not due
            paused = {q["name"]: q["paused"] for q in http.get("/api/queues").json()["items"]}
            assert paused["emails"] is True
    finally:
        second.stop()
    again = _taskplatform(
        "db", "copy", "--to", after_env["TASKPLATFORM_DATABASE_URL"], env=before_env
    )
    assert again.returncode == 1
    assert "the target database already holds rows" in again.stderr
    garbage = _taskplatform("db", "copy", "--to", "garbage", env=before_env)
    assert garbage.returncode == 2
    assert "--to has the scheme 'garbage'" in garbage.stderr
    assert "Traceback" not in garbage.stderr
    typo = tmp_path / "no-such.db"  # a mistyped source was made, empty, and "copied"
    missing = _taskplatform(
        "db",
        "copy",
        "--to",
        f"sqlite:///{tmp_path / 'new.db'}",
        env={"TASKPLATFORM_DATABASE_URL": f"sqlite:///{typo}"},
    )
    assert missing.returncode == 2
    assert f"error: the SQLite file {typo} (" in missing.stderr
    assert "does not exist: nothing to copy" in missing.stderr
    assert not typo.exists()
    assert not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_processes_on_one_database_with_different_queues_are_told(
    store: str, tmp_path: Path
) -> None:
    """A server on the database's own queue and one on Redis, over one store, each see only
    their own tasks: the one that starts second says so at once, naming both queues; a third
    with the first one's queue says nothing."""
    database = backend_env(store, tmp_path)
    redis = backend_env("redis+sqlite", tmp_path / "unused")
    on_redis = {
        **database,
        "TASKPLATFORM_QUEUE_URL": redis["TASKPLATFORM_QUEUE_URL"],
        "TASKPLATFORM_REDIS_KEY_PREFIX": redis["TASKPLATFORM_REDIS_KEY_PREFIX"],
    }
    first = Server(database, tmp_path / "first.log").start()
    second = Server(on_redis, tmp_path / "second.log")
    third = Server(database, tmp_path / "third.log")
    try:
        second.start()
        # Read now: the first's next heartbeat, 10 s after its start, sees the second (the
        # three starts took that long once, on a busy machine).
        first_log = first.log()
        third.start()
    finally:
        for server in (third, second, first):
            server.stop()
    warnings = [line for line in second.log().splitlines() if "uses the queue at" in line]
    assert len(warnings) == 1, second.log()
    assert "uses the queue at the store's database, this one" in warnings[0]
    prefix = redis["TASKPLATFORM_REDIS_KEY_PREFIX"]
    assert f"the queue at {REDIS_URL} (key prefix {prefix}): each sees only" in warnings[0]
    assert "uses the queue at redis://" in third.log()  # the second one, seen by the third
    assert "uses the queue at" not in first_log  # it started alone


def test_a_switch_of_the_queue_after_a_clean_stop_warns_of_no_process(tmp_path: Path) -> None:
    """The README's switch: stop the server on the database's queue, start one on Redis. The
    stopped process's row stayed in the processes table, and the new one warned of it as if it
    still ran on the old queue; a clean stop now takes it out (a killed one ages out)."""
    database = backend_env("sqlite", tmp_path)
    redis = backend_env("redis+sqlite", tmp_path / "unused")
    on_redis = {
        **database,
        "TASKPLATFORM_QUEUE_URL": redis["TASKPLATFORM_QUEUE_URL"],
        "TASKPLATFORM_REDIS_KEY_PREFIX": redis["TASKPLATFORM_REDIS_KEY_PREFIX"],
    }
    Server(database, tmp_path / "before.log").start().stop()
    path = database["TASKPLATFORM_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM processes").fetchone() == (0,)
    after = Server(on_redis, tmp_path / "after.log").start()
    after.stop()
    assert "uses the queue at" not in after.log()


def test_two_databases_on_one_redis_queue_are_told(tmp_path: Path) -> None:
    """Servers of two SQLite files naming one Redis queue (URL and key prefix) take each
    other's tasks into their own tables: the one that starts second names the first one's
    store at once. Stopped cleanly, both leave the queue's list of stores, so a third database
    started on the queue afterwards (a store moved by ``db copy``) hears nothing."""
    queue = backend_env("redis+sqlite", tmp_path / "a")
    a_env = {**queue, "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    b_env = {**queue, "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    c_env = {**queue, "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    a = Server(a_env, tmp_path / "a.log").start()
    b = Server(b_env, tmp_path / "b.log")
    try:
        b.start()
    finally:
        b.stop()
        a.stop()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        (a_id,) = conn.execute("SELECT store_id FROM store_identity").fetchone()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        (b_id,) = conn.execute("SELECT store_id FROM store_identity").fetchone()
    assert a_id != b_id
    warnings = [line for line in b.log().splitlines() if "also serves another database" in line]
    assert len(warnings) == 1, b.log()
    prefix = queue["TASKPLATFORM_REDIS_KEY_PREFIX"]
    assert f"the queue at {REDIS_URL} (key prefix {prefix}) also serves" in warnings[0]
    assert f"(store {a_id}, " in warnings[0]
    assert f"this one is store {b_id})" in warnings[0]
    assert "also serves another database" not in a.log()  # its next heartbeat is 10 s away
    c = Server(c_env, tmp_path / "c.log").start()
    c.stop()
    assert "also serves another database" not in c.log(), c.log()
    again = Server(b_env, tmp_path / "b2.log").start()  # the same database: no warning either
    again.stop()
    assert "also serves another database" not in again.log(), again.log()


def test_serve_refuses_a_metrics_directory_it_cannot_use_in_one_line(tmp_path: Path) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's own variable, which ``serve --workers
    N`` honours) naming no directory: each worker ended its start in a 60-line traceback, and
    ``serve`` exited 0. It is one line and exit 2, as any other configuration error."""
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TASKPLATFORM_PORT": str(free_port()),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "no-such-dir"),
    }
    for workers in ("1", "2"):
        refused = _taskplatform("serve", "--workers", workers, env=env)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "PROMETHEUS_MULTIPROC_DIR" in refused.stderr
        assert "Traceback" not in refused.stderr


def test_serve_removes_the_metrics_folders_of_servers_that_were_killed(tmp_path: Path) -> None:
    """``serve --workers N`` counts metrics in a temporary folder it removes when it stops; a
    server killed rather than stopped (SIGKILL, the OOM killer) left its folder for ever, one
    more at every such start. The next ``serve --workers N`` removes those whose server is
    gone, and keeps the one of a live server and any it cannot tell (found in review)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = temp / f"taskplatform-metrics-{int(ended.stdout)}-abc123"
    live = temp / f"taskplatform-metrics-{os.getpid()}-def456"
    older = temp / "taskplatform-metrics-k2j4h5"  # the form before pids were in the name
    for folder in (dead, live, older):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x" * 1024)
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}", "TMPDIR": str(temp)}
    server = Server(env, tmp_path / "server.log", "--workers", "2").start()
    try:
        assert server.process is not None
        own = [path for path in temp.iterdir() if path not in (live, older)]
        assert [path.name.split("-")[2] for path in own] == [str(server.process.pid)], own
    finally:
        server.stop()
    assert sorted(path.name for path in temp.iterdir()) == sorted([live.name, older.name])


def test_a_percent_in_a_sqlite_url_names_one_file(tmp_path: Path) -> None:
    """``sqlite:///…/my%20data/tasks.db``: the migrations (SQLAlchemy) read the path
    percent-decoded, ``my data/tasks.db``, and the server's own connections read it as
    written: two files, the schema in the one no server used, and ``serve`` stopped with "no
    such table" (found in review). Both read ``my data/tasks.db`` now."""
    url = f"sqlite:///{tmp_path}/my%20data/tasks.db"
    upgraded = _taskplatform("db", "upgrade", env={"TASKPLATFORM_DATABASE_URL": url})
    assert upgraded.returncode == 0, upgraded.stderr
    server = Server({"TASKPLATFORM_DATABASE_URL": url}, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            created = http.post("/api/tasks", json={"taskData": {}, "callbackUrl": "http://a/"})
            assert created.status_code == 201, created.text
    finally:
        server.stop()
    files = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*.db"))
    assert files == ["my data/tasks.db"], files


def test_the_startup_migration_waits_for_the_lock_as_long_as_the_setting_says(
    tmp_path: Path,
) -> None:
    """TASKPLATFORM_SQLITE_BUSY_TIMEOUT_SECONDS is "how long a SQLite writer waits for another
    process's lock". The schema step of every ``serve``, ``worker`` and ``db upgrade`` takes the
    write lock (BEGIN IMMEDIATE) and waited Python's fixed 5 s, whatever it was set to: with
    30 s set, a lock held for 8 s stopped the start with "database is locked" (found in
    review). A lock held 7 s past the 5 s default is waited out now."""
    database = tmp_path / "tp.db"
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{database}",
        "TASKPLATFORM_SQLITE_BUSY_TIMEOUT_SECONDS": "30",
    }
    assert _taskplatform("db", "upgrade", env=env).returncode == 0
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    process = subprocess.Popen(
        [sys.executable, "-m", "taskplatform", "db", "upgrade"],
        env=clean_environ(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(7)
        still_waiting = process.poll() is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _, err = process.communicate(timeout=60)
    assert still_waiting, err
    assert process.returncode == 0, err


@pytest.mark.parametrize("source", ["tasks.db?timeout=10", "data/", ":memory:"])
def test_db_copy_of_a_sqlite_url_the_server_refuses_says_why(tmp_path: Path, source: str) -> None:
    """A SQLite source the server refuses (a query string, a folder, an in-memory database) is
    one line and exit 2, as every other bad URL of this command: a traceback for a while."""
    result = _taskplatform(
        "db",
        "copy",
        "--to",
        f"sqlite:///{tmp_path / 'new.db'}",
        env={"TASKPLATFORM_DATABASE_URL": f"sqlite:///{source}"},
    )
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2, result.stderr


def _sql(url: str, statement: str) -> object:
    async def run() -> object:
        connection = await asyncpg.connect(url)
        try:
            return await connection.fetchval(statement)
        finally:
            await connection.close()

    return asyncio.run(run())


def test_a_refused_db_copy_leaves_both_schemas_as_they_were(tmp_path: Path) -> None:
    """A copy refused because the target holds rows, or because a server uses the source, is
    refused before either schema is changed: both were brought to the newest revision first,
    and an older release's servers then refused the database given by mistake (found in
    review). README: "The target is checked first"."""
    (tmp_path / "a").mkdir()
    source = backend_env("sqlite", tmp_path / "a")
    asyncio.run(migrate.upgrade(source["TASKPLATFORM_DATABASE_URL"], revision="0006"))
    target = backend_env("postgres", tmp_path)["TASKPLATFORM_DATABASE_URL"]
    asyncio.run(migrate.upgrade(target, revision="0006"))
    _sql(
        target,
        "INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url,"
        " max_retries, timeout_seconds, attempts, created_at, updated_at) VALUES"
        " ('01a23e21-6fef-7684-bebd-cdcb94751e87', 1, 'Completed', 0, '{}', 'http://x/', 3, 30,"
        " 1, 1, 2)",
    )
    refused = _taskplatform("db", "copy", "--to", target, env=source)
    assert refused.returncode == 1, refused.stderr
    assert "the target database already holds rows (1 in tasks)" in refused.stderr
    assert _sql(target, "SELECT version_num FROM alembic_version") == "0006"

    (tmp_path / "b").mkdir()
    empty = backend_env("sqlite", tmp_path / "b")["TASKPLATFORM_DATABASE_URL"]
    source_file = tmp_path / "a" / "taskplatform.db"
    now = int(time.time() * 1000)
    with sqlite3.connect(source_file) as connection:  # a running server's heartbeat
        connection.execute(
            "INSERT INTO processes VALUES ('host:123:abc', 'the store''s database', ?, ?)",
            (now - 60_000, now),
        )
    refused = _taskplatform("db", "copy", "--to", empty, env=source)
    assert refused.returncode == 1, refused.stderr
    assert "1 process used the source in the last 30 s (host:123:abc)" in refused.stderr
    with sqlite3.connect(source_file) as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert revision == "0006"
    assert not (tmp_path / "b" / "taskplatform.db").exists()  # nor a target file made


@pytest.mark.parametrize(
    "options",
    [
        ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-info"),
        ("--rename-command", "INFO", ""),
    ],
    ids=["acl-refuses-info", "info-renamed-away"],
)
def test_a_redis_that_refuses_info_still_starts(options: tuple[str, ...], tmp_path: Path) -> None:
    """An ACL user without INFO (``-@dangerous`` holds it), or a Redis that renamed it: the
    eviction policy is unknown, which the log says, and no reason to refuse the start (it
    exited 3; found in review)."""
    with _own_redis(*options) as url:
        env = {
            "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TASKPLATFORM_QUEUE_URL": url,
        }
        server = Server(env, tmp_path / "server.log")
        try:
            server.start()
            with httpx.Client(base_url=server.url, timeout=10) as http:
                create(http, "http://127.0.0.1:9/")
        finally:
            server.stop()
        assert "maxmemory-policy is unknown" in server.log()
