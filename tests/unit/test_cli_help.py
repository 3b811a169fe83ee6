"""The commands' help names the environment variable behind each option."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from taskplatform.cli import app
from taskplatform.settings import Settings


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_help_names_each_options_variable(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    # Rich reads "[env: ...]" as markup and drops it unless it is escaped.
    named = re.findall(r"\[env: (TASKPLATFORM_[A-Z_]+)\]", result.output)
    assert len(named) >= 4, result.output
    fields = {f"TASKPLATFORM_{name.upper()}" for name in Settings.model_fields}
    assert set(named) <= fields


@pytest.mark.parametrize("port", ["65536", "99999", "-1"])
@pytest.mark.parametrize("command", ["serve", "receiver"])
def test_a_port_out_of_range_is_a_usage_error(command: str, port: str) -> None:
    """Refused before anything listens: uvicorn would bind 99999 as 99999 mod 65536 and say
    it listens on 99999."""
    result = CliRunner().invoke(app, [command, "--port", port], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    bound = "greater than or equal to 0" if port == "-1" else "less than or equal to 65535"
    assert bound in result.output
    assert "pydantic.dev" not in result.output
    if command == "serve":
        assert f"TASKPLATFORM_PORT: Input should be {bound} (given {port})" in result.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # Each was accepted and then answered 500 (an int past SQLite's or Redis's 64 bits) on
        # every keyed create, every dequeue, or left a dispatched task Processing.
        (
            {"TASKPLATFORM_IDEMPOTENCY_KEY_TTL_SECONDS": "1e17"},
            "TASKPLATFORM_IDEMPOTENCY_KEY_TTL_SECONDS: Input should be less than or equal to "
            "31536000",
        ),
        ({"TASKPLATFORM_DEQUEUE_LEASE_SECONDS": "1e300"}, "less than or equal to 2592000"),
        ({"TASKPLATFORM_RETRY_AFTER_MAX_SECONDS": "inf"}, "Input should be a finite number"),
        ({"TASKPLATFORM_DEQUEUE_LEASE_SECONDS": "nan"}, "Input should be a finite number"),
        ({"TASKPLATFORM_MAX_JSON_DEPTH": "100000"}, "less than or equal to 500"),
        ({"TASKPLATFORM_SQLITE_BUSY_TIMEOUT_SECONDS": "1e12"}, "less than or equal to 3600"),
        ({"TASKPLATFORM_PROCESSING_LEASE_GRACE_SECONDS": "1e300"}, "less than or equal to 86400"),
        # Both given, out of order: a task that gives no timeoutSeconds would get more than
        # one that does may ask for. (One alone: the other follows it.)
        (
            {
                "TASKPLATFORM_MAX_TIMEOUT_SECONDS": "10",
                "TASKPLATFORM_DEFAULT_TIMEOUT_SECONDS": "30",
            },
            "\n  TASKPLATFORM_DEFAULT_TIMEOUT_SECONDS (30) is over "
            "TASKPLATFORM_MAX_TIMEOUT_SECONDS (10): lower the one or raise the other",
        ),
        (
            {"TASKPLATFORM_MAX_RETRIES_CEILING": "1", "TASKPLATFORM_DEFAULT_MAX_RETRIES": "3"},
            "TASKPLATFORM_DEFAULT_MAX_RETRIES (3) is over TASKPLATFORM_MAX_RETRIES_CEILING (1)",
        ),
        (
            {"TASKPLATFORM_BACKOFF_MIN_SECONDS": "600", "TASKPLATFORM_BACKOFF_MAX_SECONDS": "300"},
            "TASKPLATFORM_BACKOFF_MIN_SECONDS (600) is above "
            "TASKPLATFORM_BACKOFF_MAX_SECONDS (300)",
        ),
    ],
)
def test_settings_past_what_the_server_can_hold_are_refused_at_start(
    env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(app, ["serve"], env={"COLUMNS": "250", **env})
    assert result.exit_code == 2, result.output
    assert "error: invalid configuration:" in result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("given", "follows"),
    [
        ({"max_timeout_seconds": 10}, {"default_timeout_seconds": 10}),
        ({"max_retries_ceiling": 1}, {"default_max_retries": 1}),
        ({"backoff_min_seconds": 600}, {"backoff_max_seconds": 600}),
        ({"backoff_max_seconds": 0.5}, {"backoff_min_seconds": 0.5}),
        ({"max_timeout_seconds": 60}, {"default_timeout_seconds": 30}),  # in order: unchanged
    ],
)
def test_a_setting_left_unset_follows_the_one_given(
    given: dict[str, float], follows: dict[str, float]
) -> None:
    """One of a pair given alone, past the other's default: a reasonable configuration, taken
    as meant (it was refused until the other was set too)."""
    settings = Settings(**given)  # type: ignore[arg-type]
    for name, value in {**given, **follows}.items():
        assert getattr(settings, name) == value
