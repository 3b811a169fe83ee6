"""Checks on what clients send: the create body, JSON depth, callback URLs, cursors."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

import msgspec

from taskplatform.exceptions import MalformedJSON, ValidationFailed
from taskplatform.models import TaskCreate

_CREATE_DECODER = msgspec.json.Decoder(TaskCreate)
# A \uD800-\uDFFF escape: the only way JSON text can carry a UTF-16 surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Reject JSON text nested deeper than ``max_depth`` arrays/objects, without parsing it.

    Counting brackets outside strings needs no recursion, so a body nested 100,000 deep costs
    one linear scan; a body with fewer brackets than ``max_depth`` is accepted at once.

    Raises:
        ValidationFailed: the nesting is deeper than ``max_depth``.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    depth = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub(b"", body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                raise ValidationFailed(
                    [("$", f"JSON is nested deeper than {max_depth} levels")],
                )
        else:
            depth -= 1


def decode_json(body: bytes, max_depth: int) -> object:
    """Parse a JSON body after the depth check; return the value.

    Raises:
        ValidationFailed: too deep, or a string holds a lone UTF-16 surrogate.
        MalformedJSON: the body is not JSON.
    """
    check_json_depth(body, max_depth)
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise _decode_problem(body, exc) from exc


def _decode_problem(body: bytes, exc: Exception) -> Exception:
    if _SURROGATE_ESCAPE.search(body):
        # msgspec refuses unpaired surrogates; name the real cause rather than "malformed".
        return ValidationFailed(
            [("$", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode")]
        )
    return MalformedJSON(f"the body is not valid JSON: {exc}")


def parse_task_create(body: bytes, *, max_depth: int, max_url_length: int) -> TaskCreate:
    """Decode and validate a ``POST /api/tasks`` body.

    Args:
        body: The raw request body (UTF-8 JSON).
        max_depth: Deepest nesting accepted.
        max_url_length: Longest callbackUrl accepted, in characters.

    Returns:
        The request; ``task_data`` keeps the exact JSON text of the payload.

    Raises:
        MalformedJSON: not JSON, or not UTF-8.
        ValidationFailed: a field is missing, unknown, of the wrong type or out of range.
    """
    check_json_depth(body, max_depth)
    try:
        request = _CREATE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationFailed([_field_error(str(exc))]) from exc
    except msgspec.DecodeError as exc:
        raise _decode_problem(body, exc) from exc
    task_data = bytes(request.task_data)
    if not task_data.lstrip().startswith(b"{"):
        raise ValidationFailed([("$.taskData", "must be a JSON object")])
    try:
        # msgspec passes a Raw value's bytes through without checking their encoding.
        task_data.decode()
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"taskData is not valid UTF-8: {exc}") from exc
    check_callback_url(request.callback_url, max_url_length)
    return request


def _field_error(message: str) -> tuple[str, str]:
    # msgspec says "Expected `int`, got `str` - at `$.priority`" or "Object missing required
    # field `callbackUrl`"; turn either into (path, message).
    text, sep, where = message.rpartition(" - at `")
    if sep:
        return where.rstrip("`"), text
    missing = re.search(r"(?:missing required|unknown) field `([^`]+)`", message)
    if missing:
        return f"$.{missing.group(1)}", message
    return "$", message


def check_callback_url(url: str, max_length: int) -> None:
    """Check that ``url`` is an absolute http(s) URL with a host, at most ``max_length`` long.

    Raises:
        ValidationFailed: naming ``$.callbackUrl`` and what is wrong.
    """

    def bad(message: str) -> ValidationFailed:
        return ValidationFailed([("$.callbackUrl", message)])

    if len(url) > max_length:
        raise bad(f"longer than {max_length} characters")
    if _CONTROL_OR_SPACE.search(url):
        raise bad("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"not a valid URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise bad("the scheme must be http or https")
    if not parts.hostname:
        raise bad("the URL has no host")
    if port == 0:
        raise bad("port 0 cannot be connected to")


def check_cursor(cursor: str | None) -> str | None:
    """Return ``cursor`` (a task id from ``nextCursor``) if well-formed.

    Raises:
        ValidationFailed: the cursor is not a task id.
    """
    if cursor is None:
        return None
    try:
        uuid.UUID(cursor)
    except ValueError as exc:
        raise ValidationFailed([("cursor", "not a cursor returned by this API")]) from exc
    return cursor
