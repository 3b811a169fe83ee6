"""The dashboard at /dashboard: a real Chromium (Playwright) and plain HTTP against a real server.

The browser tests click through what an operator does: read the counts and the depth chart,
filter and page the task table, open a task, execute, re-drive and cancel it with confirmations,
on a phone-sized screen too, and log in when API keys are set. Screenshots land in
``test-artifacts/dashboard/``. Without Chromium (``/usr/bin/chromium``) they skip with the reason,
or fail when ``CI`` is set. The HTTP tests (escaping, 404 page, CSRF, cookie scope) need no browser.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from taskplatform.api.security import DASHBOARD_SESSION_SECONDS, dashboard_session
from tests.acceptance.helpers import create
from tests.support.backends import backend_env, in_ci
from tests.support.receiver import Receiver
from tests.support.server import Server, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
KEYS = ("dash-key-0123456789abcdef", "dash-key-fedcba9876543210")
DASHBOARD_CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)


# -- fixtures -------------------------------------------------------------------------------------


def _require_chromium() -> None:
    """Skip (locally) or fail (in CI) when there is no Chromium to drive."""
    if os.path.exists(CHROMIUM):
        return
    reason = f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium)"
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, shared by the module's browser tests."""
    _require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, **env: str) -> Server:
    workdir = tmp_path_factory.mktemp(name)
    return Server(
        {**backend_env("sqlite", workdir), "TASKPLATFORM_QUEUE_DEPTH_SAMPLE_SECONDS": "1", **env},
        workdir / "server.log",
    ).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server without API keys (the dashboard is open), sampling queue depth every second."""
    running = _start(tmp_path_factory, "dashboard-open")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with two API keys configured."""
    running = _start(tmp_path_factory, "dashboard-keys", TASKPLATFORM_API_KEYS=",".join(KEYS))
    yield running
    running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client of the open server."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def _page(browser: Browser, width: int = 1280, height: int = 900) -> Page:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser tab (its own cookies) on a desktop-sized window."""
    opened = _page(browser)
    yield opened
    opened.context.close()


def _queue() -> str:
    """A queue name of its own per test, so tests sharing the server do not see each other."""
    return f"dash-{uuid.uuid4().hex[:8]}"


def _shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact and check it is a real image."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 2_000, f"{path} is (nearly) empty"
    return path


def _status(client: httpx.Client, task_id: str, **kwargs: Any) -> str:
    response = client.get(f"/api/tasks/{task_id}", **kwargs)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def _dequeue(client: httpx.Client, queue: str, task_id: str) -> None:
    response = client.get("/api/tasks/dequeue", params={"queue": queue})
    assert response.status_code == 200, response.text
    assert response.json()["taskId"] == task_id


# -- the browser ----------------------------------------------------------------------------------


