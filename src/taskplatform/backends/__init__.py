"""Backend selection: build the queue and the store named by the settings' URLs.

=========================  =========================  ==================================
TASKPLATFORM_DATABASE_URL  TASKPLATFORM_QUEUE_URL     combination
=========================  =========================  ==================================
``sqlite:///path``         (unset, or the same)       embedded default: one file
``postgresql://…``         (unset, or the same)       queue and store in PostgreSQL
``postgresql://…``         ``redis://…``              Redis queue, PostgreSQL store
``sqlite:///path``         ``redis://…``              Redis queue, SQLite store
=========================  =========================  ==================================

Backend modules are imported only when chosen, so a missing optional driver matters only to those
who choose its backend, and the error names the extra that installs it.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import parse_qsl

from taskplatform.backends.base import Queue, Store, TaskChanges
from taskplatform.faults import Faults
from taskplatform.settings import Settings

__all__ = ["Backends", "ConfigurationError", "Queue", "Store", "TaskChanges", "open_backends"]

logger = logging.getLogger(__name__)

_EXTRAS = {"asyncpg": "postgres", "redis": "redis"}


class ConfigurationError(Exception):
    """The settings name a backend that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Backends:
    """The queue and store one service uses; when the queue is elsewhere (Redis), also the
    store database's own queue, whose tasks a switch left behind (moved by
    ``TaskService.adopt_database_queue``). It shares the store's connections: closing the store
    closes it."""

    queue: Queue
    store: Store
    database_queue: Queue | None = None

    async def close(self) -> None:
        """Close both backends (a shared database is closed once)."""
        await self.queue.close()
        await self.store.close()


def scheme(url: str) -> str:
    """Return the kind of ``url``: ``sqlite``, ``postgresql``, ``redis``, or its raw scheme."""
    name = url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else url
    return {"postgres": "postgresql", "rediss": "redis"}.get(name, name)


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = _EXTRAS.get(module.split(".", 1)[0], module)
        raise ConfigurationError(
            f"this backend needs the {module!r} package, which is not installed: "
            f"pip install 'taskplatform[{extra}]'"
        ) from exc


def _require_drivers(store_kind: str, queue_kind: str) -> None:
    for kind, module in (("postgresql", "asyncpg"), ("redis", "redis")):
        if kind in (store_kind, queue_kind):
            _require(module)


