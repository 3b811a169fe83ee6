"""Unit tests of choosing backends from URLs: unknown schemes and missing drivers name the fix."""

from __future__ import annotations

import sys

import pytest

from taskplatform.backends import ConfigurationError, open_backends, scheme
from taskplatform.faults import Faults
from taskplatform.settings import Settings


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///x.db", "sqlite"),
        ("postgresql://u@h/db", "postgresql"),
        ("postgres://u@h/db", "postgresql"),
        ("postgresql+asyncpg://u@h/db", "postgresql"),
        ("redis://h:6379/0", "redis"),
        ("rediss://h:6379/0", "redis"),
        ("mysql://h/db", "mysql"),
    ],
)
def test_scheme(url: str, kind: str) -> None:
    assert scheme(url) == kind


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(database_url="mysql://h/db"), "does not support as a store"),
        (Settings(database_url="redis://h/0"), "does not support as a store"),
        (
            Settings(database_url="sqlite:///a.db", queue_url="amqp://h/"),
            "does not support as a queue",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="sqlite:///b.db"),
            "same database as the store",
        ),
        (Settings(database_url="sqlite://relative.db"), "sqlite:///path"),
        # redis-py would read these as database 0, another application's perhaps.
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://127.0.0.1:6379/abc"),
            "the Redis database 'abc': a Redis database is a number",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://127.0.0.1:6379/1x"),
            "the Redis database '1x'",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://127.0.0.1:6379?db=two"),
            "the Redis database 'two': a Redis database is a number",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://127.0.0.1:6379/?db="),
            "the Redis database '': a Redis database is a number",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://h:6379/13?db=14"),
            r"the Redis database twice \(in its path and as \?db=\)",
        ),
        # A password is read past, never quoted: only what follows its last "@" is the address.
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://:hunter/2secret@h:6379/x"),
            "the Redis database 'x': a Redis",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?connect_timeout=soon"),
            "TASKPLATFORM_DATABASE_URL: connect_timeout='soon': use a positive number of seconds",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?connect_timeout=0"),
            "connect_timeout='0': use a positive number of seconds",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?connect_timeout=-1"),
            "connect_timeout='-1': use a positive number of seconds",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?ssl=require&sslmode=disable"),
            "both ssl= and sslmode= are given: keep sslmode=",
        ),
        (
            Settings(database_url="postgresql://u:s3cret@127.0.0.1:abc/db"),
            "the port 'abc' of '127.0.0.1:abc': use a number from 1 to 65535",
        ),
        (
            Settings(database_url="postgresql://u:s3cret@127.0.0.1:99999/db"),
            "the port '99999'",
        ),
        (
            Settings(database_url="postgresql://u:s3cret@::1:5432/db"),
            r"the host '::1:5432': put an IPv6 address in brackets, \[::1\]:5432",
        ),
        (
            Settings(database_url="postgresql://u:s3cret@[::1:5432/db"),
            r"the host '\[::1:5432': an IPv6 address needs its closing '\]'",
        ),
        # SQLAlchemy (the migrations) would drop the options, the server open "a.db?mode=ro".
        (Settings(database_url="sqlite:///a.db?mode=ro"), "has a query string"),
        # redis-py reads its options only when it connects: a traceback in every request.
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://:s3cret@h:6379/9?foo=bar"),
            "TASKPLATFORM_QUEUE_URL has 'foo', which redis-py does not take",
        ),
        (
            Settings(
                database_url="sqlite:///a.db", queue_url="redis://h:6379/9?socket_timeout=abc"
            ),
            "Invalid value for 'socket_timeout'",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://[::1:6379/9"),
            "TASKPLATFORM_QUEUE_URL: Invalid IPv6 URL",
        ),
        (
            Settings(database_url="sqlite:///a.db", queue_url="redis://h:99999/9"),
            "TASKPLATFORM_QUEUE_URL: Port out of range",
        ),
    ],
)
def test_unsupported_urls_say_what_to_use(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        open_backends(settings)
    assert "s3cret" not in str(raised.value)
    assert "2secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "module", "extra"),
    [
        (Settings(database_url="postgresql://u@127.0.0.1/db"), "asyncpg", "postgres"),
        (
            Settings(database_url="sqlite:///x.db", queue_url="redis://127.0.0.1/0"),
            "redis",
            "redis",
        ),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    settings: Settings, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    monkeypatch.chdir(str(tmp_path))
    with pytest.raises(ConfigurationError, match=rf"pip install 'taskplatform\[{extra}\]'"):
        open_backends(settings)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://h:6379/",
        "redis://h/15/",
        "redis://h?db=3",
        "rediss://:pw@h/2",
    ],
)
def test_a_redis_database_by_number_or_none_is_accepted(url: str, tmp_path: object) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/a.db", queue_url=url)
    assert type(open_backends(settings).queue).__name__ == "RedisQueue"


