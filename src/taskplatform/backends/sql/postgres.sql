-- Named queries of the PostgreSQL backend that differ from common.sql.

-- name: dequeue_next
-- Move the next task (priority descending, then FIFO) from the queue into the store in one
-- statement. SKIP LOCKED lets concurrent dequeues take different rows instead of waiting; the CTE
-- fences the row choice so each statement locks exactly one row.
WITH next AS (
    SELECT seq FROM queued_tasks
    ORDER BY priority DESC, seq ASC
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM queued_tasks AS q USING next WHERE q.seq = next.seq
    RETURNING q.task_id, q.seq, q.priority, q.task_data, q.callback_url, q.max_retries,
              q.timeout_seconds, q.attempts, q.error, q.created_at
)
INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url, max_retries,
                   timeout_seconds, attempts, lease_token, lease_expires_at, error, created_at,
                   updated_at, dequeued_at)
SELECT task_id, seq, 'Dequeued', priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, :lease_token, :lease_expires_at, error, created_at, :now, :now
FROM moved
RETURNING task_id, sequence, status, priority, task_data, callback_url, max_retries,
          timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at, result,
          error, created_at, updated_at, dequeued_at, completed_at;
