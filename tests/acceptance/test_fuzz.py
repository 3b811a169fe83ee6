"""Schemathesis against the served OpenAPI document: no 5xx, every response within the schema.

Runs the schemathesis CLI (its pytest plugin does not support this pytest) against a real server:
examples, coverage, fuzzing and stateful phases, a bounded number of examples per operation. On
SQLite and on PostgreSQL: the problems a fuzzer finds in a store (a NUL byte, an out-of-range
integer, an odd Unicode string) differ by database. Redis adds a queue, not a new way to read
the request, so the HTTP-level fuzz skips its combinations.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, backend_env
from tests.support.server import Server, clean_environ

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
# Not "positive_data_acceptance": a schema-valid create can rightly be refused by state the schema
# cannot express (an Idempotency-Key already used with another body is 422, as API.md says).


@pytest.mark.parametrize("backend", [name for name in BACKENDS if "redis" not in name])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    backend: str, tmp_path: Path
) -> None:
    """About 10 s per database: 10 examples per operation keep the added PostgreSQL run cheap
    enough for every CI run."""
    # Long polls are capped so the fuzzer's waitSeconds values do not make it wait 20 s each.
    env = {**backend_env(backend, tmp_path), "TASKPLATFORM_LONG_POLL_MAX_SECONDS": "0.2"}
    server = Server(env, tmp_path / "server.log").start()
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert executable, "schemathesis is a dev dependency"
    try:
        result = subprocess.run(
            [
                executable,
                "run",
                f"{server.url}/openapi.json",
                "--max-examples",
                "10",
                "--checks",
                ",".join(CHECKS),
                "--request-timeout",
                "30",
                "--no-color",
            ],
            env=clean_environ({}),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
    finally:
        server.stop()
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "FAILURES" not in result.stdout
    assert "Traceback" not in server.log()
