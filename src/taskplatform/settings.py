"""Settings: every knob of the service, read from ``TASKPLATFORM_*`` environment variables."""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskplatform.models import MAX_DELAY_SECONDS, QUEUE_NAME, QUEUE_NAME_RULE

MIB = 1024 * 1024
DAY = 86_400  # seconds
MIN_API_KEY_LENGTH = 16
"""Fewest characters of an API key: the API answers a wrong key as fast as it can, without a
limit (the rate limit counts per valid key), so a key must be too long to guess; 16 random
characters of the 64 that ``secrets.token_urlsafe`` draws from are 96 bits."""


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_level(name: str) -> str:
    """``name`` lowercased, if Python's logging knows it (uvicorn takes these names lowercased).

    Raises:
        ValueError: it does not; the message lists the names.
    """
    if name.lower() not in _LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(_LOG_LEVELS)}")
    return name.lower()


def _queue_names(names: str) -> str:
    """``names`` if each of its comma-separated names is a queue name the API takes.

    Raises:
        ValueError: one is not (``.`` and ``..`` included: a dispatcher of such a queue would
            serve one that no create can name).
    """
    for name in names.split(","):
        if re.fullmatch(QUEUE_NAME, name) is None:
            raise ValueError(f"each comma-separated queue name {QUEUE_NAME_RULE}")
    return names


def _fault_spec(value: str) -> str:
    """Refuse a ``faults`` value :class:`~taskplatform.faults.Faults` cannot read, as any other
    bad setting is refused: one line and exit code 2, not a traceback from the first backend
    opened, after the schema was migrated (found in review).

    Raises:
        ValueError: an unknown point or action, or a count that is not a number.
    """
    from taskplatform.faults import Faults

    Faults(value)
    return value


