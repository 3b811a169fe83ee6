"""The README stays true to the code: its configuration table is the settings class's."""

from __future__ import annotations

from pathlib import Path

from taskplatform.settings import configuration_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- settings:")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /settings -->")
    assert text[start:end] == configuration_table(), (
        "README's configuration table is stale: paste taskplatform.settings.configuration_table()"
    )
