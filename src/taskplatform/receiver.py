"""A small callback receiver for trying the platform out: logs each callback and answers 200."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

logger = logging.getLogger("taskplatform.receiver")

# C0 and C1 controls and DEL: a path (percent-decoded: %1B is ESC) or a body holding one would
# drive the terminal the log goes to.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """``text`` with each control character written as a ``\\xNN`` escape."""
    return _CONTROLS.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


def create_receiver_app() -> FastAPI:
    """Build the receiver: ``POST`` to any path logs the task id, attempt and body, answers 200.

    The JSON answer (``{"received": true, "taskId", "attempt", "bytes"}``) becomes the task's
    ``result``.
    """
    app = FastAPI(title="taskplatform receiver", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/{path:path}")
    async def receive(request: Request, path: str) -> JSONResponse:
        body = await request.body()
        task_id = request.headers.get("x-task-id", "-")
        attempt = request.headers.get("x-task-attempt", "-")
        logger.info(
            "callback /%s task=%s attempt=%s signed=%s body=%s",
            _printable(path),
            _printable(task_id),
            _printable(attempt),
            "yes" if "webhook-signature" in request.headers else "no",
            _printable(body[:2000].decode("utf-8", errors="replace")),
        )
        return JSONResponse(
            {
                "received": True,
                "taskId": task_id,
                "attempt": int(attempt) if attempt.isascii() and attempt.isdigit() else None,
                "bytes": len(body),
            }
        )

    return app
