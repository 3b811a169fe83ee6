"""The ASGI application: routes, problem handlers, and the lifespan that opens the backends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from taskplatform import __version__
from taskplatform.api import health, tasks
from taskplatform.api.hotpath import TaskPlatformAPI
from taskplatform.api.openapi import install_openapi
from taskplatform.api.problems import install_problem_handlers
from taskplatform.backends import open_backends, prepare_schema
from taskplatform.dashboard import install as install_dashboard
from taskplatform.dispatch import sender_from_settings
from taskplatform.dispatch.dispatcher import Dispatcher
from taskplatform.service import TaskService
from taskplatform.settings import Settings, load_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """A central service that runs work through HTTP callbacks: create a task, dequeue it,
execute it (the platform POSTs its taskData to its callbackUrl), and follow its status.
Errors are `application/problem+json` (RFC 9457) with a stable `code`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for ``settings`` (read from the environment when None).

    The backends open in the lifespan, so building the app does no I/O.
    """
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await prepare_schema(settings)
        backends = open_backends(settings)
        sender = sender_from_settings(settings)
        await sender.start()
        service = TaskService(backends, sender, settings)
        app.state.service = service
        maintenance = asyncio.create_task(service.run_maintenance(), name="maintenance")
        jobs = [maintenance]
        if settings.dispatch:
            dispatcher = Dispatcher.from_settings(service, settings)
            jobs.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        try:
            yield
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            await service.shutdown(settings.shutdown_grace_seconds)
            await sender.close()
            await backends.close()

    app = TaskPlatformAPI(
        title="taskplatform",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # A 307 to the same path without its slash would send the body on to whatever host the
        # request named; a 404 problem says what is wrong instead.
        redirect_slashes=False,
    )
    app.include_router(tasks.router)
    app.include_router(tasks.stats_router)
    app.include_router(tasks.queues_router)
    app.include_router(health.router)
    install_dashboard(app)
    install_problem_handlers(app)
    install_openapi(app)
    app.install_security(settings)
    return app


def create_app_from_env() -> FastAPI:
    """Build the application from ``TASKPLATFORM_*`` variables (uvicorn's factory, many workers)."""
    return create_app(load_settings())
