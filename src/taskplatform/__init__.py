"""taskplatform: a task platform that runs work through HTTP callbacks."""

from __future__ import annotations

__version__ = "0.1.0"
