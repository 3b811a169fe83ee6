"""The Python client (sync and async) and the receiver examples against a real server process.

The client is backend-agnostic (it only speaks HTTP), so these run on SQLite alone. Each test
works in a queue of its own on the shared server, so tasks of other tests never interfere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import gzip
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from examples.fastapi_receiver import create_app as create_fastapi_receiver
from examples.flask_receiver import create_app as create_flask_receiver
from werkzeug.serving import make_server

from taskplatform.client import (
    AsyncTaskClient,
    ConnectionFailed,
    IdempotencyKeyReused,
    NewTask,
    NotFound,
    PayloadTooLarge,
    QueuePaused,
    RetryLimitReached,
    Status,
    TaskCancelled,
    TaskClient,
    TaskCompleted,
    TaskNotDequeued,
    TaskNotFailed,
    TaskNotFound,
    TaskPlatformError,
    Unauthorized,
    UnexpectedResponse,
    ValidationError,
)
from taskplatform.dispatch.signing import parse_secret, sign
from tests.support.backends import backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server, free_port

MISSING = "01900000-0000-7000-8000-000000000000"
SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()


@pytest.fixture(scope="module")
def backend() -> str:
    """The client only speaks HTTP to the API, whatever the backend: SQLite only."""
    return "sqlite"


@pytest.fixture
def queue() -> str:
    """A queue name of this test's own."""
    return f"client-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tp(server: Server) -> Iterator[TaskClient]:
    """A sync client of the shared server."""
    with TaskClient(server.url) as client:
        yield client


class LoseAnswers(httpx.BaseTransport):
    """Sends each request for real, then drops the answer of the first ``count`` that
    ``matches`` picks, as a network that fails after the server acted would."""

    def __init__(self, matches: Callable[[httpx.Request], bool], count: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.matches = matches
        self.left = count
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        response = self.inner.handle_request(request)
        if self.left and self.matches(request):
            self.left -= 1
            response.read()
            response.close()
            raise httpx.ReadTimeout("the answer was lost (test)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_sync_client_runs_a_task_through_its_life(
    tp: TaskClient, receiver: Receiver, queue: str
) -> None:
    """create → get → dequeue → execute against the real receiver → get, executions, stats."""
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=5)
    created = tp.create(
        {"orderId": 42, "name": "Zoë"},
        receiver.url("/ok"),
        priority=7,
        queue=queue,
        max_retries=2,
        timeout_seconds=10,
    )
    assert created.status is Status.QUEUED
    assert not created.replayed
    task = tp.get(created.task_id)
    assert (task.task_id, task.status, task.priority, task.queue) == (
        created.task_id,
        Status.QUEUED,
        7,
        queue,
    )
    assert task.task_data == {"orderId": 42, "name": "Zoë"}
    assert task.callback_url == receiver.url("/ok")
    assert (task.max_retries, task.timeout_seconds, task.attempts) == (2, 10.0, 0)
    assert task.created_at.tzinfo is not None
    assert task.created_at > before
    assert task.dequeued_at is None

    dequeued = tp.dequeue(queue)
    assert dequeued is not None
    assert (dequeued.task_id, dequeued.status) == (created.task_id, Status.DEQUEUED)
    assert dequeued.dequeued_at is not None
    assert tp.dequeue(queue) is None  # queue_empty is None, not an exception

    outcome = tp.execute(created.task_id)
    assert (outcome.status, outcome.attempt, outcome.error, outcome.accepted) == (
        Status.COMPLETED,
        1,
        None,
        False,
    )
    assert outcome.result == {"ok": True, "bytes": len(receiver.hits_for(created.task_id)[0].body)}
    assert len(receiver.hits_for(created.task_id)) == 1

    done = tp.get(created.task_id)
    assert done.status is Status.COMPLETED
    assert done.completed_at is not None
    assert done.completed_at >= done.created_at
    assert done.result == outcome.result
    attempts = tp.executions(created.task_id)
    assert [(a.attempt, a.http_status, a.error) for a in attempts] == [(1, 200, None)]
    assert attempts[0].finished_at >= attempts[0].started_at
    stats = tp.stats(queue)
    assert stats.tasks["Completed"] == 1
    assert stats.queue_depth == 0
    assert tp.health() is True
    assert tp.ready().ready is True


