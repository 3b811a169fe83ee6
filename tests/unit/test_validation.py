"""Unit tests of request validation: JSON depth, surrogates, callback URLs, field errors."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskplatform.exceptions import MalformedJSON, ValidationFailed
from taskplatform.models import MAX_DELAY_SECONDS, clock_offset_ms, follow_clock
from taskplatform.validation import (
    check_callback_url,
    check_json_depth,
    check_task_limits,
    parse_batch,
    parse_task_create,
)


def _parse(body: bytes) -> object:
    return parse_task_create(body, max_depth=64, max_url_length=2048)


@pytest.mark.parametrize("depth", [1, 63, 64])
def test_depth_up_to_the_limit_passes(depth: int) -> None:
    check_json_depth(b"[" * depth + b"]" * depth, 64)


@pytest.mark.parametrize("depth", [65, 10_000, 100_000])
def test_depth_over_the_limit_fails(depth: int) -> None:
    with pytest.raises(ValidationFailed, match="deeper than 64"):
        check_json_depth(b"{" + b'"a":[' * depth + b"1" + b"]" * depth + b"}", 64)


def _nesting(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_nesting, value.values()), default=0)
    return 0


_JSON = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}\\"a'),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=40,
)


@given(value=_JSON, limit=st.integers(min_value=0, max_value=12))
def test_depth_is_the_nesting_of_any_document(value: object, limit: int) -> None:
    """Siblings, mixed arrays and objects, brackets and escapes in strings: the check passes
    exactly the documents nested at most ``limit`` deep."""
    siblings = [value] * 20  # more brackets than the limit: past the count's shortcut
    body = json.dumps(siblings).encode()
    if _nesting(siblings) <= limit:
        check_json_depth(body, limit)
    else:
        with pytest.raises(ValidationFailed):
            check_json_depth(body, limit)


def test_brackets_inside_strings_do_not_count() -> None:
    check_json_depth(b'{"s": "' + b"[{" * 1000 + b'\\"[[["}', 64)


def test_task_data_keeps_the_exact_text() -> None:
    body = b'{"taskData": {"b": 1.50, "a": "\\u0000"} , "callbackUrl": "http://h/"}'
    request = parse_task_create(body, max_depth=64, max_url_length=2048)
    assert bytes(request.task_data) == b'{"b": 1.50, "a": "\\u0000"}'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"taskData": {}, "callbackUrl": "http://h/", "priority": "5"}', "$.priority"),
        (b'{"taskData": {}, "callbackUrl": "http://h/", "priority": 2147483648}', "$.priority"),
        (b'{"taskData": {}}', "$.callbackUrl"),
        (b'{"taskData": {}, "callbackUrl": "http://h/", "x": 1}', "$.x"),
        (b'{"taskData": [], "callbackUrl": "http://h/"}', "$.taskData"),
    ],
)
def test_field_errors_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        _parse(body)
    assert caught.value.errors[0][0] == field


def test_lone_surrogate_is_a_validation_error_and_a_pair_is_fine() -> None:
    with pytest.raises(ValidationFailed, match="surrogate"):
        _parse(b'{"taskData": {"s": "\\udc00"}, "callbackUrl": "http://h/"}')
    _parse(b'{"taskData": {"s": "\\ud83d\\ude00"}, "callbackUrl": "http://h/"}')


@pytest.mark.parametrize(
    "body",
    [
        b'{"priority": "x", "callbackUrl": "http://h/", "taskData": {"a": "\xff"}}',
        b'{"colour": 1, "taskData": {"a": "\xc3("}, "callbackUrl": "http://h/"}',
    ],
    ids=["a bad field first", "an unknown field first"],
)
def test_a_body_not_utf8_is_malformed_whatever_field_comes_first(body: bytes) -> None:
    """JSON text is UTF-8 (RFC 8259, 8.1): such a body is 400 malformed_json, also when a field
    msgspec refuses comes before the bad byte (it was 422 about that field: the well-formedness
    check decoded to a Raw, which reads no string's bytes; found in review)."""
    with pytest.raises(MalformedJSON, match="not valid UTF-8"):
        _parse(body)


def test_a_batch_body_not_utf8_is_malformed_whatever_field_comes_first() -> None:
    with pytest.raises(MalformedJSON, match="not valid UTF-8"):
        parse_batch(b'{"tasks": 5, "x": "\xff"}', ValidationFailed([("$.tasks", "deep")]))


def test_a_truncated_body_with_an_escaped_backslash_before_u_is_malformed() -> None:
    r"""``"C:\\ud800"`` in JSON is the text C:\ud800 (an escaped backslash, then "ud800"),
    not a surrogate: a body cut short after it was 422 "a lone UTF-16 surrogate", not 400
    (found in review). A real lone surrogate still says so."""
    truncated = b'{"taskData": {"path": "C:\\\\ud800"}, "callbackUrl": "http://h/"'
    with pytest.raises(MalformedJSON, match="not valid JSON"):
        _parse(truncated)
    assert _parse(truncated + b"}") is not None
    with pytest.raises(ValidationFailed, match="lone UTF-16 surrogate"):
        _parse(b'{"taskData": {"path": "C:\\\\\\ud800"}, "callbackUrl": "http://h/"}')


def test_a_lone_low_surrogate_after_an_escaped_backslash_is_a_lone_surrogate() -> None:
    r"""``"\\ud800\udc00"`` is the text \ud800 (an escaped backslash first), then a lone
    U+DC00: it was 400 malformed_json, the escaped backslash's second half taken for the start of
    a high surrogate that paired it (found in review). It is 422, as a lone surrogate is."""
    with pytest.raises(ValidationFailed, match="lone UTF-16 surrogate"):
        _parse(b'{"taskData": {"a": "\\\\ud800\\udc00"}, "callbackUrl": "http://h/"}')


def test_a_repeated_taskdata_key_spelt_with_an_escape_is_checked_too() -> None:
    """``"t\u0061skData"`` is the key taskData: an earlier array under it was not checked, the
    repeat was looked for by its name's bytes alone (found in review)."""
    with pytest.raises(ValidationFailed, match="must be a JSON object"):
        _parse(b'{"t\\u0061skData": [1, 2], "taskData": {"a": 1}, "callbackUrl": "http://h/"}')
    inner = b'{"taskData": {"taskData": [1], "n": 1e400}, "callbackUrl": "http://h/"}'
    assert bytes(_parse(inner).task_data) == b'{"taskData": [1], "n": 1e400}'  # type: ignore[attr-defined]


def test_invalid_utf8_is_malformed() -> None:
    body = b'{"taskData": {"s": "\xc3\x28"}, "callbackUrl": "http://h/"}'
    with pytest.raises(MalformedJSON) as caught:
        _parse(body)
    # Where in the body, not where in taskData.
    at = body.index(b"\xc3")
    assert str(caught.value) == (
        f"taskData is not valid UTF-8 at byte {at} of the body (invalid continuation byte)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/cb",
        "https://example.test/a?b=c#d",
        "http://[::1]:8080/",
        "HTTP://UPPER.TEST/",
        "http://user:pw@host.test/",
    ],
)
def test_good_callback_urls(url: str) -> None:
    check_callback_url(url, 2048)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://h/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://h/",
        "http://",
        "http:///x",
        "//h/x",
        "http://h:70000/",
        "http://h:0/",
        "http://h/a b",
        "http://h/\n",
        "http://[::1/",
    ],
)
def test_bad_callback_urls(url: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_callback_url(url, 2048)
    assert caught.value.errors[0][0] == "$.callbackUrl"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://::1:9100/cb", "an IPv6 address must be in brackets, as in http://[::1]:8080/"),
        ("http://::1/x", "an IPv6 address must be in brackets, as in http://[::1]:8080/"),
        ("http://h:70000/", "the port must be a number from 1 to 65535"),
        ("http://h:port/", "the port must be a number from 1 to 65535"),
        # Two colons are not an IPv6 address by themselves.
        ("http://example.com:80:80/", "the port must be a number from 1 to 65535"),
        (
            "http://u:p@2001:db8::1/",
            "an IPv6 address must be in brackets, as in http://[::1]:8080/",
        ),
        ("http:\\\\127.0.0.1\\cb", "contains spaces, control characters or backslashes"),
        ("http://[::1/", "not a valid URL: Invalid IPv6 URL"),
        *(
            (url, "a % must begin a percent-encoded byte such as %2F (RFC 3986, section 2.1)")
            for url in ("http://h/%zz", "http://h/a%", "http://h/?q=%4", "http://u:p%@h/")
        ),
    ],
)
def test_a_bad_callback_url_is_told_what_is_wrong(url: str, message: str) -> None:
    """In the caller's terms, not urllib's ("Port could not be cast to integer value")."""
    with pytest.raises(ValidationFailed) as caught:
        check_callback_url(url, 2048)
    assert caught.value.errors == [("$.callbackUrl", message)]


