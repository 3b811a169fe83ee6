"""Callbacks that hang, drip, flood, redirect or answer oddly; and the exact retry limit."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.acceptance.helpers import assert_problem, ready_task
from tests.support.backends import backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server


@pytest.fixture
def other_receiver() -> Iterator[Receiver]:
    """A second receiver on another port, to see whether a redirect was followed."""
    running = Receiver().start()
    yield running
    running.stop()


@pytest.fixture
def raw_peer() -> Iterator[Callable[[bytes | Callable[[bytes], bytes]], str]]:
    """Serve a raw HTTP response on loopback: bytes as given, or made by a function of the
    request's bytes; yields a URL factory."""
    servers: list[socket.socket] = []

    def serve(response: bytes | Callable[[bytes], bytes]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        servers.append(listener)

        def run() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    with connection:
                        request = connection.recv(65536)
                        answer = response if isinstance(response, bytes) else response(request)
                        connection.sendall(answer)

        threading.Thread(target=run, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"

    yield serve
    for listener in servers:
        listener.close()


RawPeer = Callable[[bytes | Callable[[bytes], bytes]], str]


def _execute(client: httpx.Client, task_id: str) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    response = client.post(f"/api/tasks/{task_id}/execute")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body, time.monotonic() - started


def test_a_callback_that_hangs_times_out(client: httpx.Client, receiver: Receiver) -> None:
    """A callback that never answers fails when timeoutSeconds runs out."""
    task_id = ready_task(client, receiver.url("/slow?seconds=30"), timeoutSeconds=1)
    outcome, elapsed = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "timeout after 1 s"
    assert 0.9 < elapsed < 5


def test_a_callback_that_waits_out_its_timeout_for_a_connection_says_it_was_not_sent(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """Every outbound connection held by slow callbacks: another callback that waits past its
    timeout for one was reported as "timeout after 1 s", as if its receiver had been slow,
    though the request never left."""
    server = start_server(TASKPLATFORM_CALLBACK_MAX_CONNECTIONS="2")
    with httpx.Client(base_url=server.url, timeout=30) as http:
        slow = [ready_task(http, receiver.url("/slow?seconds=8"), timeoutSeconds=20) for _ in "ab"]
        for task_id in slow:
            accepted = http.post(
                f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"}
            )
            assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 10
        while not all(receiver.hits_for(task_id) for task_id in slow):  # both connections held
            assert time.monotonic() < deadline
            time.sleep(0.02)
        starved = ready_task(http, receiver.url("/ok"), timeoutSeconds=1)
        outcome, _ = _execute(http, starved)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == (
        "timeout after 1 s waiting for an outbound connection, not sent: all 2 "
        "(TASKPLATFORM_CALLBACK_MAX_CONNECTIONS) were held by other callbacks"
    )
    assert receiver.hits_for(starved) == []


def test_a_callback_that_drips_meets_the_total_deadline(
    client: httpx.Client, receiver: Receiver
) -> None:
    """One byte a second keeps each read short; the total deadline still ends the attempt."""
    task_id = ready_task(client, receiver.url("/drip?seconds=30"), timeoutSeconds=2)
    outcome, elapsed = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "timeout after 2 s"
    assert 1.9 < elapsed < 6


@pytest.mark.parametrize("chunked", ["0", "1"], ids=["content-length", "chunked"])
def test_a_20_mb_response_is_not_kept_and_a_2xx_is_still_a_success(
    client: httpx.Client, receiver: Receiver, chunked: str
) -> None:
    """A body over the 1 MiB cap is not read on nor stored. With a 500 the attempt fails and
    says so; a 200 is a success (the receiver did its work: it failed the attempt, and a
    dispatcher called the receiver again, to do the work twice)."""
    failed = ready_task(client, receiver.url(f"/big?bytes=20000000&chunked={chunked}&status=500"))
    outcome, _ = _execute(client, failed)
    assert outcome["status"] == "Failed"
    assert "over the limit of 1048576 bytes" in str(outcome["error"])
    assert outcome["result"] is None
    task = client.get(f"/api/tasks/{failed}").json()
    assert task["result"] is None
    log = client.get(f"/api/tasks/{failed}/executions").json()["items"]
    assert (log[0]["httpStatus"], log[0]["result"]) == (500, None)

    done = ready_task(client, receiver.url(f"/big?bytes=20000000&chunked={chunked}"))
    outcome, _ = _execute(client, done)
    assert (outcome["status"], outcome["error"], outcome["result"]) == ("Completed", None, None)
    log = client.get(f"/api/tasks/{done}/executions").json()["items"]
    assert [(entry["httpStatus"], entry["error"], entry["result"]) for entry in log] == [
        (200, None, None)
    ]


def test_a_response_just_under_the_cap_is_kept(client: httpx.Client, receiver: Receiver) -> None:
    """A body of exactly 1 MiB is a result, kept whole."""
    task_id = ready_task(client, receiver.url("/big?bytes=1048576"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed"
    assert outcome["result"] == "a" * 1048576


def test_a_redirect_is_not_followed(
    client: httpx.Client, receiver: Receiver, other_receiver: Receiver
) -> None:
    """A 3xx is a failed attempt naming the status; the redirect target sees no request."""
    target = other_receiver.url("/ok")
    task_id = ready_task(client, receiver.url(f"/redirect?to={target}"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert str(outcome["error"]).startswith("HTTP 302")
    assert "not followed" in str(outcome["error"])
    assert other_receiver.hits == []


@pytest.mark.parametrize(
    ("userinfo", "credentials"),
    [
        ("user:secret", b"user:secret"),
        ("us%C3%A9r:p%C3%A4ss", "usér:päss".encode()),  # percent-encoded UTF-8
        ("usér:密码", "usér:密码".encode()),  # as typed: UTF-8 (Latin-1 cannot hold 密码)
        ("legacy:p%E4ss", b"legacy:p\xe4ss"),  # a Latin-1 byte, percent-encoded: that byte
        ("only-user", b"only-user:"),
    ],
    ids=["ascii", "percent-encoded-utf8", "typed-utf8", "latin1-byte", "no-password"],
)
def test_credentials_in_the_url_go_as_the_bytes_it_spells(
    client: httpx.Client, receiver: Receiver, userinfo: str, credentials: bytes
) -> None:
    """``Authorization: Basic`` (RFC 7617) of the percent-decoded userinfo, any other character
    in UTF-8, as curl sends it; the receiver's URL itself has no userinfo."""
    task_id = ready_task(client, receiver.url("/ok").replace("//", f"//{userinfo}@", 1))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed", outcome
    [hit] = receiver.hits_for(task_id)
    assert hit.headers["Authorization"] == "Basic " + base64.b64encode(credentials).decode()
    assert hit.path == "/ok"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/html", "<html><body><h1>Hi</h1></body></html>"),
        ("/text", "plain words"),
        ("/empty", ""),
        ("/latin1", "café"),  # by its declared charset, not as UTF-8 ("caf\ufffd")
        ("/latin1?charset=base64", "caf\ufffd"),  # not a text encoding: UTF-8
        ("/latin1?charset=no-such", "caf\ufffd"),
        ("/latin1?charset=idna", "caf\ufffd"),  # fails as a whole: UTF-8, and Completed
    ],
)
def test_non_json_bodies_are_results(
    client: httpx.Client, receiver: Receiver, path: str, expected: str
) -> None:
    """HTML, plain text and empty bodies are kept as text results, not crashes; text in the
    charset its Content-Type declares."""
    task_id = ready_task(client, receiver.url(path))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed"
    assert outcome["result"] == expected
    assert client.get(f"/api/tasks/{task_id}").json()["result"] == expected


def test_an_error_status_fails_the_attempt_and_keeps_the_body(
    client: httpx.Client, receiver: Receiver
) -> None:
    """A 503 is a failed attempt; its body is still the result."""
    task_id = ready_task(client, receiver.url("/status/503"))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == "HTTP 503 Service Unavailable"
    assert outcome["result"] == {"status": 503}


def test_max_retries_3_allows_exactly_4_attempts(client: httpx.Client, receiver: Receiver) -> None:
    """maxRetries 3: four callback hits, each recorded, then 409 retry_limit_reached."""
    task_id = ready_task(client, receiver.url("/status/500"), maxRetries=3)
    for attempt in range(1, 5):
        outcome, _ = _execute(client, task_id)
        assert outcome["status"] == "Failed"
        assert outcome["attempt"] == attempt
    problem = assert_problem(
        client.post(f"/api/tasks/{task_id}/execute"), 409, "retry_limit_reached"
    )
    assert "made 4 attempts, the most its maxRetries of 3 allows" in problem["detail"]
    assert len(receiver.hits_for(task_id)) == 4
    assert [hit.headers["X-Task-Attempt"] for hit in receiver.hits_for(task_id)] == [
        "1",
        "2",
        "3",
        "4",
    ]
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert [entry["attempt"] for entry in log] == [1, 2, 3, 4]
    assert client.get(f"/api/tasks/{task_id}").json()["attempts"] == 4


def test_a_failed_task_with_attempts_left_can_succeed(
    client: httpx.Client, receiver: Receiver
) -> None:
    """Failed -> Retry -> Processing -> Completed when the receiver recovers."""
    task_id = ready_task(client, receiver.url("/fail-first/1"), maxRetries=1)
    first, _ = _execute(client, task_id)
    assert first["status"] == "Failed"
    second, _ = _execute(client, task_id)
    assert second["status"] == "Completed"
    assert second["attempt"] == 2


def test_max_retries_0_allows_one_attempt(client: httpx.Client, receiver: Receiver) -> None:
    """maxRetries 0: one attempt, then 409."""
    task_id = ready_task(client, receiver.url("/status/500"), maxRetries=0)
    _execute(client, task_id)
    problem = assert_problem(
        client.post(f"/api/tasks/{task_id}/execute"), 409, "retry_limit_reached"
    )
    assert problem["detail"].startswith("the task has made 1 attempt, the most its maxRetries")
    assert len(receiver.hits_for(task_id)) == 1


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (b"HTTP/1.1 500 Erreur \xe9\r\nContent-Length: 2\r\n\r\n{}", "HTTP 500 Erreur \ufffd"),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://x/\xff\xfe\r\nContent-Length: 0\r\n\r\n",
            "HTTP 302: redirect to http://x/\ufffd\ufffd not followed",
        ),
        # PostgreSQL cannot store NUL in text: it must not turn the record into a 503.
        (b"HTTP/1.1 500 Bad\x00Thing\r\nContent-Length: 0\r\n\r\n", "HTTP 500 Bad\ufffdThing"),
        # Terminal escapes (colour, a hidden OSC 8 link) would reach the screen of whoever
        # reads the error in a terminal (taskplatform tasks get).
        (
            b"HTTP/1.1 500 \x1b[31mRED\x1b[0m \x1b]8;;http://evil/\x07link\x9b\r\n"
            b"Content-Length: 0\r\n\r\n",
            "HTTP 500 \ufffd[31mRED\ufffd[0m \ufffd]8;;http://evil/\ufffdlink\ufffd",
        ),
    ],
    ids=["latin-1 reason", "binary location", "NUL in reason", "terminal escapes"],
)
def test_non_utf8_status_lines_and_headers_are_recorded_as_failures(
    client: httpx.Client, raw_peer: RawPeer, response: bytes, expected: str
) -> None:
    """Bytes that are not UTF-8 in a reply's status line or headers never break the record, and
    control characters in them are not kept."""
    task_id = ready_task(client, raw_peer(response))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    assert outcome["error"] == expected
    assert client.get(f"/api/tasks/{task_id}").json()["status"] == "Failed"
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert log[0]["error"] == expected


def test_a_text_answer_that_escapes_past_the_limit_is_kept_cut_to_it(
    client: httpx.Client, raw_peer: RawPeer
) -> None:
    """1 MiB of control bytes (the server's limit) is kept as a JSON string: escaped, it was
    6 MiB stored and sent with the task each time it was read. It is cut to twice the limit."""
    limit = 1 << 20
    body = b"\x01" * limit
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % limit + body
    task_id = ready_task(client, raw_peer(response))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Completed"
    stored = client.get(f"/api/tasks/{task_id}").json()["result"]
    assert len(json.dumps(stored)) <= 2 * limit + 2
    assert stored.startswith("\x01" * 1000)
    assert stored.endswith("…")


@pytest.mark.parametrize(
    "retry_after", [b"\xc2\xb2", b"\xd9\xa3", b"soon", b"Wed, 21 Oct 99999999999 07:28:00 GMT"]
)
def test_a_success_with_a_retry_after_that_does_not_parse_is_a_success(
    client: httpx.Client, raw_peer: RawPeer, retry_after: bytes
) -> None:
    """A 2xx is a success whatever its ``Retry-After`` says: ``²`` passes ``str.isdigit`` but
    not ``float``, and once turned the answer into a failed attempt, so the task was called
    again though the receiver had said 200 each time."""
    response = (
        b"HTTP/1.1 200 OK\r\nRetry-After: " + retry_after + b"\r\nContent-Length: 2\r\n\r\n{}"
    )
    task_id = ready_task(client, raw_peer(response))
    outcome, _ = _execute(client, task_id)
    assert (outcome["status"], outcome["error"]) == ("Completed", None)
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert [(entry["httpStatus"], entry["error"]) for entry in log] == [(200, None)]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            b"HTTP/1.1 200 OK\r\nContent-Le",
            "callback failed: the receiver closed the connection before a whole answer",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{",
            "callback failed: the answer's body was cut short: Not enough data to satisfy "
            "content length header (received 1 of 10 bytes).",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
            "callback failed: the answer's body could not be decompressed (Can not decode "
            "content-encoding: gzip)",
        ),
    ],
    ids=["headers cut off", "body cut off", "gzip that is not"],
)
def test_an_answer_cut_off_is_a_failure_in_plain_words(
    client: httpx.Client, raw_peer: RawPeer, response: bytes, expected: str
) -> None:
    """A receiver that closes mid-answer fails the attempt with words, not aiohttp's repr of
    the half-parsed response (``<RawResponseMessage(version=HttpVersion(...`` before); a body
    that does not decompress is not said to be cut short."""
    task_id = ready_task(client, raw_peer(response))
    outcome, _ = _execute(client, task_id)
    assert (outcome["status"], outcome["error"]) == ("Failed", expected)


