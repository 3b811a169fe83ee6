"""The backend combinations every parametrized test runs on, as ``TASKPLATFORM_*`` settings."""

from __future__ import annotations

from pathlib import Path

BACKENDS = ["sqlite"]
"""Names of the combinations; each test over backends runs once per name."""


def backend_env(name: str, workdir: Path) -> dict[str, str]:
    """Return the ``TASKPLATFORM_*`` variables of combination ``name``, isolated in ``workdir``."""
    if name == "sqlite":
        return {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{workdir / 'taskplatform.db'}"}
    raise ValueError(f"unknown backend combination {name!r}")