def test_retry_cancel_and_queue_pause(tp: TaskClient, receiver: Receiver, queue: str) -> None:
    """A failed callback is an outcome; retry re-drives it; cancel is final; pause blocks."""
    failing = tp.create({"n": 1}, receiver.url("/status/500"), queue=queue, max_retries=0)
    tp.dequeue(queue)
    outcome = tp.execute(failing.task_id)
    assert outcome.status is Status.FAILED
    assert outcome.error is not None
    assert "500" in outcome.error
    with pytest.raises(RetryLimitReached):
        tp.execute(failing.task_id)
    redriven = tp.retry(failing.task_id)
    assert (redriven.status, redriven.attempts) == (Status.QUEUED, 0)
    cancelled = tp.cancel(failing.task_id)
    assert cancelled.status is Status.CANCELLED
    assert tp.cancel(failing.task_id).status is Status.CANCELLED  # again: same answer
    with pytest.raises(TaskCancelled):
        tp.execute(failing.task_id)

    paused = tp.pause_queue(queue)
    assert paused.paused
    assert paused.name == queue
    with pytest.raises(QueuePaused):
        tp.dequeue(queue)
    assert any(item.name == queue and item.paused for item in tp.queues())
    assert not tp.resume_queue(queue).paused
    assert tp.dequeue(queue) is None


def test_list_pages_and_iterates_newest_first(
    tp: TaskClient, receiver: Receiver, queue: str
) -> None:
    ids = [tp.create({"i": i}, receiver.url("/ok"), queue=queue).task_id for i in range(5)]
    first = tp.list(queue=queue, limit=2)
    assert [task.task_id for task in first.items] == ids[::-1][:2]
    assert first.next_cursor is not None
    second = tp.list(queue=queue, limit=2, cursor=first.next_cursor)
    assert [task.task_id for task in second.items] == ids[::-1][2:4]
    assert [task.task_id for task in tp.iter_tasks(queue=queue, page_size=2)] == ids[::-1]
    tp.dequeue(queue)  # the oldest: ids[0]
    assert [t.task_id for t in tp.list(status=Status.DEQUEUED, queue=queue).items] == [ids[0]]
    assert [t.task_id for t in tp.list(status="Queued", queue=queue).items] == ids[:0:-1]
    assert tp.list(queue=queue, dead_letter=True).items == []


def test_each_problem_code_raises_its_exception(
    tp: TaskClient, server: Server, receiver: Receiver, queue: str
) -> None:
    def expect(cls: type[TaskPlatformError], status: int, call: Callable[[], object]) -> None:
        with pytest.raises(cls) as caught:
            call()
        error = caught.value
        assert type(error) is cls
        assert error.status == status
        assert error.code == cls.code_name
        assert error.detail
        assert error.problem["code"] == cls.code_name

    expect(TaskNotFound, 404, lambda: tp.get(MISSING))
    expect(TaskNotFound, 404, lambda: tp.execute(MISSING))
    expect(TaskNotFound, 404, lambda: tp.cancel(MISSING))
    expect(TaskNotFound, 404, lambda: tp.executions(MISSING))
    # Not a UUID, so no task: refused before any request, as it could name another route
    # ("dequeue": a GET there takes a task; the client once dequeued one for get("dequeue")).
    odd_ids = (".", "..", "?x=1", "#top", "../../healthz", "a/b", "", "dequeue", "batch", "retry")
    for odd in odd_ids:
        for call in (tp.get, tp.execute, tp.cancel, tp.retry, tp.executions):
            expect(TaskNotFound, 404, functools.partial(call, odd))
    expect(TaskNotFound, 404, lambda: tp.get(MISSING.upper()))  # a UUID: the server says so
    expect(ValidationError, 422, lambda: tp.pause_queue(".."))
    queued = tp.create({}, receiver.url("/ok"), queue=queue).task_id
    expect(TaskNotDequeued, 409, lambda: tp.execute(queued))
    expect(TaskNotFailed, 409, lambda: tp.retry(queued))
    tp.dequeue(queue)
    tp.execute(queued)
    expect(TaskCompleted, 409, lambda: tp.execute(queued))
    expect(TaskCompleted, 409, lambda: tp.cancel(queued))
    expect(ValidationError, 422, lambda: tp.create({}, receiver.url("/ok"), priority=2**31))
    expect(ValidationError, 422, lambda: tp.create({}, "ftp://example.com/"))
    with pytest.raises(ValidationError) as invalid:
        tp.create({}, receiver.url("/ok"), priority=2**31)
    assert [name for name, _ in invalid.value.errors] == ["$.priority"]
    tp.create({"a": 1}, receiver.url("/ok"), queue=queue, idempotency_key="reuse-" + queue)
    expect(
        IdempotencyKeyReused,
        422,
        lambda: tp.create(
            {"a": 2}, receiver.url("/ok"), queue=queue, idempotency_key="reuse-" + queue
        ),
    )
    expect(PayloadTooLarge, 413, lambda: tp.create({"x": "a" * 1_100_000}, receiver.url("/ok")))
    with TaskClient(server.url + "/nowhere") as lost:
        expect(NotFound, 404, lambda: lost.stats())


