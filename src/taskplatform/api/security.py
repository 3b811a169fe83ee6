"""The outer layer of every request: API keys, the per-key rate limit and security headers.

The dashboard (``/dashboard``) is the one place a browser navigates to, and a browser cannot
send a Bearer header on a navigation: there a session cookie set by the dashboard's login form
(:func:`dashboard_session`) stands in for the key, and a request without one is redirected to
the login form instead of answered 401. The cookie counts nowhere else.

A plain ASGI middleware rather than FastAPI dependencies, so one check covers every route
(present and future) and costs a dictionary lookup on the hot path.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final
from urllib.parse import quote

from taskplatform.api.problems import PROBLEM_MEDIA_TYPE, problem_type
from taskplatform.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN = ("/healthz", "/readyz")
_DOCS = ("/docs", "/openapi.json")
_DASHBOARD = "/dashboard"
# The login form and the dashboard's own script and style need no key.
_DASHBOARD_OPEN = ("/dashboard/login", "/dashboard/static/")
DASHBOARD_COOKIE = "taskplatform_dashboard"
"""Name of the dashboard's session cookie (HttpOnly, SameSite=Strict, Path=/dashboard)."""
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Dashboard forms need the browser to send a real Origin on POST (the CSRF check); with
# no-referrer it sends "Origin: null", so the dashboard's pages ask for same-origin instead.
_DASHBOARD_HEADERS = [
    (name, b"same-origin" if name == b"referrer-policy" else value) for name, value in _HEADERS
]
# No cache may keep or reuse an answer of the API: a dequeue's 200 handed out by a caching
# proxy (Varnish keeps a 200 without Cache-Control for 120 s) would give one task to several
# workers, and a GET of a task must say where it stands now.
_API_ONLY_HEADERS = [*_HEADERS, (b"cache-control", b"no-store")]
# JSON needs no resources at all; Swagger UI (/docs) loads its script and style from a CDN.
_CSP_API = b"default-src 'none'; frame-ancestors 'none'"
API_HEADERS = (*_API_ONLY_HEADERS, (b"content-security-policy", _CSP_API))
"""The headers the middleware adds to an answer of the JSON API, as (name, value) bytes: for an
answer written where the middleware cannot see it (``api.protocol``)."""
_CSP_DOCS = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' https://cdn.jsdelivr.net; "
    b"img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'"
)
# The dashboard loads only its own script and style (no inline ones) and posts only to itself.
_CSP_DASHBOARD = (
    b"default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    b"object-src 'none'"
)


DASHBOARD_SESSION_SECONDS = 12 * 3600
"""How long a dashboard login lasts; the server checks it, not only the cookie's Max-Age."""


def dashboard_session(key: str, now: float | None = None) -> str:
    """Return a dashboard session cookie's value for API ``key``: ``<expiry>.<mac>``.

    ``expiry`` is Unix seconds, ``DASHBOARD_SESSION_SECONDS`` from ``now``; ``mac`` is an
    HMAC-SHA256 of it keyed by the key's SHA-256, so the browser never stores a key that would
    work as a Bearer token, a copied cookie stops working when it expires (whatever the
    browser does with Max-Age), and every session ends when its key is removed.
    """
    expiry = int((time.time() if now is None else now) + DASHBOARD_SESSION_SECONDS)
    return _session_value(hashlib.sha256(key.encode()).digest(), str(expiry).encode()).decode()


def _session_value(key_digest: bytes, expiry: bytes) -> bytes:
    mac = hmac.new(key_digest, b"taskplatform-dashboard-session\0" + expiry, hashlib.sha256)
    return expiry + b"." + mac.hexdigest().encode()


def is_dashboard_path(path: str) -> bool:
    """Return whether ``path`` belongs to the dashboard (``/dashboard`` or below it)."""
    return path == _DASHBOARD or path.startswith(_DASHBOARD + "/")


def _cookie(header: bytes, name: bytes) -> bytes | None:
    """Return the value of cookie ``name`` in a ``Cookie`` header, or None."""
    for part in header.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name:
            return value.strip(b'"')
    return None