@pytest.mark.parametrize("coding", [b"br", b"zstd"])
def test_a_200_is_asked_for_in_a_coding_the_server_can_read(
    client: httpx.Client, raw_peer: RawPeer, coding: bytes
) -> None:
    """A receiver (or a CDN before it) may compress its answer in any coding a request without
    ``Accept-Encoding`` allows (RFC 9110, 12.5.3): its 200 in brotli or zstd, which aiohttp
    cannot decode here, was recorded as a failed attempt ("400, Can not decode"), and a
    dispatcher called the receiver again. The callback says which codings it reads."""

    def answer(request: bytes) -> bytes:
        head = request.partition(b"\r\n\r\n")[0].lower()
        accepted = [
            part.split(b";")[0].strip()
            for line in head.split(b"\r\n")[1:]
            if line.partition(b":")[0].strip() == b"accept-encoding"
            for part in line.partition(b":")[2].split(b",")
        ]
        if not accepted or coding in accepted or b"*" in accepted:
            body = b"\x0b\x02\x80{}\x03" if coding == b"br" else b"zstd bytes"
            coded = b"Content-Encoding: " + coding + b"\r\n"
        else:
            body, coded = b"{}", b""
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + coded
            + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            + body
        )

    task_id = ready_task(client, raw_peer(answer))
    outcome, _ = _execute(client, task_id)
    assert (outcome["status"], outcome["error"]) == ("Completed", None), outcome
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert [entry["httpStatus"] for entry in log] == [200]


