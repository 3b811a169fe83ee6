"""Test-only fault injection: make a named point in the code fail or kill the process.

The consistency guarantees (seed FR-009) are about what happens when a step fails half-way; these
hooks let the tests make that happen for real. They are off unless ``TASKPLATFORM_FAULTS`` names a
point, e.g. ``after_reserve=fail:2`` (raise BackendUnavailable the first two times) or
``after_reserve=kill`` (SIGKILL this process there).
"""

from __future__ import annotations

import os
import signal

from taskplatform.exceptions import BackendUnavailable

POINTS = frozenset({"after_reserve", "after_insert", "after_start", "after_dequeue"})
"""Where faults can be injected: ``after_reserve`` is between taking a task out of the queue and
storing it in the database; ``after_insert`` (Redis queue) is after the store has it and before
the queue's reservation is acknowledged; ``after_start`` is after the store committed a move to
Processing (an execute's or a dispatcher's claim), and ``after_dequeue`` after a pull dequeue
committed, as if the database's answer were lost."""


class Faults:
    """Parsed fault specification; cheap to call when empty.

    Args:
        spec: Comma-separated ``point=action`` pairs; action is ``fail[:N]`` or ``kill``.

    Raises:
        ValueError: an unknown point or action, or a count that is no whole number.
    """

    def __init__(self, spec: str = "") -> None:
        self._actions: dict[str, list[str | int]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, action = item.partition("=")
            if point not in POINTS:
                raise ValueError(f"unknown fault point {point!r}; known: {sorted(POINTS)}")
            kind, _, count = action.partition(":")
            if kind not in ("fail", "kill"):
                raise ValueError(f"unknown fault action {action!r}; use fail[:N] or kill")
            if count and not (count.isascii() and count.isdigit()):
                raise ValueError(
                    f"a fault's count must be a whole number, as fail:2, not {count!r}"
                )
            self._actions[point] = [kind, int(count) if count else -1]

    def hit(self, point: str) -> None:
        """Apply the fault configured at ``point``, if any.

        Raises:
            BackendUnavailable: the point is configured to fail (and has failures left).
        """
        action = self._actions.get(point)
        if action is None:
            return
        kind, remaining = action
        if remaining == 0:
            return
        if isinstance(remaining, int) and remaining > 0:
            action[1] = remaining - 1
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise BackendUnavailable(f"injected fault at {point}")
