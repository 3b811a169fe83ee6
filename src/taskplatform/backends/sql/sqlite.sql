-- Named queries of the SQLite backend that differ from common.sql.

-- name: dequeue_next
-- Remove the next due task of one queue (priority descending, then FIFO) and return it; runs on
-- the single writer. A task scheduled for later is not due.
DELETE FROM queued_tasks
WHERE seq = (SELECT seq FROM queued_tasks
             WHERE queue = :queue AND (scheduled_at IS NULL OR scheduled_at <= :now)
             ORDER BY priority DESC, seq ASC LIMIT 1)
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at, queue, scheduled_at, retry_policy;
