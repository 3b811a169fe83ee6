"""The benchmarks' callback receiver: a bare ASGI app that counts callbacks and timestamps them.

``POST`` anything: answers 200 ``{"ok":true}``, counts the request and, when it carries an
``X-Task-Id`` header, keeps ``time.monotonic()`` of its arrival under that id (CLOCK_MONOTONIC is
one clock for every process of the machine, so a load generator can subtract its own readings).
``GET /count`` answers ``{"count": n}``; ``GET /arrivals`` answers ``{taskId: seconds}`` and
forgets them. Served like the service: uvicorn, uvloop, httptools, one process, no access log.

    .venv/bin/python bench/receiver.py PORT
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_OK = b'{"ok":true}'
_HEADERS = [(b"content-type", b"application/json")]
_count = 0
_arrivals: dict[str, float] = {}


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol (nothing to start or stop)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> None:
    """Read (and drop) the whole request body, as a real handler would."""
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)


async def answer(send: Send, status: int, body: bytes) -> None:
    """Send a JSON response of ``status`` with ``body``."""
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The receiver (see the module docstring)."""
    global _count
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await read_body(receive)
    body = _OK
    if scope["method"] == "GET":
        if scope["path"] == "/arrivals":
            body = json.dumps(_arrivals).encode()
            _arrivals.clear()
        else:
            body = b'{"count":%d}' % _count
    else:
        now = time.monotonic()
        _count += 1
        for name, value in scope["headers"]:
            if name == b"x-task-id":
                _arrivals[value.decode()] = now
                break
    await answer(send, 200, body)


def serve(asgi_app: Callable[..., Awaitable[None]], port: int) -> None:
    """Serve ``asgi_app`` on 127.0.0.1:``port`` as ``taskplatform serve`` serves the API."""
    import uvicorn

    uvicorn.run(
        asgi_app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
