"""The ``taskplatform`` command line: serve the API, run a demo receiver, manage the schema."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import ipaddress
import logging
import logging.config
import math
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from taskplatform.cli_tasks import JsonUsageErrorsOfStats, stats_command, tasks_app
from taskplatform.logs import LogFormat, logging_config
from taskplatform.settings import Settings, load_settings

APP_FACTORY = "taskplatform.api.app:create_served_app"
"""What every API process runs (an import string: ``--workers`` processes import it)."""

STARTUP_FAILURE = 3
"""The exit code of a command whose store or queue cannot be reached or used at its start, and
of ``serve`` when the app could not start (uvicorn's own). Settings refused as written exit 2."""

DRAIN_BACKSTOP_SECONDS = 5
"""How long past ``shutdown_grace_seconds`` uvicorn waits for requests before cancelling them:
room to record interrupted attempts and send their 503 answers (normally milliseconds)."""

app = typer.Typer(
    help="taskplatform: a task platform that runs work through HTTP callbacks.",
    no_args_is_help=True,
    add_completion=False,
    cls=JsonUsageErrorsOfStats,
)
db_app = typer.Typer(help="Manage the SQL schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tasks_app, name="tasks")
app.command("stats")(stats_command)


_said_as_json = False
"""Whether :func:`_error` and :func:`_warning` log through the JSON formatter: ``serve`` and
``worker`` with ``--log-format json``, whose every line to stderr is then one JSON object."""


def _configure_logging(settings: Settings) -> None:
    global _said_as_json
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    _said_as_json = settings.log_format == "json"


def _error(message: str) -> None:
    """Say why a command stops: ``error: message`` on stderr, or a JSON log record, written
    whatever ``TASKPLATFORM_LOG_LEVEL`` (at ``critical`` the reason was not said at all)."""
    _say(logging.ERROR, "error", message)


def _warning(message: str) -> None:
    """``warning: message`` on stderr, or a JSON log record (:func:`_error`)."""
    _say(logging.WARNING, "warning", message)


def _say(level: int, word: str, message: str) -> None:
    if not _said_as_json:
        typer.echo(f"{word}: {message}", err=True)
        return
    logger = logging.getLogger("taskplatform")
    # handle(), not error(): the record goes to the handlers past the logger's own level.
    logger.handle(logger.makeRecord(logger.name, level, __file__, 0, message, (), None))


LogFormatOption = Annotated[
    LogFormat | None,
    typer.Option(
        "--log-format",
        help="text, or json: one object a line with task_id, attempt and status. "
        "\\[env: TASKPLATFORM_LOG_FORMAT]",
    ),
]


CLIENT_VARIABLES = frozenset({"TASKPLATFORM_URL", "TASKPLATFORM_API_KEY"})
"""The ``TASKPLATFORM_*`` variables of the ``tasks`` commands (the client), not settings."""


@functools.cache  # once per command: ``db copy`` reads two sets of settings
def _warn_of_unknown_variables() -> None:
    """Say which ``TASKPLATFORM_*`` variables no setting reads, with the one meant where the
    name is close: a misspelt ``TASKPLATFORM_DATABSE_URL`` served the default SQLite file
    without a word."""
    known = {f"TASKPLATFORM_{name.upper()}" for name in Settings.model_fields} | CLIENT_VARIABLES
    for name in sorted(os.environ):
        if name.startswith("TASKPLATFORM_") and name not in known:
            # Compared without the prefix they share, which makes any two names look alike.
            suffixes = [known_name.removeprefix("TASKPLATFORM_") for known_name in known]
            suffix = name.removeprefix("TASKPLATFORM_")
            close = difflib.get_close_matches(suffix, suffixes, n=1, cutoff=0.8)
            meant = f" (did you mean TASKPLATFORM_{close[0]}?)" if close else ""
            _warning(f"{name} is not a setting and is ignored{meant}")
    server_keys = ("TASKPLATFORM_API_KEYS", "TASKPLATFORM_API_KEYS_FILE")
    if "TASKPLATFORM_API_KEY" in os.environ and not any(map(os.environ.get, server_keys)):
        # The client's variable, so never "unknown"; but given to a server without the
        # server's own, it is the singular slip: the server ran open, without a word (found in
        # review). Not said when the server has keys too: one shell may well hold both.
        _warning(
            "TASKPLATFORM_API_KEY is the key the `tasks` commands send, not a setting of this "
            "command, and is ignored here: a server's keys are TASKPLATFORM_API_KEYS"
        )


def _settings_or_exit(*, logs: bool = False, **overrides: object) -> Settings:
    """Load the settings with ``overrides`` (None: not given), or exit 2 saying why; with
    ``logs`` (``serve``, ``worker``), configure logging by them before any warning is said."""
    from pydantic import ValidationError

    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        _warn_of_unknown_variables()
        typer.echo("error: invalid configuration:", err=True)
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            # Numbers and booleans only: a string may be a key, or a URL with a password.
            given = error.get("input")
            shown = f" (given {given!r})" if isinstance(given, int | float) else ""
            where = f"TASKPLATFORM_{name.upper()}: " if name else ""  # a check of several
            message = error["msg"].removeprefix("Value error, ")  # our validators' own words
            typer.echo(f"  {where}{message}{shown}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        _warn_of_unknown_variables()
        typer.echo(f"error: invalid configuration:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    if logs:
        _configure_logging(settings)
    _warn_of_unknown_variables()
    return settings


def _prepare_or_exit(settings: Settings, named: str = "TASKPLATFORM_DATABASE_URL") -> None:
    """Create or upgrade the schema of ``settings``' database, or exit with one line; its URL
    is ``named`` so in a message that is only about it.

    Exit code 2 when the settings are refused as written (an unsupported URL), and
    :data:`STARTUP_FAILURE` when the database they name cannot be reached or used (down, not a
    database, read-only, at a newer schema), as for a Redis queue that does not answer: a
    supervisor can then retry the one and not the other (systemd's ``RestartPreventExitStatus=2``).
    """
    from taskplatform.backends import ConfigurationError, prepare_schema
    from taskplatform.exceptions import TaskPlatformError

    def fail(message: str, code: int, exc: Exception) -> NoReturn:
        if named != "TASKPLATFORM_DATABASE_URL":
            message = message.replace("TASKPLATFORM_DATABASE_URL", named)
        _error(message)
        raise typer.Exit(code) from exc

    try:
        asyncio.run(prepare_schema(settings))
    except ConfigurationError as exc:
        fail(str(exc), 2, exc)
    except TaskPlatformError as exc:
        fail(str(exc), STARTUP_FAILURE, exc)
    except OSError as exc:  # a SQLite path that cannot be made, say
        fail(f"{named}: {exc}", STARTUP_FAILURE, exc)


def _check_urls_or_exit(settings: Settings, named: str = "TASKPLATFORM_DATABASE_URL") -> None:
    """Exit 2 with one line unless taskplatform supports the URLs of ``settings`` as written
    (``named`` is the store URL's name in the message), before anything connects."""
    from taskplatform.backends import ConfigurationError, check_urls

    try:
        check_urls(settings)
    except ConfigurationError as exc:
        message = str(exc)
        if named != "TASKPLATFORM_DATABASE_URL":
            message = message.replace("TASKPLATFORM_DATABASE_URL", named)
        _error(message)
        raise typer.Exit(2) from exc


_REFUSED_POLICIES = ("allkeys-",)
"""Redis ``maxmemory-policy`` prefixes a queue refuses: they evict any key, task hashes too."""


def _check_backends_answer_or_exit(settings: Settings, command: str) -> None:
    """Open the backends once, ask the queue to answer, close them, and log where both are.

    So that a SQLite file the server cannot use (read-only), or a Redis queue that is not there
    (a wrong port, a database index past the server's ``databases``, TLS against a plain
    server) is one line here and exit code 3, not a server that starts and answers 503 to
    everything, or a traceback in each API process. The store's own connection was proved by
    :func:`_prepare_or_exit`. An outage after the start is a 503, not an exit.

    A Redis queue must keep every key: its ``maxmemory-policy`` (read from ``INFO``) is asked
    too. ``allkeys-*`` evicts task hashes once Redis is full, losing tasks whose create was
    answered 201: the start is refused the same way. ``volatile-*`` evicts only keys with a
    TTL, the idempotency keys (a repeated create may then make a second task): a warning.
    """
    from taskplatform.backends import open_backends
    from taskplatform.exceptions import BackendUnavailable

    async def check() -> str | None:
        backends = open_backends(settings)
        # The failure is this command's one error line: the backend's own warning of it would
        # say it twice. Nothing else runs yet to be kept quiet.
        logging.disable(logging.WARNING)
        try:
            await backends.queue.ping()
            return await backends.queue.eviction_policy()
        finally:
            logging.disable(logging.NOTSET)
            await backends.close()

    try:
        policy = asyncio.run(check())
    except BackendUnavailable as exc:
        where = _backend_addresses(settings)[1]
        said = exc.detail
        if where.startswith("redis"):  # name the setting that says where
            said += f" (the queue at TASKPLATFORM_QUEUE_URL, {where})"
        _error(f"cannot start the {command}: {said}")
        raise typer.Exit(STARTUP_FAILURE) from exc
    store, where = _backend_addresses(settings)
    if policy is not None and policy.startswith(_REFUSED_POLICIES):
        _error(
            f"cannot start the {command}: the Redis queue's maxmemory-policy is {policy}, which "
            "evicts queued tasks once Redis is full and loses them; set maxmemory-policy "
            f"noeviction (the queue at TASKPLATFORM_QUEUE_URL, {where})"
        )
        raise typer.Exit(STARTUP_FAILURE)
    logger = logging.getLogger("taskplatform")
    logger.info("store: %s; queue: %s", store, where)
    if policy is not None and policy.startswith("volatile-"):
        logger.warning(
            "the Redis queue's maxmemory-policy is %s: once Redis is full it evicts the keys "
            "that have a TTL, the idempotency keys, and a create repeated with its "
            "Idempotency-Key can then make a second task; set maxmemory-policy noeviction "
            "(the queue at %s)",
            policy,
            where,
        )
    elif policy == "unknown":
        logger.warning(
            "the Redis queue refused INFO, so its maxmemory-policy is unknown: it must be "
            "noeviction, or a full Redis loses queued tasks (the queue at %s)",
            where,
        )
    elif policy not in (None, "noeviction"):
        logger.warning(
            "the Redis queue's maxmemory-policy is %s, which this version does not know; set "
            "maxmemory-policy noeviction (the queue at %s)",
            policy,
            where,
        )


def _backend_addresses(settings: Settings) -> tuple[str, str]:
    """Where the store and the queue are, as a log line may show them: a SQLite file by its
    absolute path (a relative one depends on the folder the command ran in), no passwords
    (:func:`~taskplatform.backends.queue_address`)."""
    from sqlalchemy.engine import make_url

    from taskplatform.backends import queue_address

    database = settings.database_url
    if database.startswith("sqlite:///"):
        from taskplatform.backends.sqlite import sqlite_path

        store = f"SQLite file {Path(sqlite_path(database)).resolve()}"
    else:
        from taskplatform.backends.postgres import driver_dsn  # needs the postgres extra

        # The user and password run to the last "@", as the driver reads them: SQLAlchemy's
        # make_url stops at the first, and showed the rest of a password holding one.
        url = make_url(driver_dsn(database)[0])
        if "password" in url.query:  # libpq takes one there too
            url = url.update_query_dict({"password": "***"})
        store = url.render_as_string(hide_password=True)
    return store, queue_address(settings)


def raise_open_files_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit (inherited by the API
    processes of ``serve --workers N``), as Go and the JVM do at start.

    Every client connection and every callback connection, idle in the pool (aiohttp keeps
    one per receiver for 15 s, and does not count idle ones against
    ``TASKPLATFORM_CALLBACK_MAX_CONNECTIONS``), holds a file; at the usual soft limit of
    1,024, callbacks to a thousand receivers within 15 s failed with "Too many open files",
    and the API dropped new clients. The hard limit is the operator's bound.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):  # a platform that refuses: keep it
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_COUNTS_DIR_PREFIX = "taskplatform-metrics-"
"""The metrics folder of ``serve --workers N``: this, the parent's pid, "-", a random part."""


def _remove_dead_counts_dirs() -> None:
    """Remove the metrics folders that servers left in the temporary folder when they were
    killed (SIGKILL, the OOM killer, a power cut) rather than stopped: one per start, never
    removed, each holding a file of a few hundred KiB per API process.

    A folder is removed only when its name's pid is no process of this machine; a pid that
    was reused keeps its folder, which is safe. Folders of other users, and those named in
    the older form (no pid), are left alone.
    """
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{_COUNTS_DIR_PREFIX}*-*"):
        pid = folder.name[len(_COUNTS_DIR_PREFIX) :].partition("-")[0]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if folder.is_dir() and folder.stat().st_uid == os.getuid():
                shutil.rmtree(folder)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or no pid we can judge: keep its folder
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _refuse_unsafe_or_exit(settings: Settings) -> None:
    try:
        keys = settings.api_key_list()
    except OSError as exc:
        _error(f"cannot read TASKPLATFORM_API_KEYS_FILE: {exc}")
        raise typer.Exit(2) from exc
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc
    from taskplatform.dispatch import sender_from_settings

    try:
        sender_from_settings(settings)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc
    if keys or settings.insecure or _is_loopback(settings.host):
        return
    _error(
        f"refusing to serve on {settings.host} without an API key: anyone who can reach "
        "the port could create tasks that make this server send HTTP requests. Either set "
        "TASKPLATFORM_API_KEYS (or TASKPLATFORM_API_KEYS_FILE), or pass --insecure "
        "(TASKPLATFORM_INSECURE=true) to accept the risk knowingly."
    )
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on. \\[env: TASKPLATFORM_HOST]")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on. \\[env: TASKPLATFORM_PORT]")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="API processes. \\[env: TASKPLATFORM_WORKERS]")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Store URL, e.g. sqlite:///./taskplatform.db. \\[env: TASKPLATFORM_DATABASE_URL]"
        ),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    log_format: LogFormatOption = None,
    dispatch: Annotated[
        bool,
        typer.Option(
            "--dispatch",
            help="Also dispatch tasks in every API process. \\[env: TASKPLATFORM_DISPATCH]",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve beyond loopback without API keys, knowingly. "
            "\\[env: TASKPLATFORM_INSECURE]",
        ),
    ] = False,
) -> None:
    """Run the HTTP API with uvicorn (uvloop, httptools); creates or upgrades the schema first."""
    import uvicorn

    settings = _settings_or_exit(
        logs=True,
        host=host,
        port=port,
        workers=workers,
        database_url=database_url,
        insecure=insecure or None,
        dispatch=dispatch or None,
        log_format=log_format,
    )
    _refuse_unsafe_or_exit(settings)
    _prepare_or_exit(settings)
    _check_backends_answer_or_exit(settings, "server")
    raise_open_files_limit()
    # Worker processes rebuild their settings from the environment: hand the flags down.
    for name in ("host", "port", "workers", "database_url", "insecure", "dispatch", "log_format"):
        os.environ[f"TASKPLATFORM_{name.upper()}"] = str(getattr(settings, name))
    counts_dir = None
    given_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given_dir is not None and not (os.path.isdir(given_dir) and os.access(given_dir, os.W_OK)):
        # prometheus-client's own variable: each process would fail at its first count.
        _error(
            f"PROMETHEUS_MULTIPROC_DIR {given_dir!r} is not a directory this process can write "
            "to; make it, or unset it"
        )
        raise typer.Exit(2)
    if settings.workers > 1 and given_dir is None:
        # Each worker counts in files there, and /metrics on any worker sums them all.
        _remove_dead_counts_dirs()
        counts_dir = tempfile.mkdtemp(prefix=f"{_COUNTS_DIR_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = counts_dir
    config = uvicorn.Config(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="taskplatform.api.protocol:ProblemHttpToolsProtocol",
        # No WebSocket route exists: an Upgrade request is answered as plain HTTP, with
        # problem documents, instead of uvicorn's text/plain 403 or 400 (api/protocol.py).
        ws="none",
        access_log=access_log,
        log_level=settings.log_level.lower(),
        log_config=logging_config(settings.log_level, settings.log_format),
        # A backstop only: the service ends every callback (and answers its synchronous
        # execute) at the grace counted from the signal, and uvicorn's drain starts a little
        # later; cancelling requests at the same moment would race those answers into 500s.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds)
        + DRAIN_BACKSTOP_SECONDS,
    )
    # What uvicorn.run does, with a parent of --workers that passes on a second stop signal.
    server = uvicorn.Server(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            if settings.workers > 1:
                from taskplatform.api.supervisor import Supervisor

                supervisor = Supervisor(config, sockets=[config.bind_socket()])
                supervisor.run()
                if supervisor.startup_failed:  # the workers said why
                    raise typer.Exit(STARTUP_FAILURE)
            else:
                server.run()
    finally:
        if counts_dir is not None:
            shutil.rmtree(counts_dir, ignore_errors=True)
    if settings.workers == 1 and not server.started:  # the lifespan failed: it said why
        raise typer.Exit(STARTUP_FAILURE)


@app.command()
def worker(
    queue: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            help="A queue to serve; repeat for more. \\[env: TASKPLATFORM_DISPATCH_QUEUES]",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Callbacks in flight at once. \\[env: TASKPLATFORM_DISPATCH_CONCURRENCY]"
        ),
    ] = None,
    queue_concurrency: Annotated[
        int | None,
        typer.Option(
            help="Callbacks of one queue in flight at once \\[default: --concurrency less "
            "one for each other queue, at most half]. "
            "\\[env: TASKPLATFORM_DISPATCH_QUEUE_CONCURRENCY]"
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Dispatches per second per queue, over all dispatchers; 0 unlimited. "
            "\\[env: TASKPLATFORM_DISPATCH_RATE]"
        ),
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="Store URL. \\[env: TASKPLATFORM_DATABASE_URL]")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus /metrics on this port (0: any free one). "
            "\\[env: TASKPLATFORM_WORKER_METRICS_PORT]"
        ),
    ] = None,
    log_format: LogFormatOption = None,
) -> None:
    """Dispatch tasks: call back due tasks by themselves, with retries and backoff (no HTTP)."""
    from taskplatform.dispatch.dispatcher import MetricsListenFailed, run_worker

    settings = _settings_or_exit(
        logs=True,
        dispatch_queues=",".join(queue) if queue else None,
        dispatch_concurrency=concurrency,
        dispatch_queue_concurrency=queue_concurrency,
        dispatch_rate=rate,
        database_url=database_url,
        worker_metrics_port=metrics_port,
        log_format=log_format,
    )
    if (
        settings.worker_metrics_port is not None
        and not _is_loopback(settings.worker_metrics_host)
        and not settings.metrics_public
    ):
        _error(
            f"the worker's /metrics has no key check; to serve it on "
            f"{settings.worker_metrics_host} set TASKPLATFORM_METRICS_PUBLIC=true, or keep "
            "TASKPLATFORM_WORKER_METRICS_HOST on loopback"
        )
        raise typer.Exit(2)
    try:
        from taskplatform.dispatch import sender_from_settings

        sender_from_settings(settings)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc
    _prepare_or_exit(settings)
    _check_backends_answer_or_exit(settings, "worker")
    raise_open_files_limit()
    from taskplatform.exceptions import BackendUnavailable

    try:
        import uvloop

        uvloop.run(run_worker(settings))
    except KeyboardInterrupt:
        pass
    except (BackendUnavailable, MetricsListenFailed) as exc:  # an outage later only pauses
        _error(f"cannot start the worker: {exc}")
        raise typer.Exit(STARTUP_FAILURE) from exc