def check_urls(settings: Settings) -> tuple[str, str]:
    """Return the kinds of the store and the queue (as :func:`scheme` names them).

    Raises:
        ConfigurationError: a scheme or combination taskplatform does not support, a missing
            driver, or a URL its driver would misread.
    """
    store, queue = scheme(settings.database_url), scheme(settings.resolved_queue_url())
    if store not in ("sqlite", "postgresql"):
        raise ConfigurationError(
            f"TASKPLATFORM_DATABASE_URL has the scheme {store!r}, which taskplatform does not "
            "support as a store; use sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    if queue not in ("sqlite", "postgresql", "redis"):
        raise ConfigurationError(
            f"TASKPLATFORM_QUEUE_URL has the scheme {queue!r}, which taskplatform does not "
            "support as a queue; use redis://host:6379/0, or leave it unset to keep the queue "
            "in the database"
        )
    if queue != "redis" and settings.resolved_queue_url() != settings.database_url:
        raise ConfigurationError(
            "a SQL queue must live in the same database as the store: leave "
            "TASKPLATFORM_QUEUE_URL unset (or equal to TASKPLATFORM_DATABASE_URL), or use redis://"
        )
    if store == "sqlite":
        from taskplatform.backends.sqlite import sqlite_path

        try:
            sqlite_path(settings.database_url)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
    if queue == "redis":
        _check_redis_database(settings.resolved_queue_url())
    # Every driver, the queue's too: `serve` checks first, so a missing one is a one-line
    # message naming the extra rather than a traceback from the server's startup.
    _require_drivers(store, queue)
    if queue == "redis":
        _check_redis_options(settings.resolved_queue_url())
    if store == "postgresql":
        from taskplatform.backends.postgres import driver_dsn

        try:
            driver_dsn(settings.database_url)
        except ValueError as exc:
            raise ConfigurationError(f"TASKPLATFORM_DATABASE_URL: {exc}") from exc
    return store, queue


def _check_redis_database(url: str) -> None:
    # redis-py reads a path that is not a number as database 0: a typo would then put the queue
    # into whatever another application keeps there. Only what follows the last "@" is read (and
    # quoted in a message): a password may hold "/", "?" or "#".
    location = url.partition("://")[2].rpartition("@")[2]
    address, _, query = location.partition("?")
    path = address.partition("/")[2]
    databases = [value for name, value in parse_qsl(query, keep_blank_values=True) if name == "db"]
    if path not in ("", "/"):
        databases.insert(0, path.removesuffix("/"))
    for database in databases:
        if re.fullmatch(r"[0-9]+", database) is None:
            raise ConfigurationError(
                f"TASKPLATFORM_QUEUE_URL names the Redis database {database!r}: a Redis database "
                "is a number, as in redis://host:6379/0"
            )
    if len(databases) > 1:
        raise ConfigurationError(
            "TASKPLATFORM_QUEUE_URL names the Redis database twice (in its path and as ?db=): "
            "keep one"
        )


def _check_redis_options(url: str) -> None:
    """Have redis-py read ``url`` and build (not open) a connection of it, as the queue will.

    redis-py reads a URL's options only when it makes a connection: an unknown one
    (``?foo=bar``), a value it cannot read (``?socket_timeout=abc``) or an address it cannot
    parse (``[::1:6379``) would end the server's start, or every request, in a traceback.

    Raises:
        ConfigurationError: redis-py refuses it; the message says why, without the URL (it may
            hold a password).
    """
    import redis.asyncio as aioredis

    try:
        aioredis.ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '([^']*)'", str(exc))
        option = repr(unknown[1]) if unknown else "an option"
        raise ConfigurationError(
            f"TASKPLATFORM_QUEUE_URL has {option}, which redis-py does not take"
        ) from exc
    except ValueError as exc:
        raise ConfigurationError(f"TASKPLATFORM_QUEUE_URL: {exc}") from exc


async def prepare_schema(settings: Settings) -> None:
    """Create or upgrade the SQL schema of the store's database (Alembic).

    Raises:
        ConfigurationError: an unsupported URL or a missing driver.
        SchemaError: the database is at a revision this code does not know.
        BackendUnavailable: the database cannot be reached, or a SQLite file cannot be used
            (not a database, read-only, a folder).
    """
    from sqlalchemy.exc import DBAPIError

    from taskplatform.backends import migrate
    from taskplatform.exceptions import BackendUnavailable

    store, queue = check_urls(settings)
    url, timeout = settings.database_url, settings.database_connect_timeout_seconds
    if store == "sqlite":
        from taskplatform.backends.sqlite import sqlite_path

        try:
            await migrate.upgrade(
                url,
                busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
                dequeue_lease_seconds=settings.dequeue_lease_seconds,
            )
        except DBAPIError as exc:  # not a database, read-only, a folder: the file's fault
            path = url.partition(":///")[2]
            why = _sqlite_refusal(sqlite_path(url), exc.orig)
            raise BackendUnavailable(f"cannot use the SQLite database {path}: {why}") from exc
    else:
        try:
            await migrate.upgrade(
                url,
                connect_timeout_seconds=timeout,
                dequeue_lease_seconds=settings.dequeue_lease_seconds,
            )
        except (OSError, TimeoutError) as exc:
            if (files := _file_refusal(url, exc)) is not None:
                raise ConfigurationError(f"TASKPLATFORM_DATABASE_URL: {files}: {exc}") from exc
            why = str(exc) or (  # a TimeoutError says nothing by itself
                "no answer within the connect timeout (TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_"
                f"SECONDS, now {timeout:g} s, or the URL's connect_timeout=)"
            )
            raise BackendUnavailable(f"cannot reach the PostgreSQL database: {why}") from exc
        except DBAPIError as exc:  # the server's own words, without SQLAlchemy's wrapping
            if (refused := _driver_refusal(exc)) is not None:
                raise ConfigurationError(f"TASKPLATFORM_DATABASE_URL: {refused}") from exc
            if getattr(exc.orig, "sqlstate", None) in _URL_REFUSED and "parameter" in str(exc.orig):
                raise ConfigurationError(
                    "TASKPLATFORM_DATABASE_URL has a parameter the PostgreSQL server does not "
                    f"take: {exc.orig}"
                ) from exc
            why = str(exc.orig)
            if getattr(exc.orig, "sqlstate", None) == "3D000":  # no such database
                why += " (create it first, as with createdb, or fix TASKPLATFORM_DATABASE_URL)"
            raise BackendUnavailable(f"cannot use the PostgreSQL database: {why}") from exc
        except Exception as exc:
            if (refused := _driver_refusal(exc)) is not None:
                raise ConfigurationError(f"TASKPLATFORM_DATABASE_URL: {refused}") from exc
            if type(exc).__module__.startswith(("sqlalchemy", "asyncpg")):
                raise BackendUnavailable(f"cannot use the PostgreSQL database: {exc}") from exc
            raise
    if store == "postgresql" and queue != "redis":
        await migrate.advance_queue_sequence(url, connect_timeout_seconds=timeout)