@pytest.mark.parametrize(
    ("url", "dsn", "timeout"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:p%40ss@h:5432/db", None),
        ("postgres+asyncpg://u@h/db", "postgresql://u@h/db", None),
        (
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=a",
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=%2Fca.pem&application_name=a",
            None,
        ),
        # SQLAlchemy's keyword for asyncpg, which asyncpg's URL parser knows as sslmode.
        ("postgresql://u@h/db?ssl=require", "postgresql://u@h/db?sslmode=require", None),
        # libpq's, which asyncpg does not read from a URL.
        (
            "postgresql://u@h/db?connect_timeout=7&sslmode=require",
            "postgresql://u@h/db?sslmode=require",
            7.0,
        ),
        # A password runs to the last "@", as SQLAlchemy reads it, encoded or not.
        ("postgresql://u:S3cr3t#frag@h/db", "postgresql://u:S3cr3t%23frag@h/db", None),
        (
            "postgresql://u:a?b/c@d@h:5432/db?x=1",
            "postgresql://u:a%3Fb%2Fc%40d@h:5432/db?x=1",
            None,
        ),
        ("postgresql://u:p%25zz%23@h/db", "postgresql://u:p%25zz%23@h/db", None),
        ("postgresql://u:[x@[::1]:5432/db", "postgresql://u:%5Bx@[::1]:5432/db", None),
        ("postgresql://u@h1:5432,h2:5433/db", "postgresql://u@h1:5432,h2:5433/db", None),
        (
            "postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql",
            "postgresql:///db?host=%2Fvar%2Frun%2Fpostgresql",
            None,
        ),
    ],
)
def test_a_postgres_url_reaches_asyncpg_as_libpq_reads_it(
    url: str, dsn: str, timeout: float | None
) -> None:
    from taskplatform.backends.postgres import driver_dsn

    assert driver_dsn(url) == (dsn, timeout)


def test_faults_parse_and_count_down() -> None:
    faults = Faults("after_reserve=fail:2")
    for _ in range(2):
        with pytest.raises(Exception, match="injected fault"):
            faults.hit("after_reserve")
    faults.hit("after_reserve")  # spent
    Faults("").hit("after_reserve")
    with pytest.raises(ValueError, match="unknown fault point"):
        Faults("somewhere=fail")
    with pytest.raises(ValueError, match="unknown fault action"):
        Faults("after_reserve=explode")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:top@secret@h:5432/db", "postgresql://postgres:***@h:5432/db"),
        ("postgresql+asyncpg://u:a@b@c@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=p", "postgresql://u@h/db?password=%2A%2A%2A"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_the_log_shows_a_database_url_without_any_of_its_password(url: str, shown: str) -> None:
    """The user and password run to the last "@" (the README; the driver reads them so): the
    first log line and ``db copy`` showed "postgres:***@secret@h" for the password "top@secret"."""
    from taskplatform.cli import _backend_addresses

    assert _backend_addresses(Settings(database_url=url))[0] == shown


@pytest.mark.parametrize(
    "settings",
    [
        Settings(database_url="postgresql://app@db:5432/tasks?password=hunter2"),
        Settings(
            database_url="postgresql://app@db:5432/tasks",
            queue_url="redis://redis:6379/0?password=hunter2",
        ),
    ],
)
def test_the_settings_repr_masks_a_password_given_as_a_url_parameter(settings: Settings) -> None:
    """README (Security): "settings' repr masks keys, signing secrets and database passwords".
    libpq takes the password as ``?password=`` as well (``_backend_addresses`` masks that one
    in the log line), and redis-py too; the repr showed it (found in review)."""
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)


def test_a_postgres_url_with_an_at_sign_in_a_parameter_is_read_as_libpq_reads_it() -> None:
    """libpq (psql) and asyncpg both read ``?application_name=tp@web1`` as a parameter of the
    database ``tasks`` on ``db``; the user and password were taken to run to that last "@", so
    the URL was refused as one that "names no database" (exit 2). A password may still hold
    "@", "?" and "/" unencoded."""
    from taskplatform.backends.postgres import driver_dsn

    url = "postgresql://app@db:5432/tasks?application_name=tp@web1"
    dsn, _ = driver_dsn(url)
    assert dsn.startswith("postgresql://app@db:5432/tasks?"), dsn
    assert "application_name=tp%40web1" in dsn or "application_name=tp@web1" in dsn
    assert driver_dsn("postgresql://u:a?b/c@d@h:5432/db?x=1")[0] == (
        "postgresql://u:a%3Fb%2Fc%40d@h:5432/db?x=1"
    )


