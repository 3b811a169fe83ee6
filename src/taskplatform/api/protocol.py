"""The HTTP/1.1 protocol that ``serve`` runs: uvicorn's httptools one, with a problem document
for a request that is not HTTP, and no WebSocket.

Such a request (a malformed request line or header line, a Content-Length that is not a number
or is sent twice, broken chunked encoding) never reaches the ASGI app: the parser refuses it, and
uvicorn writes a ``text/plain`` 400 ("Invalid HTTP request received.") and closes the
connection. Every other error a client can cause is ``application/problem+json`` with a stable
``code`` (RFC 9457; README, "Errors"), so a client that reads the problem document of every 4xx
would choke on this one. Only the body and its headers change: it is still a 400 that closes
the connection, and uvicorn still logs its warning.

It also bounds what one connection can hold before a request reaches the app, which uvicorn's
httptools protocol does not: the request line and headers together are at most
``TASKPLATFORM_MAX_HEADER_BYTES`` (a 431 problem above; unbounded, one connection's endless
header grew the server's memory until it died), and they must arrive within
``TASKPLATFORM_HEADER_TIMEOUT_SECONDS`` of the connection's start or of the request's first
byte (a 408 problem past it; a connection that sent nothing is closed without one). A client
that opened a connection and then went silent, or trickles a byte now and then, held its socket
for ever. A request's body may pause for at most ``TASKPLATFORM_BODY_TIMEOUT_SECONDS`` between
two reads (the same 408): one that stopped halfway held its connection and its request for ever
too. A pause that is the server's (it has not read what came, or owes ``100 Continue``) does
not count.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from taskplatform.api.problems import PROBLEM_MEDIA_TYPE, problem_type
from taskplatform.api.security import API_HEADERS
from taskplatform.models import Problem
from taskplatform.settings import Settings

NOT_HTTP = Problem(
    type=problem_type("bad_request"),
    title="Bad request",
    status=400,
    detail=(
        "the request is not valid HTTP/1.1 (RFC 9112): its request line, a header line, its "
        "Content-Length or its chunked body cannot be parsed; the connection is closed"
    ),
    code="bad_request",
)
"""The answer to a request that is not HTTP."""

HEADERS_TOO_LARGE = Problem(
    type=problem_type("header_fields_too_large"),
    title="Request header fields too large",
    status=431,
    detail=(
        "the request line and headers are over the limit of this server "
        "(TASKPLATFORM_MAX_HEADER_BYTES); the connection is closed"
    ),
    code="header_fields_too_large",
)
"""The answer to a request whose line and headers are too long (RFC 6585, section 5)."""

HEADERS_TIMEOUT = Problem(
    type=problem_type("request_timeout"),
    title="Request timeout",
    status=408,
    detail=(
        "the request did not arrive in time: its line and headers within "
        "TASKPLATFORM_HEADER_TIMEOUT_SECONDS, and its body without a pause longer than "
        "TASKPLATFORM_BODY_TIMEOUT_SECONDS; the connection is closed"
    ),
    code="request_timeout",
)
"""The answer to a request whose line and headers, or body, came too slowly (RFC 9110, section
15.5.9)."""

_BODY_TIMEOUT = "body_timeout"
"""The key in :data:`_ANSWERS` and :data:`_ANSWER_LOGS` of a body that stalled: its answer is
:data:`HEADERS_TIMEOUT`'s (one code, ``request_timeout``), its log line its own."""


def _answer(problem: Problem) -> tuple[bytes, bytes]:
    """Return the head (without the server's default headers and the blank line) and the body
    of the answer that closes a connection with ``problem``."""
    body = msgspec.json.encode(problem)
    head = b"".join(
        [
            b"HTTP/1.1 %d %s\r\n"
            % (problem.status, http.HTTPStatus(problem.status).phrase.encode()),
            *(name + b": " + value + b"\r\n" for name, value in API_HEADERS),
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n",
        ]
    )
    return head, body


_ANSWERS = {
    problem.code: _answer(problem) for problem in (NOT_HTTP, HEADERS_TOO_LARGE, HEADERS_TIMEOUT)
}
_ANSWERS[_BODY_TIMEOUT] = _ANSWERS[HEADERS_TIMEOUT.code]


