"""A Hypothesis stateful test of the task state machine against a simple model.

Random sequences of create, dequeue, execute and get drive the real :class:`TaskService` over a
real SQLite or PostgreSQL backend, with real callbacks to a receiver on loopback (``/ok`` succeeds,
``/status/500`` fails). After every step the service must agree with the model on each task's
status, the count of tasks per status and the length of each attempt log.

The model (README.md, API.md): dequeue takes the highest priority first, FIFO within a priority;
``maxRetries`` N allows at most N + 1 attempts; execute of a Queued task is ``TaskNotDequeued``, of
a Completed one ``TaskCompleted``, of a Failed one with no attempts left ``RetryLimitReached``; a
failed callback makes the task Failed, a successful one Completed.

Hypothesis stateful tests are synchronous, so each state machine instance runs its own event loop
and closes it in ``teardown``. Each starts on an empty store: on SQLite its own database file; on
PostgreSQL the test's one database (``tests/support/backends.py``), emptied by ``TRUNCATE``, since
a database per instance (hundreds while shrinking) would cost more than the run.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskplatform.backends import Backends, open_backends, prepare_schema
from taskplatform.dispatch.callback import CallbackSender
from taskplatform.exceptions import (
    QueueEmpty,
    RetryLimitReached,
    TaskCompleted,
    TaskConflict,
    TaskNotDequeued,
    TaskNotFound,
)
from taskplatform.models import Status, TaskCreate
from taskplatform.service import TaskService
from taskplatform.settings import Settings
from tests.support.backends import backend_env
from tests.support.receiver import Receiver

T = TypeVar("T")

CALLBACK_PATHS = {"ok": "/ok", "fail": "/status/500"}
"""The receiver's routes: ``ok`` answers 200, ``fail`` answers 500."""

unknown_ids = st.uuids(version=4).map(str)
"""Ids no task has: the service's ids are UUIDv7."""

task_specs = st.tuples(
    st.integers(min_value=-2, max_value=2),
    st.integers(min_value=0, max_value=2),
    st.sampled_from(sorted(CALLBACK_PATHS)),
)
"""``(priority, maxRetries, callback kind)`` of a new task."""

_receiver: Receiver | None = None


def shared_receiver() -> Receiver:
    """Return the module's callback receiver, starting it on first use."""
    global _receiver
    if _receiver is None:
        _receiver = Receiver().start()
    return _receiver


@pytest.fixture(scope="module", autouse=True)
def _stop_receiver() -> Iterator[None]:
    """Stop the module's receiver (if a test started it) once the module's tests are done."""
    global _receiver
    yield
    if _receiver is not None:
        _receiver.stop()
        _receiver = None


