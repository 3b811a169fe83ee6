"""The web dashboard at ``/dashboard``: server-rendered pages over the task service.

Jinja2 templates and one small local script and stylesheet, shipped as package data; no build
step and nothing loaded from elsewhere. :func:`install` mounts it on the application.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add the dashboard's routes to ``app`` (kept out of the OpenAPI document)."""
    # Imported here: the routes import the API package, which imports this one to mount it.
    from taskplatform.dashboard.routes import router

    app.include_router(router)