_ANSWER_LOGS = {
    HEADERS_TOO_LARGE.code: "request line and headers over TASKPLATFORM_MAX_HEADER_BYTES; closed",
    HEADERS_TIMEOUT.code: "request line and headers not sent within "
    "TASKPLATFORM_HEADER_TIMEOUT_SECONDS; closed",
    _BODY_TIMEOUT: "request body paused for longer than TASKPLATFORM_BODY_TIMEOUT_SECONDS; closed",
}


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop the parser: the head is over the limit."""


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's :class:`HttpToolsProtocol` answering a request it cannot parse with
    :data:`NOT_HTTP` (``application/problem+json``) instead of plain text, and bounding the size
    (:data:`HEADERS_TOO_LARGE`) and the time (:data:`HEADERS_TIMEOUT`) of a request's head.

    Given to uvicorn as ``http="taskplatform.api.protocol:ProblemHttpToolsProtocol"``, so that
    every worker of ``serve --workers N`` imports it; :func:`configure` sets its limits from the
    settings in each of them.
    """

    max_header_bytes: ClassVar[int] = Settings.model_fields["max_header_bytes"].default
    """Largest request line plus headers, in bytes (:func:`configure`)."""
    header_timeout_seconds: ClassVar[float] = Settings.model_fields[
        "header_timeout_seconds"
    ].default
    """Longest wait for a request's line and headers, in seconds (:func:`configure`)."""
    body_timeout_seconds: ClassVar[float] = Settings.model_fields["body_timeout_seconds"].default
    """Longest pause between two reads of a request's body, in seconds (:func:`configure`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal = NOT_HTTP.code  # what send_400_response answers
        self._head_bytes = 0  # of the head being read: its target and complete headers
        self._head_reads = 0  # bytes of the reads that held nothing but the head being read
        self._messages_begun = 0
        self._reading_head = True  # from the connection's start to the first head's end
        self._head_started = 0.0  # loop time of the connection's start or the head's first byte
        self._timer: asyncio.TimerHandle | None = None
        self._between_messages = False  # a message ended and no other has begun
        self._read_at = 0.0  # loop time of the last read, or of a pause of the server's

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the connection, and its wait for a first request's head."""
        super().connection_made(transport)
        self._head_started = self.loop.time()
        self._timer = self.loop.call_later(self.header_timeout_seconds, self._check_deadlines)

    def connection_lost(self, exc: Exception | None) -> None:
        """End the connection, and any wait for a head."""
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed ``data`` to the parser, as uvicorn does, and refuse a head over the limit.

        The parser hands a header to :meth:`on_header` only once the header is complete, so
        a header that never ends is measured here: the reads that began and left the same head
        unfinished hold nothing else, and their sizes add up. The read in which a head begins
        may end the message before it, and is left out, so the server holds at most the limit
        and one read (256 KiB) of a head, and never refuses a head within the limit.
        """
        self._unset_keepalive_if_required()
        self._read_at = self.loop.time()
        reading, begun = self._reading_head, self._messages_begun
        between = self._between_messages
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal == NOT_HTTP.code:
                self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():  # pragma: no cover - no WebSocket: ws="none"
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if between and not self._reading_head and begun == self._messages_begun:
            # Bytes after a message and before the next (line breaks): the wait for a head
            # starts, as uvicorn's keep-alive timer was just cancelled.
            self._reading_head = True
            self._head_started = self.loop.time()
        if reading and self._reading_head and begun == self._messages_begun:
            self._head_reads += len(data)
            if self._head_reads > self.max_header_bytes:
                self._refuse(HEADERS_TOO_LARGE.code)
        elif not self._reading_head and self.cycle is not None and self.cycle.more_body:
            # A body goes on past this read: the timer must come by its deadline. Once per
            # request at most (then the timer comes earlier than any later read's deadline,
            # and sets itself again), and never for a body that came with its head.
            due = self._read_at + self.body_timeout_seconds
            if self._timer is None or self._timer.when() > due:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_at(due, self._check_deadlines)

    def send_400_response(self, msg: str) -> None:
        """Write the answer that closes the connection (:data:`NOT_HTTP` unless a limit was
        crossed) and close it, as uvicorn does (``msg`` is uvicorn's plain text, unused)."""
        head, body = _ANSWERS[self._refusal]
        content = [head]
        for name, value in self.server_state.default_headers:  # date, server, as uvicorn sends
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", body]
        self.transport.write(b"".join(content))
        self.transport.close()

    def _refuse(self, code: str) -> None:
        """Answer the problem of ``code`` and close the connection."""
        self._choose_refusal(code)
        self.send_400_response("")

    def _choose_refusal(self, code: str) -> None:
        """Log that the connection is refused for ``code``, and make it what
        :meth:`send_400_response` answers."""
        self.logger.warning("%s: %s", self._client_text(), _ANSWER_LOGS[code])
        self._refusal = code

    def _client_text(self) -> str:
        if self.client is None:
            return "a client"
        host, port = self.client
        return f"{host}:{port}"

    def _check_deadlines(self) -> None:
        """Refuse the head being read if it is overdue, or a body that paused too long; else
        look again when either would be.

        One timer per connection, not one per request (arming and cancelling a timer for each
        request of a keep-alive connection cost some microseconds of every request).
        """
        self._timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        wait = self.header_timeout_seconds
        cycle = self.cycle
        if not self._reading_head and cycle is not None and cycle.more_body:
            # A body is being read. Only the client's pause counts: not while the server has
            # stopped reading (its buffer is full until the app reads), nor while the client
            # waits for the "100 Continue" the app sends when it first reads, nor while an
            # earlier request of the connection is being answered (this one is pipelined
            # behind it: a 408 would stand as that request's answer, and cut it off).
            if self.pipeline or self.flow.read_paused or cycle.waiting_for_100_continue:
                self._read_at = now
            elif not cycle.response_started:
                wait = self._read_at + self.body_timeout_seconds - now
                if wait <= 0:
                    self._refuse(_BODY_TIMEOUT)
                    # The app waits for the rest of the body: it reads a disconnect now, as
                    # the connection's end would tell it a moment later.
                    cycle.disconnected = True
                    cycle.message_event.set()
                    return
            elif cycle.response_complete:
                # Answered before its body ended (a 413 on Content-Length): what more comes is
                # read and dropped, and uvicorn never ends the message, so neither the
                # keep-alive timer nor the head's ran again, and a client that paused, or
                # went idle after the body, held the connection for ever (found in review).
                wait = self._read_at + self.body_timeout_seconds - now
                if wait <= 0:
                    self.transport.close()
                    return
        if self._reading_head:
            wait = self._head_started + self.header_timeout_seconds - now
        if wait <= 0 and (
            self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        ):
            # An earlier request of this connection is being answered, and reading waits for
            # it: the head's delay is the server's, and its answer must not be cut off.
            wait = self.header_timeout_seconds
        if wait > 0:
            self._timer = self.loop.call_later(wait, self._check_deadlines)
        elif self._messages_begun == 0 or self._between_messages:
            # Nothing but line breaks since the connection opened or its last request ended:
            # an idle connection, not a request.
            self.transport.close()
        else:
            self._refuse(HEADERS_TIMEOUT.code)

    def on_message_begin(self) -> None:
        """Start a request: its head is counted and timed from here."""
        super().on_message_begin()
        self._messages_begun += 1
        self._between_messages = False
        self._reading_head = True
        self._head_bytes = self._head_reads = 0
        self._head_started = self.loop.time()

    def on_message_complete(self) -> None:
        """End a request's message; bytes before the next one are timed as its head."""
        super().on_message_complete()
        self._between_messages = True

    def on_url(self, url: bytes) -> None:
        """Take a piece of the request target, within the head's limit."""
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        """Take a header line, within the head's limit (its name, value, ": " and CRLF)."""
        super().on_header(name, value)
        if self._reading_head:  # not a chunked body's trailer fields
            self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._choose_refusal(HEADERS_TOO_LARGE.code)
            raise _HeadersTooLarge  # the parser stops; data_received answers

    def on_headers_complete(self) -> None:
        """Take the host of an absolute-form request target (``GET http://host/path``) as the
        request's Host, as RFC 9112 (section 3.2.2) has an origin server do, before uvicorn
        builds the scope, which keeps only the target's path: the loopback Host check would
        otherwise read a Host header that the target overrides."""
        if self.url[:1] not in (b"/", b"*"):
            try:
                target = httptools.parse_url(self.url)
            except httptools.HttpParserInvalidURLError:
                pass  # uvicorn refuses it, as before
            else:
                host = target.host or b""
                if b":" in host:  # an IPv6 address
                    host = b"[" + host + b"]"
                if target.port is not None:
                    host += b":%d" % target.port
                self.headers[:] = [(name, value) for name, value in self.headers if name != b"host"]
                self.headers.append((b"host", host))
        self._reading_head = False
        super().on_headers_complete()

    def _unsupported_upgrade_warning(self) -> None:
        """Say nothing of an ``Upgrade`` request (``serve`` runs uvicorn with ``ws="none"``).

        The API has no WebSocket route and speaks no h2c, so it ignores the header, as RFC 9110
        (section 7.8) lets a server, and answers the plain HTTP request that came with it: a
        problem document for any error. uvicorn would log two warnings for each such request,
        one telling to install a WebSocket library, which is not the fix here.
        """


def configure(settings: Settings) -> None:
    """Set :class:`ProblemHttpToolsProtocol`'s limits from ``settings`` (``max_header_bytes``,
    ``header_timeout_seconds``, ``body_timeout_seconds``) for the connections this process
    accepts from now on; the app factory of ``serve`` calls it in each API process."""
    ProblemHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    ProblemHttpToolsProtocol.header_timeout_seconds = settings.header_timeout_seconds
    ProblemHttpToolsProtocol.body_timeout_seconds = settings.body_timeout_seconds
