"""scripts/test as the README describes it: its install, ruff and mypy steps stubbed, pytest and
the arguments it is given real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _scripts_test(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a copy of scripts/test whose venv, ruff and mypy steps do nothing and whose pytest
    is this one, run in the repository with the arguments scripts/test gives it."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    (tmp_path / "scripts" / "_venv.sh").write_text("ensure_venv() { :; }\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("ruff", "mypy"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "pytest").write_text(
        f'#!/bin/sh\ncd "{ROOT}" && exec "{sys.executable}" -m pytest "$@"\n'
    )
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return subprocess.run(
        ["bash", "scripts/test", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTEST_ADDOPTS": ""},
    )


def test_scripts_test_runs_a_debugger_in_one_process(tmp_path: Path) -> None:
    """README: ``--pdb`` and ``--trace`` run in one process by themselves. pytest-xdist refuses
    them with workers ("--pdb is incompatible with distributing tests"), which the script
    asked for by number since it runs one more worker than cores (``-n auto`` let them be)."""
    done = _scripts_test(
        tmp_path,
        "--pdb",
        "tests/unit/test_retry.py",
        "-k",
        "parses_seconds",
        "-p",
        "no:cacheprovider",
    )
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    assert "1 passed" in done.stdout