def _sqlite_refusal(path: str, error: BaseException | None) -> str:
    """SQLite's words for a file it could not use at ``path``, and what SQLite does not say: a
    folder gets only "unable to open database file"."""
    if os.path.isdir(path):
        return f"{error} (it is a folder: name a file in it, e.g. a path ending in /tasks.db)"
    return str(error)


_URL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
"""PostgreSQL URL parameters that name a file the driver reads while connecting (libpq's)."""


def _file_refusal(url: str, exc: BaseException) -> str | None:
    """Which files a PostgreSQL ``url`` names (``sslrootcert=``, ``sslkey=``, ...) made the
    connection fail with ``exc``, as ``"sslrootcert=/etc/ca.pem cannot be read"``; None when
    ``exc`` is no error of reading such a file, or the URL names none.

    asyncpg's error for a missing or unusable certificate is the OS's or OpenSSL's alone ("[Errno
    2] No such file or directory", "[Errno 21] Is a directory", "[X509: NO_CERTIFICATE_OR_CRL_
    FOUND]", no file name), which sent operators looking at the network, with exit code 3 (a
    database that is down) for settings a restart cannot mend. Only such an error counts: a
    refused or timed-out connection is the database's, whatever files the URL names and the
    connection may never read (``sslmode=disable``). ``sslrootcert=system`` names the system's
    store, not a file. OpenSSL's own refusals of a file (X509, PEM) blame every file named;
    those of the handshake (a certificate the server sent) are the server's.
    """
    import ssl
    from urllib.parse import urlsplit

    named = [
        (name, value)
        for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True)
        if name in _URL_FILES and value and value != "system"
    ]
    if not named:
        return None
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        if exc.filename:
            return None  # a file the driver named itself: its message says which

        # Only a file that fails the same way: a missing Unix socket folder is a
        # FileNotFoundError too, and a folder named by an unused sslrootcert is not to blame.
        def fails(path: str) -> bool:
            if isinstance(exc, FileNotFoundError):
                return not os.path.exists(path)
            if isinstance(exc, IsADirectoryError):
                return os.path.isdir(path)
            return os.path.exists(path) and not os.access(path, os.R_OK)

        unreadable = [f"{name}={path}" for name, path in named if fails(path)]
        return f"{', '.join(unreadable)} cannot be read" if unreadable else None
    library = getattr(exc, "library", None)
    # OpenSSL reading a file: X509 or PEM for a CA file, "SSL" with no reason ("PEM lib") for
    # a client certificate or key. The handshake's own refusals carry a reason.
    reading = library in ("X509", "PEM") or (library == "SSL" and not getattr(exc, "reason", 1))
    verifying = isinstance(exc, ssl.SSLCertVerificationError)
    if isinstance(exc, ssl.SSLError) and reading and not verifying:
        return f"{', '.join(f'{name}={path}' for name, path in named)} cannot be used"
    return None


