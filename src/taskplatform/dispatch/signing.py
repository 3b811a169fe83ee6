"""Standard Webhooks signatures of callbacks: the ``webhook-signature`` header.

Implements the symmetric scheme of the Standard Webhooks specification 1.0.0
(https://www.standardwebhooks.com, "Signature scheme" and "Webhook headers"): the signed content
is ``{msg_id}.{timestamp}.{body}``, signed with HMAC-SHA256 under each secret, and the header
holds ``v1,<base64 signature>`` for each, separated by spaces, so a receiver that knows any one of
the secrets verifies the callback (zero-downtime secret rotation). Secrets are shown as
``whsec_`` followed by the base64 of at least 24 random bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
"""The prefix of a serialized symmetric secret (specification, "Secret serialization")."""
MIN_SECRET_BYTES = 24
"""The shortest secret accepted, in bytes: the specification asks for at least 24 (192 bits)."""
SIGNATURE_VERSION = "v1"
"""The signature identifier of HMAC-SHA256 signatures (specification, "Signature identifier")."""


def parse_secret(text: str) -> bytes:
    """Decode a secret written as ``whsec_<base64>`` into the HMAC key.

    The base64 is the standard alphabet (``+``, ``/``); its ``=`` padding may be left out, as the
    reference libraries accept. Surrounding whitespace is ignored.

    Args:
        text: The serialized secret, such as ``whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw``.

    Returns:
        The key, at least :data:`MIN_SECRET_BYTES` bytes.

    Raises:
        ValueError: the prefix is not ``whsec_``, the rest is not base64, or the key is shorter
            than 24 bytes. The message never contains the secret.
    """
    text = text.strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(
            f"a webhook signing secret must start with {SECRET_PREFIX!r} followed by base64"
        )
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            f"a webhook signing secret must be {SECRET_PREFIX!r} followed by standard base64 "
            f"(A-Z, a-z, 0-9, +, /): {exc}"
        ) from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a webhook signing secret must hold at least {MIN_SECRET_BYTES} bytes (the Standard "
            f"Webhooks specification asks for 24 to 64 random bytes); this one holds {len(key)}"
        )
    return key


def sign(secrets: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for one callback.

    Each signature is ``v1,`` followed by the base64 of
    ``HMAC-SHA256(secret, f"{msg_id}.{timestamp}.".encode() + body)``; they are joined by single
    spaces, in the order of ``secrets``.

    Args:
        secrets: The keys (from :func:`parse_secret`); during a rotation, the new and the old.
        msg_id: The ``webhook-id`` header value (the task id), the same on every attempt.
        timestamp: The ``webhook-timestamp`` header value: the attempt's time in Unix seconds.
        body: The exact request body bytes sent.

    Returns:
        The header value, such as ``v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=``.

    Raises:
        ValueError: no secret is given or one is empty; ``msg_id`` is empty or holds a ``.``
            (which the specification forbids, as it would make the signed content ambiguous);
            or ``timestamp`` is negative.
    """
    if not secrets or not all(secrets):
        raise ValueError("at least one webhook signing secret is needed, and none may be empty")
    if not msg_id or "." in msg_id:
        raise ValueError(f"a webhook id must be non-empty and hold no '.': {msg_id!r}")
    if timestamp < 0:
        raise ValueError(f"a webhook timestamp is Unix seconds, not negative: {timestamp}")
    content = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        digest = hmac.new(secret, content, hashlib.sha256).digest()
        signatures.append(f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}")
    return " ".join(signatures)
