"""The callback sender: one POST of a task's data to its callbackUrl, under a hard deadline.

One long-lived aiohttp session with a bounded connection pool serves every callback of a process.
aiohttp was measured against httpx on this workload (see the README's design section): under
concurrency it sends several times more callbacks per second for the same CPU.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import datetime
import email.utils
import errno
import logging
import re
import time
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

import aiohttp
import msgspec
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong

from taskplatform.dispatch.policy import CallbackPolicy, CallbackRefused, PolicyResolver
from taskplatform.dispatch.signing import sign
from taskplatform.models import TaskRecord, now_ms

logger = logging.getLogger(__name__)

_USER_AGENT = "taskplatform-callback/0.1"
_READ_CHUNK = 64 * 1024
_MAX_HEADER_LINE = 64 * 1024  # bytes of a status or header line of an answer, as read


class _Send:
    """What aiohttp's tracing told of one send: whether its connection came from the pool."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reused(
    session: aiohttp.ClientSession, context: object, params: object
) -> None:  # aiohttp's signal signature
    context.trace_request_ctx.reused = True  # type: ignore[attr-defined]


class CallbackOutcome(msgspec.Struct, kw_only=True):
    """What one callback attempt came to.

    ``result`` is JSON text: the response body when it parses as JSON, else the body as a JSON
    string (an empty body is ``""``); None when no response was read. Times are epoch ms.
    ``retry_after_seconds`` is the response's ``Retry-After`` (RFC 9110 section 10.2.3, seconds
    or an HTTP date) when it had one; ``refused`` means the URL policy stopped the call.
    """

    success: bool
    http_status: int | None
    retry_after_seconds: float | None = None
    refused: bool = False
    result: bytes | None
    error: str | None
    started_at: int
    finished_at: int
    duration_ms: int


