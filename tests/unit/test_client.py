"""The client's pure parts: the code → exception table against the docs, error parsing, the
retry rules (over httpx's mock transport: no network), and callback signature checks."""

from __future__ import annotations

import base64
import copy
import datetime
import math
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from taskplatform.client import (
    PROBLEM_CLASSES,
    AsyncTaskClient,
    BackendUnavailable,
    ConnectionFailed,
    InvalidSignature,
    JsonNumber,
    NewTask,
    QueuePaused,
    RateLimited,
    RetryPolicy,
    TaskClient,
    TaskConflict,
    TaskNotFound,
    TaskPlatformError,
    TaskProcessing,
    UnexpectedResponse,
    ValidationError,
    dumps_json,
    verify_callback,
)
from taskplatform.dispatch.signing import parse_secret, sign

ROOT = Path(__file__).resolve().parents[2]
API_MD_CANDIDATES = [ROOT / "API.md", ROOT / "docs" / "API.md", ROOT.parent / "shared" / "API.md"]
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
TASK_ID = "01900000-0000-7000-8000-000000000000"


def documented_codes() -> set[str]:
    """Every problem ``code`` the README's error table and API.md (where present) name."""
    codes: set[str] = set()
    readme = (ROOT / "README.md").read_text()
    for row in re.finditer(r"^\| (\d{3}) \| ([^|]+) \|", readme, re.MULTILINE):
        codes |= set(re.findall(r"`([a-z_]+)`", row.group(2)))
    for path in API_MD_CANDIDATES:
        if path.exists():
            codes |= set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", path.read_text()))
    return codes


def test_every_documented_code_has_its_own_exception_class() -> None:
    codes = documented_codes()
    assert {"task_not_found", "queue_empty", "unauthorized", "backend_unavailable"} <= codes
    missing = codes - set(PROBLEM_CLASSES)
    assert not missing, f"no client exception class for {sorted(missing)}"
    for code, cls in PROBLEM_CLASSES.items():
        assert issubclass(cls, TaskPlatformError)
        assert cls is not TaskPlatformError
        assert cls.code_name == code
        assert cls.__doc__
    assert len(set(PROBLEM_CLASSES.values())) == len(PROBLEM_CLASSES)


def problem_response(status: int, code: str, **extra: object) -> httpx.Response:
    body = {"type": f"urn:x:{code}", "title": "T", "status": status, "detail": "D", "code": code}
    return httpx.Response(
        status,
        json={**body, **extra},
        headers={"content-type": "application/problem+json"},
    )


def client_answering(
    handler: Callable[[httpx.Request], httpx.Response], retries: int = 3
) -> TaskClient:
    return TaskClient(
        "http://tp.test",
        transport=httpx.MockTransport(handler),
        retries=retries,
        backoff_seconds=0.001,
    )


def test_a_problem_raises_its_class_with_every_field() -> None:
    answer = problem_response(
        422, "validation_error", errors=[{"field": "$.priority", "message": "too big"}]
    )
    with client_answering(lambda _: answer) as client, pytest.raises(ValidationError) as caught:
        client.get(TASK_ID)
    error = caught.value
    assert (error.status, error.code, error.title, error.detail) == (
        422,
        "validation_error",
        "T",
        "D",
    )
    assert error.errors == [("$.priority", "too big")]
    assert error.problem["type"] == "urn:x:validation_error"


def test_conflicts_share_a_parent_and_unknown_codes_raise_the_base_class() -> None:
    with client_answering(lambda _: problem_response(409, "task_processing")) as client:
        with pytest.raises(TaskConflict) as conflict:
            client.cancel(TASK_ID)
        assert type(conflict.value) is TaskProcessing
    teapot = client_answering(lambda _: problem_response(418, "teapot_brewing"))
    with teapot as client, pytest.raises(TaskPlatformError) as unknown:
        client.get(TASK_ID)
    assert type(unknown.value) is TaskPlatformError
    assert unknown.value.code == "teapot_brewing"


def test_rate_limited_carries_retry_after() -> None:
    answer = problem_response(429, "rate_limited")
    answer.headers["retry-after"] = "3"
    with client_answering(lambda _: answer) as client, pytest.raises(RateLimited) as caught:
        client.stats()
    assert caught.value.retry_after == 3.0


