"""Baseline: a bare ASGI handler, the ceiling for one request on the service's server settings.

Answers every request 201 with a body the size of a real create answer, after reading the whole
request body, as a real handler would. Served like the service (uvicorn, uvloop, httptools, one
process, no access log), so service / bare is what the framework, validation and storage cost.

    .venv/bin/python bench/baseline_asgi.py PORT
"""

from __future__ import annotations

import sys

from receiver import Receive, Scope, Send, lifespan, serve

BODY = b'{"taskId":"01a22c7b-b2c9-714d-9523-57f31044d03d","status":"Queued"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request, answer 201 with :data:`BODY`."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