def test_create_batch_reports_each_item(tp: TaskClient, receiver: Receiver, queue: str) -> None:
    results = tp.create_batch(
        [
            {"taskData": {"i": 0}, "callbackUrl": receiver.url("/ok"), "queue": queue},
            {"taskData": [], "callbackUrl": receiver.url("/ok"), "queue": queue},
            {"taskData": {"i": 2}, "callbackUrl": receiver.url("/ok"), "queue": queue},
        ]
    )
    assert [result.index for result in results] == [0, 1, 2]
    assert [result.ok for result in results] == [True, False, True]
    assert isinstance(results[1].error, ValidationError)
    assert results[0].task_id is not None
    assert tp.get(results[0].task_id).task_data == {"i": 0}
    assert len(tp.list(queue=queue).items) == 2


def test_a_create_whose_answer_was_lost_is_retried_into_one_task(
    server: Server, receiver: Receiver, queue: str
) -> None:
    """The server creates the task, the answer is lost, the client resends with the same key:
    the server answers with the first task (replayed) and holds exactly one."""
    transport = LoseAnswers(lambda request: request.url.path == "/api/tasks")
    with TaskClient(server.url, transport=transport, backoff_seconds=0.01) as client:
        created = client.create({"once": True}, receiver.url("/ok"), queue=queue)
        assert created.replayed
        assert len(transport.sent) == 2
        keys = {request.headers["idempotency-key"] for request in transport.sent}
        assert len(keys) == 1
        assert [task.task_id for task in client.list(queue=queue).items] == [created.task_id]
        again = client.create(
            {"once": True}, receiver.url("/ok"), queue=queue, idempotency_key=keys.pop()
        )
        assert (again.task_id, again.replayed) == (created.task_id, True)


def test_a_keyed_batch_whose_answer_was_lost_is_resent_into_one_task_each(
    server: Server, receiver: Receiver, queue: str
) -> None:
    """Every item has an idempotency key, so the client resends the batch after a lost answer
    and the server gives the tasks back; a batch with an unkeyed item is not resent."""
    transport = LoseAnswers(lambda request: request.url.path == "/api/tasks/batch")
    run = uuid.uuid4().hex
    items = [
        NewTask({"n": n}, receiver.url("/ok"), queue=queue, idempotency_key=f"{run}-{n}")
        for n in range(3)
    ]
    with TaskClient(server.url, transport=transport, backoff_seconds=0.01) as client:
        results = client.create_batch(items)
        assert len(transport.sent) == 2
        assert [(result.ok, result.replayed) for result in results] == [(True, True)] * 3
        assert len(client.list(queue=queue).items) == 3
        transport.left = 1
        with pytest.raises(ConnectionFailed):
            client.create_batch([*items, NewTask({"n": 3}, receiver.url("/ok"), queue=queue)])
        batches = [r for r in transport.sent if r.url.path == "/api/tasks/batch"]
        assert len(batches) == 3
        assert len(client.list(queue=queue).items) == 4