class CallbackSender:
    """Sends callbacks over one pooled aiohttp session.

    Args:
        max_connections: Most concurrent outbound connections (the pool size).
        max_response_bytes: Largest response body kept, in bytes; a larger one is not read past
            the limit nor kept, and fails the attempt unless its status is 2xx (a success
            whatever its body: the receiver did its work).
        policy: Which addresses callbacks may reach; checked on the literal host before sending
            and, through the session's resolver, on every address a name resolves to, so the
            connection only ever goes to an address the policy allows (no DNS rebinding).
        signing_secrets: Standard Webhooks secrets; each adds a ``v1,`` signature.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        max_response_bytes: int,
        policy: CallbackPolicy | None = None,
        signing_secrets: Sequence[bytes] = (),
    ) -> None:
        self._max_connections = max_connections
        self._connections = asyncio.Semaphore(max_connections)
        self._max_response_bytes = max_response_bytes
        self.policy = policy or CallbackPolicy()
        self._secrets = list(signing_secrets)
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None  # see _post
        self._resolver: PolicyResolver | None = None

    async def start(self) -> None:
        """Open the session; call once, from the event loop that will send the callbacks."""
        # No DNS cache in the connector: the policy must judge every resolution (a cached answer
        # would also be safe, but a changed one must be judged again). The resolver's c-ares
        # keeps an answer for its TTL, and the policy judges it again at each use.
        self._resolver = PolicyResolver(self.policy)
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            use_dns_cache=False,
            resolver=self._resolver,
        )
        reuse = aiohttp.TraceConfig()
        reuse.on_connection_reuseconn.append(_on_reused)
        self._session = self._new_session(connector, trace_configs=[reuse])
        # New connections only, each closed after its answer: for the one resend of _post.
        fresh = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            use_dns_cache=False,
            resolver=self._resolver,
            force_close=True,
        )
        self._fresh_session = self._new_session(fresh, trace_configs=[])

    @staticmethod
    def _new_session(
        connector: aiohttp.TCPConnector, trace_configs: list[aiohttp.TraceConfig]
    ) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            trace_configs=trace_configs,
            # Said, not left out: a request without Accept-Encoding allows any coding (RFC
            # 9110, 12.5.3), and a 200 in brotli or zstd, which aiohttp cannot decode here, was
            # recorded as a failure, and dispatched again.
            headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "gzip, deflate"},
            auto_decompress=True,
            # A receiver's valid answer may carry a header line past aiohttp's 8,190 bytes (a
            # long Link, Set-Cookie or Content-Security-Policy): its 200 was a failed attempt.
            max_line_size=_MAX_HEADER_LINE,
            max_field_size=_MAX_HEADER_LINE,
            trust_env=False,  # no proxy from the environment: the policy needs direct connections
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()
        self._session = self._fresh_session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def send(self, task: TaskRecord, attempt: int) -> CallbackOutcome:
        """POST ``task.task_data`` to ``task.callback_url`` as attempt number ``attempt``.

        The whole exchange (connect, send, response headers and body) must finish within
        ``task.timeout_seconds``; the deadline is total, not per read, so a server that drips one
        byte a second still times out. Redirects are not followed (API.md). Headers follow the
        Standard Webhooks names: ``webhook-id`` (the task id, stable across attempts, so receivers
        can deduplicate), ``webhook-timestamp`` (Unix seconds) and, with signing secrets,
        ``webhook-signature``; plus ``X-Task-Id`` and ``X-Task-Attempt``; credentials in the
        URL go as ``Authorization: Basic`` (:func:`_take_credentials`). A URL whose address
        the policy refuses gets no connection; the outcome's error names the policy.

        Returns:
            The outcome; failures (timeouts, refused connections, non-2xx) are outcomes, not
            exceptions.
        """
        if self._session is None:
            raise RuntimeError("CallbackSender.start() was not called")
        started = now_ms()
        clock = time.monotonic()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": task.task_id,
            "X-Task-Id": task.task_id,
            "X-Task-Attempt": str(attempt),
        }
        url = task.callback_url
        if "@" in url:  # perhaps credentials: rare, so the common URL is not parsed here
            url = _take_credentials(url, headers)
        status: int | None = None
        body: bytes | None = None
        retry_after: float | None = None
        error: str | None = None
        try:
            # aiohttp connects to a literal IP without asking the resolver: judge it here.
            if (refusal := self.policy.check_url(task.callback_url)) is not None:
                raise CallbackRefused(task.callback_url, refusal)
            status, body, error, retry_after = await self._exchange(task, url, headers)
            refused = False
        except CallbackRefused as exc:  # the literal address, or every address the name has
            error, refused = str(exc), True
        finished = now_ms()
        return CallbackOutcome(
            success=error is None,
            http_status=status,
            retry_after_seconds=retry_after,
            refused=refused,
            result=None if body is None else _as_json_text(body, self._max_response_bytes),
            error=None if error is None else _printable(error),
            started_at=started,
            finished_at=finished,
            duration_ms=round((time.monotonic() - clock) * 1000),
        )

    async def _exchange(
        self, task: TaskRecord, url: str, headers: dict[str, str]
    ) -> tuple[int | None, bytes | None, str | None, float | None]:
        """POST to ``url`` and read the answer: ``(status, body, error, retry after)``.

        Raises:
            CallbackRefused: the name resolves only to addresses the URL policy refuses. Any
                other failure is an error in the tuple.
        """
        assert self._session is not None
        status: int | None = None
        body: bytes | None = None
        error: str | None = None
        retry_after: float | None = None
        waiting = True
        try:
            async with asyncio.timeout(task.timeout_seconds):
                # The pool's own slots, counted here too: a callback that spends its timeout
                # waiting for one was never sent, and its error must say so.
                async with self._connections:
                    waiting = False
                    async with await self._post(task, url, headers) as response:
                        status = response.status
                        body, error = await self._read_body(response)
                        if error is not None and 200 <= status < 300:
                            # A 2xx is a success whatever its body: the receiver did its
                            # work, and another attempt would do it again. The body is not
                            # kept (result null), which the log says.
                            logger.warning(
                                "task %s: attempt %s answered %d with a body over the limit "
                                "of %d bytes (TASKPLATFORM_CALLBACK_RESPONSE_MAX_BYTES); "
                                "a success, its body not kept",
                                task.task_id,
                                headers["X-Task-Attempt"],
                                status,
                                self._max_response_bytes,
                                extra={"task_id": task.task_id},
                            )
                            error = None
                        if body is not None:
                            body = _as_utf8(body, response.charset, self._max_response_bytes)
                        if error is None and not 200 <= status < 300:
                            error = _describe_status(response)
                        if not 200 <= status < 300:
                            # A success has no next attempt, so its Retry-After means nothing.
                            retry_after = parse_retry_after(
                                response.headers.get("Retry-After"), now=now_ms() / 1000
                            )
        except TimeoutError:
            error = f"timeout after {task.timeout_seconds:g} s"
            if waiting:
                error += (
                    f" waiting for an outbound connection, not sent: all "
                    f"{self._max_connections} (TASKPLATFORM_CALLBACK_MAX_CONNECTIONS) were held "
                    "by other callbacks"
                )
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, CallbackRefused):
                raise exc.os_error from None
            error = _describe_connect_error(exc)
        except aiohttp.ServerDisconnectedError:
            # Its text is the repr of the half-parsed response when the headers were cut off.
            error = "callback failed: the receiver closed the connection before a whole answer"
        except aiohttp.ClientPayloadError as exc:
            if isinstance(exc.__cause__, ContentEncodingError):  # gzip or deflate that is not
                error = "callback failed: the answer's body could not be decompressed"
                error += f" ({exc.__cause__.message})"
            else:
                error = f"callback failed: the answer's body was cut short{_payload_detail(exc)}"
        except aiohttp.ClientResponseError as exc:
            parser_error = exc.__cause__
            # aiohttp's protocol wraps the parser's own exception in one of the base class.
            if LineTooLong in {type(parser_error), type(getattr(parser_error, "__cause__", None))}:
                error = (
                    f"callback failed: the answer has a header line over {_MAX_HEADER_LINE} "
                    "bytes, more than is read"
                )
            elif isinstance(exc.__cause__, HttpProcessingError):
                # aiohttp's parser gives its refusal a status of 400, which the receiver never
                # sent: say what it is.
                error = f"callback failed: the answer is not valid HTTP ({_parser_words(exc)})"
            else:
                error = f"callback failed: {type(exc).__name__}: {exc}"
        except aiohttp.ClientError as exc:
            error = f"callback failed: {type(exc).__name__}: {exc}"
        except Exception as exc:  # an outcome, whatever the URL or the peer did
            logger.warning("callback of task %s failed unexpectedly: %r", task.task_id, exc)
            error = f"callback failed: {type(exc).__name__}: {exc}"
        return status, body, error, retry_after

    async def _post(
        self, task: TaskRecord, url: str, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send the request and return the response, its headers read.

        A kept-alive connection the receiver closed while it sat in the pool (its idle
        timeout, 2 s in gunicorn and 5 s in uvicorn and Node, against aiohttp's 15 s; or a
        receiver that closes after each answer) fails the send before any byte of an answer:
        aiohttp reports the write failed or the server disconnected. Such a send, and only one
        whose connection came from the pool, is made once more, at once, on a new connection (never
        a pooled one, which may be as stale), within the attempt's timeout: a ``maxRetries:
        0`` task was made a dead letter by a request the receiver never saw (found in review:
        21 of 150 such callbacks). A reset says nothing of what came, so one after part of an
        answer is resent too. A receiver that read the request and closed without a whole
        answer so sees it twice in one attempt at most, with the same ``webhook-id``: RFC
        9110 (section 9.2.2) lets a client retry a POST that has a means to tell a repeat, as
        Go's client retries one that carries an idempotency key.

        Raises:
            aiohttp.ClientError: as ``ClientSession.post``.
        """
        assert self._session is not None
        assert self._fresh_session is not None
        # Stamped and signed once a connection slot is ours, not before the wait for one (up to
        # the task's timeout): receivers refuse an old timestamp as a replay (Standard Webhooks
        # allows 5 minutes), and such a 4xx is final.
        self._stamp(task, headers)
        sent = _Send()
        try:
            return await self._session.post(
                url,
                data=task.task_data,
                headers=headers,
                allow_redirects=False,
                trace_request_ctx=sent,
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # A disconnect after some of an answer carries its parsed part: the receiver took
            # the request and began to answer, so it is not sent again. A reset (ClientOSError)
            # carries nothing of what came: one after part of an answer, rare, is resent too.
            began = isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(
                exc.message, str
            )
            if not sent.reused or began:
                raise
        logger.debug(
            "task %s: a kept-alive connection was closed by the receiver; sending on a new one",
            task.task_id,
            extra={"task_id": task.task_id},
        )
        self._stamp(task, headers)
        return await self._fresh_session.post(
            url, data=task.task_data, headers=headers, allow_redirects=False
        )

    def _stamp(self, task: TaskRecord, headers: dict[str, str]) -> None:
        """Put ``webhook-timestamp`` (Unix seconds, now by the database's clock: ``now_ms``,
        as every time this process writes) and, with signing secrets, ``webhook-signature``
        over it into ``headers``."""
        timestamp = now_ms() // 1000
        headers["webhook-timestamp"] = str(timestamp)
        if self._secrets:
            headers["webhook-signature"] = sign(
                self._secrets, task.task_id, timestamp, task.task_data
            )

    async def _read_body(self, response: aiohttp.ClientResponse) -> tuple[bytes | None, str | None]:
        limit = self._max_response_bytes
        too_large = f"response body over the limit of {limit} bytes; not kept"
        if response.content_length is not None and response.content_length > limit:
            response.close()  # drop the connection rather than drain a huge body
            return None, too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                response.close()
                return None, too_large
            chunks.append(chunk)
        return b"".join(chunks), None


def _take_credentials(url: str, headers: dict[str, str]) -> str:
    """Return ``url`` without its userinfo, which goes into ``headers`` as ``Authorization:
    Basic`` (RFC 7617): the very bytes the URL spells, percent-decoded, and any other character
    in UTF-8, as curl sends them. (aiohttp would encode them in Latin-1, and fail on a
    character outside it.) A URL without userinfo comes back as it is."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, _, password = userinfo.partition(":")
    credentials = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
    headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    return urlunsplit(parts._replace(netloc=host))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Return a ``Retry-After`` header value in seconds from now, or None if absent or invalid.

    RFC 9110 section 10.2.3 allows delay-seconds (ASCII digits only: ``str.isdigit`` also takes
    ``²`` and other digits that ``float`` refuses) or an HTTP date, in any of its three forms
    (section 5.6.7: IMF-fixdate, rfc850-date, asctime-date), always in UTC; a date in the past
    is 0.
    ``now`` is Unix seconds (default: the current time). Never raises: the header is the
    receiver's to get wrong, and a wrong one is ignored.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # asctime-date names no zone, and "-0000" says none is known
            when = when.replace(tzinfo=datetime.UTC)
        current = time.time() if now is None else now
        if _RFC850_DATE.match(value):
            when = _rfc850_century(when, current)
        return max(0.0, when.timestamp() - current)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


_RFC850_DATE = re.compile(r"[A-Za-z]+, \d{2}-[A-Za-z]{3}-\d{2} ")


def _rfc850_century(when: datetime.datetime, now: float) -> datetime.datetime:
    """``when``, read from an rfc850-date's two-digit year, in the century RFC 9110 section
    5.6.7 gives it: the latest date with those digits that is not more than 50 years ahead of
    ``now`` (Unix seconds), judged by the date, not the year alone. ``email.utils`` reads 69-99
    as 19xx whatever the date."""
    this_year = datetime.datetime.fromtimestamp(now, datetime.UTC).year
    year = this_year - this_year % 100 + when.year % 100
    for candidate in (year + 100, year, year - 100):
        try:
            dated = when.replace(year=candidate)
        except ValueError:  # 29 February in a year that has none
            continue
        if dated.timestamp() - now <= _FIFTY_YEARS_SECONDS:
            return dated
    return when


_FIFTY_YEARS_SECONDS = 50 * 365.2425 * 86400


def _payload_detail(exc: aiohttp.ClientPayloadError) -> str:
    """The parser's own words inside aiohttp's message, such as "(received 1 of 10 bytes)"."""
    found = re.search(r"message='(.*?)'", str(exc))
    return f": {found[1]}" if found else ""


def _parser_words(exc: aiohttp.ClientResponseError) -> str:
    """aiohttp's parser message on one line, without the lines that point at a column, at most
    300 characters: "Bad status line: Invalid response status: b'HTTP/1.1 2000 OK'"."""
    lines = [line.strip() for line in exc.message.splitlines()]
    words = " ".join(line for line in lines if line.strip("^~ "))
    return words[:297] + "..." if len(words) > 300 else words


def _describe_status(response: aiohttp.ClientResponse) -> str:
    if 300 <= response.status < 400:
        location = response.headers.get("Location", "")
        where = f" to {location[:200]}" if location else ""
        return f"HTTP {response.status}: redirect{where} not followed"
    reason = f" {response.reason}" if response.reason else ""
    return f"HTTP {response.status}{reason}"


def _describe_connect_error(exc: aiohttp.ClientConnectorError) -> str:
    host = f"[{exc.host}]" if ":" in exc.host else exc.host  # an IPv6 address, as a URL has it
    where = f"{host}:{exc.port}"
    if exc.os_error.errno == errno.ECONNREFUSED or isinstance(exc.os_error, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {exc.host!r}"
    return f"cannot connect to {where}: {exc.os_error.strerror or exc.os_error}"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Return ``text`` as valid Unicode without control characters, at most 1,000 characters.

    aiohttp decodes a peer's reason phrase and headers with ``surrogateescape``; such lone
    surrogates cannot be stored or sent as UTF-8, PostgreSQL's text type cannot hold NUL, and
    ESC, BEL and the C1 controls would drive the terminal of whoever reads the error (colours,
    hidden links): all become U+FFFD, but a line break or tab (an exception's own text) a space.
    """
    clean = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    clean = _CONTROL.sub(lambda found: " " if found[0] in "\t\n\r" else "\ufffd", clean)
    return clean if len(clean) <= 1000 else clean[:999] + "…"


def _as_utf8(body: bytes, charset: str | None, limit: int) -> bytes:
    """Return ``body`` in UTF-8, decoded by the ``charset`` its ``Content-Type`` declares
    (RFC 9110 8.3.2): ``text/plain; charset=latin-1`` "café" was kept as "caf\ufffd". A body
    with no charset, or one Python cannot decode by it (an unknown name, a codec that is not
    a text encoding such as base64, one that fails as a whole such as idna), is taken as
    UTF-8, and bytes invalid in its charset become U+FFFD. So is one that would grow past
    ``limit`` bytes in UTF-8 (up to three bytes a character): the limit holds for the kept
    result too."""
    if charset is None:
        return body
    try:
        if codecs.lookup(charset).name == "utf-8":
            return body
        text = body.decode(charset, errors="replace").encode("utf-8")
    except (LookupError, UnicodeError):
        return body
    return text if len(text) <= limit else body


def _as_json_text(body: bytes, limit: int) -> bytes:
    """Return ``body`` itself when it is JSON, else ``body`` decoded as text in a JSON string.

    ``limit`` is the largest body kept (bytes). Escaping can make the string up to six times
    the body (each control byte is ``\\u0001``), and a kept result is stored and sent with its
    task: a string longer than twice ``limit`` (and its quotes) is cut, and ends in "…". Text,
    even all quotes and backslashes, is kept whole.
    """
    stripped = body.strip()
    if stripped:
        try:
            msgspec.json.decode(stripped)
        except (msgspec.DecodeError, RecursionError):
            pass
        else:
            return stripped
    text = body.decode("utf-8", errors="replace")
    encoded = msgspec.json.encode(text)
    cap = 2 * limit + 2
    if len(encoded) <= cap:
        return encoded
    # A prefix of the text in proportion, then shorter by what it is over, until it fits with
    # "…" (3 bytes): every character takes a byte at least, so one or two encodings suffice.
    keep = max(0, len(text) * (cap - 5) // len(encoded))
    while keep > 0 and (size := len(msgspec.json.encode(text[:keep])) + 3) > cap:
        keep = max(0, keep - (size - cap))
    return msgspec.json.encode(text[:keep] + "…")