@pytest.mark.parametrize(
    ("response", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 2\r\n\r\nok", "Invalid header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "Content-Length"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "2000"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "SSH-2.0"),
    ],
    ids=["space in a header name", "negative length", "four-digit status", "not HTTP"],
)
def test_an_answer_that_is_not_http_is_said_to_be_so_not_an_http_400(
    client: httpx.Client, raw_peer: RawPeer, response: bytes, words: str
) -> None:
    """aiohttp's parser refuses such an answer with a status of 400 of its own; the attempt's
    error read "ClientResponseError: 400, message=...", as if the receiver had answered 400."""
    task_id = ready_task(client, raw_peer(response))
    outcome, _ = _execute(client, task_id)
    assert outcome["status"] == "Failed"
    error = str(outcome["error"])
    assert error.startswith("callback failed: the answer is not valid HTTP ("), error
    assert words in error, error
    assert "400" not in error
    assert "ClientResponseError" not in error
    assert "\n" not in error
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert log[0]["httpStatus"] is None


def test_idle_callback_connections_to_many_receivers_do_not_run_out_of_files(
    tmp_path: Path, raw_peer: RawPeer
) -> None:
    """aiohttp keeps an idle connection to each receiver for 15 s and does not count it against
    TASKPLATFORM_CALLBACK_MAX_CONNECTIONS: started with a soft limit of 256 open files (as a
    service manager may start it), callbacks to 300 receivers failed with "Too many open
    files". The server raises its soft limit to the hard one at start."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if shutil.which("prlimit") is None or (hard != resource.RLIM_INFINITY and hard < 2048):
        pytest.skip(f"needs prlimit(1) and a hard limit of open files over 2,048 (it is {hard})")
    server = Server(
        backend_env("sqlite", tmp_path),
        tmp_path / "server.log",
        launcher=["prlimit", "--nofile=256:", "--"],  # the soft limit; the hard one is kept
    ).start()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
    try:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)], line
        with httpx.Client(base_url=server.url, timeout=60) as http:
            task_ids = [ready_task(http, raw_peer(ok)) for _ in range(300)]
            for task_id in task_ids:
                accepted = http.post(
                    f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"}
                )
                assert accepted.status_code == 202, accepted.text
            deadline = time.monotonic() + 60
            while True:
                tasks = [http.get(f"/api/tasks/{task_id}").json() for task_id in task_ids]
                if all(task["status"] in ("Completed", "Failed") for task in tasks):
                    break
                assert time.monotonic() < deadline, "the callbacks did not all end"
                time.sleep(0.2)
            failed = [task["error"] for task in tasks if task["status"] != "Completed"]
            assert failed == [], f"{len(failed)} failed, such as {failed[0]!r}"
            assert http.get("/healthz").status_code == 200
    finally:
        server.stop()


def test_the_attempt_log_keeps_the_start_of_a_long_result_and_the_task_all_of_it(
    client: httpx.Client, raw_peer: RawPeer
) -> None:
    """Each attempt keeps at most 64 KiB of its result (TASKPLATFORM_EXECUTION_RESULT_MAX_BYTES):
    at up to 2 MiB an attempt and 101 attempts a task, one read of a task's log took half a GiB
    of the server's memory (found in review). The task's own result keeps the answer whole."""
    answer = json.dumps({"rows": ["x" * 100] * 2000}).encode()  # about 200 KiB
    response = b"HTTP/1.1 500 Boom\r\nContent-Type: application/json\r\n"
    response += b"Content-Length: %d\r\n\r\n" % len(answer) + answer
    task_id = ready_task(client, raw_peer(response), maxRetries=2)
    for _ in range(3):
        outcome, _ = _execute(client, task_id)
        assert outcome["status"] == "Failed"
    assert client.get(f"/api/tasks/{task_id}").json()["result"] == json.loads(answer)
    log = client.get(f"/api/tasks/{task_id}/executions").json()["items"]
    assert len(log) == 3
    for entry in log:
        kept = entry["result"]
        assert isinstance(kept, str), type(kept)
        assert kept.endswith("…")
        assert answer.decode().startswith(kept[:-1])
        assert 60 * 1024 < len(json.dumps(kept, ensure_ascii=False).encode()) <= 64 * 1024


# --- a callback host whose name server never answers ------------------------------------------


@pytest.fixture
def silent_dns_server(backend: str, tmp_path: Path) -> Iterator[Server]:
    """A server whose DNS queries go to a name server that reads them and never answers, as
    the name servers of a domain that an API client controls can do. The server runs in a
    mount namespace of its own, where /etc/resolv.conf names only that name server; /etc/hosts
    is the machine's (``localhost`` needs no DNS)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private /etc/resolv.conf")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):  # port 53 (resolv.conf names no port) on some free loopback address
        address = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.53"
        with contextlib.suppress(OSError):
            sink.bind((address, 53))
            break
    else:
        pytest.skip("no loopback address had port 53 free")

    def swallow() -> None:
        with contextlib.suppress(OSError):
            while True:
                sink.recvfrom(4096)

    threading.Thread(target=swallow, daemon=True).start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\n")
    script = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
    running = Server(
        backend_env(backend, tmp_path),
        tmp_path / "server.log",
        launcher=["unshare", "-m", "sh", "-c", script, "sh"],
    ).start()
    yield running
    running.stop()
    sink.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_callbacks_to_a_name_that_never_resolves_do_not_starve_other_callbacks(
    silent_dns_server: Server, receiver: Receiver
) -> None:
    """Callbacks to names whose DNS never answers (each times out after 1 s) held the
    resolver's threads (getaddrinfo cannot be stopped) for the system resolver's own timeout,
    5 s per try: a callback to a healthy receiver by name (``localhost``, from /etc/hosts, no
    DNS at all) then waited its whole timeout for a thread, failed "timeout after 3 s" and
    never reached the receiver, counting as an attempt. Any client can create such tasks. 80
    of them: more than any pool of threads of a reasonable size would hold."""
    with httpx.Client(base_url=silent_dns_server.url, timeout=30) as http:
        silent = []
        for n in range(80):
            url = f"http://silent-{n}.example.com:{receiver.port}/ok"
            silent.append(ready_task(http, url, timeoutSeconds=1))
            accepted = http.post(
                f"/api/tasks/{silent[-1]}/execute", headers={"Prefer": "respond-async"}
            )
            assert accepted.status_code == 202, accepted.text
        victim = ready_task(http, f"http://localhost:{receiver.port}/ok", timeoutSeconds=3)
        outcome = http.post(f"/api/tasks/{victim}/execute").json()
        assert (outcome["status"], outcome["error"]) == ("Completed", None), outcome
        assert len(receiver.hits_for(victim)) == 1
        time.sleep(1.5)  # the silent callbacks have timed out by now; their lookups go on
        errors = {http.get(f"/api/tasks/{task_id}").json()["error"] for task_id in silent}
        assert errors == {"timeout after 1 s"}
        victim = ready_task(http, f"http://localhost:{receiver.port}/ok", timeoutSeconds=3)
        outcome = http.post(f"/api/tasks/{victim}/execute").json()
    assert (outcome["status"], outcome["error"]) == ("Completed", None), outcome
    assert len(receiver.hits_for(victim)) == 1


