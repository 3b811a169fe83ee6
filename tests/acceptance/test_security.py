"""Security through a real server: API keys, the secure default, headers, rate limits, limits,
and secrets kept out of answers and logs."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from tests.acceptance.helpers import assert_problem, create, ready_task
from tests.support.backends import POSTGRES_URL, backend_env
from tests.support.receiver import Receiver
from tests.support.server import Server, clean_environ, free_port

KEY = "tp_test_key_0123456789abcdef"


@pytest.fixture(scope="module")
def backend() -> str:
    """Security sits in front of the backends and does not depend on them: SQLite only."""
    return "sqlite"


TASK = "01900000-0000-7000-8000-000000000000"
API_ROUTES = [
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/dequeue"),
    ("POST", "/api/tasks/dequeue"),
    ("GET", f"/api/tasks/{TASK}"),
    ("POST", f"/api/tasks/{TASK}/execute"),
    ("GET", f"/api/tasks/{TASK}/executions"),
    ("GET", "/api/stats"),
    ("GET", "/api/nothing-here"),
    ("POST", "/api/tasks/batch"),
    ("POST", "/api/tasks/retry"),
    ("POST", f"/api/tasks/{TASK}/cancel"),
    ("POST", f"/api/tasks/{TASK}/retry"),
    ("GET", "/api/queues"),
    ("POST", "/api/queues/default/pause"),
    ("POST", "/api/queues/default/resume"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def keyed(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with two API keys, one from the variable and one from a file."""
    workdir = tmp_path_factory.mktemp(f"keyed-{backend}")
    keys_file = workdir / "keys"
    keys_file.write_text("# production keys\n\nfile_key_abcdef_0123\n  # rotated 2026-11\n")
    server = Server(
        {
            **backend_env(backend, workdir),
            "TASKPLATFORM_API_KEYS": f"{KEY}, other_key_xyz_0123",
            "TASKPLATFORM_API_KEYS_FILE": str(keys_file),
        },
        workdir / "server.log",
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        f"Basic {KEY}",
        "Bearer",
        f"bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        "Bearer # production keys",  # a comment line of the keys file
    ],
)
def test_every_api_route_needs_a_valid_key(
    keyed: Server, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, f"{keyed.url}{path}", headers=headers, json={})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("order", ["valid first", "valid second"])
def test_two_authorization_headers_are_a_bad_request(keyed: Server, order: str) -> None:
    """RFC 9110, section 5.3: Authorization is no list. With two, the first won (a valid key
    then a wrong one got in) where a proxy in front may read the last: both orders are a 400."""
    values = [f"Bearer {KEY}", "Bearer wrong"]
    if order == "valid second":
        values.reverse()
    headers = httpx.Headers([("Authorization", value) for value in values])
    response = httpx.get(f"{keyed.url}/api/stats", headers=headers)
    problem = assert_problem(response, 400, "bad_request")
    assert "one Authorization header, not 2" in problem["detail"]


def test_a_valid_key_gets_in_and_is_never_logged(keyed: Server, receiver: Receiver) -> None:
    """Each key works; neither the keys nor the tasks' data reach the log."""
    for key in (KEY, "other_key_xyz_0123", "file_key_abcdef_0123"):
        with httpx.Client(base_url=keyed.url, headers={"Authorization": f"Bearer {key}"}) as http:
            task_id = ready_task(
                http, receiver.url("/ok"), task_data={"card": "4111-private-payload"}
            )
            assert http.post(f"/api/tasks/{task_id}/execute").json()["status"] == "Completed"
            assert http.get("/api/stats").status_code == 200
    log = keyed.log()
    assert task_id in log  # lifecycle events are logged, by id
    for secret in (KEY, "other_key_xyz_0123", "file_key_abcdef_0123", "4111-private-payload"):
        assert secret not in log