def test_a_non_problem_error_raises_unexpected_response_naming_it() -> None:
    page = httpx.Response(
        502, text="<html>Bad Gateway</html>", headers={"content-type": "text/html"}
    )
    with client_answering(lambda _: page) as client, pytest.raises(UnexpectedResponse) as caught:
        client.get(TASK_ID)
    assert caught.value.status == 502
    assert "Bad Gateway" in caught.value.detail
    assert isinstance(caught.value, TaskPlatformError)


def test_a_success_with_an_unreadable_body_raises_unexpected_response() -> None:
    odd = client_answering(lambda _: httpx.Response(200, json={"hello": 1}))
    with odd as client, pytest.raises(UnexpectedResponse, match="cannot read"):
        client.get(TASK_ID)


def test_dequeue_turns_only_queue_empty_into_none() -> None:
    with client_answering(lambda _: problem_response(404, "queue_empty")) as client:
        assert client.dequeue() is None
    paused = client_answering(lambda _: problem_response(409, "queue_paused"))
    with paused as client, pytest.raises(QueuePaused):
        client.dequeue()


class Flaky:
    """A mock server: raises ``errors`` in turn, then answers with ``answer``; counts requests."""

    def __init__(self, errors: list[Exception], answer: httpx.Response) -> None:
        self.errors = list(errors)
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


CREATED = httpx.Response(201, json={"taskId": TASK_ID, "status": "Queued"})


def test_create_is_retried_with_the_same_key_and_bytes() -> None:
    flaky = Flaky([httpx.ConnectError("refused"), httpx.ReadTimeout("lost")], CREATED)
    with client_answering(flaky, retries=2) as client:
        created = client.create({"n": 1}, "http://cb.test/")
    assert created.task_id == TASK_ID
    assert len(flaky.requests) == 3
    keys = {request.headers["idempotency-key"] for request in flaky.requests}
    assert len(keys) == 1
    assert len({request.content for request in flaky.requests}) == 1


def test_each_create_gets_a_fresh_key_unless_one_is_given() -> None:
    flaky = Flaky([], CREATED)
    with client_answering(flaky) as client:
        client.create({"n": 1}, "http://cb.test/")
        client.create({"n": 1}, "http://cb.test/")
        client.create({"n": 1}, "http://cb.test/", idempotency_key="mine")
    keys = [request.headers["idempotency-key"] for request in flaky.requests]
    assert keys[0] != keys[1]
    assert keys[2] == "mine"


def test_retries_stop_after_the_limit_with_connection_failed() -> None:
    flaky = Flaky([httpx.ConnectError("refused")] * 10, CREATED)
    with client_answering(flaky, retries=3) as client, pytest.raises(ConnectionFailed) as caught:
        client.get(TASK_ID)
    assert caught.value.attempts == 4
    assert len(flaky.requests) == 4
    assert "http://tp.test/api/tasks/" in str(caught.value)


def test_execute_is_never_retried_even_when_nothing_was_sent() -> None:
    flaky = Flaky([httpx.ConnectError("refused")] * 3, CREATED)
    with client_answering(flaky, retries=5) as client, pytest.raises(ConnectionFailed) as caught:
        client.execute(TASK_ID)
    assert caught.value.attempts == 1
    assert len(flaky.requests) == 1


@pytest.mark.parametrize("method", ["dequeue", "create_batch", "retry"])
def test_unsafe_calls_are_retried_only_when_the_connection_was_never_made(method: str) -> None:
    calls: dict[str, Callable[[TaskClient], object]] = {
        "dequeue": lambda client: client.dequeue(),
        "create_batch": lambda client: client.create_batch([NewTask({}, "http://cb.test/")]),
        "retry": lambda client: client.retry(TASK_ID),
    }
    lost = Flaky([httpx.ReadTimeout("lost")], CREATED)
    with client_answering(lost, retries=5) as client, pytest.raises(ConnectionFailed):
        calls[method](client)
    assert len(lost.requests) == 1
    refused = Flaky([httpx.ConnectError("refused")], problem_response(404, "task_not_found"))
    with client_answering(refused, retries=5) as client, pytest.raises(TaskNotFound):
        calls[method](client)
    assert len(refused.requests) == 2


class AnswersThen:
    """A mock server: answers ``first`` in turn, then ``then``; records the requests."""

    def __init__(self, first: list[httpx.Response], then: httpx.Response) -> None:
        self.first = list(first)
        self.then = then
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.first.pop(0) if self.first else self.then


