"""A callback receiver on Flask that accepts only callbacks the platform signed.

Serve the platform with a signing secret, and this receiver with the same one::

    export TASKPLATFORM_SIGNING_SECRET=whsec_...   # the platform's secret
    .venv/bin/flask --app examples.flask_receiver run --port 9000

Then create tasks with ``callbackUrl`` ``http://127.0.0.1:9000/tasks``. A request whose signature
does not verify (forged, altered, or older than five minutes) gets 401, which fails the attempt.
"""

from __future__ import annotations

import json
import os

from flask import Flask, Response, jsonify, request

from taskplatform.client import InvalidSignature, verify_callback


def create_app(secret: str | None = None) -> Flask:
    """Build the receiver (``flask --app examples.flask_receiver`` finds this factory).

    Args:
        secret: The ``whsec_…`` secret the platform signs with; None reads
            ``TASKPLATFORM_SIGNING_SECRET``.

    Raises:
        RuntimeError: no secret is given nor set in the environment.
    """
    key = secret or os.environ.get("TASKPLATFORM_SIGNING_SECRET")
    if not key:
        raise RuntimeError("set TASKPLATFORM_SIGNING_SECRET to the platform's signing secret")
    app = Flask(__name__)
    # webhook-id is the task id, the same on every attempt: a receiver that must not do the work
    # twice remembers the ids it has done (in its own database; a set is enough for a demo).
    done: set[str] = set()

    @app.post("/tasks")
    def receive() -> tuple[Response, int]:
        body = request.get_data()  # the exact bytes: the signature covers them, not the JSON
        try:
            verify_callback(key, dict(request.headers), body)
        except InvalidSignature as exc:
            return jsonify(error=str(exc)), 401
        task_id = request.headers["webhook-id"]
        duplicate = task_id in done
        done.add(task_id)
        task_data = json.loads(body)
        # ... the work goes here, skipped when duplicate ...
        return jsonify(
            received=True,
            verified=True,
            taskId=task_id,
            attempt=int(request.headers.get("x-task-attempt", "0")),
            duplicate=duplicate,
            fields=sorted(task_data),
        ), 200

    return app
