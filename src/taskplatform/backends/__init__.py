"""Backend selection: build the queue and the store named by the settings' URLs."""

from __future__ import annotations

from dataclasses import dataclass

from taskplatform.backends.base import Queue, Store, TaskChanges
from taskplatform.settings import Settings

__all__ = ["Backends", "ConfigurationError", "Queue", "Store", "TaskChanges", "open_backends"]


class ConfigurationError(Exception):
    """The settings name a backend that cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class Backends:
    """The queue and store one service uses."""

    queue: Queue
    store: Store

    async def close(self) -> None:
        """Close both backends (a shared database is closed once)."""
        await self.queue.close()
        await self.store.close()


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def prepare_schema(settings: Settings) -> None:
    """Create or upgrade the SQL schema of the configured database (Alembic), synchronously.

    Raises:
        ConfigurationError: the URL's scheme is not supported.
        SchemaError: the database is at a revision this code does not know.
    """
    from taskplatform.backends import migrate

    scheme = _scheme(settings.database_url)
    if scheme != "sqlite":
        raise ConfigurationError(
            _unknown_scheme(settings.database_url, "TASKPLATFORM_DATABASE_URL")
        )
    from taskplatform.backends.sqlite import sqlite_path

    try:
        sqlite_path(settings.database_url)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    migrate.upgrade(settings.database_url)


def open_backends(settings: Settings) -> Backends:
    """Open the queue at ``settings.resolved_queue_url()`` and the store at ``database_url``.

    The schema must be current (:func:`prepare_schema`). Backend modules are imported lazily, so an
    optional driver is needed only when its backend is chosen.

    Raises:
        ConfigurationError: an unknown scheme, or a combination that is not supported.
        BackendUnavailable: a backend cannot be reached.
    """
    store_scheme = _scheme(settings.database_url)
    queue_url = settings.resolved_queue_url()
    queue_scheme = _scheme(queue_url)
    if store_scheme != "sqlite":
        raise ConfigurationError(
            _unknown_scheme(settings.database_url, "TASKPLATFORM_DATABASE_URL")
        )
    if queue_scheme != "sqlite":
        raise ConfigurationError(_unknown_scheme(queue_url, "TASKPLATFORM_QUEUE_URL"))
    if queue_url != settings.database_url:
        raise ConfigurationError(
            "a SQLite queue must live in the same file as the SQLite store: leave "
            "TASKPLATFORM_QUEUE_URL unset or equal to TASKPLATFORM_DATABASE_URL"
        )
    from taskplatform.backends.sqlite import SQLiteDatabase, SQLiteQueue, SQLiteStore

    database = SQLiteDatabase(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
    )
    return Backends(queue=SQLiteQueue(database), store=SQLiteStore(database))


def _unknown_scheme(url: str, variable: str) -> str:
    scheme = url.split(":", 1)[0] if ":" in url else url
    return (
        f"{variable} has the scheme {scheme!r}, which taskplatform does not support; "
        "use sqlite:///path/to/file.db"
    )
