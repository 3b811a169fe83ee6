"""Settings: every knob of the service, read from ``TASKPLATFORM_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Configuration of one taskplatform process.

    Built by :func:`load_settings` (or directly in tests) and passed into ``create_app``; never an
    import-time singleton, so tests can build one per backend. Every field maps to the environment
    variable ``TASKPLATFORM_<FIELD_NAME_UPPER>``.
    """

    model_config = SettingsConfigDict(env_prefix="TASKPLATFORM_", extra="ignore", frozen=True)

    database_url: Annotated[
        str,
        Field(description="Store backend URL. `sqlite:///path` is the embedded default."),
    ] = "sqlite:///./taskplatform.db"
    queue_url: Annotated[
        str | None,
        Field(description="Queue backend URL; empty means the same database as the store."),
    ] = None
    host: Annotated[str, Field(description="Address `serve` listens on.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="Port `serve` listens on.")] = 8000
    workers: Annotated[int, Field(ge=1, description="Number of API processes `serve` runs.")] = 1
    log_level: Annotated[str, Field(description="Python logging level name.")] = "info"

    sqlite_synchronous: Annotated[
        str,
        Field(
            pattern="^(NORMAL|FULL)$",
            description=(
                "SQLite `synchronous` pragma. NORMAL survives a process crash (kill -9); "
                "FULL also survives power loss, at several times the cost per commit."
            ),
        ),
    ] = "NORMAL"
    sqlite_busy_timeout_seconds: Annotated[
        float,
        Field(gt=0, description="How long a SQLite writer waits for another process's lock."),
    ] = 5.0

    database_pool_size: Annotated[
        int, Field(gt=0, description="PostgreSQL connections kept open per process.")
    ] = 30
    database_pool_overflow: Annotated[
        int,
        Field(
            ge=0,
            description=(
                "Extra PostgreSQL connections allowed at peaks; each is opened and closed per use, "
                "so keep the pool size at the usual concurrency."
            ),
        ),
    ] = 10
    database_connect_timeout_seconds: Annotated[
        float, Field(gt=0, description="How long to wait for a new database connection.")
    ] = 5.0
    redis_key_prefix: Annotated[
        str,
        Field(
            min_length=1,
            description="Prefix of every Redis key; the braces keep them in one cluster slot.",
        ),
    ] = "{taskplatform}"
    queue_reservation_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "Redis queue: how long a reserved task may take to reach the store before the "
                "recovery loop returns it to the queue."
            ),
        ),
    ] = 30.0
    recovery_interval_seconds: Annotated[
        float, Field(gt=0, description="How often each server looks for expired reservations.")
    ] = 1.0
    dequeue_lease_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "A Dequeued task nobody executes within this many seconds goes back to the queue "
                "at its original position; 0 keeps it Dequeued forever."
            ),
        ),
    ] = 300.0
    shutdown_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "On SIGTERM, how long in-flight callbacks may run on; those still running then "
                "are recorded as failed (retryable)."
            ),
        ),
    ] = 30.0
    idempotency_key_ttl_seconds: Annotated[
        float, Field(gt=0, description="How long an Idempotency-Key of a create is remembered.")
    ] = 86_400.0
    long_poll_fallback_seconds: Annotated[
        float,
        Field(
            gt=0,
            description=(
                "How often a long-polling dequeue checks the queue when no notification arrives "
                "(SQLite shared by several processes, or a lost LISTEN connection)."
            ),
        ),
    ] = 0.5
    faults: Annotated[
        str,
        Field(
            description=(
                "Test-only fault injection, e.g. `after_reserve=fail:1` or `after_reserve=kill`. "
                "Never set it in production."
            ),
        ),
    ] = ""

    max_body_bytes: Annotated[
        int, Field(gt=0, description="Largest accepted request body, in bytes (413 above).")
    ] = MIB
    max_json_depth: Annotated[
        int, Field(gt=1, description="Deepest accepted JSON nesting of a request body.")
    ] = 64
    max_callback_url_length: Annotated[
        int, Field(gt=0, description="Longest accepted callbackUrl, in characters.")
    ] = 2048
    default_max_retries: Annotated[
        int, Field(ge=0, le=100, description="maxRetries of a task that gives none.")
    ] = 3
    default_timeout_seconds: Annotated[
        float, Field(gt=0, le=3600, description="timeoutSeconds of a task that gives none.")
    ] = 30.0

    callback_response_max_bytes: Annotated[
        int,
        Field(gt=0, description="Largest callback response body kept; a larger one fails."),
    ] = MIB
    callback_max_connections: Annotated[
        int, Field(gt=0, description="Concurrent outbound callback connections per process.")
    ] = 256
    processing_lease_grace_seconds: Annotated[
        float,
        Field(ge=0, description="Added to timeoutSeconds to form the lease of a Processing task."),
    ] = 30.0

    def resolved_queue_url(self) -> str:
        """Return the queue backend URL: ``queue_url``, or ``database_url`` when unset."""
        return self.queue_url or self.database_url


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with ``overrides`` (field name → value) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
