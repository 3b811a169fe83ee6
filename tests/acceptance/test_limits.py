"""Request and response limits with their settings changed, at the boundary and one past it, and
a database password kept out of ``/readyz`` and the log while the database is down."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.acceptance.helpers import assert_problem, ready_task
from tests.support.backends import backend_env
from tests.support.proxy import Proxy
from tests.support.receiver import Receiver
from tests.support.server import Server

DEPTH = 8
URL_LENGTH = 100
RESPONSE_BYTES = 1000
PASSWORD = "SeCrEt123"


@pytest.fixture(scope="module")
def backend() -> str:
    """Limits are checked in front of the backends and do not depend on them: SQLite only."""
    return "sqlite"


@pytest.fixture(scope="module")
def limited(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose depth, callbackUrl and callback response limits are all lowered."""
    workdir = tmp_path_factory.mktemp("limited")
    server = Server(
        {
            **backend_env(backend, workdir),
            "TASKPLATFORM_MAX_JSON_DEPTH": str(DEPTH),
            "TASKPLATFORM_MAX_CALLBACK_URL_LENGTH": str(URL_LENGTH),
            "TASKPLATFORM_CALLBACK_RESPONSE_MAX_BYTES": str(RESPONSE_BYTES),
        },
        workdir / "server.log",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def http(limited: Server) -> Iterator[httpx.Client]:
    """An HTTP client bound to the limited server."""
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        yield client


def _stored(http: httpx.Client) -> int:
    """Every task the server holds, in any status."""
    response = http.get("/api/stats")
    assert response.status_code == 200, response.text
    counts: dict[str, int] = response.json()["tasks"]
    return sum(counts.values())


def _nested(levels: int, innermost: Any) -> Any:
    """``levels`` objects, each inside the one before, around ``innermost``."""
    value = innermost
    for _ in range(levels):
        value = {"in": value}
    return value


def _body_of_depth(depth: int) -> dict[str, Any]:
    """A create body nested exactly ``depth`` deep (the body itself is level 1), with more
    brackets than ``depth`` beside the deep branch and inside a string, so the real nesting, not
    a count of brackets, decides."""
    # body (1) > taskData (2) > "deep": depth - 3 objects > [] (depth)
    task_data = {
        "wide": [[1], [2], {"x": [3]}],
        "text": "[[[[[[[[[[{{{{{{{{{{",
        "deep": _nested(depth - 3, []),
    }
    return {"taskData": task_data, "callbackUrl": "http://127.0.0.1:9/x"}


def _depth(value: Any) -> int:
    """The nesting depth of a decoded JSON value (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    return 0


def _url_of_length(length: int) -> str:
    """A valid callbackUrl of exactly ``length`` characters."""
    base = "http://127.0.0.1:9/"
    return base + "p" * (length - len(base))


def test_json_depth_setting_holds_at_its_boundary(http: httpx.Client) -> None:
    """MAX_JSON_DEPTH=8: a body nested 8 deep is created, 9 deep is 422 and stores nothing."""
    at_limit, over = _body_of_depth(DEPTH), _body_of_depth(DEPTH + 1)
    assert (_depth(at_limit), _depth(over)) == (DEPTH, DEPTH + 1)
    before = _stored(http)
    problem = assert_problem(http.post("/api/tasks", json=over), 422, "validation_error")
    assert problem["errors"][0]["field"] == "$"
    assert f"deeper than {DEPTH} levels" in problem["errors"][0]["message"]
    assert _stored(http) == before
    created = http.post("/api/tasks", json=at_limit)
    assert created.status_code == 201, created.text
    stored = http.get(f"/api/tasks/{created.json()['taskId']}").json()
    assert stored["taskData"] == at_limit["taskData"]
    assert _stored(http) == before + 1


def test_json_depth_setting_holds_for_each_batch_item(http: httpx.Client) -> None:
    """In a batch each item gets the single create's depth limit: 8 deep is created, an item 9
    deep refuses the batch and stores nothing."""
    before = _stored(http)
    over = {"tasks": [_body_of_depth(DEPTH), _body_of_depth(DEPTH + 1)]}
    problem = assert_problem(http.post("/api/tasks/batch", json=over), 422, "validation_error")
    assert problem["errors"][0]["field"] == "$.tasks"
    assert _stored(http) == before
    accepted = http.post("/api/tasks/batch", json={"tasks": [_body_of_depth(DEPTH)]})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["items"][0]["taskId"]
    assert _stored(http) == before + 1


def test_callback_url_length_setting_holds_at_its_boundary(http: httpx.Client) -> None:
    """MAX_CALLBACK_URL_LENGTH=100: a URL of 100 characters is created, 101 is 422 naming
    $.callbackUrl, alone or in a batch, and stores nothing."""
    at_limit, over = _url_of_length(URL_LENGTH), _url_of_length(URL_LENGTH + 1)
    assert (len(at_limit), len(over)) == (URL_LENGTH, URL_LENGTH + 1)
    before = _stored(http)
    problem = assert_problem(
        http.post("/api/tasks", json={"taskData": {}, "callbackUrl": over}),
        422,
        "validation_error",
    )
    assert problem["errors"][0]["field"] == "$.callbackUrl"
    assert f"longer than {URL_LENGTH} characters" in problem["errors"][0]["message"]
    assert _stored(http) == before
    batch = http.post(
        "/api/tasks/batch",
        json={"tasks": [{"taskData": {}, "callbackUrl": url} for url in (over, at_limit)]},
    )
    assert batch.status_code == 200, batch.text
    refused, created = batch.json()["items"]
    assert refused["error"]["code"] == "validation_error"
    assert refused["error"]["errors"][0]["field"] == "$.callbackUrl"
    assert "taskId" not in refused or refused["taskId"] is None
    assert created["taskId"]
    assert _stored(http) == before + 1
    single = http.post("/api/tasks", json={"taskData": {}, "callbackUrl": at_limit})
    assert single.status_code == 201, single.text
    assert http.get(f"/api/tasks/{single.json()['taskId']}").json()["callbackUrl"] == at_limit
    assert _stored(http) == before + 2


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_refused_long_callback_urls_are_not_kept(limited: Server, http: httpx.Client) -> None:
    """The cache of judged callback URLs keeps those within the length limit only: it kept each
    refused one too, up to the body's size, and 100 creates with URLs of 1 MB held about 100
    MiB that the server never gave back (4 GiB at the cache's 4,096 entries)."""
    assert limited.process is not None
    warm = "http://127.0.0.1/" + "w" * 1_000_000  # the same each time: the allocator warms up
    for _ in range(5):
        http.post("/api/tasks", json={"taskData": {}, "callbackUrl": warm})
    before = _rss_mib(limited.process.pid)
    for index in range(100):
        url = f"http://127.0.0.1/{index}-" + "a" * 1_000_000
        response = http.post("/api/tasks", json={"taskData": {}, "callbackUrl": url})
        assert_problem(response, 422, "validation_error")
    grown = _rss_mib(limited.process.pid) - before
    assert grown < 30, f"the server kept {grown:.0f} MiB after 100 refused creates"


@pytest.mark.parametrize("chunked", ["0", "1"], ids=["content-length", "chunked"])
def test_callback_response_setting_holds_at_its_boundary(
    http: httpx.Client, receiver: Receiver, chunked: str
) -> None:
    """CALLBACK_RESPONSE_MAX_BYTES=1000: a response of exactly 1000 bytes is kept as the result;
    of 1001 bytes nothing is kept (declared or streamed), and with a 500 the attempt fails as
    over the limit (a 2xx is a success whatever its body)."""
    kept = ready_task(http, receiver.url(f"/big?bytes={RESPONSE_BYTES}&chunked={chunked}"))
    outcome = http.post(f"/api/tasks/{kept}/execute").json()
    assert outcome["status"] == "Completed", outcome
    assert outcome["result"] == "a" * RESPONSE_BYTES
    assert http.get(f"/api/tasks/{kept}").json()["result"] == "a" * RESPONSE_BYTES

    big = f"/big?bytes={RESPONSE_BYTES + 1}&chunked={chunked}"
    done = ready_task(http, receiver.url(big))
    outcome = http.post(f"/api/tasks/{done}/execute").json()
    assert (outcome["status"], outcome["error"], outcome["result"]) == ("Completed", None, None)

    cut = ready_task(http, receiver.url(big + "&status=500"))
    outcome = http.post(f"/api/tasks/{cut}/execute").json()
    too_large = f"response body over the limit of {RESPONSE_BYTES} bytes; not kept"
    assert (outcome["status"], outcome["error"], outcome["result"]) == ("Failed", too_large, None)
    task = http.get(f"/api/tasks/{cut}").json()
    assert (task["error"], task["result"]) == (too_large, None)
    (entry,) = http.get(f"/api/tasks/{cut}/executions").json()["items"]
    assert (entry["httpStatus"], entry["error"], entry["result"]) == (500, too_large, None)


def _wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_readyz_with_the_database_down_shows_no_password(tmp_path: Path) -> None:
    """PostgreSQL cut off behind a proxy: /readyz answers 503 and neither it, a failed create,
    nor the log (debug level, failed maintenance rounds and LISTEN reconnects included) holds the
    URL's password."""
    env = backend_env("postgres", tmp_path)
    url = urlsplit(env["TASKPLATFORM_DATABASE_URL"])
    proxy = Proxy(url.hostname or "127.0.0.1", url.port or 5432).start()
    try:
        # Trust authentication ignores the password; the server still holds it in its URL.
        netloc = f"{url.username}:{PASSWORD}@127.0.0.1:{proxy.port}"
        server = Server(
            {
                **env,
                "TASKPLATFORM_DATABASE_URL": urlunsplit(url._replace(netloc=netloc)),
                "TASKPLATFORM_DATABASE_CONNECT_TIMEOUT_SECONDS": "1",
                "TASKPLATFORM_RECOVERY_INTERVAL_SECONDS": "0.2",
                "TASKPLATFORM_LOG_LEVEL": "debug",
            },
            tmp_path / "server.log",
        ).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/readyz").status_code == 200
                proxy.cut()
                _wait_for(lambda: http.get("/readyz").status_code == 503)
                down = http.get("/readyz")
                assert down.status_code == 503
                assert down.json()  # a JSON answer naming the failure
                assert PASSWORD not in down.text
                assert PASSWORD not in json.dumps(dict(down.headers))
                create = http.post(
                    "/api/tasks", json={"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x"}
                )
                assert_problem(create, 503, "backend_unavailable")
                assert PASSWORD not in create.text
                _wait_for(lambda: "maintenance round failed" in server.log())
                # The LISTEN connection retries each second and logs its driver's error as is.
                _wait_for(lambda: "cannot LISTEN on PostgreSQL" in server.log())
                proxy.restore()
                _wait_for(lambda: http.get("/readyz").status_code == 200)
        finally:
            server.stop()
    finally:
        proxy.stop()
    log = server.log()
    assert "postgresql error" in log or "maintenance round failed" in log
    assert PASSWORD not in log
