"""The load generator's HTTP client: keep-alive HTTP/1.1 on asyncio, parsed by httptools.

Why not aiohttp, as the service's callbacks use: the generator shares the machine's two cores with
the server it measures, so its own CPU per request decides how fast anything can look. Creates
over 32 closed-loop clients, 15,000 each way, alternating (2026-12-02, slow machine): aiohttp
cost this process 87-99 µs a request against the bare ASGI handler and 139-147 µs against the
service; this client 19-21 and 43-44 µs. The bare handler then answered 26,107-28,614
requests/s instead of 9,915-11,327: aiohttp had been the ceiling, not uvicorn. In the open loop
at 3,000 creates/s it cost 70-80 µs a request against 191-209. No load generator that is lighter
still (wrk, oha) installs from the package registries; httptools is the C parser uvicorn uses.

One request in flight per connection (no pipelining), as a client of the API would send it.
Answers must carry a Content-Length or be chunked, as the service's and the baselines' do: no
HEAD, no 1xx, no body that ends with the connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

#: uvicorn closes a connection idle for 5 s (``timeout_keep_alive``); a request written into one
#: it is closing would fail, so a connection idle this long is dropped before reuse, seconds.
IDLE_SECONDS = 2.0


class ResponseError(RuntimeError):
    """The answer was not one of the statuses expected, or never came whole."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.reusable = True
        self.last_used = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseError(f"unparsable answer: {exc}"))

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ResponseError(f"the server closed the connection: {exc or 'EOF'}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        body, self.chunks = b"".join(self.chunks), []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def usable(self, now: float) -> bool:
        return not self.closed and self.reusable and now - self.last_used < IDLE_SECONDS

    async def exchange(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self.waiter = waiter
        # One timer handle rather than asyncio.timeout(): this runs for every request.
        timer = loop.call_later(
            timeout, self._fail, ResponseError(f"no whole answer in {timeout:g} s")
        )
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.last_used = time.monotonic()


class Client:
    """Keep-alive connections to one server, opened as concurrent requests need them.

    Args:
        base_url: ``http://host:port`` of the server.
        timeout: Most seconds a request may take, from its write to its whole answer.
    """

    def __init__(self, base_url: str, timeout: float = 300.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://host:port, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._host_header = parts.netloc.encode()
        self.timeout = timeout
        self._idle: list[_Connection] = []

    async def request(
        self, method: str, path: str, body: bytes | None = None, *expected: int
    ) -> bytes:
        """Send one request and return the answer's body.

        Args:
            method: ``GET``, ``POST``...
            path: The target, ``/api/tasks``.
            body: A JSON body (sent with ``Content-Type: application/json``), or None.
            expected: The statuses that count as success; any other raises.

        Raises:
            ResponseError: another status; the connection closed, or the answer was not whole
                within :attr:`timeout`.
            OSError: no connection could be made.
        """
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (
            method.encode(),
            path.encode(),
            self._host_header,
        )
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        raw = head + b"\r\n" + (body or b"")
        conn = await self._take()
        answered = False
        try:
            status, answer = await conn.exchange(raw, self.timeout)
            answered = True
        finally:
            # A request cancelled before its answer leaves that answer owed on the connection:
            # the next request there would read it as its own.
            if answered and conn.usable(time.monotonic()):
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()
        if expected and status not in expected:
            raise ResponseError(f"{method} {path}: {status} {answer[:300]!r}")
        return answer

    async def _take(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable(now):
                return conn
            if conn.transport is not None:
                conn.transport.close()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        return conn

    def close(self) -> None:
        """Close every idle connection."""
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
