-- Named queries shared by the SQL backends (SQLite and PostgreSQL). Each query sits under a
-- "-- name: <name>" header followed by a one-line description; taskplatform.backends.sqlfile loads
-- them. Parameters are named (:name). Column lists are written out so rows map to records by
-- position (taskplatform.backends.sqlrows).

-- name: enqueue
-- Add a Queued task; seq (AUTOINCREMENT) fixes its FIFO position within its priority.
INSERT INTO queued_tasks (task_id, priority, task_data, callback_url, max_retries,
                          timeout_seconds, attempts, error, created_at, updated_at)
VALUES (:task_id, :priority, :task_data, :callback_url, :max_retries, :timeout_seconds,
        :attempts, :error, :created_at, :updated_at)
RETURNING seq;

-- name: queue_get
-- One Queued task by id.
SELECT task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
       error, created_at, updated_at
FROM queued_tasks WHERE task_id = :task_id;

-- name: queue_list
-- Queued tasks below a cursor id, newest first.
SELECT task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
       error, created_at, updated_at
FROM queued_tasks WHERE task_id < :before ORDER BY task_id DESC LIMIT :limit;

-- name: queue_depth
-- Number of Queued tasks.
SELECT count(*) FROM queued_tasks;

-- name: store_insert
-- Insert a task taken from the queue; a repeat of the same id is a no-op (idempotent transfer).
INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url, max_retries,
                   timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at,
                   result, error, created_at, updated_at, dequeued_at, completed_at)
VALUES (:task_id, :sequence, :status, :priority, :task_data, :callback_url, :max_retries,
        :timeout_seconds, :attempts, :lease_token, :lease_expires_at, :next_attempt_at, :result,
        :error, :created_at, :updated_at, :dequeued_at, :completed_at)
ON CONFLICT (task_id) DO NOTHING;

-- name: store_get
-- One stored task by id.
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at
FROM tasks WHERE task_id = :task_id;

-- name: store_list
-- Stored tasks below a cursor id, newest first.
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at
FROM tasks WHERE task_id < :before ORDER BY task_id DESC LIMIT :limit;

-- name: store_list_status
-- Stored tasks in one status below a cursor id, newest first.
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at
FROM tasks WHERE status = :status AND task_id < :before ORDER BY task_id DESC LIMIT :limit;

-- name: store_count_by_status
-- Number of stored tasks per status.
SELECT status, count(*) FROM tasks GROUP BY status;

-- name: execution_insert
-- Append one attempt to the log; the (task_id, attempt) key makes a repeat a no-op.
INSERT INTO task_executions (task_id, attempt, started_at, finished_at, duration_ms, http_status,
                             result, error)
VALUES (:task_id, :attempt, :started_at, :finished_at, :duration_ms, :http_status, :result,
        :error)
ON CONFLICT (task_id, attempt) DO NOTHING;

-- name: execution_list
-- The attempt log of one task, oldest first.
SELECT task_id, attempt, started_at, finished_at, duration_ms, http_status, result, error
FROM task_executions WHERE task_id = :task_id ORDER BY attempt;

-- name: ping
-- A round trip that touches the schema.
SELECT count(*) FROM tasks WHERE task_id = '';
