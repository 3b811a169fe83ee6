"""Verify the Standard Webhooks signature of a callback, for receivers written in Python.

The platform signs each callback with :func:`taskplatform.dispatch.signing.sign` when
``TASKPLATFORM_SIGNING_SECRET`` is set; this checks it with that same function, so the two
cannot disagree on the scheme.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping, Sequence

from taskplatform.client.errors import InvalidSignature

DEFAULT_TOLERANCE_SECONDS = 300
"""How far ``webhook-timestamp`` may be from now, in seconds, before a callback is refused as a
replay (the Standard Webhooks reference libraries use five minutes too)."""


def _header(headers: Mapping[str, str], name: str) -> str:
    # HTTP header names are case-insensitive; a plain dict from a framework may keep any case.
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise InvalidSignature(f"the callback has no {name} header")


def verify_callback(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    *,
    now: float | None = None,
) -> None:
    """Check that a callback was signed by the platform and is recent.

    Args:
        secret: The ``whsec_<base64>`` secret the server signs with (its
            ``TASKPLATFORM_SIGNING_SECRET``), or several while rotating: any one that matches
            is enough.
        headers: The request headers (any mapping; names are matched case-insensitively):
            ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` are read.
        body: The exact request body bytes, before any JSON parsing.
        tolerance_seconds: How far the timestamp may be from ``now``, in seconds (300).
        now: The current time in Unix seconds; None reads the clock (tests pass one).

    Raises:
        InvalidSignature: a header is missing or malformed, the timestamp is outside the
            tolerance, or no signature matches.
        ValueError: a secret is not ``whsec_`` followed by base64 of at least 24 bytes, or
            ``tolerance_seconds`` is not a finite number from 0 (a configuration error of the
            receiver, not a forged request).
    """
    # Imported here, not at the top: taskplatform.dispatch pulls in the server's HTTP client,
    # which a program that only sends tasks has no use for.
    from taskplatform.dispatch.signing import SIGNATURE_VERSION, parse_secret, sign

    keys = [parse_secret(text) for text in ([secret] if isinstance(secret, str) else secret)]
    if not keys:
        raise ValueError("verify_callback needs at least one secret")
    # NaN compares false with everything: as a tolerance it would pass any timestamp.
    if not (isinstance(tolerance_seconds, int | float) and 0 <= tolerance_seconds < math.inf):
        raise ValueError(
            "tolerance_seconds must be a finite number of seconds, 0 or more: "
            f"{tolerance_seconds!r}"
        )
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    offered = _header(headers, "webhook-signature").split()
    # ASCII digits, at most 12: str.isdigit() also takes "²", and int() refuses 5,000 digits.
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit() and len(raw_timestamp) <= 12):
        raise InvalidSignature(f"webhook-timestamp is not Unix seconds: {raw_timestamp[:40]!r}")
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise InvalidSignature(
            f"webhook-timestamp is {timestamp - current:+.0f} s from now, beyond the tolerance "
            f"of {tolerance_seconds:g} s (a replay, or a clock off)"
        )
    try:
        expected = [sign([key], msg_id, timestamp, body) for key in keys]
    except ValueError as exc:  # an id sign() refuses (empty, or holding a ".")
        raise InvalidSignature(f"webhook-id cannot have been signed: {exc}") from exc
    prefix = f"{SIGNATURE_VERSION},"
    for signature in offered:
        if not signature.startswith(prefix):
            continue  # another scheme (v1a, asymmetric) that this secret cannot check
        for candidate in expected:
            if hmac.compare_digest(signature.encode(), candidate.encode()):
                return
    raise InvalidSignature("no webhook-signature matches the secret")
