"""The service without HTTP, for tests that drive it in process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from taskplatform.backends import open_backends, prepare_schema
from taskplatform.dispatch import sender_from_settings
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from taskplatform.validation import parse_task_create


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


async def create_task(service: TaskService, url: str, **options: object) -> str:
    """Create a task through ``service`` as the API would, with ``options`` as extra body
    fields (``maxRetries=0`` becomes ``"maxRetries": 0``); return its id."""
    extra = "".join(f', "{name}": {value}' for name, value in options.items())
    body = f'{{"taskData": {{}}, "callbackUrl": "{url}"{extra}}}'
    task, _ = await service.create(
        parse_task_create(body.encode(), max_depth=64, max_url_length=2048)
    )
    return task.task_id
