"""Checks on what clients send: the create body, JSON depth, callback URLs, cursors."""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import unicodedata
from typing import Any, Literal, TypeVar, overload
from urllib.parse import urlsplit

import msgspec
from pydantic_core import PydanticCustomError

from taskplatform.exceptions import MalformedJSON, TaskNotFound, ValidationFailed
from taskplatform.models import (
    IDEMPOTENCY_KEY,
    MAX_DELAY_SECONDS,
    QUEUE_NAME,
    QUEUE_NAME_RULE,
    BatchCreate,
    BatchTaskCreate,
    RedriveFilter,
    TaskCreate,
    now_ms,
)

T = TypeVar("T")
_EPOCH = 0.0
_CREATE_DECODER = msgspec.json.Decoder(TaskCreate)
_BATCH_ITEM_DECODER = msgspec.json.Decoder(BatchTaskCreate)
_BATCH_DECODER = msgspec.json.Decoder(BatchCreate)
_REDRIVE_DECODER = msgspec.json.Decoder(RedriveFilter)
# $, not \Z: these patterns run on pydantic's regex engine, where $ is the end of the text.
QUEUE_PATTERN = rf"^(?:{QUEUE_NAME})$"
"""A queue name (:data:`~taskplatform.models.QUEUE_NAME`), for the queue routes' query and path."""
# One escape of JSON text, read from its backslash: a \uXXXX (its hex digits a group) or any
# other (\\ among them, so that the "u" after an escaped backslash is no escape).
_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
# Opening brackets to "(", closing ones to ")"; every other byte is deleted.
_PAIRS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
# C0 and C1 controls (U+009B alone starts a terminal escape sequence), space, DEL, backslash.
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_NUMERIC_LABEL = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
TASK_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
"""A task id (a lowercase UUID), as the pagination cursor must be."""
_TASK_ID = re.compile(TASK_ID_PATTERN)
IDEMPOTENCY_KEY_PATTERN = rf"^{IDEMPOTENCY_KEY}$"
"""An ``Idempotency-Key`` header (:data:`~taskplatform.models.IDEMPOTENCY_KEY`)."""

PATTERN_RULES = {
    QUEUE_PATTERN: QUEUE_NAME_RULE,
    TASK_ID_PATTERN: "must be a task id (a lowercase UUID), as `nextCursor` gives it",
    IDEMPOTENCY_KEY_PATTERN: "must be 1 to 255 printable ASCII characters, without spaces",
}
"""What each pattern of a route's parameters means, in words: the message of a value that does
not match it, instead of the regex itself."""


def _too_deep(max_depth: int) -> ValidationFailed:
    return ValidationFailed([("$", f"JSON is nested deeper than {max_depth} levels")])


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Reject well-formed JSON text nested deeper than ``max_depth`` arrays/objects.

    ``body`` must already have parsed (so every string in it is closed and the brackets are
    balanced). Strings are cut out and every byte but the brackets dropped, with bytes methods
    only; then each pass removes every innermost pair, so the number of passes to empty the
    brackets is the nesting depth: at most ``max_depth + 1`` passes over them. A batch of 1,000
    small tasks takes 0.9 ms, where a regular expression and a bracket-by-bracket loop took
    9.5 ms, 8 % of the batch's CPU (bench/README). A body with no more brackets than
    ``max_depth`` passes at once.

    Raises:
        ValidationFailed: the nesting is deeper than ``max_depth``.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    brackets = _outside_strings(body).translate(_PAIRS, _NOT_BRACKETS)
    depth = 0
    while brackets:
        depth += 1
        if depth > max_depth:
            raise _too_deep(max_depth)
        brackets = brackets.replace(b"()", b"")


def _outside_strings(body: bytes) -> bytes:
    """The bytes of JSON text ``body`` that are outside its strings (all but those of a last
    string never closed)."""
    # Escapes first, left to right as JSON reads them: each "\\" pair, then each "\"" left;
    # then every other piece between quotes is outside a string.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[::2])


def _deep_or_malformed(body: bytes, too_deep: ValidationFailed) -> Exception:
    """The problem of a body the decoder gave up on at its recursion limit (about 1,000
    levels), before reading to its end: ``too_deep`` if its brackets pair off, else 400, as a
    shallower body cut short is (its brackets never close; API.md: malformed JSON is 400)."""
    outside = _outside_strings(body)
    if outside.count(b"[") != outside.count(b"]") or outside.count(b"{") != outside.count(b"}"):
        return MalformedJSON("the body is not valid JSON: its brackets do not pair off")
    return too_deep


