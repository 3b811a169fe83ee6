"""When a task scheduled for later comes due, on every backend combination."""

from __future__ import annotations

import datetime

from taskplatform.models import TaskView, now_ms
from taskplatform.service import TaskService
from tests.support.service import create_task


async def test_scheduled_at_with_sub_millisecond_digits_is_never_due_early(
    service: TaskService,
) -> None:
    """README: a task with ``scheduledAt`` "is not dequeued or dispatched before that time".
    A time with more than millisecond precision (RFC 3339 allows any number of digits) was
    rounded to the nearest millisecond, so ``...:SS.1234`` came due at ``.123``, 0.4 ms early;
    and ``delaySeconds: 0.0004`` at once. Milliseconds are rounded up now (found in review),
    from whole microseconds, so ``delaySeconds: 0.3`` is 300 ms, not 301."""
    url = "http://127.0.0.1:9/x"
    base = (now_ms() // 1000 + 3600) * 1000  # a whole second, an hour ahead
    asked = base / 1000 + 0.1234
    text = datetime.datetime.fromtimestamp(asked, datetime.UTC).isoformat().replace("+00:00", "Z")
    task_id = await create_task(service, url, scheduledAt=f'"{text}"')
    view = TaskView.of(await service.get(task_id))
    assert view.scheduled_at is not None
    shown = datetime.datetime.fromisoformat(view.scheduled_at).timestamp()
    assert shown >= datetime.datetime.fromisoformat(text).timestamp(), (text, view.scheduled_at)
    delayed = TaskView.of(await service.get(await create_task(service, url, delaySeconds=0.0004)))
    assert delayed.scheduled_at is not None
    assert delayed.scheduled_at > delayed.created_at, (delayed.created_at, delayed.scheduled_at)
    exact = TaskView.of(await service.get(await create_task(service, url, delaySeconds=0.3)))
    assert exact.scheduled_at is not None
    waited = datetime.datetime.fromisoformat(exact.scheduled_at) - datetime.datetime.fromisoformat(
        exact.created_at
    )
    assert waited == datetime.timedelta(milliseconds=300)