def test_execute_is_never_resent_when_its_answer_is_lost(
    tp: TaskClient, server: Server, receiver: Receiver, queue: str
) -> None:
    task_id = tp.create({}, receiver.url("/ok"), queue=queue).task_id
    tp.dequeue(queue)
    transport = LoseAnswers(lambda request: request.url.path.endswith("/execute"))
    with TaskClient(server.url, transport=transport, retries=5) as client:
        with pytest.raises(ConnectionFailed) as caught:
            client.execute(task_id)
        assert caught.value.attempts == 1
    assert len(transport.sent) == 1
    assert len(receiver.hits_for(task_id)) == 1
    assert tp.get(task_id).status is Status.COMPLETED  # the attempt was made; get tells


def test_calls_are_retried_until_a_late_server_comes_up(tmp_path: Path, receiver: Receiver) -> None:
    """The client starts first, against a port nobody listens on yet; the server comes up
    about a second later; reads and creates get through, and only one task is made."""
    late = Server(backend_env("sqlite", tmp_path), tmp_path / "server.log")
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        with TaskClient(late.url, retries=60, backoff_seconds=0.05, backoff_max_seconds=0.3) as c:
            started = time.monotonic()
            created = c.create({"late": True}, receiver.url("/ok"))
            assert time.monotonic() - started > 0.5  # it really waited for the server
            assert c.health()
            assert [task.task_id for task in c.list().items] == [created.task_id]
    finally:
        starter.join()
        late.stop()


def test_no_answer_raises_connection_failed_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with TaskClient(url, retries=2, backoff_seconds=0.01) as client:
        with pytest.raises(ConnectionFailed) as caught:
            client.stats()
        assert caught.value.attempts == 3
        assert url in str(caught.value)
        with pytest.raises(ConnectionFailed) as executed:
            client.execute(MISSING)
        assert executed.value.attempts == 1


def test_a_connection_failure_names_the_url_as_sent_with_the_base_path() -> None:
    """The message named the URL without the base URL's path prefix, which the request had."""
    url = f"http://127.0.0.1:{free_port()}/prefix"
    with TaskClient(url, retries=0) as client, pytest.raises(ConnectionFailed) as caught:
        client.stats()
    assert f"GET {url}/api/stats" in str(caught.value)


@pytest.mark.parametrize("bad", ["key\nInjected: 1", "ключ", "tab\there"])
def test_a_value_no_header_can_carry_is_a_value_error_before_anything_is_sent(bad: str) -> None:
    """A line break or a character beyond ASCII in a key failed inside httpx, and was reported
    (and retried) as ConnectionFailed "got no answer", or escaped as UnicodeEncodeError."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match="api_key must be printable ASCII"):
        TaskClient(url, api_key=bad)
    with (
        TaskClient(url, retries=0) as client,
        pytest.raises(ValueError, match="idempotency_key must be printable ASCII"),
    ):
        client.create({}, "http://127.0.0.1:9/x", idempotency_key=bad)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8000", "127.0.0.1:8000", "ftp://x/", "http://"])
def test_a_base_url_that_is_not_http_is_a_value_error(url: str) -> None:
    """``ws://`` answered health() True (httpx sent it as plain HTTP)."""
    with pytest.raises(ValueError, match="base_url must be an http:// or https:// URL"):
        TaskClient(url)
    with pytest.raises(ValueError, match="base_url must be an http:// or https:// URL"):
        AsyncTaskClient(url)


