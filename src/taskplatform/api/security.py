"""The outer layer of every request: API keys, the per-key rate limit and security headers.

A plain ASGI middleware rather than FastAPI dependencies, so one check covers every route
(present and future) and costs a dictionary lookup on the hot path.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from taskplatform.api.problems import PROBLEM_MEDIA_TYPE, problem_type
from taskplatform.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN = ("/healthz", "/readyz")
_DOCS = ("/docs", "/openapi.json", "/redoc")
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# JSON needs no resources at all; Swagger UI (/docs) loads its script and style from a CDN.
_CSP_API = b"default-src 'none'; frame-ancestors 'none'"
_CSP_DOCS = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' https://cdn.jsdelivr.net; "
    b"img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; frame-ancestors 'none'"
)


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
        rate = settings.rate_limit_per_second
        if limiter is None and rate > 0:
            limiter = TokenBucket(rate, settings.rate_limit_burst)
        self.limiter = limiter

    def _needs_key(self, path: str) -> bool:
        if not self._digests or path in _OPEN:
            return False
        return not (self._docs_public and path.startswith(_DOCS))

    def _identify(self, scope: Scope) -> int | None:
        """Return the index of the presented API key, or None if none matches."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer" or not token:
                    return None
                digest = hashlib.sha256(token.strip()).digest()
                match = None
                for index, known in enumerate(self._digests):  # no early exit: constant time
                    if hmac.compare_digest(digest, known):
                        match = index
                return match
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        csp = _CSP_DOCS if path.startswith(_DOCS) else _CSP_API

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [*_HEADERS, (b"content-security-policy", csp)]
                message["headers"] = headers
            await send(message)

        identity: str | None = None
        if self._needs_key(path):
            key = self._identify(scope)
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