MAX_INTEGER_DIGITS = 4300
"""The longest integer (in digits) a task's data may hold: Python's default limit on turning
text into an ``int`` (``sys.get_int_max_str_digits``, a guard against quadratic conversion), past
which ``json.loads``, and so this project's own client and CLI, raise instead of reading the task.
RFC 8259, section 6, lets an implementation limit the range of the numbers it accepts."""

_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_INTEGER_DIGITS + 1))
_LONG_INTEGER = re.compile(rb"(?:^|[\s,:\[])-?[0-9]{%d,}(?![0-9.eE])" % (MAX_INTEGER_DIGITS + 1))


def check_integer_digits(data: bytes) -> None:
    """Reject well-formed JSON text holding an integer of more than :data:`MAX_INTEGER_DIGITS`
    digits (a longer run of digits in a string, a fraction or an exponent is fine).

    A text with no such run of digits anywhere is passed by one scan of a compiled expression;
    only one that has it is looked at outside its strings.

    Raises:
        ValidationFailed: on ``$.taskData``, naming the limit.
    """
    if len(data) <= MAX_INTEGER_DIGITS or not _DIGITS.search(data):
        return
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b'""'.join(unescaped.split(b'"')[::2])
    if _LONG_INTEGER.search(outside):
        raise ValidationFailed(
            [
                (
                    "$.taskData",
                    f"holds an integer of more than {MAX_INTEGER_DIGITS:,} digits, which most "
                    "JSON readers (Python's among them) refuse; send it as a string",
                )
            ]
        )


def _has_lone_surrogate(body: bytes) -> bool:
    """Whether JSON text ``body`` escapes an unpaired UTF-16 surrogate: a \\uD800-\\uDBFF not
    followed at once by a \\uDC00-\\uDFFF, or one of the latter alone; the only way JSON text
    can carry one. Escapes are read in order from the start, so ``"C:\\\\ud800"`` (an escaped
    backslash, then the text "ud800") is none (found in review: it was, both ways)."""
    high_ends_at = -1  # where a high surrogate's escape ended, awaiting its low one
    for escape in _ESCAPE.finditer(body):
        hex_digits = escape.group(1)
        code = int(hex_digits, 16) if hex_digits else None
        if high_ends_at >= 0:
            if escape.start() != high_ends_at or code is None or not 0xDC00 <= code <= 0xDFFF:
                return True
            high_ends_at = -1
        elif code is not None and 0xD800 <= code <= 0xDBFF:
            high_ends_at = escape.end()
        elif code is not None and 0xDC00 <= code <= 0xDFFF:
            return True
    return high_ends_at >= 0


def _decode_problem(body: bytes, exc: Exception) -> Exception:
    if _has_lone_surrogate(body):
        # msgspec refuses unpaired surrogates; name the real cause rather than "malformed".
        return ValidationFailed(
            [("$", "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), not valid Unicode")]
        )
    if not body.strip():
        # msgspec says "Input data was truncated", true but no help to someone who sent nothing.
        return MalformedJSON("the body is empty: send a JSON object")
    return MalformedJSON(f"the body is not valid JSON: {exc}")


def _check_well_formed(body: bytes, too_deep: ValidationFailed) -> None:
    """Raise the problem of a body that is not JSON text at all (RFC 8259), for one msgspec
    refused a field of first: it stops at the first field of a wrong type or name, before a
    syntax error further on, and such a body is 400 ``malformed_json`` (API.md) wherever its
    break falls. Only on that error path: decoding to ``msgspec.Raw`` checks the syntax and
    builds nothing.

    Raises:
        MalformedJSON: not JSON text, or not UTF-8 (RFC 8259, section 8.1).
        ValidationFailed: ``too_deep``, deeper than the decoder goes; or a lone surrogate.
    """
    try:
        msgspec.json.decode(body, type=msgspec.Raw)
    except RecursionError as exc:
        raise _deep_or_malformed(body, too_deep) from exc
    except msgspec.DecodeError as exc:
        raise _decode_problem(body, exc) from exc
    _check_utf8(body)  # a Raw is not read as text: its strings' bytes are not checked


