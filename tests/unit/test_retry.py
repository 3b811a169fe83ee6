"""Retry classification and backoff of the dispatcher (DESIGN.md "Retries"; RFC 9110)."""

from __future__ import annotations

import json
import random

import pytest

from taskplatform.dispatch.callback import CallbackOutcome, parse_retry_after
from taskplatform.dispatch.retry import backoff_seconds, is_retryable
from taskplatform.models import RetryPolicy
from taskplatform.service import logged_result

POLICY = RetryPolicy(backoff_min_seconds=1, backoff_max_seconds=60, backoff_multiplier=2)


def _failed(status: int | None, *, refused: bool = False) -> CallbackOutcome:
    return CallbackOutcome(
        success=False,
        http_status=status,
        result=None,
        error="x",
        started_at=0,
        finished_at=0,
        duration_ms=0,
        refused=refused,
    )


@pytest.mark.parametrize("status", [None, 408, 425, 429, 500, 502, 503, 599])
def test_transport_errors_timeouts_and_server_errors_are_retryable(status: int | None) -> None:
    assert is_retryable(_failed(status), POLICY)


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404, 410, 422])
def test_redirects_and_client_errors_are_permanent(status: int) -> None:
    assert not is_retryable(_failed(status), POLICY)


def test_a_refused_url_is_permanent() -> None:
    assert not is_retryable(_failed(None, refused=True), POLICY)


def test_the_task_overrides_the_default_classes() -> None:
    policy = RetryPolicy(
        backoff_min_seconds=1, backoff_max_seconds=2, backoff_multiplier=2,
        retry_on=[404], permanent_on=[500],
    )  # fmt: skip
    assert is_retryable(_failed(404), policy)
    assert not is_retryable(_failed(500), policy)
    assert is_retryable(_failed(503), policy)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (30, 60)]
)
def test_backoff_stays_within_full_jitter_bounds(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_seconds(POLICY, attempt, rng=rng) for _ in range(2000)]
    assert min(delays) >= 1
    assert max(delays) <= ceiling
    # Spread over the whole range, not stuck at one end (even the first retry is jittered).
    assert max(delays) - min(delays) > (ceiling - 1) * 0.8


def test_retry_after_is_a_floor_and_is_capped() -> None:
    assert backoff_seconds(POLICY, 1, retry_after=30) == 30
    assert backoff_seconds(POLICY, 1, retry_after=10_000, retry_after_cap=120) == 120


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2
    assert parse_retry_after(" 120 ") == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0
    # RFC 9110 section 5.6.7: a recipient accepts the two obsolete forms too, all in UTC.
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", now=1445412470.0) == 10
    assert parse_retry_after("Wed Oct  7 07:28:00 2015", now=1444202870.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=1445412470.0) == 10
    for bad in (None, "", "-1", "soon", "1.5", "\u00b2", "\u0663", "\uff11"):
        assert parse_retry_after(bad) is None
    # Out of range dates are ignored, not raised.
    assert parse_retry_after("Wed, 21 Oct 99999999999 07:28:00 GMT") is None


def test_retry_after_rfc850_two_digit_year_is_read_as_rfc_9110_says() -> None:
    """RFC 9110 section 5.6.7: a two-digit year that "appears to be more than 50 years in the
    future" is the most recent past year with those digits, and so any other is the future's.
    In 2026, "69" is 2069, not 1969 (email.utils reads 69-99 as 19xx: the wait was 0)."""
    now = 1796256000.0  # 2026-12-03T00:00:00Z
    wait = parse_retry_after("Tuesday, 01-Jan-69 00:00:00 GMT", now=now)
    assert wait is not None
    assert wait > 40 * 365 * 86400, wait
    assert parse_retry_after("Thursday, 03-Dec-26 00:00:10 GMT", now=now) == 10
    assert parse_retry_after("Friday, 01-Jan-77 00:00:00 GMT", now=now) == 0  # 1977
    # By the date, not the year: on 2026-01-01, 31-Dec-76 is more than 50 years on, so 1976.
    assert parse_retry_after("Thursday, 31-Dec-76 00:00:00 GMT", now=1767225600.0) == 0


@pytest.mark.parametrize(
    "result",
    [
        b'"' + b"\\u0001" * 40_000 + b'"',
        json.dumps({"a": ['q"' * 50] * 2000}).encode(),
        b"7" * 10**5,
    ],
)
def test_the_attempt_log_keeps_at_most_its_limit_of_a_result(result: bytes) -> None:
    """A string of the result's start, ending in "…", within the limit whatever the escaping."""
    kept = logged_result(result, 4096)
    assert kept is not None
    assert len(kept) <= 4096
    text = json.loads(kept)
    assert text.endswith("…")
    assert result.decode().startswith(text[:-1])
    assert len(kept) > 2048  # not cut far below the limit
    assert logged_result(b'{"a": 1}', 4096) == b'{"a": 1}'
    assert logged_result(None, 4096) is None
