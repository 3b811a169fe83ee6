"""A small callback receiver for trying the platform out: logs each callback and answers 200."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

logger = logging.getLogger("taskplatform.receiver")


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
            path,
            task_id,
            attempt,
            "yes" if "webhook-signature" in request.headers else "no",
            body[:2000].decode("utf-8", errors="replace"),
        )
        return JSONResponse(
            {
                "received": True,
                "taskId": task_id,
                "attempt": int(attempt) if attempt.isdigit() else None,
                "bytes": len(body),
            }
        )

    return app
