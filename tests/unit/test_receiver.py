"""The demo receiver logs what it gets without letting it drive the terminal."""

from __future__ import annotations

import logging

import httpx
import pytest

from taskplatform.receiver import create_receiver_app


async def test_a_callback_is_logged_with_its_controls_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A path is percent-decoded (``%1B`` is ESC) and a JSON body may hold U+009B raw: both
    start terminal escape sequences in the log the receiver writes to a terminal."""
    transport = httpx.ASGITransport(app=create_receiver_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://r.test") as client:
        with caplog.at_level(logging.INFO):
            answer = await client.post(
                "/orders%1B%5B2J",
                content='{"csi": "\u009b31m"}'.encode(),
                headers={"X-Task-Id": "t1", "X-Task-Attempt": "2"},
            )
    assert answer.json() == {"received": True, "taskId": "t1", "attempt": 2, "bytes": 16}
    [line] = [record.getMessage() for record in caplog.records if "callback" in record.msg]
    assert "\x1b" not in line
    assert "\u009b" not in line
    assert "/orders\\x1b[2J" in line
    assert '{"csi": "\\x9b31m"}' in line


async def test_an_attempt_header_of_other_digits_is_no_attempt_not_a_500() -> None:
    """``"¹".isdigit()`` is true and ``int("¹")`` raises: the receiver answered 500 to an
    ``X-Task-Attempt`` of a superscript digit (found in review)."""
    transport = httpx.ASGITransport(app=create_receiver_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://r.test") as client:
        answer = await client.post(
            "/", content=b"{}", headers={b"X-Task-Id": b"t1", b"X-Task-Attempt": b"\xb9"}
        )
    assert answer.status_code == 200
    assert answer.json()["attempt"] is None