class Settings(BaseSettings):
    """Configuration of one taskplatform process.

    Built by :func:`load_settings` (or directly in tests) and passed into ``create_app``; never an
    import-time singleton, so tests can build one per backend. Every field maps to the environment
    variable ``TASKPLATFORM_<FIELD_NAME_UPPER>``.
    """

    # NaN passes no bound and fails each with a message about the bound ("less than or equal
    # to 2592000"): it is no number of seconds, and so said.
    model_config = SettingsConfigDict(
        env_prefix="TASKPLATFORM_", extra="ignore", frozen=True, allow_inf_nan=False
    )

    database_url: Annotated[
        str,
        Field(
            description=(
                "The store: `sqlite:///rel/path.db`, `sqlite:////abs/path.db` (a new file, and "
                "its missing folders, are created: mind typos), or "
                "`postgresql://user:password@host:5432/db`."
            )
        ),
    ] = "sqlite:///./taskplatform.db"
    queue_url: Annotated[
        str | None,
        Field(
            description=(
                "The queue: unset keeps it in the store's database; "
                "`redis://[:password@]host:6379/0` puts it in Redis."
            )
        ),
    ] = None
    host: Annotated[str, Field(description="Address `serve` listens on.")] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535, description="Port `serve` listens on.")] = 8000
    workers: Annotated[int, Field(ge=1, description="Number of API processes `serve` runs.")] = 1
    log_level: Annotated[
        str,
        AfterValidator(_log_level),
        Field(description="Python logging level name: critical, error, warning, info or debug."),
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        Field(
            description=(
                "`text`: a readable line per record; `json`: one JSON object per line, with "
                "`task_id`, `attempt`, `status` and `queue` on every task lifecycle event."
            )
        ),
    ] = "text"

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
        Field(
            gt=0, le=3600, description="How long a SQLite writer waits for another process's lock."
        ),
    ] = 5.0

    database_pool_size: Annotated[
        int, Field(gt=0, le=10_000, description="PostgreSQL connections kept open per process.")
    ] = 30
    database_pool_overflow: Annotated[
        int,
        Field(
            ge=0,
            le=10_000,
            description=(
                "Extra PostgreSQL connections allowed at peaks; each is opened and closed per use, "
                "so keep the pool size at the usual concurrency."
            ),
        ),
    ] = 10
    database_connect_timeout_seconds: Annotated[
        float,
        Field(gt=0, le=3600, description="How long to wait for a new database connection."),
    ] = 5.0
    database_statement_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description=(
                "PostgreSQL: how long a server waits for one statement's answer before it gives "
                "up on the connection and answers 503 (a database that stops answering, as "
                "behind a stalled network, would otherwise hold requests with no end)."
            ),
        ),
    ] = 30.0
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
            le=DAY,
            description=(
                "Redis queue: how long a reserved task may take to reach the store before the "
                "recovery loop returns it to the queue."
            ),
        ),
    ] = 30.0
    recovery_interval_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="How often each server reaps expired leases and reservations.",
        ),
    ] = 1.0
    queue_depth_sample_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description=(
                "How often each server records every queue's depth for the dashboard's chart "
                "(kept 24 h)."
            ),
        ),
    ] = 60.0
    dequeue_lease_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=30 * DAY,
            description=(
                "A Dequeued task nobody executes within this many seconds goes back to the queue "
                "at its original position; 0 keeps a pulled task Dequeued forever (a "
                "dispatcher's claim still has its own lease)."
            ),
        ),
    ] = 300.0
    shutdown_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=DAY,
            description=(
                "On SIGTERM, how long in-flight callbacks may run on, counted once from the "
                "signal; those still running then are recorded as failed (retryable)."
            ),
        ),
    ] = 30.0
    idempotency_key_ttl_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=MAX_DELAY_SECONDS,
            description="How long an Idempotency-Key of a create is remembered.",
        ),
    ] = 86_400.0
    long_poll_max_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=20,
            description=(
                "Longest a long-polling dequeue waits, whatever waitSeconds asks (keep it under "
                "the idle timeout of any proxy in front)."
            ),
        ),
    ] = 20.0
    long_poll_fallback_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description=(
                "How often a long-polling dequeue checks the queue when no notification arrives "
                "(SQLite shared by several processes, or a lost LISTEN connection)."
            ),
        ),
    ] = 0.5
    api_keys: Annotated[
        SecretStr | None,
        Field(
            description=(
                "Comma-separated API keys, each of at least 16 characters; when set, every "
                "/api route needs `Authorization: Bearer <key>`."
            )
        ),
    ] = None
    api_keys_file: Annotated[
        Path | None,
        Field(
            description=(
                "A file with one API key per line (instead of, or besides); lines starting with "
                "`#` are comments. Read at start."
            )
        ),
    ] = None
    docs_public: Annotated[
        bool,
        Field(description="Serve /docs and /openapi.json without a key even when keys are set."),
    ] = True
    metrics_public: Annotated[
        bool,
        Field(
            description=(
                "Serve /metrics without a key even when keys are set (for a scraper on a "
                "private network); otherwise Prometheus sends `Authorization: Bearer <key>`."
            )
        ),
    ] = False
    metrics_max_queues: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description=(
                "Most queues /metrics gives series of their own; the rest are summed under "
                '`queue="(other)"`, a name no queue can have. Queue names are the clients\' '
                "choice, and a series per name would let them grow the scrape without bound."
            ),
        ),
    ] = 1000
    insecure: Annotated[
        bool,
        Field(
            description=(
                "Allow serving beyond loopback with no API key. Anyone who can reach the port can "
                "then create tasks that make this server send HTTP requests."
            )
        ),
    ] = False
    rate_limit_per_second: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "Requests per second allowed per API key, per process (with no keys configured "
                "there is no limit); 0 turns the limit off. Over it: 429 with Retry-After."
            ),
        ),
    ] = 1000.0
    rate_limit_burst: Annotated[
        int, Field(ge=1, description="Requests allowed at once above the steady rate.")
    ] = 2000
    callback_deny_networks: Annotated[
        str,
        Field(
            description=(
                "Comma-separated networks callbacks may never reach (checked on the resolved "
                "address). The default covers link-local and the other cloud metadata "
                "addresses, 0.0.0.0/8, ::, broadcast and multicast. Setting it replaces the "
                "default: keep the default's networks in the list (a server warns at start of "
                "each one left out)."
            )
        ),
    ] = (
        "169.254.0.0/16,fe80::/10,0.0.0.0/8,255.255.255.255/32,224.0.0.0/4,ff00::/8,"
        "fd00:ec2::254/128,::/128,100.100.100.200/32,168.63.129.16/32"
    )
    callback_allow_networks: Annotated[
        str | None,
        Field(description="When set, comma-separated networks callbacks may reach; no others."),
    ] = None
    signing_secret: Annotated[
        SecretStr | None,
        Field(
            description=(
                "Standard Webhooks secret(s) `whsec_<base64>` that sign every callback; two, "
                "comma-separated, sign with both (rotation)."
            )
        ),
    ] = None
    max_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description=(
                "Largest timeoutSeconds a task may ask for (at most 3600: lower it to refuse "
                "more; the API's schema says 3600)."
            ),
        ),
    ] = 3600.0
    max_retries_ceiling: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description=(
                "Largest maxRetries a task may ask for (at most 100: lower it to refuse more; "
                "the API's schema says 100)."
            ),
        ),
    ] = 100
    log_task_data: Annotated[
        bool,
        Field(description="Debug only: let logs carry taskData and callback results."),
    ] = False
    faults: Annotated[
        str,
        AfterValidator(_fault_spec),
        Field(
            description=(
                "Test-only fault injection, e.g. `after_reserve=fail:1` or `after_reserve=kill`. "
                "Never set it in production."
            ),
        ),
    ] = ""

    max_header_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description=(
                "Largest accepted request target and header fields together (names and "
                "values), in bytes (431 above, and the connection is closed)."
            ),
        ),
    ] = 64 * 1024
    header_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=DAY,
            description=(
                "Longest a client may take to send a request's line and headers, counted from "
                "the connection's start or the request's first byte (408 past it, and the "
                "connection is closed)."
            ),
        ),
    ] = 30.0
    body_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=DAY,
            description=(
                "Longest a client may pause while sending a request's body, between two reads "
                "(408 past it, and the connection is closed)."
            ),
        ),
    ] = 30.0
    max_body_bytes: Annotated[
        int, Field(gt=0, description="Largest accepted request body, in bytes (413 above).")
    ] = MIB
    max_batch_body_bytes: Annotated[
        int, Field(gt=0, description="Largest accepted batch create body, in bytes (413 above).")
    ] = 16 * MIB
    max_json_depth: Annotated[
        int,
        Field(
            gt=1,
            # The JSON decoder stops near Python's recursion limit (1,000) whatever this says.
            le=500,
            description="Deepest accepted JSON nesting of a request body (at most 500).",
        ),
    ] = 64
    max_callback_url_length: Annotated[
        int, Field(gt=0, description="Longest accepted callbackUrl, in characters.")
    ] = 2048
    default_max_retries: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description="maxRetries of a task that gives none (unset: at most the ceiling).",
        ),
    ] = 3
    default_timeout_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="timeoutSeconds of a task that gives none (unset: at most the largest).",
        ),
    ] = 30.0

    callback_response_max_bytes: Annotated[
        int,
        Field(
            gt=0,
            description=(
                "Largest callback response body kept; a larger one is not kept, and fails the "
                "attempt unless it is a 2xx."
            ),
        ),
    ] = MIB
    execution_result_max_bytes: Annotated[
        int,
        Field(
            ge=64,
            description=(
                "Most of a result each attempt of the attempt log keeps, in bytes of JSON; a "
                "longer one is kept as a string of its start, ending in …. The task's own "
                "result keeps the last answer whole."
            ),
        ),
    ] = 64 * 1024
    callback_max_connections: Annotated[
        int,
        Field(
            gt=0, le=100_000, description="Concurrent outbound callback connections per process."
        ),
    ] = 256
    processing_lease_grace_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=DAY,
            description="Added to timeoutSeconds to form the lease of a Processing task.",
        ),
    ] = 30.0

    backoff_min_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=86400,
            description="backoffMinSeconds of a task that gives none (unset: at most the max).",
        ),
    ] = 1.0
    backoff_max_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=86400,
            description="backoffMaxSeconds of a task that gives none (unset: at least the min).",
        ),
    ] = 300.0
    backoff_multiplier: Annotated[
        float,
        Field(ge=1, le=100, description="backoffMultiplier of a task that gives none."),
    ] = 2.0
    retry_after_max_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_DELAY_SECONDS,
            description="Longest `Retry-After` (429, 503) honoured; a longer one is cut to this.",
        ),
    ] = 3600.0

    dispatch: Annotated[
        bool,
        Field(description="Run a dispatcher in every `serve` process (as `taskplatform worker`)."),
    ] = False
    dispatch_queues: Annotated[
        str,
        AfterValidator(_queue_names),
        Field(description="Comma-separated queues a dispatcher serves."),
    ] = "default"
    dispatch_concurrency: Annotated[
        int, Field(gt=0, le=10000, description="Callbacks a dispatcher keeps in flight at once.")
    ] = 10
    dispatch_queue_concurrency: Annotated[
        int | None,
        Field(
            gt=0,
            le=10000,
            description=(
                "Most callbacks of one queue a dispatcher keeps in flight, so that one queue "
                "with slow or hanging callbacks cannot take every slot from the others; unset: "
                "all of the concurrency but one slot for each other queue served (at most "
                "half of it kept back)."
            ),
        ),
    ] = None
    worker_metrics_port: Annotated[
        int | None,
        Field(
            ge=0,
            le=65535,
            description=(
                "Port on which `taskplatform worker` serves Prometheus `/metrics` (on "
                "`worker_metrics_host`); unset serves none. API processes serve `/metrics` on "
                "their own port."
            ),
        ),
    ] = None
    worker_metrics_host: Annotated[
        str, Field(description="Address the worker's `/metrics` listens on.")
    ] = "127.0.0.1"
    dispatch_rate: Annotated[
        float,
        Field(
            ge=0,
            description=(
                "Dispatches per second per queue, over every dispatcher together (a token bucket "
                "in the database); 0 is unlimited."
            ),
        ),
    ] = 0.0
    dispatch_poll_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description=(
                "How often an idle dispatcher looks for scheduled and retry tasks that came due "
                "(new tasks wake it at once)."
            ),
        ),
    ] = 0.5

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Settings:
        """Keep the defaults within what a task may ask for, and the backoff bounds in order.

        A task that gives no ``timeoutSeconds`` or ``maxRetries`` must not get more than the
        limits allow one that does. Of a pair out of order, a setting left unset follows the
        one given (``TASKPLATFORM_MAX_TIMEOUT_SECONDS=10`` alone makes the default timeout 10
        s; ``TASKPLATFORM_BACKOFF_MIN_SECONDS=600`` alone raises the default maximum to 600
        s, as a task's own ``backoffMinSeconds`` does); both given out of order are refused.

        Raises:
            ValueError: both of a pair given, out of order; naming both.
        """
        pairs = [
            ("default_timeout_seconds", "max_timeout_seconds", "over"),
            ("default_max_retries", "max_retries_ceiling", "over"),
            ("backoff_min_seconds", "backoff_max_seconds", "above"),
        ]
        given = self.model_fields_set
        for low, high, word in pairs:
            if getattr(self, low) <= getattr(self, high):
                continue
            if low not in given:
                object.__setattr__(self, low, getattr(self, high))  # frozen: set while built
            elif high not in given:
                object.__setattr__(self, high, getattr(self, low))
            else:
                raise ValueError(
                    f"TASKPLATFORM_{low.upper()} ({getattr(self, low):g}) is {word} "
                    f"TASKPLATFORM_{high.upper()} ({getattr(self, high):g}): lower the one or "
                    "raise the other"
                )
        return self

    def dispatch_queue_list(self) -> list[str]:
        """Return the queue names of ``dispatch_queues``, in order, without repeats."""
        return list(dict.fromkeys(self.dispatch_queues.split(",")))

    def resolved_queue_url(self) -> str:
        """Return the queue backend URL: ``queue_url``, or ``database_url`` when unset."""
        return self.queue_url or self.database_url

    def api_key_list(self) -> list[str]:
        """Return every configured API key (from ``api_keys`` and ``api_keys_file``).

        The file is read once, at the first call, so that every part of a process (the API's
        key check, the dashboard's login) accepts the same keys; a changed file takes effect
        on restart.

        Raises:
            OSError: ``api_keys_file`` cannot be read.
            ValueError: a key is shorter than :data:`MIN_API_KEY_LENGTH` characters (the
                message says which key by its place, never the key itself).
        """
        return list(self._api_keys)

    @cached_property
    def _api_keys(self) -> tuple[str, ...]:
        named: list[tuple[str, str]] = []  # (where it was given, key)
        if self.api_keys:
            given = self.api_keys.get_secret_value().split(",")
            named += [(f"key {n} of TASKPLATFORM_API_KEYS", key) for n, key in enumerate(given, 1)]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            # A line starting with # is a comment: "# production keys" must not be a key.
            named += [
                (f"line {n} of TASKPLATFORM_API_KEYS_FILE", line)
                for n, line in enumerate(lines, 1)
                if not line.lstrip().startswith("#")
            ]
        keys = []
        for where, key in named:
            if not (key := key.strip()):
                continue
            if len(key) < MIN_API_KEY_LENGTH:
                raise ValueError(
                    f"{where} is {len(key)} characters long; an API key needs at least "
                    f"{MIN_API_KEY_LENGTH}, as a short one can be guessed (make one with "
                    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            keys.append(key)
        return tuple(keys)

    def __repr_args__(self) -> list[tuple[str | None, object]]:
        # Never show a database password, whatever prints the settings.
        return [
            (
                name,
                redact_url(value)
                if str(name).endswith("_url") and isinstance(value, str)
                else value,
            )
            for name, value in super().__repr_args__()
        ]


_URLS = frozenset({"database_url", "queue_url"})


def split_userinfo(rest: str) -> tuple[str, str]:
    """Split a URL's part after ``scheme://`` into its user and password, and the rest
    (``("", rest)`` when it names none).

    The user and password end at the last ``@`` before the query, which starts at the first
    ``?`` followed by a parameter's ``name=`` past the first ``/`` (the path's), or with no
    path, past the first ``@``: a password may hold ``@``, ``?`` and ``?name=`` unencoded
    (SQLAlchemy reads it to the last ``@``), and a parameter may hold an ``@`` too
    (``/tasks?application_name=tp@web1``, as libpq reads it). A password holding ``/`` and
    ``?name=``, or with no path ``@`` and ``?name=``, must be percent-encoded.
    """
    # Not from the start: a password's "?x=1" would end the user and password in the middle,
    # and put the password's end where the host is looked for (and quoted by errors).
    slash = rest.find("/")
    # Without a path, past the first "@": a parameter may then hold an "@" (application_name).
    query = _QUERY_START.search(rest, slash + 1 if slash >= 0 else rest.find("@") + 1)
    at = rest.rfind("@", 0, query.start() if query else len(rest))
    if at < 0:
        return "", rest
    return rest[:at], rest[at + 1 :]


_QUERY_START = re.compile(r"\?[A-Za-z_][A-Za-z0-9_.-]*=")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``: the user's, and a ``password``
    parameter (libpq and redis-py both take one)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, location = split_userinfo(rest)
    # Over the whole of the rest: a password parameter may hold an "@" that split it wrongly.
    location = _PASSWORD_PARAMETER.sub(r"\1***", location)
    userinfo = _PASSWORD_PARAMETER.sub(r"\1***", userinfo)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}://{userinfo}@{location}" if userinfo else f"{scheme}://{location}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with ``overrides`` (field name → value) on top."""
    return Settings(**overrides)  # type: ignore[arg-type]


def configuration_table() -> str:
    """Return the Markdown table of every setting: variable, default and meaning.

    The README embeds this table between ``<!-- settings -->`` markers; a test keeps it current.
    """
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None:
            shown = "(unset)"
        elif default == "":
            shown = "(empty)"
        else:
            shown = f"`{default}`"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `TASKPLATFORM_{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
