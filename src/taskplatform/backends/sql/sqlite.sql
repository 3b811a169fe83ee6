-- Named queries of the SQLite backend that differ from common.sql.

-- name: promote_due
-- Put the tasks of one queue that were scheduled for later and have come due into the order a
-- dequeue reads (migration 0007): each once, read from the index of waiting tasks alone.
UPDATE queued_tasks SET promoted = 1
WHERE queue = :queue AND promoted = 0 AND scheduled_at IS NOT NULL AND scheduled_at <= :now;

-- name: dequeue_many
-- Remove up to :most next due tasks of one queue and return them, in no particular order (the
-- caller sorts them: priority descending, then seq). promote_due runs first: the order's index
-- holds only tasks that are due (no scheduled_at, or promoted).
DELETE FROM queued_tasks
WHERE seq IN (SELECT seq FROM queued_tasks
              WHERE queue = :queue AND (scheduled_at IS NULL OR promoted = 1)
              ORDER BY priority DESC, seq ASC LIMIT :most)
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at, queue, scheduled_at, retry_policy;

-- name: queue_ids_at
-- The ids of the Queued tasks at two positions (to check how a multi-row enqueue numbered them).
SELECT seq, task_id FROM queued_tasks WHERE seq IN (:first, :last);

-- name: take_dispatch_token
-- Take one token from a queue's dispatch bucket (refilled at :rate per second, holding at most
-- :burst); no row back means none is left.
INSERT INTO queues (name, paused, updated_at, dispatch_tokens, tokens_refilled_at)
VALUES (:name, 0, :now, :burst - 1, :now)
ON CONFLICT (name) DO UPDATE SET
    dispatch_tokens = min(:burst, coalesce(queues.dispatch_tokens, :burst)
        + (:now - coalesce(queues.tokens_refilled_at, :now)) * :rate / 1000.0) - 1,
    tokens_refilled_at = :now
WHERE min(:burst, coalesce(queues.dispatch_tokens, :burst)
        + (:now - coalesce(queues.tokens_refilled_at, :now)) * :rate / 1000.0) >= 1
RETURNING dispatch_tokens;

-- name: give_back_dispatch_token
-- Return a token taken for a dispatch that found nothing to do.
UPDATE queues SET dispatch_tokens = min(:burst, dispatch_tokens + 1) WHERE name = :name;

-- name: queue_sequence
-- The highest sequence number the database knows: the last its own queue handed out
-- (AUTOINCREMENT's counter) or any stored task's (numbered by a Redis queue); 0 before the
-- first. One scan of tasks (sequence has no index).
SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'queued_tasks'), 0),
           coalesce((SELECT max(sequence) FROM tasks), 0));

-- name: queue_hand_over
-- Remove up to :most tasks of every queue, due or not, oldest number first, and return them (to
-- move them into a queue elsewhere: a switch to Redis).
DELETE FROM queued_tasks
WHERE seq IN (SELECT seq FROM queued_tasks ORDER BY seq LIMIT :most)
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at, queue, scheduled_at, retry_policy;
