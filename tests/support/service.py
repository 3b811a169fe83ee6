"""The service without HTTP, for tests that drive it in process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from taskplatform.backends import open_backends, prepare_schema
from taskplatform.dispatch import sender_from_settings
from taskplatform.service import TaskService
from taskplatform.settings import Settings


@contextlib.asynccontextmanager
async def opened_service(settings: Settings) -> AsyncIterator[TaskService]:
    """A TaskService on fresh storage of ``settings``, built as the app's lifespan builds it
    (schema, backends, callback sender), closed on exit."""
    await prepare_schema(settings)
    backends = open_backends(settings)
    sender = sender_from_settings(settings)
    await sender.start()
    try:
        yield TaskService(backends, sender, settings)
    finally:
        await sender.close()
        await backends.close()
