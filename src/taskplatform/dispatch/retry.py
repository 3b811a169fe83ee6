"""When the dispatcher retries a failed attempt, and how long it waits first.

DESIGN.md: automatic retries retry only retryable failures (connection errors, timeouts, 408,
425, 429, 5xx); a 3xx or another 4xx is permanent unless the task's ``retryOn`` says otherwise,
and ``permanentOn`` makes any listed status permanent. The wait after attempt ``n`` is exponential
backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter", 2015) above the
task's minimum: a uniform draw from ``[min_seconds, min(max_seconds, min_seconds * multiplier **
n)]``. So ``backoffMinSeconds`` is a true floor, the very first retry is already spread (many
tasks failing together do not come back together), and the wait is never shorter than a
``Retry-After`` the callback sent (RFC 9110 section 10.2.3), which is itself capped.
"""

from __future__ import annotations

import random

from taskplatform.dispatch.callback import CallbackOutcome
from taskplatform.models import RetryPolicy

RETRYABLE_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
"""HTTP statuses a callback may answer that are worth another attempt by default."""


def is_retryable(outcome: CallbackOutcome, policy: RetryPolicy) -> bool:
    """Return whether the failed ``outcome`` is worth another automatic attempt.

    A call the URL policy refused is permanent (it would be refused again). A failure without a
    status (connection error, timeout) is retryable, as is a 2xx whose body was cut short or
    could not be decompressed. A status in
    ``policy.permanent_on`` is permanent and one in ``policy.retry_on`` retryable, before the
    default classes apply.
    """
    if outcome.refused:
        return False
    status = outcome.http_status
    if status is None or 200 <= status < 300:  # a 2xx here failed on its body: cut short
        return True
    if policy.permanent_on and status in policy.permanent_on:
        return False
    if policy.retry_on and status in policy.retry_on:
        return True
    return status in RETRYABLE_STATUSES


def backoff_seconds(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None = None,
    retry_after_cap: float = 3600.0,
    rng: random.Random | None = None,
) -> float:
    """Return how long to wait before the attempt after ``attempt`` (1-based), in seconds.

    Args:
        policy: The task's backoff bounds.
        attempt: The number of the attempt that just failed.
        retry_after: The callback's ``Retry-After`` in seconds, if it sent one with 429 or 503.
        retry_after_cap: The longest ``Retry-After`` honoured (settings).
        rng: A random source (tests pass a seeded one).
    """
    ceiling = min(
        policy.backoff_max_seconds,
        policy.backoff_min_seconds * policy.backoff_multiplier ** max(1, attempt),
    )
    floor = min(policy.backoff_min_seconds, ceiling)
    delay = (rng or random).uniform(floor, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry_after_cap))
    return delay