def test_a_create_answered_503_is_resent_under_the_same_key() -> None:
    """README, 503 ``backend_unavailable``: a create may have committed before the database's
    answer was lost, "resend it with the same Idempotency-Key, as the Python client does". It
    raised at once, and the key it had made up for the call was gone: a caller trying later
    made a second task for the same work."""
    server = AnswersThen([problem_response(503, "backend_unavailable")] * 2, CREATED)
    with client_answering(server, retries=3) as client:
        created = client.create({"n": 1}, "http://cb.test/")
    assert created.task_id == TASK_ID
    assert len(server.requests) == 3
    assert len({request.headers["idempotency-key"] for request in server.requests}) == 1
    assert len({request.content for request in server.requests}) == 1
    unavailable = AnswersThen([], problem_response(503, "backend_unavailable"))
    with client_answering(unavailable, retries=2) as client, pytest.raises(BackendUnavailable):
        client.create({"n": 1}, "http://cb.test/")
    assert len(unavailable.requests) == 3


def test_a_503_is_not_resent_where_a_repeat_could_act_twice_or_is_the_answer() -> None:
    calls: dict[str, Callable[[TaskClient], object]] = {
        "dequeue": lambda client: client.dequeue(),
        "create_batch": lambda client: client.create_batch([NewTask({}, "http://cb.test/")]),
        "retry": lambda client: client.retry(TASK_ID),
        "execute": lambda client: client.execute(TASK_ID),
    }
    for name, call in calls.items():
        server = AnswersThen([], problem_response(503, "backend_unavailable"))
        with client_answering(server, retries=3) as client, pytest.raises(BackendUnavailable):
            call(client)
        assert len(server.requests) == 1, name
    not_ready = AnswersThen([], httpx.Response(503, json={"status": "unavailable"}))
    with client_answering(not_ready, retries=3) as client:
        client.ready()
    assert len(not_ready.requests) == 1


async def test_the_async_client_resends_a_create_answered_503() -> None:
    created = httpx.Response(201, json={"taskId": TASK_ID, "status": "Queued"})  # not yet read
    server = AnswersThen([problem_response(503, "backend_unavailable")], created)
    async with AsyncTaskClient(
        "http://tp.test", transport=httpx.MockTransport(server), backoff_seconds=0.001
    ) as client:
        assert (await client.create({"n": 1}, "http://cb.test/")).task_id == TASK_ID
    assert len(server.requests) == 2


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=10, backoff_seconds=0.1, backoff_max_seconds=1.0)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(cap / 2 <= delay <= cap for delay in delays)
        assert len(delays) > 1  # jittered


async def test_the_async_client_retries_and_maps_errors_the_same_way() -> None:
    flaky = Flaky([httpx.ConnectError("refused")], problem_response(404, "task_not_found"))
    async with AsyncTaskClient(
        "http://tp.test", transport=httpx.MockTransport(flaky), backoff_seconds=0.001
    ) as client:
        with pytest.raises(TaskNotFound):
            await client.get(TASK_ID)
        assert len(flaky.requests) == 2
        never = Flaky([httpx.ConnectError("refused")], CREATED)
    async with AsyncTaskClient("http://tp.test", transport=httpx.MockTransport(never)) as client:
        with pytest.raises(ConnectionFailed):
            await client.execute(TASK_ID)
    assert len(never.requests) == 1


def test_an_api_key_is_sent_as_a_bearer_token() -> None:
    flaky = Flaky([], CREATED)
    with TaskClient("http://tp.test", "k1", transport=httpx.MockTransport(flaky)) as client:
        client.create({}, "http://cb.test/")
    assert flaky.requests[0].headers["authorization"] == "Bearer k1"


def test_new_task_needs_an_aware_scheduled_at() -> None:
    naive = NewTask({}, "http://cb.test/", scheduled_at=datetime.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="time zone"):
        naive.to_json()
    aware = NewTask(
        {}, "http://cb.test/", scheduled_at=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    )
    assert aware.to_json()["scheduledAt"] == "2030-01-01T00:00:00+00:00"
    # Against the type hints: a message naming the field, not "'str' object has no attribute".
    when = "2030-01-01T00:00:00Z"
    text = NewTask({}, "http://cb.test/", scheduled_at=when)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"scheduled_at must be a datetime\.datetime .* not str"):
        text.to_json()
    listed = NewTask([1, 2], "http://cb.test/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"task_data must be a mapping \(a JSON object\), not list"):
        listed.to_json()


def signed(
    body: bytes, timestamp: int, msg_id: str = TASK_ID, secret: str = SECRET
) -> dict[str, str]:
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign([parse_secret(secret)], msg_id, timestamp, body),
    }