async def empty_postgres(url: str) -> None:
    """Delete every row of the PostgreSQL database at ``url`` (its schema and revision stay)."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        tables = await connection.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
        )
        names = ", ".join(row["name"] for row in tables)
        await connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await connection.close()


@dataclass
class ModelTask:
    """What the model knows of one task."""

    task_id: str
    sequence: int
    priority: int
    max_retries: int
    callback: str
    status: Status = Status.QUEUED
    attempts: int = 0

    def attempts_left(self) -> bool:
        """Return whether the model allows another attempt (at most ``max_retries + 1``)."""
        return self.attempts < self.max_retries + 1


class TaskStateMachine(RuleBasedStateMachine):
    """Drives a real TaskService and checks it against :class:`ModelTask` records."""

    tasks = Bundle("tasks")
    # Mostly known tasks (the bundle is listed thrice to weight it), sometimes an unknown id.
    known_or_unknown = st.one_of(tasks, tasks, tasks, unknown_ids)

    def __init__(self, postgres_url: str | None = None) -> None:
        """Open a service on an empty store: a new SQLite file, or the PostgreSQL database at
        ``postgres_url`` (schema already prepared) emptied."""
        super().__init__()
        self.model: dict[str, ModelTask] = {}
        self.created = 0
        self.receiver = shared_receiver()
        self.workdir = tempfile.mkdtemp(prefix="tp-stateful-")
        self.loop = asyncio.new_event_loop()
        self.backends: Backends | None = None
        self.sender: CallbackSender | None = None
        try:
            if postgres_url is None:
                self.settings = Settings(database_url=f"sqlite:///{self.workdir}/tp.db")
                self.run(prepare_schema(self.settings))
            else:
                self.settings = Settings(database_url=postgres_url)
                self.run(empty_postgres(postgres_url))
            self.backends = open_backends(self.settings)
            self.sender = CallbackSender(
                max_connections=self.settings.callback_max_connections,
                max_response_bytes=self.settings.callback_response_max_bytes,
            )
            self.run(self.sender.start())
            self.service = TaskService(self.backends, self.sender, self.settings)
        except BaseException:
            self.teardown()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to completion on this machine's event loop."""
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        """Close the sender, the backends and the event loop; remove the database files."""
        try:
            if self.sender is not None:
                self.run(self.sender.close())
                self.sender = None
            if self.backends is not None:
                self.run(self.backends.close())
                self.backends = None
            self.run(self.loop.shutdown_asyncgens())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the model's predictions ----------------------------------------------------------------

    def next_in_queue(self) -> ModelTask | None:
        """Return the task the model expects dequeue to take: highest priority, then oldest."""
        queued = [task for task in self.model.values() if task.status is Status.QUEUED]
        if not queued:
            return None
        return min(queued, key=lambda task: (-task.priority, task.sequence))

    # -- rules ----------------------------------------------------------------------------------

    def create_task(self, priority: int, max_retries: int, callback: str) -> str:
        """Create a task through the service and in the model; return its id."""
        request = TaskCreate(
            task_data=msgspec.Raw(msgspec.json.encode({"n": self.created})),
            callback_url=self.receiver.url(CALLBACK_PATHS[callback]),
            priority=priority,
            max_retries=max_retries,
            timeout_seconds=10,
        )
        task, replayed = self.run(self.service.create(request))
        assert not replayed
        assert task.status is Status.QUEUED
        assert task.task_id not in self.model
        self.model[task.task_id] = ModelTask(
            task_id=task.task_id,
            sequence=self.created,
            priority=priority,
            max_retries=max_retries,
            callback=callback,
        )
        self.created += 1
        return task.task_id

    @initialize(target=tasks, specs=st.lists(task_specs, min_size=1, max_size=3))
    def create_first(self, specs: list[tuple[int, int, str]]) -> MultipleResults[str]:
        # A few tasks up front, so that short runs still reach dequeue and execute.
        return multiple(*(self.create_task(*spec) for spec in specs))

    @rule(target=tasks, spec=task_specs)
    def create(self, spec: tuple[int, int, str]) -> str:
        return self.create_task(*spec)

    @rule()
    def dequeue(self) -> None:
        expected = self.next_in_queue()
        if expected is None:
            with pytest.raises(QueueEmpty):
                self.run(self.service.dequeue())
            return
        task = self.run(self.service.dequeue())
        assert task.task_id == expected.task_id, (
            f"dequeued {task.task_id} (priority {task.priority}); the model expected "
            f"{expected.task_id} (priority {expected.priority}, created #{expected.sequence})"
        )
        assert task.status is Status.DEQUEUED
        assert task.attempts == 0
        expected.status = Status.DEQUEUED

    @rule(task_id=known_or_unknown)
    def execute(self, task_id: str) -> None:
        self.check_execute(task_id)

    @precondition(lambda self: any(t.status is not Status.QUEUED for t in self.model.values()))
    @rule(data=st.data())
    def execute_dequeued(self, data: st.DataObject) -> None:
        # Execute again a task dequeue has taken: random ids alone rarely use up the retries.
        taken = [t.task_id for t in self.model.values() if t.status is not Status.QUEUED]
        self.check_execute(data.draw(st.sampled_from(taken), label="task_id"))

    def check_execute(self, task_id: str) -> None:
        """Execute ``task_id`` and check the outcome or error against the model's prediction."""
        task = self.model.get(task_id)
        if task is None:
            with pytest.raises(TaskNotFound):
                self.run(self.service.execute(task_id))
            return
        error: type[TaskConflict] | None = None
        if task.status is Status.QUEUED:
            error = TaskNotDequeued
        elif task.status is Status.COMPLETED:
            error = TaskCompleted
        elif task.status is Status.FAILED and not task.attempts_left():
            error = RetryLimitReached
        if error is not None:
            with pytest.raises(TaskConflict) as raised:
                self.run(self.service.execute(task_id))
            assert type(raised.value) is error, (
                f"execute of a {task.status} task with {task.attempts} attempts "
                f"(maxRetries {task.max_retries}) raised {type(raised.value).__name__}, "
                f"the model expected {error.__name__}"
            )
            return
        assert task.status in (Status.DEQUEUED, Status.FAILED)
        outcome = self.run(self.service.execute(task_id))
        task.attempts += 1
        task.status = Status.COMPLETED if task.callback == "ok" else Status.FAILED
        assert outcome.task_id == task_id
        assert outcome.attempt == task.attempts
        assert outcome.status is task.status, (
            f"execute answered {outcome.status} (error {outcome.error!r}); "
            f"the model expected {task.status}"
        )
        assert (outcome.error is None) == (task.status is Status.COMPLETED)

    @rule(task_id=known_or_unknown)
    def get(self, task_id: str) -> None:
        expected = self.model.get(task_id)
        if expected is None:
            with pytest.raises(TaskNotFound):
                self.run(self.service.get(task_id))
            return
        task = self.run(self.service.get(task_id))
        assert task.task_id == task_id
        assert task.status is expected.status
        assert task.attempts == expected.attempts
        assert task.priority == expected.priority
        assert task.max_retries == expected.max_retries

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def every_status_matches(self) -> None:
        for expected in self.model.values():
            task = self.run(self.service.get(expected.task_id))
            assert (task.status, task.attempts) == (expected.status, expected.attempts), (
                f"task {expected.task_id}: the service has {task.status} with {task.attempts} "
                f"attempts, the model {expected.status} with {expected.attempts}"
            )

    @invariant()
    def stats_match(self) -> None:
        counts, depth = self.run(self.service.stats())
        expected = dict.fromkeys(Status, 0)
        for task in self.model.values():
            expected[task.status] += 1
        assert counts == expected
        assert depth == expected[Status.QUEUED]

    @invariant()
    def attempt_logs_match(self) -> None:
        for expected in self.model.values():
            log = self.run(self.service.executions(expected.task_id))
            assert len(log) == expected.attempts, (
                f"task {expected.task_id}: {len(log)} attempts logged, "
                f"the model made {expected.attempts}"
            )
            assert [entry.attempt for entry in log] == list(range(1, expected.attempts + 1))


# No explain phase: on a failure it replays the machine hundreds of times (minutes, past pytest's
# timeout) just to annotate the minimal sequence that the shrink phase has already printed.
MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_task_state_machine(backend: str, tmp_path: Path) -> None:
    """The model holds over random sequences, on SQLite and on PostgreSQL (Redis's queue is
    covered by the contract suite; the model is about the state machine and the SQL store)."""
    if backend == "sqlite":
        run_state_machine_as_test(TaskStateMachine, settings=MACHINE_SETTINGS)
        return
    url = backend_env(backend, tmp_path)["TASKPLATFORM_DATABASE_URL"]
    asyncio.run(prepare_schema(Settings(database_url=url)))

    class OnPostgres(TaskStateMachine):
        def __init__(self) -> None:
            super().__init__(url)

    run_state_machine_as_test(OnPostgres, settings=MACHINE_SETTINGS)
