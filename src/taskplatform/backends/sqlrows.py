"""What the SQL backends share: rows to records, records to parameters, the compare-and-set SQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from taskplatform.backends.base import TaskChanges
from taskplatform.models import (
    QUEUED_FIELDS,
    ExecutionRecord,
    Status,
    TaskRecord,
    policy_of,
    policy_text,
    queued_values,
)

STORE_COLUMNS = (
    "task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds, "
    "attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at, "
    "updated_at, dequeued_at, completed_at, queue, scheduled_at, retry_policy, dead_letter, "
    "dispatched"
)
NO_CURSOR = "\U0010ffff"
"""Sorts above every task id, so ``task_id < NO_CURSOR`` means "from the newest"."""


def queued_record(row: Sequence[Any]) -> TaskRecord:
    """Map a ``queued_tasks`` row (the column order of the queue queries) to a Queued task."""
    (
        task_id,
        seq,
        priority,
        data,
        url,
        max_retries,
        timeout,
        attempts,
        error,
        created,
        updated,
        queue,
        scheduled_at,
        policy,
    ) = row
    return TaskRecord(
        queue=queue,
        scheduled_at=scheduled_at,
        retry_policy=policy_of(policy),
        task_id=task_id,
        sequence=seq,
        status=Status.QUEUED,
        priority=priority,
        task_data=data.encode(),
        callback_url=url,
        max_retries=max_retries,
        timeout_seconds=timeout,
        attempts=attempts,
        error=error,
        created_at=created,
        updated_at=updated,
    )


def handed_over(
    row: Sequence[Any], now: int, lease_token: str, lease_expires_at: int
) -> TaskRecord:
    """The task of a ``queue_hand_over`` row, as the store takes it: Dequeued under the lease
    (``Queue.hand_over``)."""
    task = queued_record(row)
    task.status, task.updated_at = Status.DEQUEUED, now
    task.lease_token, task.lease_expires_at = lease_token, lease_expires_at
    return task


def stored_record(row: Sequence[Any]) -> TaskRecord:
    """Map a ``tasks`` row in :data:`STORE_COLUMNS` order to a task."""
    result = row[12]
    return TaskRecord(
        task_id=row[0],
        sequence=row[1],
        status=Status(row[2]),
        priority=row[3],
        task_data=row[4].encode(),
        callback_url=row[5],
        max_retries=row[6],
        timeout_seconds=row[7],
        attempts=row[8],
        lease_token=row[9],
        lease_expires_at=row[10],
        next_attempt_at=row[11],
        result=None if result is None else result.encode(),
        error=row[13],
        created_at=row[14],
        updated_at=row[15],
        dequeued_at=row[16],
        completed_at=row[17],
        queue=row[18],
        scheduled_at=row[19],
        retry_policy=policy_of(row[20]),
        dead_letter=bool(row[21]),
        dispatched=bool(row[22]),
    )


def execution_record(row: Sequence[Any]) -> ExecutionRecord:
    """Map a ``task_executions`` row (the order of ``execution_list``) to an attempt record."""
    return ExecutionRecord(
        task_id=row[0],
        attempt=row[1],
        started_at=row[2],
        finished_at=row[3],
        duration_ms=row[4],
        http_status=row[5],
        result=None if row[6] is None else row[6].encode(),
        error=row[7],
    )


def task_params(task: TaskRecord) -> dict[str, Any]:
    """Return the named parameters of ``enqueue`` and ``store_insert`` for ``task``."""
    return {
        "task_id": task.task_id,
        "sequence": task.sequence,
        "status": task.status.value,
        "priority": task.priority,
        "task_data": task.task_data.decode(),
        "callback_url": task.callback_url,
        "max_retries": task.max_retries,
        "timeout_seconds": task.timeout_seconds,
        "attempts": task.attempts,
        "lease_token": task.lease_token,
        "lease_expires_at": task.lease_expires_at,
        "next_attempt_at": task.next_attempt_at,
        "result": None if task.result is None else task.result.decode(),
        "error": task.error,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "dequeued_at": task.dequeued_at,
        "completed_at": task.completed_at,
        "queue": task.queue,
        "scheduled_at": task.scheduled_at,
        "retry_policy": policy_text(task.retry_policy),
        "dead_letter": task.dead_letter,
        "dispatched": task.dispatched,
    }


def queue_params(task: TaskRecord) -> dict[str, Any]:
    """Return the named parameters of ``enqueue`` for ``task``."""
    return dict(zip(QUEUED_FIELDS, queued_values(task), strict=True))


def execution_params(execution: ExecutionRecord) -> dict[str, Any]:
    """Return the named parameters of ``execution_insert``."""
    return {
        "task_id": execution.task_id,
        "attempt": execution.attempt,
        "started_at": execution.started_at,
        "finished_at": execution.finished_at,
        "duration_ms": execution.duration_ms,
        "http_status": execution.http_status,
        "result": None if execution.result is None else execution.result.decode(),
        "error": execution.error,
    }


def compare_and_set_sql(
    task_id: str,
    *,
    expected: Sequence[Status],
    target: Status,
    now: int,
    changes: TaskChanges,
    lease_token: str | None,
    require_attempts_left: bool,
    due_by: int | None = None,
    many: Sequence[str] | None = None,
    dialect: Literal["postgresql", "sqlite"] = "postgresql",
    lease_tokens: Sequence[str] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Return the one ``UPDATE … RETURNING`` statement of a compare-and-set, and its parameters.

    The row changes only if it still has one of ``expected`` (and the lease token, and attempts
    left, when asked): the database applies the check and the write as one atomic statement.
    With ``many``, the rows of those task ids instead of ``task_id``'s, each checked on its own;
    ``dialect`` says how the ids are passed (PostgreSQL: a text array; SQLite: a JSON array
    read with ``json_each``). With ``lease_tokens`` too (PostgreSQL), each row gets its own
    token, the one at its id's place, instead of ``changes.lease_token``.
    """
    params: dict[str, Any] = {"target": target.value, "now": now}
    source = ""
    if lease_tokens is not None:
        assert many is not None
        assert len(lease_tokens) == len(many)
        assert dialect == "postgresql"
        params["task_ids"], params["lease_tokens"] = list(many), list(lease_tokens)
        source = (
            " FROM unnest(CAST(:task_ids AS text[]), CAST(:lease_tokens AS text[]))"
            " AS given(given_task_id, given_lease_token)"
        )
        chosen = "task_id = given_task_id"
        changes = msgspec.structs.replace(changes, lease_token=msgspec.UNSET)
    elif many is None:
        params["task_id"] = task_id
        chosen = "task_id = :task_id"
    elif dialect == "postgresql":
        params["task_ids"] = list(many)
        chosen = "task_id = ANY(CAST(:task_ids AS text[]))"
    else:
        params["task_ids"] = json.dumps(list(many))
        chosen = "task_id IN (SELECT value FROM json_each(:task_ids))"
    assignments = ["status = :target", "updated_at = :now"]
    if lease_tokens is not None:
        assignments.append("lease_token = given_lease_token")
    for name, value in changes.columns().items():  # names come from TaskChanges only
        assignments.append(f"{name} = :set_{name}")
        params[f"set_{name}"] = value.decode() if isinstance(value, bytes) else value
    if changes.increment_attempts:
        assignments.append("attempts = attempts + 1")
    if changes.withdraw_attempt:
        assignments.append("attempts = attempts - 1")
    if changes.lease_grace_seconds is not msgspec.UNSET:
        # The task's own timeout, read in the same statement; rounded to the millisecond.
        assignments.append(
            "lease_expires_at = :now"
            " + CAST(ROUND((timeout_seconds + :lease_grace) * 1000) AS BIGINT)"
        )
        params["lease_grace"] = float(changes.lease_grace_seconds)
    statuses = []
    for index, status in enumerate(expected):
        statuses.append(f":expected_{index}")
        params[f"expected_{index}"] = status.value
    conditions = [chosen, f"status IN ({', '.join(statuses)})"]
    if lease_token is not None:
        conditions.append("lease_token = :lease_token")
        params["lease_token"] = lease_token
    if require_attempts_left:
        conditions.append("attempts <= max_retries")
    if due_by is not None:
        conditions.append("next_attempt_at <= :due_by")
        params["due_by"] = due_by
    sql = (
        f"UPDATE tasks SET {', '.join(assignments)}{source} WHERE {' AND '.join(conditions)} "
        f"RETURNING {STORE_COLUMNS}"
    )
    return sql, params