def _check_utf8(body: bytes) -> None:
    """Raise :class:`MalformedJSON` naming the first byte of ``body`` that is not UTF-8 (JSON
    text is UTF-8: RFC 8259, section 8.1)."""
    if body.isascii():
        return
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        raise MalformedJSON(
            f"the body is not valid UTF-8 at byte {exc.start} ({exc.reason})"
        ) from exc


@overload
def parse_task_create(
    body: bytes, *, max_depth: int, max_url_length: int, batch_item: Literal[True]
) -> BatchTaskCreate: ...


@overload
def parse_task_create(
    body: bytes, *, max_depth: int, max_url_length: int, batch_item: bool = False
) -> TaskCreate: ...


def parse_task_create(
    body: bytes, *, max_depth: int, max_url_length: int, batch_item: bool = False
) -> TaskCreate:
    """Decode and validate a ``POST /api/tasks`` body, or one item of a batch.

    Args:
        body: The raw request body (UTF-8 JSON), or the exact bytes of a batch item.
        max_depth: Deepest nesting accepted.
        max_url_length: Longest callbackUrl accepted, in characters.
        batch_item: Decode a batch item (:class:`~taskplatform.models.BatchTaskCreate`), which
            may also carry an ``idempotencyKey``.

    Returns:
        The request; ``task_data`` keeps the exact JSON text of the payload.

    Raises:
        MalformedJSON: not JSON, or not UTF-8.
        ValidationFailed: a field is missing, unknown, of the wrong type or out of range.
    """
    wire_type = BatchTaskCreate if batch_item else TaskCreate
    try:
        request = (_BATCH_ITEM_DECODER if batch_item else _CREATE_DECODER).decode(body)
    except RecursionError as exc:  # deeper than the decoder goes (about 1,000 levels)
        raise _deep_or_malformed(body, _too_deep(max_depth)) from exc
    except msgspec.ValidationError as exc:
        _check_well_formed(body, _too_deep(max_depth))
        # msgspec stops at the first bad field; look again, slowly, to name every one.
        errors = _every_field_error(body, max_url_length, wire_type) or [_field_error(str(exc))]
        raise ValidationFailed(errors) from exc
    except msgspec.DecodeError as exc:
        raise _decode_problem(body, exc) from exc
    check_json_depth(body, max_depth)
    task_data = bytes(request.task_data)
    if not task_data.lstrip().startswith(b"{"):
        raise ValidationFailed([("$.taskData", "must be a JSON object")])
    try:
        # msgspec passes a Raw value's bytes through without checking their encoding.
        task_data.decode()
    except UnicodeDecodeError as exc:
        # Counted from the body's start, as a client looking at what it sent would count.
        at = body.find(task_data) + exc.start
        raise MalformedJSON(
            f"taskData is not valid UTF-8 at byte {at} of the body ({exc.reason})"
        ) from exc
    check_integer_digits(task_data)
    check_callback_url(request.callback_url, max_url_length)
    if body.count(b'"taskData"') > 1 or b"\\u" in body:  # maybe a repeat: see _check_repeated
        _check_repeated(body, _TASK_DATA_OCCURRENCES, "$.taskData")
    return request


class _TaskDataOccurrences(msgspec.Struct):
    """Every occurrence of a create's ``taskData``, each typed as an object (values unread)."""

    taskData: dict[str, msgspec.Raw] = {}  # noqa: N815 - the wire name


class _TasksOccurrences(msgspec.Struct):
    """Every occurrence of a batch's ``tasks``, each typed as a list of objects."""

    tasks: list[dict[str, msgspec.Raw]] = []


_TASK_DATA_OCCURRENCES = msgspec.json.Decoder(_TaskDataOccurrences)
_TASKS_OCCURRENCES = msgspec.json.Decoder(_TasksOccurrences)