@contextmanager
def _raw_server(answer: bytes, *, endless: bool = False) -> Iterator[str]:
    """A server that answers every request with the bytes ``answer``, then, when ``endless``,
    64 KiB chunks forever."""
    listener = socket.create_server(("127.0.0.1", 0))
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)

    def serve(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(answer)
            while endless:
                connection.sendall(chunk)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9999999999\r\n\r\n",
    ],
    ids=["endless chunked", "announced too long"],
)
def test_an_answer_over_the_clients_limit_is_refused_not_read_to_the_end(head: bytes) -> None:
    """A wrong server that never ends its answer held the CLI at 2.8 GB after 15 s, and
    growing: the client reads at most ``max_response_bytes``, then raises."""
    limit = 1 << 20
    with _raw_server(head, endless=True) as url:
        with (
            TaskClient(url, max_response_bytes=limit, retries=0) as client,
            pytest.raises(UnexpectedResponse, match="over this client's limit of 1,048,576"),
        ):
            client.stats()

        async def read_async() -> None:
            async with AsyncTaskClient(url, max_response_bytes=limit, retries=0) as client:
                await client.stats()

        with pytest.raises(UnexpectedResponse, match="over this client's limit"):
            asyncio.run(read_async())


def test_an_answer_that_does_not_decompress_is_an_unexpected_response() -> None:
    """A body marked gzip that is not gzip escaped as httpx.DecodingError: a traceback from
    the CLI."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope"
    )
    with (
        _raw_server(head) as url,
        TaskClient(url, retries=0) as client,
        pytest.raises(UnexpectedResponse, match="does not decode as its Content-Encoding says"),
    ):
        client.stats()
    with pytest.raises(ValueError, match="max_response_bytes must be over 0"):
        TaskClient("http://127.0.0.1:9", max_response_bytes=0)


def test_a_compressed_answer_is_decoded_once() -> None:
    """The client reads answers as a stream, decoded, and then parses them: a gzip answer (a
    proxy in front of the server may compress) must not be decoded a second time."""
    problem = {"title": "Task not found", "status": 404, "detail": "no such task"}
    body = gzip.compress(json.dumps({**problem, "code": "task_not_found"}).encode())
    head = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with (
        _raw_server(head + body) as url,
        TaskClient(url, retries=0) as client,
        pytest.raises(TaskNotFound, match="no such task"),
    ):
        client.get(MISSING)


def test_api_keys(start_server: Callable[..., Server], receiver: Receiver) -> None:
    keyed = start_server(TASKPLATFORM_API_KEYS="client-key-1234567890")
    with TaskClient(keyed.url) as anonymous:
        with pytest.raises(Unauthorized) as caught:
            anonymous.create({}, receiver.url("/ok"))
        assert caught.value.status == 401
        assert anonymous.health()  # the probes stay open
    with TaskClient(keyed.url, "wrong-key") as wrong, pytest.raises(Unauthorized):
        wrong.stats()
    with TaskClient(keyed.url, "client-key-1234567890") as client:
        created = client.create({}, receiver.url("/ok"))
        assert client.get(created.task_id).status is Status.QUEUED


async def test_async_client_does_the_same(server: Server, receiver: Receiver, queue: str) -> None:
    async with AsyncTaskClient(server.url) as client:
        created = await client.create({"async": True}, receiver.url("/ok"), 3, queue=queue)
        assert (await client.get(created.task_id)).priority == 3
        task = await client.dequeue(queue, wait_seconds=1)
        assert task is not None
        assert task.task_id == created.task_id
        assert await client.dequeue(queue) is None
        accepted = await client.execute(created.task_id, respond_async=True)
        assert accepted.accepted
        assert accepted.status is Status.PROCESSING
        for _ in range(200):
            if (await client.get(created.task_id)).status is Status.COMPLETED:
                break
            await asyncio.sleep(0.05)
        assert (await client.get(created.task_id)).status is Status.COMPLETED
        assert [a.http_status for a in await client.executions(created.task_id)] == [200]
        other = await client.create({}, receiver.url("/ok"), queue=queue)
        assert (await client.cancel(other.task_id)).status is Status.CANCELLED
        with pytest.raises(TaskNotFailed):
            await client.retry(other.task_id)
        with pytest.raises(TaskNotFound):
            await client.get(MISSING)
        seen = [task.task_id async for task in client.iter_tasks(queue=queue, page_size=1)]
        assert seen == [other.task_id, created.task_id]
        batch = await client.create_batch(
            [{"taskData": {}, "callbackUrl": receiver.url("/ok"), "queue": queue}]
        )
        assert batch[0].ok
        assert (await client.stats(queue)).tasks["Queued"] == 1
        assert (await client.pause_queue(queue)).paused
        with pytest.raises(QueuePaused):
            await client.dequeue(queue)
        assert not (await client.resume_queue(queue)).paused
        assert any(item.name == queue for item in await client.queues())
        assert await client.health()
        assert (await client.ready()).ready


async def test_async_client_retries_until_a_late_server_comes_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    late = Server(backend_env("sqlite", tmp_path), tmp_path / "server.log")
    starter = threading.Timer(1.0, late.start)
    starter.start()
    try:
        async with AsyncTaskClient(late.url, retries=60, backoff_max_seconds=0.3) as client:
            created = await client.create({}, receiver.url("/ok"))
            assert [task.task_id for task in (await client.list()).items] == [created.task_id]
    finally:
        await asyncio.to_thread(starter.join)
        late.stop()


@contextmanager
def fastapi_receiver() -> Iterator[str]:
    """Serve the FastAPI example with uvicorn on a thread; yields its callback URL."""
    port = free_port()
    config = uvicorn.Config(
        create_fastapi_receiver(SECRET),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ws="none",
        http="h11",
        loop="asyncio",
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.started
    try:
        yield f"http://127.0.0.1:{port}/tasks"
    finally:
        running.should_exit = True
        thread.join(10)


@contextmanager
def flask_receiver() -> Iterator[str]:
    """Serve the Flask example with werkzeug on a thread; yields its callback URL."""
    running = make_server("127.0.0.1", 0, create_flask_receiver(SECRET), threaded=True)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{running.server_port}/tasks"
    finally:
        running.shutdown()
        thread.join(10)


@pytest.mark.parametrize("example", [fastapi_receiver, flask_receiver])
def test_the_receiver_examples_verify_real_signed_callbacks(
    start_server: Callable[..., Server],
    example: Callable[[], AbstractContextManager[str]],
    queue: str,
) -> None:
    """A server that signs callbacks calls the example: it verifies and answers 200; a forged
    or replayed request gets 401, and so does a server with another secret."""
    signing = start_server(TASKPLATFORM_SIGNING_SECRET=SECRET)
    other_secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    impostor = start_server(TASKPLATFORM_SIGNING_SECRET=other_secret)
    with example() as url, TaskClient(signing.url) as client, TaskClient(impostor.url) as fake:
        created = client.create({"orderId": 7, "item": "tea"}, url, queue=queue)
        client.dequeue(queue)
        outcome = client.execute(created.task_id)
        assert outcome.status is Status.COMPLETED, outcome
        assert outcome.result == {
            "received": True,
            "verified": True,
            "taskId": created.task_id,
            "attempt": 1,
            "duplicate": False,
            "fields": ["item", "orderId"],
        }

        forged = fake.create({"orderId": 7}, url, queue=queue, max_retries=0)
        fake.dequeue(queue)
        refused = fake.execute(forged.task_id)
        assert refused.status is Status.FAILED
        assert refused.error is not None
        assert "401" in refused.error

        body = b'{"orderId":7}'
        stale = int(time.time()) - 600
        headers = {
            "content-type": "application/json",
            "webhook-id": created.task_id,
            "webhook-timestamp": str(stale),
            "webhook-signature": sign([parse_secret(SECRET)], created.task_id, stale, body),
        }
        replay = httpx.post(url, content=body, headers=headers)
        assert replay.status_code == 401
        assert "tolerance" in replay.json()["error"]
        unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert unsigned.status_code == 401


def test_an_id_that_no_task_can_have_is_not_found_as_the_server_says_it(tp: TaskClient) -> None:
    """The client answers an id that is not a UUID itself (it could name another route); its
    problem document lacked the server's ``type``, so ``tasks get x --json`` printed another
    document than for a UUID no task has."""
    with pytest.raises(TaskNotFound) as local:
        tp.get("not-a-uuid")
    with pytest.raises(TaskNotFound) as remote:
        tp.get(MISSING)
    assert set(local.value.problem) == set(remote.value.problem) - {"taskId"}
    for name in ("type", "title", "status", "code"):
        assert local.value.problem[name] == remote.value.problem[name]