def store_list_sql(
    *, status: Status | None, queue: str | None, dead_letter: bool | None
) -> tuple[str, dict[str, Any]]:
    """Return the ``SELECT`` of a page of stored tasks with the given filters, and its parameters.

    The caller adds ``before`` (exclusive upper bound on the task id) and ``limit``.
    """
    conditions = ["task_id < :before"]
    params: dict[str, Any] = {}
    if status is not None:
        conditions.append("status = :status")
        params["status"] = status.value
    if queue is not None:
        conditions.append("queue = :queue")
        params["queue"] = queue
    if dead_letter is not None:
        conditions.append("dead_letter = :dead_letter")
        params["dead_letter"] = dead_letter
    sql = (
        f"SELECT {STORE_COLUMNS} FROM tasks WHERE {' AND '.join(conditions)} "
        "ORDER BY task_id DESC LIMIT :limit"
    )
    return sql, params


def queue_list_sql(*, queue: str | None) -> str:
    """Return the ``SELECT`` of a page of Queued tasks (of one queue, or all), newest first."""
    where = "task_id < :before" + (" AND queue = :queue" if queue is not None else "")
    return (
        "SELECT task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, "
        "attempts, error, created_at, updated_at, queue, scheduled_at, retry_policy "
        f"FROM queued_tasks WHERE {where} ORDER BY task_id DESC LIMIT :limit"
    )
