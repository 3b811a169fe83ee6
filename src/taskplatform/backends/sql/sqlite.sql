-- Named queries of the SQLite backend that differ from common.sql.

-- name: dequeue_next
-- Remove the next task (priority descending, then FIFO) and return it; runs on the single writer.
DELETE FROM queued_tasks
WHERE seq = (SELECT seq FROM queued_tasks ORDER BY priority DESC, seq ASC LIMIT 1)
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at;