def test_a_forged_dashboard_session_cookie_leads_to_the_login(keyed: Server) -> None:
    """Cookies are anyone's to forge: a session with a 5,000-digit expiry, a wrong signature,
    or garbage, and a flash message nested beyond the parser's stack, each lead to the login
    form, never to a 500."""
    for cookie in (
        f"taskplatform_dashboard={'9' * 5000}.x",
        f"taskplatform_dashboard={int(time.time()) + 3600}.forged",
        "taskplatform_dashboard=.",
        f"taskplatform_flash={base64.urlsafe_b64encode(b'[' * 3000).decode()}",
    ):
        response = httpx.get(f"{keyed.url}/dashboard/", headers={"Cookie": cookie})
        assert response.status_code in (303, 307), (cookie[:40], response.status_code)
        assert "/dashboard/login" in response.headers["location"]
        login = httpx.get(f"{keyed.url}/dashboard/login", headers={"Cookie": cookie})
        assert login.status_code == 200, (cookie[:40], login.status_code)


def test_probes_and_docs_stay_open(keyed: Server) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(f"{keyed.url}{path}").status_code == 200, path
    # One documentation page: ReDoc's inline styles, which the docs' CSP refuses, left it bare.
    redoc = httpx.get(f"{keyed.url}/redoc", headers={"Authorization": f"Bearer {KEY}"})
    assert_problem(redoc, 404, "not_found")


