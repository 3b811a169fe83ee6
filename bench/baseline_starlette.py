"""Baseline: a bare Starlette handler that does the create's SQLite insert, and nothing else.

What a hand-written minimum would be: ``POST /api/tasks`` parses the JSON body, checks that the
three fields are there, inserts one row into a WAL-mode SQLite file (``synchronous=NORMAL``, as the
service's default) with a commit per request, on the event loop's thread, and answers 201 with
the new id. No validation beyond that, no idempotency, no problem documents, no queue semantics.

    .venv/bin/python bench/baseline_starlette.py PORT DATABASE_FILE
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import uuid

from receiver import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    task_data TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def make_app(path: str) -> Starlette:
    """The app, writing to the SQLite file ``path``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(SCHEMA)

    async def create(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            data, url, priority = body["taskData"], body["callbackUrl"], body.get("priority", 0)
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"title": "bad request"}, status_code=400)
        task_id = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO tasks (task_id, priority, task_data, callback_url, status, created_at)"
            " VALUES (?, ?, ?, ?, 'Queued', ?)",
            (task_id, int(priority), json.dumps(data), url, time.time()),
        )
        return JSONResponse({"taskId": task_id, "status": "Queued"}, status_code=201)

    return Starlette(routes=[Route("/api/tasks", create, methods=["POST"])])


if __name__ == "__main__":
    serve(make_app(sys.argv[2]), int(sys.argv[1]))