def _check_repeated(body: bytes, decoder: msgspec.json.Decoder[Any], field: str) -> None:
    """Check every occurrence of a key whose value the request's decoder keeps unread
    (``msgspec.Raw``: taskData, a batch's items), as README's rule has it: a repeated key
    counts once, the last, and each occurrence must still be valid. msgspec checks the type of each
    occurrence of a typed field, but neither the type nor the UTF-8 of a ``Raw`` one, and keeps
    the last: an earlier taskData that was an array, or not UTF-8, was answered 201 (found in
    review). ``decoder`` types each occurrence, its values still unread, at msgspec's speed; it
    runs only for a body that may repeat the key (its name twice, or a ``\\u`` escape, which
    can spell it).

    Raises:
        MalformedJSON: the body is not UTF-8.
        ValidationFailed: an occurrence is not of its type; ``field`` names the key.
    """
    _check_utf8(body)
    try:
        decoder.decode(body)
    except msgspec.ValidationError as exc:
        where = str(exc).rpartition(" - at `$")[2].rstrip("`")
        path = field + where.partition(field.removeprefix("$"))[2] if where else field
        raise ValidationFailed([(path, "must be a JSON object")]) from exc


_QUERY_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_QUERY_INTEGER = re.compile(r"-?[0-9]+")
_NOT_FINITE = frozenset({"nan", "inf", "infinity"})


def query_number(value: object) -> object:
    """Refuse a query parameter's number not written as JSON writes one (``2``, ``0.5``,
    ``1e1``): pydantic reads ``1_0`` as 10 and `` 1 `` as 1, Python's ``float()`` rules, and
    ``waitSeconds=1_0`` waited 10 s (found in review). Other values pass to pydantic as they are.

    Raises:
        pydantic_core.PydanticCustomError: ``float_parsing``, or ``finite_number`` for ``nan``,
            ``inf`` or a number beyond a double (a 422 naming the parameter).
    """
    if not isinstance(value, str):
        return value
    if not _QUERY_NUMBER.fullmatch(value) and value.lower().lstrip("+-") not in _NOT_FINITE:
        raise PydanticCustomError("float_parsing", "must be a number, as 2 or 0.5")
    # Said here: with a validator before it, pydantic no longer applies allow_inf_nan, and
    # "nan" and "1e400" were named as out of range rather than as not finite.
    number = float(value)
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return number


def query_integer(value: object) -> object:
    """Refuse a query parameter's integer not written in decimal digits (``1_0``, `` 1 ``,
    ``1.0``), as :func:`query_number` does numbers.

    Raises:
        pydantic_core.PydanticCustomError: ``int_parsing`` (a 422 naming the parameter).
    """
    if isinstance(value, str) and not _QUERY_INTEGER.fullmatch(value):
        raise PydanticCustomError("int_parsing", "must be a whole number, in decimal digits")
    return value


def _nested_too_deeply() -> ValidationFailed:
    return ValidationFailed([("$", "JSON is nested too deeply")])


def _decode_whole(
    decoder: msgspec.json.Decoder[T], body: bytes, too_deep: ValidationFailed | None = None
) -> T:
    """Decode a small request body with ``decoder``, mapping errors to 400/422 problems;
    ``too_deep`` is the problem of a body nested past the decoder's recursion limit."""
    too_deep = too_deep or _nested_too_deeply()
    try:
        return decoder.decode(body)
    except RecursionError as exc:
        raise _deep_or_malformed(body, too_deep) from exc
    except msgspec.ValidationError as exc:
        _check_well_formed(body, too_deep)
        raise ValidationFailed([_field_error(str(exc))]) from exc
    except msgspec.DecodeError as exc:
        raise _decode_problem(body, exc) from exc


def parse_batch(body: bytes, item_too_deep: ValidationFailed) -> BatchCreate:
    """Decode a ``POST /api/tasks/batch`` body; each item is checked later, on its own.

    Raises:
        MalformedJSON: not JSON.
        ValidationFailed: not ``{"tasks": [...]}`` with 1 to 1,000 items; or
            ``item_too_deep``, an item nested past the decoder's recursion limit.
    """
    batch = _decode_whole(_BATCH_DECODER, body, item_too_deep)
    if body.count(b'"tasks"') > 1 or b"\\u" in body:  # maybe a repeat: see _check_repeated
        _check_repeated(body, _TASKS_OCCURRENCES, "$.tasks")
    return batch


def parse_redrive_filter(body: bytes) -> RedriveFilter:
    """Decode a ``POST /api/tasks/retry`` body.

    Raises:
        MalformedJSON, ValidationFailed: as for a create.
    """
    return _decode_whole(_REDRIVE_DECODER, body)