def test_docs_can_require_a_key(start_server: Callable[..., Server]) -> None:
    server = start_server(TASKPLATFORM_API_KEYS=KEY, TASKPLATFORM_DOCS_PUBLIC="false")
    assert_problem(httpx.get(f"{server.url}/openapi.json"), 401, "unauthorized")
    authorized = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    assert authorized.status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_security_headers_on_json_errors_and_html(client: httpx.Client) -> None:
    # The hot routes answer from the fast path (api.hotpath), the rest from FastAPI: both.
    requests = [("GET", path) for path in ("/api/stats", "/api/nothing", "/docs", "/healthz")]
    requests += [
        ("POST", "/api/tasks"),
        ("GET", "/api/tasks/dequeue"),
        ("GET", f"/api/tasks/{TASK}"),
        ("POST", f"/api/tasks/{TASK}/execute"),
    ]
    for method, path in requests:
        response = client.request(method, path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path
        # No cache keeps an API answer: a cached dequeue would hand one task to several workers.
        if path != "/docs":
            assert response.headers.get_list("cache-control") == ["no-store"], path
    assert (
        client.get("/api/stats").headers["content-security-policy"].startswith("default-src 'none'")
    )
    # Also on a dequeue that takes a task, and on the HTTP parser's own answers.
    client.post("/api/tasks", json={"taskData": {}, "callbackUrl": "http://127.0.0.1:9/"})
    taken = client.get("/api/tasks/dequeue", params={"queue": "default"})
    assert taken.headers.get_list("cache-control") == ["no-store"], taken.text


@pytest.mark.parametrize(
    "browser",
    [
        {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        # Another port of the same host is the same site but another origin.
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"},
    ],
    ids=["form from another site", "opaque origin", "fetch metadata", "another port"],
)
def test_a_browser_on_another_site_cannot_change_tasks(
    client: httpx.Client, receiver: Receiver, browser: dict[str, str]
) -> None:
    """Without keys, a web page must not drive the API through its visitor's browser."""
    task_id = create(client, receiver.url("/ok"), priority=2**31 - 1)
    for path in ("/api/tasks/dequeue", f"/api/tasks/{task_id}/cancel"):
        assert_problem(client.post(path, headers=browser), 403, "cross_origin_request")
    # The seed's dequeue is a GET, which an <img> on any page sends.
    assert_problem(client.get("/api/tasks/dequeue", headers=browser), 403, "cross_origin_request")
    assert client.get(f"/api/tasks/{task_id}").json()["status"] == "Queued"
    assert not receiver.hits_for(task_id)
    # Reading is harmless (and the response is not readable cross-origin without CORS).
    assert client.get(f"/api/tasks/{task_id}", headers=browser).status_code == 200
    assert client.post(f"/api/tasks/{task_id}/cancel").status_code == 200  # a program may


def test_without_keys_only_loopback_host_names_are_served(
    client: httpx.Client, start_server: Callable[..., Server]
) -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches a
    keyless loopback server through its visitor's browser, but its requests say Host:
    evil.example. With keys set, the key is the guard and any Host is served."""
    port = client.base_url.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "[::2]", "127.1"):
        response = client.get("/api/stats", headers={"Host": host})
        assert_problem(response, 403, "host_not_allowed")
        dashboard = client.post("/dashboard/queues/default/dequeue", headers={"Host": host})
        assert dashboard.status_code == 403, host
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost",
        f"[::1]:{port}",
        "x.localhost",
        # Any loopback address, as serve --host 127.0.0.2 listens on (it answered 403 there).
        f"127.0.0.2:{port}",
        "127.255.0.9",
    ):
        assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
    # An absolute-form target's host is the request's (RFC 9112, section 3.2.2), whatever the
    # Host header says: it passed the check with Host: 127.0.0.1.
    for target, host, status in [
        ("http://evil.example/api/stats", f"127.0.0.1:{port}", b" 403 "),
        (f"http://[::2]:{port}/api/stats", f"127.0.0.1:{port}", b" 403 "),
        (f"http://127.0.0.1:{port}/api/stats", "evil.example", b" 200 "),
    ]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = raw.recv(65536).split(b"\r\n", 1)[0]
        assert status in head, (target, head)
    keyed = start_server(TASKPLATFORM_API_KEYS=KEY)
    response = httpx.get(
        f"{keyed.url}/api/stats",
        headers={"Host": "tasks.example.com", "Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200


def test_same_origin_browsers_and_programs_pass(client: httpx.Client, receiver: Receiver) -> None:
    """/docs' "Try it out" (same origin, behind a proxy too) and programs keep working."""
    host = client.base_url.netloc.decode()
    for headers in (
        {},
        {"Origin": f"http://{host}"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://public.example"},
        {"Sec-Fetch-Site": "none"},
    ):
        task_id = create(client, receiver.url("/ok"), priority=2**31 - 1)
        dequeued = client.post("/api/tasks/dequeue", headers=headers)
        assert dequeued.status_code == 200, (headers, dequeued.text)
        assert dequeued.json()["taskId"] == task_id


def test_rate_limit_answers_429_with_retry_after(start_server: Callable[..., Server]) -> None:
    server = start_server(
        TASKPLATFORM_API_KEYS=f"{KEY},second_key_0123456",
        TASKPLATFORM_RATE_LIMIT_PER_SECOND="2",
        TASKPLATFORM_RATE_LIMIT_BURST="5",
    )
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        statuses = [http.get("/api/stats").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        limited = http.get("/api/stats")
        assert_problem(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        other = http.get("/api/stats", headers={"Authorization": "Bearer second_key_0123456"})
        assert other.status_code == 200  # each key has its own bucket
        assert http.get("/healthz").status_code == 200  # probes are never limited
        time.sleep(1.1)
        assert http.get("/api/stats").status_code == 200  # refilled


def test_rate_limit_counts_hot_and_other_routes_together(
    start_server: Callable[..., Server],
) -> None:
    """Create, dequeue, get and execute take the fast path (``api.hotpath``), the rest FastAPI's
    stack; a client's requests must come out of one bucket whichever way they go."""
    server = start_server(
        TASKPLATFORM_API_KEYS=KEY,
        TASKPLATFORM_RATE_LIMIT_PER_SECOND="0.5",
        TASKPLATFORM_RATE_LIMIT_BURST="4",
    )
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        statuses = [
            http.get("/api/stats").status_code,
            http.get(f"/api/tasks/{TASK}").status_code,  # fast path, 404
            http.get("/api/tasks").status_code,
            http.get("/api/tasks/dequeue").status_code,  # fast path, 404 queue_empty
            http.get(f"/api/tasks/{TASK}").status_code,
        ]
    assert statuses == [200, 404, 200, 404, 429]


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskplatform", "serve", *args],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_serving_beyond_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}
    for host in ("0.0.0.0", "::", "192.0.2.10"):
        refused = _serve(env, "--host", host, "--port", str(free_port()))
        assert refused.returncode == 2
        assert "TASKPLATFORM_API_KEYS" in refused.stderr
        assert "--insecure" in refused.stderr


def test_a_short_api_key_is_refused_at_start_without_being_shown(tmp_path: Path) -> None:
    """A key under 16 characters could be guessed, as a wrong key is answered at once and
    without a limit: serve names where it was given (never the key) and exits 2."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# keys\n{KEY}\nshortkey\n")
    env = {"TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}"}
    for keys, where in [
        ({"TASKPLATFORM_API_KEYS": f"{KEY},letmein"}, "key 2 of TASKPLATFORM_API_KEYS"),
        ({"TASKPLATFORM_API_KEYS_FILE": str(keys_file)}, "line 3 of TASKPLATFORM_API_KEYS_FILE"),
    ]:
        refused = _serve({**env, **keys}, "--port", str(free_port()))
        assert refused.returncode == 2, refused.stderr
        assert f"{where} is " in refused.stderr
        assert "at least 16" in refused.stderr
        assert "letmein" not in refused.stderr
        assert "shortkey" not in refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    "env",
    [{"TASKPLATFORM_INSECURE": "true"}, {"TASKPLATFORM_API_KEYS": KEY}],
    ids=["insecure", "key"],
)
def test_serving_beyond_loopback_with_a_key_or_insecure_starts(
    tmp_path: Path, env: dict[str, str]
) -> None:
    server = Server(
        {
            **env,
            "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
            "TASKPLATFORM_HOST": "0.0.0.0",
        },
        tmp_path / "server.log",
    ).start()
    server.stop()


@pytest.mark.parametrize(
    ("setting", "field", "ok", "too_big"),
    [
        ("TASKPLATFORM_MAX_TIMEOUT_SECONDS", "timeoutSeconds", 60, 60.5),
        ("TASKPLATFORM_MAX_RETRIES_CEILING", "maxRetries", 5, 6),
    ],
)
def test_task_limits_hold_at_their_boundary(
    start_server: Callable[..., Server], setting: str, field: str, ok: float, too_big: float
) -> None:
    server = start_server(**{setting: str(ok)})
    with httpx.Client(base_url=server.url) as http:
        body = {"taskData": {}, "callbackUrl": "http://127.0.0.1:9/x"}
        assert http.post("/api/tasks", json={**body, field: ok}).status_code == 201
        problem = assert_problem(
            http.post("/api/tasks", json={**body, field: too_big}), 422, "validation_error"
        )
        assert problem["errors"][0]["field"] == f"$.{field}"


def test_body_limit_holds_at_its_boundary(start_server: Callable[..., Server]) -> None:
    server = start_server(TASKPLATFORM_MAX_BODY_BYTES="1000")
    prefix = b'{"taskData": {"pad": "'
    suffix = b'"}, "callbackUrl": "http://127.0.0.1:9/x"}'
    exact = prefix + b"x" * (1000 - len(prefix) - len(suffix)) + suffix
    assert len(exact) == 1000
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers) as http:
        assert http.post("/api/tasks", content=exact).status_code == 201
        over = exact.replace(b'"pad": "', b'"pad": "x')
        assert_problem(http.post("/api/tasks", content=over), 413, "payload_too_large")


def test_no_secret_in_settings_answers_or_logs(tmp_path: Path) -> None:
    """A database password and the keys stay out of /readyz, 503s and the log."""
    password = "hunter2-not-shown"  # PostgreSQL here trusts local users; the password is unused
    env = backend_env("postgres", tmp_path)
    url = env["TASKPLATFORM_DATABASE_URL"].replace("postgres@", f"postgres:{password}@")
    server = Server(
        {
            **env,
            "TASKPLATFORM_DATABASE_URL": url,
            "TASKPLATFORM_API_KEYS": KEY,
            "TASKPLATFORM_LOG_LEVEL": "debug",
        },
        tmp_path / "server.log",
    ).start()
    try:
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        assert password not in ready.text
    finally:
        server.stop()
    assert password not in server.log()
    assert KEY not in server.log()
    from pydantic import SecretStr

    from taskplatform.settings import Settings

    shown = repr(
        Settings(
            database_url=url, api_keys=SecretStr(KEY), signing_secret=SecretStr("whsec_c2VjcmV0")
        )
    )
    assert password not in shown
    assert KEY not in shown
    assert "c2VjcmV0" not in shown


SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 32).decode()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://0.0.0.0:9000/",
        "http://224.0.0.1/",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://169.254.43518/",
    ],
)
def test_literal_denied_addresses_are_refused_at_create(client: httpx.Client, url: str) -> None:
    problem = assert_problem(
        client.post("/api/tasks", json={"taskData": {}, "callbackUrl": url}),
        422,
        "validation_error",
    )
    assert problem["errors"][0]["field"] == "$.callbackUrl"


def test_the_policy_names_itself_for_a_dotted_denied_address(client: httpx.Client) -> None:
    body = {"taskData": {}, "callbackUrl": "http://169.254.169.254/"}
    problem = assert_problem(client.post("/api/tasks", json=body), 422, "validation_error")
    assert "URL policy" in problem["errors"][0]["message"]
    assert "169.254.0.0/16" in problem["errors"][0]["message"]


@pytest.mark.parametrize(
    "env",
    [
        {"TASKPLATFORM_CALLBACK_DENY_NETWORKS": "127.0.0.0/8,::1/128"},
        {"TASKPLATFORM_CALLBACK_ALLOW_NETWORKS": "10.0.0.0/8"},
    ],
    ids=["deny loopback", "allow only 10/8"],
)
def test_a_name_that_resolves_to_a_refused_address_gets_no_connection(
    start_server: Callable[..., Server], receiver: Receiver, env: dict[str, str]
) -> None:
    """``localhost`` resolves (for real) to loopback, which this policy refuses: the attempt
    fails naming the policy, and the receiver sees no request. Dispatched, the failure is
    permanent, as for a refused literal address: the name would be refused again, so no retry
    is spent on it (it took all of them before)."""
    server = start_server(**env, TASKPLATFORM_DISPATCH="true")
    with httpx.Client(base_url=server.url) as http:
        literal = {"taskData": {}, "callbackUrl": receiver.url("/ok")}
        assert_problem(http.post("/api/tasks", json=literal), 422, "validation_error")
        by_name = receiver.url("/ok").replace("127.0.0.1", "localhost")
        task_id = create(http, by_name, maxRetries=3, backoffMinSeconds=0.1, backoffMaxSeconds=0.1)
        deadline = time.monotonic() + 20
        while (task := http.get(f"/api/tasks/{task_id}").json())["status"] != "Failed":
            assert time.monotonic() < deadline, task
            time.sleep(0.05)
        time.sleep(0.5)  # time for a retry, were one scheduled
        task = http.get(f"/api/tasks/{task_id}").json()
    assert "URL policy" in task["error"]
    assert (task["status"], task["attempts"], task["deadLetter"]) == ("Failed", 1, True), task
    assert receiver.hits_for(task_id) == []


@pytest.mark.parametrize("secrets", [[SECRET_A], [SECRET_A, SECRET_B]], ids=["one", "rotation"])
def test_callbacks_are_signed_for_standard_webhooks_receivers(
    start_server: Callable[..., Server], receiver: Receiver, secrets: list[str]
) -> None:
    """An independent verifier (the ``standardwebhooks`` package) accepts our signatures with
    each configured secret, and rejects a tampered body."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    server = start_server(TASKPLATFORM_SIGNING_SECRET=",".join(secrets))
    with httpx.Client(base_url=server.url) as http:
        task_id = ready_task(http, receiver.url("/ok"), task_data={"amount": 42})
        assert http.post(f"/api/tasks/{task_id}/execute").json()["status"] == "Completed"
    (hit,) = receiver.hits_for(task_id)
    headers = {name.lower(): value for name, value in hit.headers.items()}
    assert len(headers["webhook-signature"].split(" ")) == len(secrets)
    for secret in secrets:
        assert Webhook(secret).verify(hit.body, headers) == {"amount": 42}
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(hit.body.replace(b"42", b"43"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"c" * 32).decode()).verify(hit.body, headers)


def test_a_malformed_signing_secret_stops_serve(tmp_path: Path) -> None:
    env = {
        "TASKPLATFORM_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TASKPLATFORM_SIGNING_SECRET": "not-a-secret",
    }
    refused = _serve(env, "--port", str(free_port()))
    assert refused.returncode == 2
    assert "TASKPLATFORM_SIGNING_SECRET" in refused.stderr
    assert "not-a-secret" not in refused.stderr


def test_outbound_callbacks_are_capped_per_process(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """TASKPLATFORM_CALLBACK_MAX_CONNECTIONS=2: of four slow callbacks, two wait for a slot."""
    server = start_server(TASKPLATFORM_CALLBACK_MAX_CONNECTIONS="2")
    with httpx.Client(base_url=server.url) as http:
        ids = [ready_task(http, receiver.url("/slow?seconds=1")) for _ in range(4)]
        for task_id in ids:
            http.post(f"/api/tasks/{task_id}/execute", headers={"Prefer": "respond-async"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = {http.get(f"/api/tasks/{task_id}").json()["status"] for task_id in ids}
            if statuses == {"Completed"}:
                break
            time.sleep(0.1)
    assert statuses == {"Completed"}
    arrivals = sorted(hit.at for task_id in ids for hit in receiver.hits_for(task_id))
    assert len(arrivals) == 4
    assert arrivals[1] - arrivals[0] < 0.5  # two at once
    assert arrivals[2] - arrivals[0] >= 0.9  # the third only after one finished


def test_a_callback_that_waited_for_a_connection_is_stamped_when_sent(
    start_server: Callable[..., Server], receiver: Receiver
) -> None:
    """``webhook-timestamp``, and the signature over it, are the time the callback goes out,
    not the time it began to wait for an outbound connection: that wait may last the task's
    timeout (up to an hour), and a Standard Webhooks receiver refuses a timestamp over 5
    minutes old as a replay, a 4xx that would end the task. Here one connection, held 3 s."""
    from standardwebhooks.webhooks import Webhook

    server = start_server(
        TASKPLATFORM_CALLBACK_MAX_CONNECTIONS="1", TASKPLATFORM_SIGNING_SECRET=SECRET_A
    )
    with httpx.Client(base_url=server.url) as http:
        holder = ready_task(http, receiver.url("/slow?seconds=3"))
        waiter = ready_task(http, receiver.url("/ok"), task_data={"n": 1})
        prefer = {"Prefer": "respond-async"}
        assert http.post(f"/api/tasks/{holder}/execute", headers=prefer).status_code == 202
        deadline = time.monotonic() + 10
        while not receiver.hits_for(holder):
            assert time.monotonic() < deadline, "the slow callback never came"
            time.sleep(0.02)
        assert http.post(f"/api/tasks/{waiter}/execute", headers=prefer).status_code == 202
        deadline = time.monotonic() + 15
        while http.get(f"/api/tasks/{waiter}").json()["status"] != "Completed":
            assert time.monotonic() < deadline, "the waiting callback never completed"
            time.sleep(0.05)
    (hit,) = receiver.hits_for(waiter)
    headers = {name.lower(): value for name, value in hit.headers.items()}
    assert Webhook(SECRET_A).verify(hit.body, headers) == {"n": 1}
    # Whole seconds, so up to 1 s behind the sending; it was 3 s behind when stamped early.
    assert time.time() - int(headers["webhook-timestamp"]) < 2.5


def test_task_data_stays_out_of_logs_and_answers_when_postgres_fails(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A database error's text carries the statement's parameters unless told not to; those are
    task data and callback URLs. Cut the server's PostgreSQL connections while it creates tasks:
    the errors are logged and answered 503, without a byte of the payload."""
    marker = "SECRET-PAYLOAD-7f3a"
    env = backend_env("postgres", tmp_path)
    database = urlsplit(env["TASKPLATFORM_DATABASE_URL"]).path.lstrip("/")
    server = Server(env, tmp_path / "server.log").start()
    stop = threading.Event()

    async def cut_connections() -> None:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            while not stop.is_set():
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
                await asyncio.sleep(0.02)
        finally:
            await admin.close()

    cutter = threading.Thread(target=lambda: asyncio.run(cut_connections()))
    cutter.start()
    answers: list[httpx.Response] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and sum(a.status_code == 503 for a in answers) < 5:
                body = {"taskData": {"secret": marker}, "callbackUrl": receiver.url(f"/{marker}")}
                answers.append(client.post("/api/tasks", json=body))
    finally:
        stop.set()
        cutter.join()
        server.stop()
    failed = [answer for answer in answers if answer.status_code == 503]
    assert len(failed) >= 5, [answer.status_code for answer in answers][-20:]
    assert all(marker not in answer.text for answer in failed)
    assert "postgresql error" in server.log()
    assert marker not in server.log()
