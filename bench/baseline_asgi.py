"""Baseline: a bare ASGI handler, the ceiling for one request on the service's server settings.

Answers every request 201 with a body the size of a real create answer, after reading the whole
request body, as a real handler would. Served like the service (uvicorn, uvloop, httptools, one
process, no access log), so service / bare is what the framework, validation and storage cost.

    .venv/bin/python bench/baseline_asgi.py PORT
"""

from __future__ import annotations

import sys

from receiver import Receive, Scope, Send, answer, lifespan, read_body, serve

BODY = b'{"taskId":"01a22c7b-b2c9-714d-9523-57f31044d03d","status":"Queued"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request, answer 201 with :data:`BODY`."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await read_body(receive)
    await answer(send, 201, BODY)


if __name__ == "__main__":
    serve(app, int(sys.argv[1]))