def _every_field_error(
    body: bytes, max_url_length: int, wire_type: type[TaskCreate]
) -> list[tuple[str, str]]:
    """Return ``(field, message)`` for each invalid field of a create body or batch item,
    decoded as ``wire_type`` (the slow path)."""
    try:
        value = msgspec.json.decode(body)
    except (msgspec.MsgspecError, RecursionError):
        # Well-formed, yet not decodable as plain values: a number beyond a double (1e400) or
        # a string that is not UTF-8. The first error msgspec reported stands.
        return []
    if not isinstance(value, dict):
        # "$" is the whole body, or a batch item on its own: the wording fits both.
        return [("$", f"must be a JSON object, not {_json_type(value)}")]
    errors: list[tuple[str, str]] = []
    fields = {field.encode_name: field for field in msgspec.structs.fields(wire_type)}
    for name in value:
        if name == "idempotencyKey" and name not in fields:
            # A batch item takes one; a single create takes its key in a header.
            errors.append(
                (f"$.{name}", "unknown field: send the key as the Idempotency-Key header")
            )
        elif name not in fields:
            errors.append((f"$.{name}", f"unknown field `{name}`"))
    for name, field in fields.items():
        path = f"$.{name}"
        if name not in value:
            if field.required:
                errors.append((path, f"missing required field `{name}`"))
            continue
        if name == "taskData":
            if not isinstance(value[name], dict):
                errors.append((path, "must be a JSON object"))
            continue
        try:
            converted = msgspec.convert(value[name], field.type, strict=True)
        except msgspec.ValidationError as exc:
            # Within the field (an item of retryOn), msgspec's path is relative: "- at `$[0]`".
            text, sep, where = str(exc).rpartition(" - at `$")
            if sep:
                path += where.rstrip("`")
            errors.append((path, _in_words(path, text if sep else str(exc))))
            continue
        if name == "callbackUrl":
            try:
                check_callback_url(converted, max_url_length)
            except ValidationFailed as exc:
                errors += exc.errors
    return errors


