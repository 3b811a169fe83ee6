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
