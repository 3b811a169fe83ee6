"""The HTTP/1.1 protocol that ``serve`` runs: uvicorn's httptools one, with a problem document
for a request that is not HTTP, and no WebSocket.

Such a request (a malformed request line or header line, a Content-Length that is not a number
or is sent twice, broken chunked encoding) never reaches the ASGI app: the parser refuses it, and
uvicorn writes a ``text/plain`` 400 ("Invalid HTTP request received.") and closes the
connection. Every other error a client can cause is ``application/problem+json`` with a stable
``code`` (RFC 9457; README, "Errors"), so a client that reads the problem document of every 4xx
would choke on this one. Only the body and its headers change: it is still a 400 that closes
the connection, and uvicorn still logs its warning.
"""

from __future__ import annotations

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from taskplatform.api.problems import PROBLEM_MEDIA_TYPE, problem_type
from taskplatform.api.security import API_HEADERS
from taskplatform.models import Problem

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

_BODY = msgspec.json.encode(NOT_HTTP)
_HEAD = b"".join(
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        *(name + b": " + value + b"\r\n" for name, value in API_HEADERS),
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
        b"connection: close\r\n",
    ]
)


class ProblemHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's :class:`HttpToolsProtocol` answering a request it cannot parse with
    :data:`NOT_HTTP` (``application/problem+json``) instead of plain text.

    Given to uvicorn as ``http="taskplatform.api.protocol:ProblemHttpToolsProtocol"``, so that
    every worker of ``serve --workers N`` imports it.
    """

    def send_400_response(self, msg: str) -> None:
        """Write the 400 and close the connection, as uvicorn does (``msg`` is uvicorn's plain
        text, which :data:`NOT_HTTP` replaces)."""
        content = [_HEAD]
        for name, value in self.server_state.default_headers:  # date, server, as uvicorn sends
            content += [name, b": ", value, b"\r\n"]
        content += [b"\r\n", _BODY]
        self.transport.write(b"".join(content))
        self.transport.close()

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
        super().on_headers_complete()

    def _unsupported_upgrade_warning(self) -> None:
        """Say nothing of an ``Upgrade`` request (``serve`` runs uvicorn with ``ws="none"``).

        The API has no WebSocket route and speaks no h2c, so it ignores the header, as RFC 9110
        (section 7.8) lets a server, and answers the plain HTTP request that came with it: a
        problem document for any error. uvicorn would log two warnings for each such request,
        one telling to install a WebSocket library, which is not the fix here.
        """