def _json_type(value: object) -> str:
    """Name the JSON type of a decoded value, as a client would say it."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _field_error(message: str) -> tuple[str, str]:
    # msgspec says "Expected `int`, got `str` - at `$.priority`" or "Object missing required
    # field `callbackUrl`"; turn either into (path, message).
    text, sep, where = message.rpartition(" - at `")
    if sep:
        path = where.rstrip("`")
        return path, _in_words(path, text)
    missing = re.search(r"(?:missing required|unknown) field `([^`]+)`", message)
    if missing:
        path = f"$.{missing.group(1)}"
        return path, _in_words(path, message)
    return "$", message


def _in_words(path: str, message: str) -> str:
    """msgspec's ``message`` for the field at ``path``, as every route words it: a queue name's
    rule rather than its regex, and "unknown field `x`" as the create route says it."""
    field = path.rsplit(".", 1)[-1]
    if field == "queue" and "matching regex" in message:
        return QUEUE_NAME_RULE
    if field == "idempotencyKey" and "matching regex" in message:
        return PATTERN_RULES[IDEMPOTENCY_KEY_PATTERN]
    return message.replace("Object contains unknown field", "unknown field")


def canonical_task_id(task_id: str) -> str:
    """Return ``task_id`` as create issued it, a lowercase UUID. Hex digits in upper case are
    the same UUID (RFC 9562, section 4), so the API and the dashboard take either.

    Raises:
        TaskNotFound: ``task_id`` cannot be a task's id, answered before any backend sees it
            (PostgreSQL refuses a NUL in text with an error, not a miss).
    """
    canonical = task_id.lower()
    if _TASK_ID.fullmatch(canonical) is None:  # "$" alone would take a final "\n"
        raise TaskNotFound(f"no task has the id {task_id[:80]!r}")
    return canonical


def check_callback_url(url: str, max_length: int) -> None:
    """Check that ``url`` is an absolute http(s) URL with a host, at most ``max_length`` long,
    whose every ``%`` begins a percent-encoded byte.

    Raises:
        ValidationFailed: naming ``$.callbackUrl`` and what is wrong.
    """
    # Judged before the cache, which would otherwise keep every over-long URL it refused: up to
    # a body's size each, 4,096 of them.
    if len(url) > max_length:
        problem: str | None = f"longer than {max_length} characters"
    else:
        problem = _callback_url_problem(url)
    if problem is not None:
        raise ValidationFailed([("$.callbackUrl", problem)])


# A pure function of its argument, and most callers send the same few callback URLs over and
# over: the cache takes URL parsing off the create path (bench/run.py measured ~3 % of its CPU).
# It holds at most 4,096 URLs within TASKPLATFORM_MAX_CALLBACK_URL_LENGTH.
@functools.lru_cache(maxsize=4096)
def _callback_url_problem(url: str) -> str | None:
    """Why ``url`` (within the length limit) is not a callback URL :func:`check_callback_url`
    accepts, or None."""
    if _CONTROL_OR_SPACE.search(url):
        return "contains spaces, control characters or backslashes"
    if _BAD_PERCENT.search(url):
        # The HTTP client would send it as %25, another URL than the one stored.
        return "a % must begin a percent-encoded byte such as %2F (RFC 3986, section 2.1)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    try:
        port = parts.port
    except ValueError:
        if "[" not in parts.netloc and _is_ipv6(parts.netloc.rpartition("@")[2]):
            return "an IPv6 address must be in brackets, as in http://[::1]:8080/"
        return "the port must be a number from 1 to 65535"
    if parts.scheme.lower() not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "the URL has no host"
    if port == 0:
        return "port 0 cannot be connected to"
    return _host_problem(parts.hostname, bracketed="[" in parts.netloc)


def _is_ipv6(address: str) -> bool:
    """Whether ``address`` (a URL's host and port, unbracketed) is an IPv6 address, with or
    without a port after it: ``::1``, ``::1:8080``; ``example.com:80:80`` is not."""
    for candidate in (address, address.rpartition(":")[0]):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return True
    return False


def _host_problem(host: str, *, bracketed: bool) -> str | None:
    """Return why ``host`` (from a URL) cannot be connected to as written, or None."""
    if bracketed:
        if "%" in host:
            return "IPv6 zone ids are not supported"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        # A name ending in a number is an IPv4 address (WHATWG URL); accept only the canonical
        # dotted-quad spelling, so no alias (2130706433, 0177.0.0.1, 127.1) can hide an address.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r}: write an IPv4 address as four decimal numbers, like 192.0.2.7"
        return None
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp") for char in host):
        return "the host name holds invisible or formatting characters"
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return f"{host!r} is not a valid host name"
    labels = ascii_host.rstrip(".").split(".")
    if len(ascii_host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is not a valid host name (labels of 1-63 letters, digits, hyphens)"
    return None


def check_task_limits(request: TaskCreate, *, max_timeout_seconds: float, max_retries: int) -> None:
    """Check a create request against this deployment's limits (settings), beyond API.md's.

    Raises:
        ValidationFailed: naming each field over its limit.
    """
    errors = []
    if request.timeout_seconds is not None and request.timeout_seconds > max_timeout_seconds:
        errors.append(("$.timeoutSeconds", f"at most {max_timeout_seconds:g} s on this server"))
    if request.max_retries is not None and request.max_retries > max_retries:
        errors.append(("$.maxRetries", f"at most {max_retries} on this server"))
    if request.delay_seconds is not None and request.scheduled_at is not None:
        errors.append(("$.scheduledAt", "give delaySeconds or scheduledAt, not both"))
    if request.scheduled_at is not None:
        at = request.scheduled_at.timestamp()
        # The store's clock (now_ms), which every process follows: with the host's own, a host
        # whose clock runs behind would admit instants the others refuse.
        if not _EPOCH <= at <= now_ms() / 1000 + MAX_DELAY_SECONDS:
            errors.append(("$.scheduledAt", "must lie between 1970 and one year from now"))
    if request.retry_on and request.permanent_on:
        both = sorted(set(request.retry_on) & set(request.permanent_on))
        if both:
            errors.append(("$.permanentOn", f"also in retryOn: {both}"))
    if (
        request.backoff_min_seconds is not None
        and request.backoff_max_seconds is not None
        and request.backoff_max_seconds < request.backoff_min_seconds
    ):
        errors.append(("$.backoffMaxSeconds", "must not be less than backoffMinSeconds"))
    if errors:
        raise ValidationFailed(errors)
