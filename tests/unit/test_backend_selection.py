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
            "db='two': a Redis database is a number",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?connect_timeout=soon"),
            "connect_timeout='soon' in the PostgreSQL URL: use a number of seconds",
        ),
        (
            Settings(database_url="postgresql://u@127.0.0.1/db?ssl=require&sslmode=disable"),
            "both ssl= and sslmode=: keep sslmode=",
        ),
    ],
)
def test_unsupported_urls_say_what_to_use(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_backends(settings)


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
    ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://h/15", "rediss://:pw@h/2?db=3"],
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
        # libpq's, which asyncpg does not read from a URL (0: wait forever, libpq says).
        (
            "postgresql://u@h/db?connect_timeout=7&sslmode=require",
            "postgresql://u@h/db?sslmode=require",
            7.0,
        ),
        ("postgresql://u@h/db?connect_timeout=0", "postgresql://u@h/db", None),
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
