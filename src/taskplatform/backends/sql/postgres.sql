-- Named queries of the PostgreSQL backend that differ from common.sql.

-- name: dequeue_next
-- Move the next :most due tasks of one queue (priority descending, then FIFO) from the queue into
-- the store in one statement (a dequeue takes one, a dispatcher's claim a batch). SKIP LOCKED
-- lets concurrent dequeues take different rows instead of waiting; the CTE fences the row choice
-- so each statement locks exactly the rows it moves. A task scheduled for later is not due.
WITH next AS (
    SELECT seq FROM queued_tasks
    WHERE queue = :queue AND (scheduled_at IS NULL OR scheduled_at <= :now)
    ORDER BY priority DESC, seq ASC
    LIMIT :most
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM queued_tasks AS q USING next WHERE q.seq = next.seq
    RETURNING q.task_id, q.seq, q.priority, q.task_data, q.callback_url, q.max_retries,
              q.timeout_seconds, q.attempts, q.error, q.created_at, q.queue, q.scheduled_at,
              q.retry_policy
)
INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url, max_retries,
                   timeout_seconds, attempts, lease_token, lease_expires_at, error, created_at,
                   updated_at, dequeued_at, queue, scheduled_at, retry_policy, dispatched)
SELECT task_id, seq, 'Dequeued', priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, :lease_token, :lease_expires_at, error, created_at, :now, :now, queue,
       scheduled_at, retry_policy, :dispatched
FROM moved
RETURNING task_id, sequence, status, priority, task_data, callback_url, max_retries,
          timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at, result,
          error, created_at, updated_at, dequeued_at, completed_at, queue, scheduled_at,
          retry_policy, dead_letter, dispatched;

-- name: enqueue_rows
-- Add many Queued tasks in one statement (a batch, or a group commit of single creates); seq
-- numbers them in the arrays' order. Each parameter is an array holding one column.
INSERT INTO queued_tasks (task_id, priority, task_data, callback_url, max_retries,
                          timeout_seconds, attempts, error, created_at, updated_at, queue,
                          scheduled_at, retry_policy)
SELECT task_id, priority, task_data, callback_url, max_retries, timeout_seconds, attempts, error,
       created_at, updated_at, queue, scheduled_at, retry_policy
FROM unnest(CAST(:task_id AS text[]), CAST(:priority AS integer[]), CAST(:task_data AS text[]),
            CAST(:callback_url AS text[]), CAST(:max_retries AS integer[]),
            CAST(:timeout_seconds AS double precision[]), CAST(:attempts AS integer[]),
            CAST(:error AS text[]), CAST(:created_at AS bigint[]), CAST(:updated_at AS bigint[]),
            CAST(:queue AS text[]), CAST(:scheduled_at AS bigint[]),
            CAST(:retry_policy AS text[]))
     WITH ORDINALITY AS r (task_id, priority, task_data, callback_url, max_retries,
                           timeout_seconds, attempts, error, created_at, updated_at, queue,
                           scheduled_at, retry_policy, n)
ORDER BY n
RETURNING task_id, seq;

-- name: take_dispatch_token
-- Take one token from a queue's dispatch bucket (refilled at :rate per second, holding at most
-- :burst); no row back means none is left. The row lock orders concurrent dispatchers.
INSERT INTO queues (name, paused, updated_at, dispatch_tokens, tokens_refilled_at)
VALUES (:name, false, :now, CAST(:burst AS double precision) - 1, :now)
ON CONFLICT (name) DO UPDATE SET
    dispatch_tokens = LEAST(CAST(:burst AS double precision),
        coalesce(queues.dispatch_tokens, CAST(:burst AS double precision))
        + (:now - coalesce(queues.tokens_refilled_at, :now))
          * CAST(:rate AS double precision) / 1000.0) - 1,
    tokens_refilled_at = :now
WHERE LEAST(CAST(:burst AS double precision),
        coalesce(queues.dispatch_tokens, CAST(:burst AS double precision))
        + (:now - coalesce(queues.tokens_refilled_at, :now))
          * CAST(:rate AS double precision) / 1000.0) >= 1
RETURNING dispatch_tokens;

-- name: give_back_dispatch_token
-- Return a token taken for a dispatch that found nothing to do.
UPDATE queues SET dispatch_tokens = LEAST(CAST(:burst AS double precision), dispatch_tokens + 1)
WHERE name = :name;