def test_a_200_whose_headers_hold_a_long_field_is_a_success(
    client: httpx.Client, raw_peer: RawPeer
) -> None:
    """A receiver's 200 with a header field over 8,190 bytes (a long
    Content-Security-Policy, Link or Set-Cookie: valid HTTP) is its success. aiohttp's default
    limit refused the answer, the attempt was recorded as failed ("the answer is not valid
    HTTP"), and a dispatcher called the receiver again."""
    ok = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLink: "
        + b"v" * 9000
        + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    task_id = ready_task(client, raw_peer(ok))
    outcome, _ = _execute(client, task_id)
    assert (outcome["status"], outcome["error"]) == ("Completed", None), outcome
    too_long = ok.replace(b"v" * 9000, b"v" * 70_000)
    task_id = ready_task(client, raw_peer(too_long))
    outcome, _ = _execute(client, task_id)
    assert (outcome["status"], outcome["error"]) == (
        "Failed",
        "callback failed: the answer has a header line over 65536 bytes, more than is read",
    )


def test_a_kept_alive_connection_the_receiver_closed_is_not_a_failed_attempt(
    client: httpx.Client,
) -> None:
    """A receiver that closes each kept-alive connection a moment after its answer (as an idle
    timeout does, 2 s in gunicorn and 5 s in uvicorn): the next callback, sent on that
    connection from the pool, failed before any answer ("Can not write request body", "closed
    the connection before a whole answer"), and a maxRetries 0 task became a dead letter the
    receiver never saw (found in review: 21 of 150). It is sent again on a new connection,
    within the same attempt."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def answer_then_close(connection: socket.socket) -> None:
        with connection:
            request = connection.recv(65536)
            received.append(request)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            time.sleep(0.1)  # the idle timeout, short; the next callback comes within it

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                threading.Thread(target=answer_then_close, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    try:
        outcomes = []
        for _ in range(20):
            task_id = ready_task(client, url, maxRetries=0)
            outcome, _ = _execute(client, task_id)
            outcomes.append((outcome["status"], outcome["error"]))
            time.sleep(0.03)
    finally:
        listener.close()
    assert outcomes == [("Completed", None)] * 20, outcomes
    assert len(received) >= 20
