"""Load named SQL queries from the ``.sql`` files beside the backends."""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+)\n(?:--[^\n]*\n)*", re.MULTILINE)


def _parse(filename: str) -> dict[str, str]:
    text = resources.files("taskplatform.backends").joinpath("sql", filename).read_text("utf-8")
    headers = list(_HEADER.finditer(text))
    queries: dict[str, str] = {}
    for match, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        queries[match.group(1)] = text[match.end() : end].strip().rstrip(";")
    return queries


def load_queries(dialect: str) -> dict[str, str]:
    """Return ``{name: sql}``: ``sql/common.sql`` overlaid with ``sql/<dialect>.sql``.

    Each query is a section under a ``-- name: <name>`` header (and the comment lines below it),
    running to the next header; parameters are named (``:name``).

    Raises:
        FileNotFoundError: no such file ships with the package.
    """
    return {**_parse("common.sql"), **_parse(f"{dialect}.sql")}