def test_overview_shows_counts_queues_and_the_depth_chart(
    page: Page, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """The counts per status match /api/stats, the queue's row shows its depth, and the depth
    chart draws the queue once a sample of it is taken (every second here)."""
    queue = _queue()
    for _ in range(3):
        create(client, receiver.url("/ok"), queue=queue)
    page.goto(f"{server.url}/dashboard")
    expect(page.locator(f'[data-queue-depth="{queue}"]')).to_have_text("3")
    stats = client.get("/api/stats").json()["tasks"]
    page.reload()  # read the page right after the API, with nothing changing in between
    for status in ("Queued", "Dequeued", "Completed", "Failed", "Cancelled"):
        shown = page.locator(f'[data-status="{status}"] .n').inner_text()
        assert int(shown) == stats[status], status
    legend = page.locator(".legend li", has_text=queue)
    deadline = time.monotonic() + 15
    # Until a sample taken after the third create is drawn: one taken between two creates
    # showed "now 1" and, the page being read once, stayed (seen once in CI).
    while "now 3" not in (legend.all_inner_texts() or [""])[0] and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    expect(legend).to_contain_text("now 3")
    assert page.locator(".chart svg polyline").count() >= 2  # default and this queue
    _shot(page, "overview")


def test_execute_from_the_task_page_after_confirming(
    page: Page, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """From the filtered table to the task page; Execute asks first (dismissed: no callback),
    then, confirmed, calls back once and shows Completed with the attempt in the log."""
    queue = _queue()
    task_id = create(client, receiver.url("/ok"), queue=queue, task_data={"order": 42})
    _dequeue(client, queue, task_id)
    page.goto(f"{server.url}/dashboard/tasks?queue={queue}")
    page.get_by_role("link", name=task_id).click()
    expect(page).to_have_url(f"{server.url}/dashboard/tasks/{task_id}")
    expect(page.locator(".status-line .badge")).to_have_text("Dequeued")
    expect(page.locator('[data-field="taskData"]')).to_contain_text('"order": 42')

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator('[data-action="execute"]').click()
    page.wait_for_timeout(500)
    assert receiver.hits_for(task_id) == []
    expect(page.locator(".status-line .badge")).to_have_text("Dequeued")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('[data-action="execute"]').click()
    expect(page.locator(".flash-ok")).to_have_text("Executed: attempt 1 ended Completed")
    expect(page.locator(".status-line .badge")).to_have_text("Completed")
    attempt = page.locator(".attempts .attempt")
    expect(attempt).to_have_count(1)
    expect(attempt).to_contain_text("Attempt 1")
    expect(attempt).to_contain_text("HTTP 200")
    expect(page.locator('[data-field="result"]')).to_contain_text('"ok": true')
    assert len(receiver.hits_for(task_id)) == 1
    assert _status(client, task_id) == "Completed"
    _shot(page, "task-completed")
    page.reload()  # the message was shown once; a reload does not repeat the action
    expect(page.locator(".flash")).to_have_count(0)
    assert len(receiver.hits_for(task_id)) == 1


def test_dequeue_retry_and_cancel_with_the_buttons(
    page: Page, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """Dequeue from the overview, a failing execute (a dead letter), Retry (re-drive: Queued
    again) and Cancel; a refused action (the task changed behind the page) is a message."""
    page.on("dialog", lambda dialog: dialog.accept())
    queue = _queue()
    task_id = create(client, receiver.url("/status/500"), queue=queue, maxRetries=0)
    page.goto(f"{server.url}/dashboard")
    page.locator("tr", has_text=queue).get_by_role("button", name="Dequeue").click()
    expect(page).to_have_url(f"{server.url}/dashboard/tasks/{task_id}")
    expect(page.locator(".flash-ok")).to_have_text("Dequeued: ready to execute")

    page.locator('[data-action="execute"]').click()
    expect(page.locator(".flash-ok")).to_contain_text("attempt 1 ended Failed")
    expect(page.locator(".status-line .badge")).to_have_text("Failed")
    expect(page.locator(".status-line")).to_contain_text("dead letter")
    expect(page.locator(".attempts .attempt.failed")).to_contain_text("HTTP 500")
    expect(page.locator('[data-action="execute"]')).to_have_count(0)  # no attempts left
    _shot(page, "task-failed")

    page.locator('[data-action="retry"]').click()
    expect(page.locator(".flash-ok")).to_contain_text("Re-driven")
    expect(page.locator(".status-line .badge")).to_have_text("Queued")
    assert _status(client, task_id) == "Queued"

    page.locator('[data-action="cancel"]').click()
    expect(page.locator(".flash-ok")).to_have_text("Cancelled: the task is Cancelled")
    expect(page.locator(".status-line .badge")).to_have_text("Cancelled")
    expect(page.locator(".actions")).to_contain_text("is final")
    assert _status(client, task_id) == "Cancelled"

    # The page shows Execute for a Dequeued task; cancelled behind its back, Execute is refused
    # by the service and the refusal is shown, not a server error.
    other = create(client, receiver.url("/ok"), queue=queue)
    _dequeue(client, queue, other)
    page.goto(f"{server.url}/dashboard/tasks/{other}")
    assert client.post(f"/api/tasks/{other}/cancel").status_code == 200
    page.locator('[data-action="execute"]').click()
    expect(page.locator(".flash-error")).to_contain_text("Task cancelled")
    expect(page.locator(".status-line .badge")).to_have_text("Cancelled")
    assert receiver.hits_for(other) == []


def test_filter_and_paginate_the_task_table(
    page: Page, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """The status and queue filters narrow the table; Next page follows the cursor to the
    older tasks, with no task on two pages, and First page comes back."""
    queue = _queue()
    body = {
        "tasks": [
            {"taskData": {"n": n}, "callbackUrl": receiver.url("/ok"), "queue": queue}
            for n in range(30)
        ]
    }
    created = client.post("/api/tasks/batch", json=body).json()["items"]
    ids = [item["taskId"] for item in created]
    _dequeue(client, queue, ids[0])  # one Dequeued, 29 Queued

    page.goto(f"{server.url}/dashboard/tasks")
    page.locator('select[name="queue"]').select_option(queue)
    page.locator('select[name="status"]').select_option("Queued")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(rf"status=Queued&queue={queue}$"))
    rows = page.locator("table.tasks tbody tr")
    expect(rows).to_have_count(25)
    first_page = rows.locator("td.id").all_inner_texts()
    assert all(row.strip() in ids[1:] for row in first_page)
    assert first_page == sorted(first_page, reverse=True)  # newest first
    _shot(page, "tasks")

    page.get_by_role("link", name="Next page →").click()
    expect(rows).to_have_count(4)
    second_page = rows.locator("td.id").all_inner_texts()
    assert set(first_page).isdisjoint(second_page)
    assert sorted(first_page + second_page) == sorted(ids[1:])
    expect(page.get_by_role("link", name="Next page →")).to_have_count(0)

    page.get_by_role("link", name="← First page").click()
    expect(rows).to_have_count(25)
    page.locator('select[name="status"]').select_option("Dequeued")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(ids[0])


def test_the_page_refreshes_itself(
    page: Page, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """A task created after the overview opened shows up without a reload."""
    page.goto(f"{server.url}/dashboard")
    queue = _queue()
    create(client, receiver.url("/ok"), queue=queue)
    expect(page.locator(f'[data-queue-depth="{queue}"]')).to_have_text("1", timeout=12_000)


def test_narrow_screen_has_no_horizontal_scroll(
    browser: Browser, server: Server, client: httpx.Client, receiver: Receiver
) -> None:
    """At 390 px wide (a phone) every page fits the width: nothing scrolls sideways."""
    queue = _queue()
    task_id = create(
        client,
        receiver.url("/ok"),
        queue=queue,
        task_data={"a-rather-long-key-without-spaces" * 3: "x" * 300, "nested": {"list": [1] * 40}},
    )
    _dequeue(client, queue, task_id)
    client.post(f"/api/tasks/{task_id}/execute")
    page = _page(browser, width=390, height=844)
    try:
        for name, path in (
            ("narrow-overview", "/dashboard"),
            ("narrow-tasks", "/dashboard/tasks"),
            ("narrow-task", f"/dashboard/tasks/{task_id}"),
        ):
            page.goto(server.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide at 390 px"
            _shot(page, name)
    finally:
        page.context.close()


def test_api_keys_need_a_login_and_refuse_cross_origin_posts(
    page: Page, keyed_server: Server, receiver: Receiver
) -> None:
    """With keys set: no cookie redirects to the login form, a wrong key is refused, the right
    one sets an HttpOnly SameSite=Strict cookie for /dashboard, and a form posted from another
    origin (same site, so the browser does send the cookie) is refused by the Origin check."""
    bearer = {"Authorization": f"Bearer {KEYS[1]}"}
    with httpx.Client(base_url=keyed_server.url, headers=bearer, timeout=30) as api:
        task_id = create(api, receiver.url("/ok"))
        page.goto(f"{keyed_server.url}/dashboard/tasks/{task_id}")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
        _shot(page, "login")

        page.locator("#key").fill("not-a-key")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator(".flash-error")).to_have_text("That is not a valid API key.")
        assert page.context.cookies() == []

        page.locator("#key").fill(KEYS[1])
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{keyed_server.url}/dashboard/tasks/{task_id}")
        expect(page.locator(".status-line .badge")).to_have_text("Queued")
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/dashboard"
        assert cookie["secure"] is False  # plain http here; https sets Secure
        assert KEYS[1] not in cookie["value"]

        # Another origin on the same host (another port): same site, so SameSite lets the
        # cookie through; only the Origin check stands between the page and the action.
        evil = f"http://127.0.0.1:{free_port()}/evil"
        page.route(
            evil,
            lambda route: route.fulfill(
                content_type="text/html",
                body=(
                    f'<form id="f" method="post" action="{keyed_server.url}/dashboard/tasks/'
                    f'{task_id}/cancel"></form><script>document.getElementById("f").submit()'
                    "</script>"
                ),
            ),
        )
        with page.expect_response(f"{keyed_server.url}/dashboard/tasks/{task_id}/cancel") as sent:
            page.goto(evil)
        assert sent.value.status == 403
        expect(page.locator("h1")).to_have_text("Refused")
        assert _status(api, task_id) == "Queued"

        # The same action from the dashboard itself works.
        page.goto(f"{keyed_server.url}/dashboard/tasks/{task_id}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator('[data-action="cancel"]').click()
        expect(page.locator(".status-line .badge")).to_have_text("Cancelled")
        assert _status(api, task_id) == "Cancelled"

        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(f"{keyed_server.url}/dashboard/login")
        page.goto(f"{keyed_server.url}/dashboard")
        expect(page).to_have_url(re.compile(r"/dashboard/login"))


# -- plain HTTP -----------------------------------------------------------------------------------


def test_hostile_task_data_renders_as_text(client: httpx.Client, receiver: Receiver) -> None:
    """Markup in taskData (and in the result) is escaped: the only script is the dashboard's
    own, and the page's CSP allows nothing but its own origin anyway."""
    hostile = "<script>alert(1)</script>"
    task_id = create(
        client,
        receiver.url("/ok"),
        task_data={hostile: "</pre><img src=x onerror=alert(2)>", "q": "\"'&"},
    )
    response = client.get(f"/dashboard/tasks/{task_id}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == DASHBOARD_CSP
    page = response.text
    assert hostile not in page
    assert "<img" not in page
    assert page.count("<script") == 1  # /dashboard/static/dashboard.js
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    # The overview and the table list the task too: escaped there as well.
    for path in ("/dashboard", "/dashboard/tasks"):
        listed = client.get(path)
        assert listed.status_code == 200
        assert hostile not in listed.text


def test_a_forged_flash_cookie_is_ignored_not_a_server_error(client: httpx.Client) -> None:
    """The one-shot message is base64 JSON in a cookie, anyone's to forge: one that JSON allows
    but no page can hold (a lone surrogate) is dropped; a good one is shown."""
    for text, shown in (('"a\\ud800"', False), ('"saved \\u00e9"', True)):
        cookie = base64.urlsafe_b64encode(b'{"text": %s}' % text.encode()).decode()
        page = client.get("/dashboard", headers={"Cookie": f"taskplatform_flash={cookie}"})
        assert page.status_code == 200, page.text[:300]
        assert ("saved é" in page.text) is shown


def test_the_dashboard_with_a_trailing_slash_leads_to_the_overview(client: httpx.Client) -> None:
    response = client.get("/dashboard/")
    assert (response.status_code, response.headers["location"]) == (308, "/dashboard")
    assert client.get("/dashboard/", follow_redirects=True).status_code == 200


def test_a_task_id_in_upper_case_is_the_same_task_on_the_dashboard(
    client: httpx.Client, receiver: Receiver
) -> None:
    """As in the API (RFC 9562: hex digits in either case), the page and its actions take the
    id in upper case and speak of the task by its own id."""
    task_id = create(client, receiver.url("/ok"))
    page = client.get(f"/dashboard/tasks/{task_id.upper()}")
    assert page.status_code == 200, page.text[:300]
    assert task_id in page.text
    cancelled = client.post(
        f"/dashboard/tasks/{task_id.upper()}/cancel", headers={"Origin": str(client.base_url)}
    )
    assert cancelled.status_code == 303
    assert cancelled.headers["location"].startswith(f"/dashboard/tasks/{task_id}")
    assert client.get(f"/api/tasks/{task_id}").json()["status"] == "Cancelled"


def test_a_bad_task_id_or_filter_is_a_page_not_a_server_error(client: httpx.Client) -> None:
    """No such task: a 404 page; a bad filter: a 400 page saying why; neither is a 500."""
    for task_id in ("not-a-task", str(uuid.uuid4()), "%00", "x" * 500):
        response = client.get(f"/dashboard/tasks/{task_id}")
        assert response.status_code == 404, (task_id, response.text[:200])
        assert response.headers["content-type"].startswith("text/html")
        assert "Task not found" in response.text
    response = client.get("/dashboard/tasks", params={"status": "Bogus", "queue": "a b"})
    assert response.status_code == 400
    assert "is not one of the statuses" in response.text
    assert "queue names are" in response.text
    # Python's $ matches before a final newline: the pattern must hold for the whole name.
    response = client.get("/dashboard/tasks", params={"queue": "default\n"})
    assert response.status_code == 400
    response = client.post(
        f"/dashboard/tasks/{uuid.uuid4()}/execute", headers={"Origin": str(client.base_url)}
    )
    assert response.status_code == 303
    followed = client.get(response.headers["location"])
    assert followed.status_code == 404


def test_dashboard_posts_need_this_origin(client: httpx.Client, receiver: Receiver) -> None:
    """A POST with another Origin, or with neither Origin nor Referer, is refused (403); the
    dashboard's own origin goes through."""
    task_id = create(client, receiver.url("/ok"))
    own = str(client.base_url).rstrip("/")
    path = f"/dashboard/tasks/{task_id}/cancel"
    for headers in (
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/dashboard"},
        {"Origin": own.replace("127.0.0.1", "localhost")},
    ):
        response = client.post(path, headers=headers)
        assert response.status_code == 403, headers
        assert "cross-origin" in response.text
    assert _status(client, task_id) == "Queued"
    assert client.post(path, headers={"Referer": f"{own}/dashboard"}).status_code == 303
    assert _status(client, task_id) == "Cancelled"


def test_with_keys_the_cookie_opens_the_dashboard_only(
    keyed_server: Server, receiver: Receiver
) -> None:
    """Without a session /dashboard redirects to the login form (static files stay open); the
    session cookie opens /dashboard but is no key for /api; a Bearer key opens both."""
    with httpx.Client(base_url=keyed_server.url, timeout=30) as http:
        response = http.get("/dashboard/tasks?status=Queued")
        assert response.status_code == 303
        assert response.headers["location"] == (
            "/dashboard/login?next=%2Fdashboard%2Ftasks%3Fstatus%3DQueued"
        )
        # A form's POST is not a page to come back to (its GET is 405): back to the overview.
        posted = http.post("/dashboard/queues/default/dequeue")
        assert posted.status_code == 303
        assert posted.headers["location"] == "/dashboard/login?next=%2Fdashboard"
        assert http.get("/dashboard/static/dashboard.js").status_code == 200
        missing = http.get("/dashboard/static/missing.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "not_found"
        assert http.get("/dashboard/login").status_code == 200
        own = {"Origin": keyed_server.url}
        refused = http.post("/dashboard/login", data={"key": "wrong"}, headers=own)
        assert refused.status_code == 401
        logged_in = http.post(
            "/dashboard/login", data={"key": KEYS[0], "next": "//evil.example/"}, headers=own
        )
        assert logged_in.status_code == 303
        assert logged_in.headers["location"] == "/dashboard"  # never off to another site
        set_cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in set_cookie
        assert "SameSite=strict" in set_cookie
        assert "Path=/dashboard" in set_cookie
        session = http.cookies.get("taskplatform_dashboard", path="/dashboard")
        assert session is not None
        assert http.get("/dashboard").status_code == 200
        api = http.get("/api/stats", headers={"Cookie": f"taskplatform_dashboard={session}"})
        assert api.status_code == 401
    with httpx.Client(base_url=keyed_server.url, timeout=30) as fresh:
        forged = fresh.get("/dashboard", headers={"Cookie": "taskplatform_dashboard=" + "0" * 64})
        assert forged.status_code == 303
        # The server checks the session's expiry itself: a copied cookie does not last forever,
        # and its expiry cannot be moved without the key.
        good = dashboard_session(KEYS[0])
        expired = dashboard_session(KEYS[0], now=time.time() - DASHBOARD_SESSION_SECONDS - 1)
        moved = str(int(good.split(".")[0]) + 86400) + "." + expired.split(".")[1]
        for value, status in ((good, 200), (expired, 303), (moved, 303)):
            page = fresh.get("/dashboard", headers={"Cookie": f"taskplatform_dashboard={value}"})
            assert page.status_code == status, value
        bearer = {"Authorization": f"Bearer {KEYS[0]}"}
        assert fresh.get("/dashboard", headers=bearer).status_code == 200
        assert fresh.get("/api/stats", headers=bearer).status_code == 200


def test_the_task_page_shows_task_data_numbers_as_they_were_sent(
    client: httpx.Client, receiver: Receiver
) -> None:
    """README: taskData is "stored and returned exactly as sent", and the task page shows it
    "as indented JSON". The page read it into floats and wrote them again: ``1e400`` showed as
    ``Infinity`` (no JSON at all) and ``123456789012345678901234567890.5`` as
    ``1.2345678901234568e+29``, values the task does not hold."""
    body = (
        b'{"taskData": {"big": 1e400, "amount": 123456789012345678901234567890.5, "n": 7},'
        b' "callbackUrl": "%s"}' % receiver.url("/ok").encode()
    )
    answer = client.post("/api/tasks", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 201, answer.text
    page = client.get(f"/dashboard/tasks/{answer.json()['taskId']}")
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'<pre class="json" data-field="taskData">(.*?)</pre>', page.text, re.S)
    assert found, page.text[:500]
    shown = html.unescape(found[1])
    assert "Infinity" not in shown
    assert json.loads(shown)["n"] == 7  # JSON still
    assert '"big": 1e400' in shown
    assert '"amount": 123456789012345678901234567890.5' in shown
    assert '"n": 7' in shown