@app.command()
def receiver(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 9000,
) -> None:
    """Run a demo callback receiver that logs each callback and answers 200 with JSON."""
    import uvicorn

    from taskplatform.receiver import create_receiver_app

    config = logging_config("info", "text")
    logging.config.dictConfig(config)
    # "info" so that uvicorn says where it listens; each callback is logged by the app itself.
    uvicorn.run(
        create_receiver_app(),
        host=host,
        port=port,
        log_level="info",
        log_config=config,
        access_log=False,
    )


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None, typer.Option(help="Database URL. \\[env: TASKPLATFORM_DATABASE_URL]")
    ] = None,
) -> None:
    """Create or upgrade the schema of the configured database to the newest revision."""
    from taskplatform.backends.migrate import head_revision

    settings = _settings_or_exit(database_url=database_url)
    _prepare_or_exit(settings)
    typer.echo(f"schema at revision {head_revision()}")


@db_app.command(
    "copy",
    help=(
        "Copy the store, every task in every status with its attempts, into another database."
        "\n\nHow a deployment moves from SQLite to PostgreSQL (or back) with its data: stop the "
        "servers and workers, copy, then start them with TASKPLATFORM_DATABASE_URL set to the "
        "new database. The target is checked first; then both schemas are brought to the "
        "newest revision. A Redis queue stays as it is."
    ),
)
def db_copy(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The URL of the database to copy into (it must hold no tasks), as "
            "TASKPLATFORM_DATABASE_URL takes it.",
            show_default=False,
        ),
    ],
    database_url: Annotated[
        str | None,
        typer.Option(help="The database to copy from. \\[env: TASKPLATFORM_DATABASE_URL]"),
    ] = None,
    while_running: Annotated[
        bool,
        typer.Option(
            "--while-running",
            help="Copy even though servers or workers use the source now: what they write "
            "after the copy starts is not in it.",
        ),
    ] = False,
) -> None:
    """Copy the store, every task in every status with its attempts, into another database."""
    from sqlalchemy.exc import SQLAlchemyError

    from taskplatform.backends.copy import (
        RUNNING_WITHIN_SECONDS,
        TargetNotEmpty,
        copy_store,
        describe,
        ensure_empty,
        running_processes,
    )

    source = _settings_or_exit(database_url=database_url)
    target = _settings_or_exit(database_url=to)
    if source.database_url.startswith("sqlite:///"):
        # Preparing the schema would make a mistyped file: an empty store, "copied".
        from taskplatform.backends.sqlite import sqlite_path

        try:
            path = Path(sqlite_path(source.database_url)).resolve()
        except ValueError as exc:  # a query string, a folder, an in-memory database
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if not path.is_file():
            typer.echo(
                f"error: the SQLite file {path} (TASKPLATFORM_DATABASE_URL or --database-url) "
                "does not exist: nothing to copy",
                err=True,
            )
            raise typer.Exit(2)
    timeout = target.database_connect_timeout_seconds

    def refuse_held_target() -> None:
        try:
            asyncio.run(ensure_empty(target.database_url, connect_timeout_seconds=timeout))
        except TargetNotEmpty as exc:
            typer.echo(f"error: {exc.detail}", err=True)
            raise typer.Exit(1) from exc

    def refuse_running_source() -> None:
        running = asyncio.run(
            running_processes(source.database_url, connect_timeout_seconds=timeout)
        )
        if running and not while_running:
            typer.echo(
                f"error: {len(running)} process{'es' if len(running) > 1 else ''} used the "
                f"source in the last {RUNNING_WITHIN_SECONDS:g} s ({', '.join(running)}): stop "
                "every server and worker on it first, as what they write after the copy starts "
                "would be missing from it (one killed rather than stopped is listed for up to "
                f"{RUNNING_WITHIN_SECONDS:g} s); or pass --while-running",
                err=True,
            )
            raise typer.Exit(1)

    _check_urls_or_exit(target, "--to")
    _check_urls_or_exit(source)
    where = _backend_addresses(source)[0], _backend_addresses(target)[0]
    if where[0] == where[1]:
        typer.echo("error: --to names the database being copied from", err=True)
        raise typer.Exit(2)
    # Both refusals before either schema is changed: a copy refused (a target that holds
    # rows, a source a server runs on) leaves each database at the revision it had, which
    # its own older taskplatform may still need. A database that cannot be read yet is left
    # to the schema step, which says why in one line.
    with contextlib.suppress(SQLAlchemyError, OSError, ValueError):
        refuse_held_target()
    with contextlib.suppress(SQLAlchemyError, OSError, ValueError):
        refuse_running_source()
    # The target first, each step before the source is changed: a copy that cannot go there
    # leaves the source at the schema revision it had (an older taskplatform can still run).
    _prepare_or_exit(target, "--to")
    refuse_held_target()
    _prepare_or_exit(source)
    refuse_running_source()
    typer.echo(f"copying {where[0]} into {where[1]}", err=True)
    try:
        copied = asyncio.run(
            copy_store(
                source.database_url,
                target.database_url,
                connect_timeout_seconds=timeout,
            )
        )
    except TargetNotEmpty as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    except (SQLAlchemyError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        typer.echo(f"error: the copy failed, the target is left as it was: {reason}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"copied {describe(copied.items())}")


def main() -> None:
    """Entry point of the ``taskplatform`` console script."""
    app()
