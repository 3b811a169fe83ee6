"""Unit tests of Standard Webhooks signing, verified by the reference ``standardwebhooks``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskplatform.dispatch.signing import MIN_SECRET_BYTES, parse_secret, sign

MSG_ID = "01a22c7b-b2c9-714d-9523-57f31044d03d"
BODY = b'{"orderId": 42, "note": "caf\xc3\xa9"}'


def _serialized(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def _headers(signature: str, timestamp: int, msg_id: str = MSG_ID) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


@pytest.fixture
def now() -> int:
    return int(time.time())


def test_parse_secret_decodes_the_base64_after_the_prefix() -> None:
    key = secrets.token_bytes(32)
    assert parse_secret(_serialized(key)) == key
    assert parse_secret(f"  {_serialized(key)}\n") == key


def test_parse_secret_takes_the_specification_example() -> None:
    # The example secret of the reference libraries' tests: 24 bytes.
    assert len(parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")) == 24


def test_parse_secret_accepts_base64_without_padding() -> None:
    key = secrets.token_bytes(25)  # 25 bytes: base64 ends in "=="
    assert parse_secret(_serialized(key).rstrip("=")) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_MfKQ9r8GKYqrTwjU!D8ILPZIo2LaLaSw", "standard base64"),
        ("whsec_MfKQ9r8GKYqrTwjU-D8ILPZIo2LaLaSw", "standard base64"),  # urlsafe alphabet
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwA", "standard base64"),  # 33 characters
        ("whsec_", "at least 24 bytes"),
        ("whsec_" + base64.b64encode(b"x" * (MIN_SECRET_BYTES - 1)).decode(), "holds 23"),
    ],
)
def test_parse_secret_refuses_a_bad_secret_without_echoing_it(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_secret(text)
    assert "MfKQ9r8G" not in str(info.value)


def test_signature_is_hmac_sha256_of_id_timestamp_and_body(now: int) -> None:
    key = secrets.token_bytes(32)
    digest = hmac.new(key, f"{MSG_ID}.{now}.".encode() + BODY, hashlib.sha256).digest()
    assert sign([key], MSG_ID, now, BODY) == "v1," + base64.b64encode(digest).decode()


def test_one_secret_verifies_with_the_reference_library(now: int) -> None:
    serialized = _serialized(secrets.token_bytes(32))
    signature = sign([parse_secret(serialized)], MSG_ID, now, BODY)
    assert signature.startswith("v1,")
    assert " " not in signature
    assert Webhook(serialized).verify(BODY, _headers(signature, now)) == {
        "orderId": 42,
        "note": "café",
    }


def test_two_secrets_give_two_signatures_each_verifying_alone(now: int) -> None:
    new, old = _serialized(secrets.token_bytes(32)), _serialized(secrets.token_bytes(24))
    signature = sign([parse_secret(new), parse_secret(old)], MSG_ID, now, BODY)
    parts = signature.split(" ")
    assert len(parts) == 2
    assert all(part.startswith("v1,") for part in parts)
    for serialized in (new, old):
        Webhook(serialized).verify(BODY, _headers(signature, now), json_parse=False)
    # Each signature belongs to its own secret: the new one's alone does not verify the old one.
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, _headers(parts[0], now), json_parse=False)
    Webhook(old).verify(BODY, _headers(parts[1], now), json_parse=False)


def test_a_tampered_body_fails_verification(now: int) -> None:
    serialized = _serialized(secrets.token_bytes(32))
    signature = sign([parse_secret(serialized)], MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(serialized).verify(BODY.replace(b"42", b"43"), _headers(signature, now))


def test_a_tampered_timestamp_fails_verification(now: int) -> None:
    serialized = _serialized(secrets.token_bytes(32))
    signature = sign([parse_secret(serialized)], MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(serialized).verify(BODY, _headers(signature, now - 1))


def test_a_tampered_id_fails_verification(now: int) -> None:
    serialized = _serialized(secrets.token_bytes(32))
    signature = sign([parse_secret(serialized)], MSG_ID, now, BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(serialized).verify(BODY, _headers(signature, now, msg_id=MSG_ID[:-1] + "e"))


def test_a_wrong_secret_fails_verification(now: int) -> None:
    signature = sign([secrets.token_bytes(32), secrets.token_bytes(32)], MSG_ID, now, BODY)
    other = _serialized(secrets.token_bytes(32))
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(other).verify(BODY, _headers(signature, now))


@pytest.mark.parametrize(
    ("keys", "msg_id", "timestamp", "message"),
    [
        ([], MSG_ID, 0, "at least one"),
        ([b""], MSG_ID, 0, "none may be empty"),
        ([b"k" * 32], "", 0, "non-empty"),
        ([b"k" * 32], "msg.1", 0, "no '.'"),
        ([b"k" * 32], MSG_ID, -1, "not negative"),
    ],
)
def test_sign_refuses_what_the_specification_forbids(
    keys: list[bytes], msg_id: str, timestamp: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sign(keys, msg_id, timestamp, BODY)