class TokenBucket:
    """Per-identity token buckets: ``rate`` tokens a second, at most ``burst`` stored.

    Args:
        rate: Requests per second, steady.
        burst: Requests allowed at once.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, identity: str, now: float) -> float:
        """Take one token for ``identity``; return 0 if allowed, else seconds until one is."""
        tokens, last = self._buckets.get(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[identity] = (tokens - 1, now)
            return 0.0
        self._buckets[identity] = (tokens, now)
        if len(self._buckets) > 100_000:  # bound memory: forget the buckets that have refilled
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
        return (1 - tokens) / self.rate


class SecurityMiddleware:
    """Authenticate, rate-limit and add security headers.

    Args:
        app: The application behind it.
        settings: API keys (compared in constant time, by their SHA-256), which paths need them,
            and the rate limit.
        limiter: The rate limit's buckets when another instance already keeps them (the fast
            path, ``api.hotpath``, and FastAPI's stack share one, so a client's requests count
            once whichever way they go); None makes new ones from ``settings``.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, limiter: TokenBucket | None = None
    ) -> None:
        self.app = app
        self._digests = [hashlib.sha256(key.encode()).digest() for key in settings.api_key_list()]
        self._docs_public = settings.docs_public
        # With no key to ask for, a loopback server is protected only by being unreachable; a
        # web page can still make the visitor's browser reach it by DNS rebinding (a name of the
        # attacker's that resolves to 127.0.0.1), which shows in the Host header.
        self._loopback_hosts_only = not self._digests and _is_loopback_host(settings.host)
        self._metrics_public = settings.metrics_public
        rate = settings.rate_limit_per_second
        if limiter is None and rate > 0:
            limiter = TokenBucket(rate, settings.rate_limit_burst)
        self.limiter = limiter

    def _needs_key(self, path: str) -> bool:
        if not self._digests:
            return False
        return needs_key(path, metrics_public=self._metrics_public, docs_public=self._docs_public)

    def _identify(self, scope: Scope, *, dashboard: bool = False) -> int | None:
        """Return the index of the presented API key, or None if none matches.

        With ``dashboard``, a dashboard session cookie counts too (when no Bearer header is sent).
        """
        session = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer" or not token:
                    return None
                return _match(hashlib.sha256(token.strip()).digest(), self._digests)
            if dashboard and name == b"cookie" and session is None:
                session = _cookie(value, DASHBOARD_COOKIE.encode())
        if session:
            return self._session_key(session)
        return None

    def _session_key(self, session: bytes) -> int | None:
        """Return the index of the key whose unexpired session ``session`` is, or None."""
        expiry, _, _ = session.partition(b".")
        # At most 12 digits (epoch seconds until the year 33658): int() of a 5,000-digit
        # cookie would raise instead of refusing it.
        if not (0 < len(expiry) <= 12 and expiry.isdigit()) or int(expiry) <= time.time():
            return None
        expected = [_session_value(digest, expiry) for digest in self._digests]
        return _match(session, expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        dashboard = is_dashboard_path(path)
        if path.startswith(_DOCS):
            csp, extra = _CSP_DOCS, _HEADERS
        elif dashboard:  # its pages say their own Cache-Control
            csp, extra = _CSP_DASHBOARD, _DASHBOARD_HEADERS
        else:
            csp, extra = _CSP_API, _API_ONLY_HEADERS

        upgrade = False

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [*extra, (b"content-security-policy", csp)]
                if upgrade:
                    # The HTTP parser drops what came after the head of a request asking to
                    # switch protocols (a pipelined request would wait for ever): close, so
                    # that the client sends it again on a new connection.
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        hosts: list[bytes] = []
        authorizations = 0
        with_body = False
        for name, value in scope["headers"]:
            if name == b"host":
                hosts.append(value)
            elif name == b"authorization":
                authorizations += 1
            elif name == b"upgrade":
                upgrade = True
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                with_body = True
        if upgrade and with_body:
            # The HTTP parser takes what follows the head of a request asking to switch
            # protocols (Upgrade: h2c, as `curl --http2` sends) as the new protocol's bytes: the
            # app would see an empty body. This server only speaks HTTP/1.1, so say so.
            await _problem(
                send_with_headers,
                400,
                "bad_request",
                "Bad request",
                "the request asks to switch protocols (Upgrade) and has a body, which this "
                "HTTP/1.1 server cannot then read: send it without the Upgrade header (with "
                "curl, --http1.1 instead of --http2)",
                [],
            )
            return
        if len(hosts) > 1 or (not hosts and scope.get("http_version") == "1.1"):
            # RFC 9112, section 3.2: a 400 for an HTTP/1.1 request with no Host or several;
            # with two, the loopback check below and a proxy could each read another.
            await _problem(
                send_with_headers,
                400,
                "bad_request",
                "Bad request",
                f"send exactly one Host header, not {len(hosts)} (RFC 9112, section 3.2)",
                [],
            )
            return
        if authorizations > 1:
            # RFC 9110, section 5.3: Authorization is no list, so two are a malformed request;
            # this server would read the first and a proxy in front perhaps the last.
            await _problem(
                send_with_headers,
                400,
                "bad_request",
                "Bad request",
                f"send one Authorization header, not {authorizations} (RFC 9110, section 5.3)",
                [],
            )
            return
        if self._loopback_hosts_only and hosts and not _loopback_host(hosts[0]):
            await _problem(
                send_with_headers,
                403,
                "host_not_allowed",
                "Host not allowed",
                "with no API keys this server answers only requests for a loopback name or "
                "address (localhost, 127.0.0.1, [::1]); configure TASKPLATFORM_API_KEYS to "
                "serve others",
                [],
            )
            return
        changes_state = scope["method"] not in _SAFE_METHODS or path in STATEFUL_GETS
        if not dashboard and changes_state and _cross_site(scope):
            await _problem(
                send_with_headers,
                403,
                "cross_origin_request",
                "Cross-origin request",
                "a browser sent this request from another site; the API takes no such requests",
                [],
            )
            return
        identity: str | None = None
        if self._needs_key(path):
            key = self._identify(scope, dashboard=dashboard)
            if key is None and dashboard:
                await _to_login(send_with_headers, scope)
                return
            if key is None:
                await _problem(
                    send_with_headers,
                    401,
                    "unauthorized",
                    "Unauthorized",
                    "send a valid API key: Authorization: Bearer <key>",
                    [(b"www-authenticate", b'Bearer realm="taskplatform"')],
                )
                return
            identity = f"key:{key}"
        # Per key: without keys every client may share one address (a proxy), so none is limited.
        if self.limiter is not None and identity is not None:
            wait = self.limiter.take(identity, time.monotonic())
            if wait > 0:
                await _problem(
                    send_with_headers,
                    429,
                    "rate_limited",
                    "Too many requests",
                    f"over {self.limiter.rate:g} requests per second; retry after the pause",
                    [(b"retry-after", str(math.ceil(wait)).encode())],
                )
                return
        await self.app(scope, receive, send_with_headers)


def needs_key(path: str, *, metrics_public: bool, docs_public: bool) -> bool:
    """Return whether a request for ``path`` needs an API key on a server that has keys.

    Args:
        path: The request's path.
        metrics_public: ``TASKPLATFORM_METRICS_PUBLIC``: ``/metrics`` is served without a key.
        docs_public: ``TASKPLATFORM_DOCS_PUBLIC``: ``/docs`` and ``/openapi.json`` are too.

    A server without keys needs none anywhere. The probes and the dashboard's login form (and
    its script and style) never need one; everything else does. ``/openapi.json`` describes
    with it which operations need a key (``api.openapi``).
    """
    if path in _OPEN or path.startswith(_DASHBOARD_OPEN):
        return False
    if path == "/metrics" and metrics_public:
        return False
    return not (docs_public and path.startswith(_DOCS))


_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
STATEFUL_GETS: Final = frozenset(("/api/tasks/dequeue",))
"""Paths whose GET changes state, guarded as the unsafe methods are: the seed's dequeue is a
GET, and an ``<img>`` on any page could send it."""
_LOOPBACK_NAMES = frozenset((b"127.0.0.1", b"localhost", b"[::1]", b"::1"))


def _is_loopback_host(host: str) -> bool:
    """Whether the listening address ``host`` is loopback only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_host(value: bytes) -> bool:
    """Whether a ``Host`` header ``value`` names this machine's loopback (any port)."""
    host = value.lower()
    bracketed = host.startswith(b"[")  # [::1]:8000
    name = host[: host.find(b"]") + 1] if bracketed else host.partition(b":")[0]
    if name in _LOOPBACK_NAMES or name.endswith(b".localhost"):
        return True
    # Any loopback address (127.0.0.2, as serve --host 127.0.0.2 listens on), written as an
    # address: never a name, which DNS rebinding could point anywhere.
    try:
        return ipaddress.ip_address(name.strip(b"[]").decode("ascii")).is_loopback
    except (ValueError, UnicodeDecodeError):
        return False


def _cross_site(scope: Scope) -> bool:
    """Return whether a browser sent this request from a page of another origin.

    Without API keys, any web page open on a machine that can reach the API could otherwise
    dequeue, execute or cancel tasks with a plain HTML form (a "simple" request needs no CORS
    preflight). Browsers say where a request comes from (``Sec-Fetch-Site``, ``Origin``);
    programs send neither, so they are not affected. The API answers no CORS preflight, so no
    legitimate cross-origin browser call exists to break.
    """
    fetch_site: bytes | None = None
    origin: bytes | None = None
    host = b""
    for name, value in scope["headers"]:
        if name == b"sec-fetch-site":
            fetch_site = value
        elif name == b"origin":
            origin = value
        elif name == b"host":
            host = value
    if fetch_site is not None:  # every current browser sends it; it survives a proxy's Host
        return fetch_site in (b"cross-site", b"same-site")
    if origin is None:
        return False
    _, _, authority = origin.partition(b"://")
    return origin == b"null" or authority.lower() != host.lower()


def _match(digest: bytes, known: list[bytes]) -> int | None:
    """Return the index of ``digest`` in ``known``, comparing with every entry (constant time)."""
    match = None
    for index, candidate in enumerate(known):  # no early exit
        if hmac.compare_digest(digest, candidate):
            match = index
    return match


async def _to_login(send: Send, scope: Scope) -> None:
    """Answer a dashboard request without a valid session: 303 to the login form, which comes
    back to the page asked for (after a POST, to the overview)."""
    target: str = scope["path"]
    if scope["method"] not in ("GET", "HEAD"):
        # A form's action is no page to come back to (a GET of it is 405): go to the overview.
        target = "/dashboard"
    elif scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    location = "/dashboard/login?next=" + quote(target, safe="")
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode()),
                (b"content-length", b"0"),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _problem(
    send: Send, status: int, code: str, title: str, detail: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = (
        f'{{"type":"{problem_type(code)}","title":"{title}","status":{status},'
        f'"detail":"{detail}","code":"{code}"}}'
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
