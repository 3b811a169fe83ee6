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