def test_verify_callback_accepts_what_the_platform_signs() -> None:
    now = int(time.time())
    body = b'{"orderId":42}'
    verify_callback(SECRET, signed(body, now), body)
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    # rotation: the platform signs with two secrets; a receiver that knows either accepts
    headers = signed(body, now)
    headers["Webhook-Signature"] = sign(
        [parse_secret(other), parse_secret(SECRET)], TASK_ID, now, body
    )
    verify_callback(other, headers, body)
    verify_callback([other, SECRET], signed(body, now), body)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("body", "no webhook-signature matches"),
        ("secret", "no webhook-signature matches"),
        ("stale", "beyond the tolerance"),
        ("future", "beyond the tolerance"),
        ("missing", "no webhook-signature header"),
        ("timestamp", "not Unix seconds"),
        ("superscript", "not Unix seconds"),
        ("huge", "not Unix seconds"),
        ("id", "no webhook-signature matches"),
    ],
)
def test_verify_callback_refuses_forgeries(change: str, message: str) -> None:
    now = int(time.time())
    body = b'{"orderId":42}'
    headers = signed(
        body, now - 301 if change == "stale" else now + 301 if change == "future" else now
    )
    secret = SECRET
    if change == "body":
        body = b'{"orderId":43}'
    elif change == "secret":
        secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    elif change == "missing":
        del headers["Webhook-Signature"]
    elif change == "timestamp":
        headers["Webhook-Timestamp"] = "12.5"
    elif change == "superscript":  # str.isdigit() takes it; int() does not
        headers["Webhook-Timestamp"] = "17\u00b2"
    elif change == "huge":  # beyond int()'s digit limit
        headers["Webhook-Timestamp"] = "9" * 5000
    elif change == "id":
        headers["Webhook-Id"] = "01900000-0000-7000-8000-000000000001"
    with pytest.raises(InvalidSignature, match=message):
        verify_callback(secret, headers, body)


def test_verify_callback_says_which_way_the_timestamp_is_off() -> None:
    """A stale timestamp is in the past ("-"); it read "+1001 s from now"."""
    now, body = int(time.time()), b"{}"
    with pytest.raises(InvalidSignature, match=r"is -1001 s from now"):
        verify_callback(SECRET, signed(body, now - 1001), body, now=now)
    with pytest.raises(InvalidSignature, match=r"is \+1001 s from now"):
        verify_callback(SECRET, signed(body, now + 1001), body, now=now)


@pytest.mark.parametrize("tolerance", [math.nan, math.inf, -1.0, None, "300"])
def test_verify_callback_refuses_a_tolerance_that_is_no_number_of_seconds(
    tolerance: object,
) -> None:
    """NaN turned the replay check off (a callback signed in 1970 passed); None was a
    TypeError. Both are the receiver's configuration error, said as one."""
    body = b"{}"
    with pytest.raises(ValueError, match="tolerance_seconds must be a finite number"):
        verify_callback(SECRET, signed(body, 1000), body, tolerance)  # type: ignore[arg-type]


def test_task_data_nested_too_deeply_is_a_value_error_and_sends_nothing() -> None:
    """json.dumps raised RecursionError for a dict nested ~1,000 deep: no error a caller of
    ``create`` is told to expect, and no word of which argument was at fault."""
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(5_000):
        inner["a"] = inner = {}
    flaky = Flaky([], CREATED)
    with (
        TaskClient("http://tp.test", transport=httpx.MockTransport(flaky)) as client,
        pytest.raises(ValueError, match="nested too deeply to encode as JSON"),
    ):
        client.create(deep, "http://cb.test/")
    assert flaky.requests == []