@pytest.mark.parametrize(
    "url",
    [
        # No userinfo: trust/peer auth, or PGUSER from the environment.
        "postgresql://db:5432/tasks?application_name=tp@web1",
        # The unix-socket form libpq documents, with the same parameter.
        "postgresql:///tasks?host=/var/run/postgresql&application_name=tp@web1",
    ],
)
def test_an_at_sign_in_a_parameter_of_a_url_without_userinfo(url: str) -> None:
    """An '@' in a parameter of a URL with no user (trust or peer authentication, PGUSER) is
    no end of a user and password either: the URL was refused as naming no database."""
    from taskplatform.backends.postgres import driver_dsn

    dsn, _ = driver_dsn(url)
    assert "tp%40web1" in dsn or "tp@web1" in dsn, dsn


def test_an_at_sign_in_a_parameter_before_one_holding_a_slash() -> None:
    """``sslrootcert=/path`` (or ``host=/socket/dir``) after ``application_name=tp@web1``: the
    parameter's '@' was taken as the end of the password (the driver was given the host
    ``web1&sslrootcert=...``). The query starts at the first "?name=", and no '@' after it
    ends a password."""
    from taskplatform.backends.postgres import driver_dsn

    dsn, _ = driver_dsn(
        "postgresql://app:pw@db:5432/tasks?application_name=tp@web1&sslrootcert=/etc/ssl/ca.crt"
    )
    assert dsn.startswith("postgresql://app:pw@db:5432/tasks?"), dsn


@pytest.mark.parametrize(
    "settings",
    [
        Settings(database_url="postgresql://db:5432/tasks?user=app&password=hun@ter2"),
        Settings(database_url="postgresql://db/tasks?user=app&password=hun@ter2"),
        Settings(
            database_url="postgresql://app@db:5432/tasks",
            queue_url="redis://redis:6379/0?password=hun@ter2",
        ),
    ],
)
def test_the_settings_repr_masks_a_url_parameter_password_holding_an_at(
    settings: Settings,
) -> None:
    """A ``?password=`` holding '@' in a URL without userinfo: the repr showed it whole, or its
    tail (``redis://redis:***@ter2``)."""
    assert "ter2" not in repr(settings), repr(settings)


def test_a_password_holding_a_parameter_like_text_runs_to_the_last_at() -> None:
    """A password such as ``hunter2?x=1`` (unencoded): the query was taken to start at its
    "?x=", so the URL was refused for the port "hunter2" (the error showing it) and the repr
    printed it whole (found in review). A "?name=" starts the query only past the path's "/"."""
    from taskplatform.backends.postgres import driver_dsn

    assert driver_dsn("postgresql://app:hunter2?x=1@db:5432/tasks")[0] == (
        "postgresql://app:hunter2%3Fx%3D1@db:5432/tasks"
    )
    for settings in (
        Settings(database_url="postgresql://app:hunter2?x=1@db:5432/tasks"),
        Settings(
            database_url="postgresql://app@db:5432/tasks",
            queue_url="redis://:hunter2?x=1@redis:6379/0",
        ),
    ):
        assert "hunter2" not in repr(settings), repr(settings)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:///%3Amemory%3A", "in-memory"),
        ("sqlite:///tasks%00.db", "NUL"),
        ("sqlite:///data%2F", "folder"),
    ],
)
def test_a_sqlite_url_is_judged_once_percent_decoded(url: str, words: str) -> None:
    """``%3Amemory%3A`` is an in-memory database as ``:memory:`` is, ``%00`` a NUL no file name
    holds, ``data%2F`` a folder: each passed the checks made before decoding, and serve then
    failed later (no such table, exit 3) or in a traceback (embedded null byte), not with its
    one line (found in review)."""
    from taskplatform.backends.sqlite import sqlite_path

    with pytest.raises(ValueError, match=words):
        sqlite_path(url)
    assert sqlite_path("sqlite:///my%20data/tasks.db") == "my data/tasks.db"


def test_a_url_without_a_path_may_hold_an_at_in_a_parameter() -> None:
    """``postgresql://app:pw@db:5432?dbname=tasks&application_name=tp@web1`` (the
    database named by ``dbname=``, which driver_dsn accepts) worked before b81ca67: the
    user and password now run to the "@" inside application_name, the host is "web1", and the
    URL is refused ("names no database")."""
    from taskplatform.backends.postgres import driver_dsn

    url = "postgresql://app:pw@db:5432?dbname=tasks&application_name=tp@web1"
    assert driver_dsn(url)[0] == (
        "postgresql://app:pw@db:5432?dbname=tasks&application_name=tp%40web1"
    )
    assert "app:***@db:5432?" in repr(Settings(database_url=url))
