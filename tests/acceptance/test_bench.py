"""The benchmark suite still runs: ``bench/run.py --quick`` on SQLite, without the peers.

Not a timed test (the numbers are not checked): it keeps "one command reproduces the table"
true as the code changes. The peers (Celery, RQ) are bench-only dependencies, not installed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_prints_every_scenario_and_writes_json() -> None:
    before = set((ROOT / "bench" / "results").glob("run-*.json"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--backends", "sqlite",
         "--no-peers"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for scenario in ("a create", "b batch", "c dequeue", "d pull", "e dispatch", "f latency"):
        assert f"| sqlite | {scenario} |" in out.stdout, scenario
    assert "| sqlite | g scale |" in out.stdout
    written = set((ROOT / "bench" / "results").glob("run-*.json")) - before
    assert len(written) == 1
    doc = json.loads(written.pop().read_text())
    assert doc["quick"] is True
    assert {row["scenario"] for row in doc["rows"]} == {
        "a create", "b batch", "c dequeue", "d pull", "e dispatch", "f latency", "g scale"
    }  # fmt: skip
    assert all(row["value"] > 0 for row in doc["rows"])