def test_a_number_in_an_answer_keeps_the_digits_it_was_sent_with() -> None:
    """A number a float cannot hold is a JsonNumber, the nearest float with its text (17
    digits; ``1e400`` is infinite); any other stays a plain float, which msgspec and the like
    encode (a JsonNumber for every float broke them, found in review)."""
    body = (
        b'{"taskId": "%s", "status": "Queued", "taskData": {"a": 0.1000000000000000000001,'
        b' "b": 1e400, "n": 7}, "callbackUrl": "http://cb.test/", "priority": 0,'
        b' "maxRetries": 3, "timeoutSeconds": 30.0, "attempts": 0,'
        b' "createdAt": "2026-12-03T10:00:00.000Z", "updatedAt": "2026-12-03T10:00:00.000Z"}'
    ) % TASK_ID.encode()
    answer = httpx.Response(200, content=body, headers={"content-type": "application/json"})
    with client_answering(lambda _: answer) as client:
        task = client.get(TASK_ID)
    small, big = task.task_data["a"], task.task_data["b"]
    assert isinstance(small, JsonNumber)
    assert (small, small.text) == (0.1, "0.1000000000000000000001")
    assert (big, big.text) == (math.inf, "1e400")
    assert type(task.task_data["n"]) is int
    assert type(task.timeout_seconds) is float  # a float that holds it stays one (msgspec)
    assert type(task.raw["timeoutSeconds"]) is float
    assert copy.deepcopy(small).text == small.text


def test_a_json_number_is_sent_back_as_it_was_read() -> None:
    """Task data read from the API and created again holds the same numbers: a JsonNumber is
    written as its text, not as its float (which made 0.1000000000000000000001 into 0.1 and
    1e400 into an error). Text that is no JSON number is no JsonNumber."""
    data = {"a": JsonNumber("0.1000000000000000000001"), "b": [JsonNumber("-1e400"), 1.5], "n": 7}
    assert dumps_json(data) == '{"a": 0.1000000000000000000001, "b": [-1e400, 1.5], "n": 7}'
    assert dumps_json({"x": math.inf}, infinite_floats=True) == '{"x": 1e999}'
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps_json({"x": math.inf})
    plain = {"k": [1, 2.5, {"s": "text"}]}
    assert dumps_json(plain, separators=(",", ":")) == '{"k":[1,2.5,{"s":"text"}]}'
    # A string can look like the placeholder of a number, beside a number that is one: it
    # stays a string.
    look_alike = {"s": "\x00" + "0" * 32 + "=1.5", "n": JsonNumber("1.50000000000000000001")}
    assert dumps_json(look_alike) == (
        '{"s": "\\u0000' + "0" * 32 + '=1.5", "n": 1.50000000000000000001}'
    )
    for text in ("1_000.5", " 1.5", "nan", "inf", "01.5", "1.", ".5", "+1"):
        with pytest.raises(ValueError, match="not a JSON number"):
            JsonNumber(text)

    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.content)
        return httpx.Response(
            201, json={"taskId": TASK_ID, "status": "Queued"}, headers={"location": "/x"}
        )

    with client_answering(handler) as client:
        client.create(data, "http://cb.test/")
    assert b'"taskData":{"a":0.1000000000000000000001,"b":[-1e400,1.5],"n":7}' in sent[0]


def test_client_errors_survive_pickling_and_copying() -> None:
    """An API error raised in a ``ProcessPoolExecutor`` worker comes back pickled: the errors
    kept only their message in ``args`` and could not be rebuilt, and broke the pool (found in
    review)."""
    not_found = TaskNotFound(404, "task_not_found", "Task not found", "no task", {"taskId": "x"})
    for again in (pickle.loads(pickle.dumps(not_found)), copy.copy(not_found)):  # noqa: S301
        assert type(again) is TaskNotFound
        assert (again.status, again.code, again.detail, again.task_id) == (
            404,
            "task_not_found",
            "no task",
            "x",
        )
    limited = RateLimited(429, "rate_limited", "Too many requests", "slow down")
    limited.retry_after = 7.0  # set after construction, as the client does
    assert pickle.loads(pickle.dumps(limited)).retry_after == 7.0  # noqa: S301
    assert copy.copy(limited).retry_after == 7.0
    failed = ConnectionFailed("no answer from http://h/", attempts=4)
    again_failed = pickle.loads(pickle.dumps(failed))  # noqa: S301 - our own bytes
    assert (str(again_failed), again_failed.attempts) == ("no answer from http://h/", 4)
