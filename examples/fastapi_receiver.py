"""A callback receiver on FastAPI that accepts only callbacks the platform signed.

Serve the platform with a signing secret, and this receiver with the same one::

    # 32 random bytes, base64: the Standard Webhooks secret format
    export TASKPLATFORM_SIGNING_SECRET=whsec_$(head -c 32 /dev/urandom | base64)
    .venv/bin/taskplatform serve &
    .venv/bin/uvicorn --factory examples.fastapi_receiver:create_app --port 9000

Then create tasks with ``callbackUrl`` ``http://127.0.0.1:9000/tasks``. A request whose signature
does not verify (forged, altered, or older than five minutes) gets 401, which fails the attempt.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from taskplatform.client import InvalidSignature, verify_callback


def create_app(secret: str | None = None) -> FastAPI:
    """Build the receiver.

    Args:
        secret: The ``whsec_…`` secret the platform signs with; None reads
            ``TASKPLATFORM_SIGNING_SECRET``.

    Raises:
        RuntimeError: no secret is given nor set in the environment.
    """
    key = secret or os.environ.get("TASKPLATFORM_SIGNING_SECRET")
    if not key:
        raise RuntimeError("set TASKPLATFORM_SIGNING_SECRET to the platform's signing secret")
    app = FastAPI(title="signed callback receiver", openapi_url=None)
    # webhook-id is the task id, the same on every attempt: a receiver that must not do the work
    # twice remembers the ids it has done (in its own database; a set is enough for a demo).
    done: set[str] = set()

    @app.post("/tasks")
    async def receive(request: Request) -> JSONResponse:
        body = await request.body()  # the exact bytes: the signature covers them, not the JSON
        try:
            verify_callback(key, request.headers, body)
        except InvalidSignature as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        task_id = request.headers["webhook-id"]
        duplicate = task_id in done
        done.add(task_id)
        task_data = json.loads(body)
        # ... the work goes here, skipped when duplicate ...
        return JSONResponse(
            {
                "received": True,
                "verified": True,
                "taskId": task_id,
                "attempt": int(request.headers.get("x-task-attempt", "0")),
                "duplicate": duplicate,
                "fields": sorted(task_data),
            }
        )

    return app