def test_url_length_limit_is_inclusive() -> None:
    url = "http://h/" + "a" * 91
    check_callback_url(url, 100)
    with pytest.raises(ValidationFailed, match="longer than 99"):
        check_callback_url(url, 99)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1:9123/",
        "http://2130706433/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://0:9123/",
        "http://127.0.0.1:9123\\@evil/",
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
        "http://ex\u00adample.com/",
        "http://a\u200bb.com/",
        "http://\u202e.com/",
        "http://[fe80::1%25eth0]/",
        "http://-leading.test/",
    ],
)
def test_hosts_that_cannot_be_called_as_written_are_rejected(url: str) -> None:
    """Numeric aliases of IPv4 addresses and malformed names fail at create, not at execute."""
    with pytest.raises(ValidationFailed) as caught:
        check_callback_url(url, 2048)
    assert caught.value.errors[0][0] == "$.callbackUrl"


@pytest.mark.parametrize(
    "url",
    [
        "http://bücher.example/",
        "http://my_service:8080/",
        "http://[2001:db8::1]/",
        "http://h.test./",
        "http://us%C3%A9r:p%E4ss@h/%2Fa%c3%a9?x=%41#%20",  # percent-encoded bytes, any case
    ],
)
def test_unicode_underscore_ipv6_and_trailing_dot_hosts_are_accepted(url: str) -> None:
    check_callback_url(url, 2048)


