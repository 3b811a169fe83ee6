"""Unit tests of time formatting, the state machine table and callback result handling."""

from __future__ import annotations

import json
import os
import time

import pytest

from taskplatform.dispatch.callback import _as_json_text
from taskplatform.models import Status, format_time
from taskplatform.service import TRANSITIONS


def test_format_time_is_utc_with_milliseconds() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1_795_000_000_123) == "2026-11-18T11:06:40.123Z"
    assert format_time(None) is None


def test_format_time_ignores_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert format_time(1_795_000_000_123) == "2026-11-18T11:06:40.123Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert "TZ" not in os.environ


def test_state_machine_matches_api_md() -> None:
    """The edges are API.md's diagram plus lease expiry, dispatch, re-drive and cancel; Completed
    and Cancelled are final.

    (Processing -> Failed also covers an attempt interrupted by a lost lease.)
    """
    edges = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == {
        ("Queued", "Dequeued"),
        ("Dequeued", "Processing"),
        ("Dequeued", "Queued"),
        ("Processing", "Completed"),
        ("Processing", "Failed"),
        ("Failed", "Retry"),
        ("Retry", "Processing"),
        # automatic retry (dispatcher), re-drive of a dead letter, cancel
        ("Processing", "Retry"),
        ("Failed", "Queued"),
        ("Queued", "Cancelled"),
        ("Dequeued", "Cancelled"),
        ("Retry", "Cancelled"),
        ("Failed", "Cancelled"),
    }
    assert set(TRANSITIONS) == set(Status)
    assert not TRANSITIONS[Status.CANCELLED]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1}', b'{"a": 1}'),
        (b"  [1, 2]\n", b"[1, 2]"),
        (b"<html>hi</html>", b'"<html>hi</html>"'),
        (b"", b'""'),
        (b"\xff\xfe", '"\ufffd\ufffd"'.encode()),
        (b"[" * 5000 + b"]" * 5000, b'"' + b"[" * 5000 + b"]" * 5000 + b'"'),
    ],
)
def test_callback_bodies_become_json_text(body: bytes, expected: bytes) -> None:
    assert _as_json_text(body, 1 << 20) == expected


@pytest.mark.parametrize("byte", [b'"', b"\\", b"a"])
def test_a_text_body_at_the_limit_is_kept_whole(byte: bytes) -> None:
    """Text within the limit is kept as it came, even when every character is escaped."""
    limit = 1 << 20
    assert json.loads(_as_json_text(byte * limit, limit)) == byte.decode() * limit


@pytest.mark.parametrize("byte", [b"\x01", b"\xff"])
def test_a_body_escaped_beyond_twice_the_limit_is_cut_to_it(byte: bytes) -> None:
    """A body at the limit that is not JSON is kept as a JSON string: escaping can make that
    six times the body (1 MiB of control bytes was kept, stored and sent as 6 MiB). Past twice
    the limit it is cut, as long as fits, and ends in "…"."""
    limit = 1 << 20
    kept = _as_json_text(byte * limit, limit)
    text = json.loads(kept)
    assert len(kept) <= 2 * limit + 2
    assert text.endswith("…")
    assert len(kept) > 2 * limit + 2 - 12  # no shorter than it must be, or about
    assert set(text[:-1]) == {byte.decode(errors="replace")}