def _driver_refusal(exc: BaseException) -> str | None:
    """asyncpg's words when it refused a value of the URL before connecting (``sslmode=bogus``,
    ``target_session_attrs=bogus``): the settings as written, so exit code 2, not a database
    that is down (3, which a supervisor retries for ever). None for any other error."""
    import asyncpg
    from asyncpg import connect_utils

    cause: BaseException | None = exc
    for _ in range(8):  # SQLAlchemy's wrapping is two deep
        if cause is None or isinstance(cause, asyncpg.ClientConfigurationError):
            break
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, asyncpg.ClientConfigurationError):
        return None
    # asyncpg names the values of target_session_attrs by a method's repr.
    attributes = getattr(connect_utils, "SessionAttribute", ())
    values = ", ".join(str(getattr(attribute, "value", attribute)) for attribute in attributes)
    return re.sub(r"<built-in method [^>]*>", values, str(cause))


_URL_REFUSED = {"42704", "22023"}
"""SQLSTATEs of a connection refused for a URL parameter the server does not know
(``?command_timeout=5``: "unrecognized configuration parameter") or whose value it refuses
("invalid value for parameter"): the settings as written, not a database that is down, so exit
code 2, which a supervisor does not retry. The message must name a parameter too: a migration's
statement can fail with the same codes for its own reasons."""


def queue_address(settings: Settings) -> str:
    """Where the queue of ``settings`` is, as processes on one database compare it and a log
    line shows it: ``the store's database``, or ``redis://host:port/db`` (no password; the
    database index however the URL wrote it) with the key prefix when it is not the default.

    Raises:
        ValueError: a Redis URL redis-py cannot read (``check_urls`` refuses it first).
    """
    url = settings.resolved_queue_url()
    if scheme(url) != "redis":
        return "the store's database"
    from redis.connection import parse_url

    kind, _, rest = url.partition("://")
    parts = parse_url(f"{kind.lower()}://{rest}")  # type: ignore[no-untyped-call]
    address = f"{kind.lower()}://{parts.get('host', 'localhost')}:"
    address += f"{parts.get('port', 6379)}/{parts.get('db', 0)}"
    if settings.redis_key_prefix != type(settings).model_fields["redis_key_prefix"].default:
        address += f" (key prefix {settings.redis_key_prefix})"
    return address


def open_backends(settings: Settings) -> Backends:
    """Open the queue at ``settings.resolved_queue_url()`` and the store at ``database_url``.

    The schema must be current (:func:`prepare_schema`). No connection is made yet: pools connect
    on first use.

    Raises:
        ConfigurationError: an unsupported URL or combination, or a missing driver.
    """
    store_kind, queue_kind = check_urls(settings)  # before anything opens, so nothing leaks
    faults = Faults(settings.faults)
    store: Store
    queue: Queue
    if store_kind == "sqlite":
        from taskplatform.backends.sqlite import SQLiteDatabase, SQLiteQueue, SQLiteStore

        database = SQLiteDatabase(
            settings.database_url,
            synchronous=settings.sqlite_synchronous,
            busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
        )
        store = SQLiteStore(database)
        database_queue: Queue = SQLiteQueue(database, faults)
    else:
        from taskplatform.backends.postgres import PostgresDatabase, PostgresQueue, PostgresStore

        pg = PostgresDatabase(
            settings.database_url,
            pool_size=settings.database_pool_size,
            pool_overflow=settings.database_pool_overflow,
            connect_timeout_seconds=settings.database_connect_timeout_seconds,
            statement_timeout_seconds=settings.database_statement_timeout_seconds,
        )
        store = PostgresStore(pg)
        database_queue = PostgresQueue(pg, faults)
    if queue_kind != "redis":
        return Backends(queue=database_queue, store=store)
    from taskplatform.backends.redis import RedisQueue

    queue = RedisQueue(
        settings.resolved_queue_url(),
        key_prefix=settings.redis_key_prefix,
        reservation_seconds=settings.queue_reservation_seconds,
        faults=faults,
    )
    return Backends(queue=queue, store=store, database_queue=database_queue)