def test_depth_check_is_linear_on_adversarial_input() -> None:
    """An unclosed string after many brackets once took hours to scan (backtracking)."""
    body = b"{" * 65 + b'"' + b'\\"' * 500_000
    started = time.perf_counter()
    with pytest.raises(MalformedJSON):
        _parse(body)
    assert time.perf_counter() - started < 2


def test_truncated_body_with_a_valid_surrogate_pair_is_malformed_not_a_surrogate_error() -> None:
    with pytest.raises(MalformedJSON):
        _parse(b'{"taskData":{"e":"\\ud83d\\ude00"}')


def test_the_scheduled_at_bound_follows_the_store_clock() -> None:
    """A year from the store's "now", not this host's: with the host 10 days ahead of the
    database, an instant 360 days from the host's clock is 370 days from the store's."""
    at = time.time() + MAX_DELAY_SECONDS - 5 * 86_400
    body = json.dumps(
        {
            "taskData": {},
            "callbackUrl": "http://127.0.0.1:9/",
            "scheduledAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        }
    ).encode()
    request = parse_task_create(body, max_depth=64, max_url_length=2048)
    check_task_limits(request, max_timeout_seconds=3600, max_retries=100)  # host == store
    before = clock_offset_ms()
    follow_clock(-10 * 86_400_000)
    try:
        with pytest.raises(ValidationFailed, match="one year from now"):
            check_task_limits(request, max_timeout_seconds=3600, max_retries=100)
    finally:
        follow_clock(before)


@pytest.mark.parametrize(
    ("retry_on", "path", "message"),
    [
        ("[200, 500]", "$.retryOn[0]", "Expected `int` >= 300"),
        ('[500, "x"]', "$.retryOn[1]", "Expected `int`, got `str`"),
    ],
)
def test_an_item_of_a_list_field_is_named_by_its_place(
    retry_on: str, path: str, message: str
) -> None:
    """The error named the field and ended "- at `$[0]`", msgspec's path within the field."""
    body = f'{{"taskData": {{}}, "callbackUrl": "http://a/", "retryOn": {retry_on}}}'
    with pytest.raises(ValidationFailed) as caught:
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    assert caught.value.errors == [(path, message)]
