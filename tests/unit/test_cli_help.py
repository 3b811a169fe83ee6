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
