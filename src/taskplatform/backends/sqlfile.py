"""Load named SQL queries from the ``.sql`` files beside the backends."""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\n(?:--[^\n]*\n)*", re.MULTILINE)


def load_queries(filename: str) -> dict[str, str]:
    """Return ``{name: sql}`` for each ``-- name: <name>`` section of ``sql/<filename>``.

    A section runs from its header (and the comment lines under it) to the next header.

    Raises:
        FileNotFoundError: no such file ships with the package.
    """
    text = resources.files("taskplatform.backends").joinpath("sql", filename).read_text("utf-8")
    headers = list(_HEADER.finditer(text))
    queries: dict[str, str] = {}
    for match, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        queries[match.group(1)] = text[match.end() : end].strip().rstrip(";")
    return queries
