-- Named queries shared by the SQL backends (SQLite and PostgreSQL). Each query sits under a
-- "-- name: <name>" header followed by a one-line description; taskplatform.backends.sqlfile loads
-- them. Parameters are named (:name). Column lists are written out so rows map to records by
-- position (taskplatform.backends.sqlrows).

-- name: enqueue
-- Add a Queued task; seq (AUTOINCREMENT) fixes its FIFO position within its priority.
INSERT INTO queued_tasks (task_id, priority, task_data, callback_url, max_retries,
                          timeout_seconds, attempts, error, created_at, updated_at, queue,
                          scheduled_at, retry_policy)
VALUES (:task_id, :priority, :task_data, :callback_url, :max_retries, :timeout_seconds,
        :attempts, :error, :created_at, :updated_at, :queue, :scheduled_at, :retry_policy)
RETURNING seq;

-- name: queue_get
-- One Queued task by id.
SELECT task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
       error, created_at, updated_at, queue, scheduled_at, retry_policy
FROM queued_tasks WHERE task_id = :task_id;

-- name: queue_depth
-- Number of Queued tasks.
SELECT count(*) FROM queued_tasks;

-- name: store_insert
-- Insert a task taken from the queue. A repeat of the same id is a no-op (idempotent transfer),
-- unless the row is one a Redis requeue left marked Queued: then the task is dequeued again.
INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url, max_retries,
                   timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at,
                   result, error, created_at, updated_at, dequeued_at, completed_at, queue,
                   scheduled_at, retry_policy, dead_letter, dispatched)
VALUES (:task_id, :sequence, :status, :priority, :task_data, :callback_url, :max_retries,
        :timeout_seconds, :attempts, :lease_token, :lease_expires_at, :next_attempt_at, :result,
        :error, :created_at, :updated_at, :dequeued_at, :completed_at, :queue, :scheduled_at,
        :retry_policy, :dead_letter, :dispatched)
ON CONFLICT (task_id) DO UPDATE
    SET status = excluded.status, lease_token = excluded.lease_token,
        lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at,
        dequeued_at = excluded.dequeued_at, attempts = excluded.attempts,
        error = excluded.error, dispatched = excluded.dispatched,
        dead_letter = excluded.dead_letter, next_attempt_at = excluded.next_attempt_at
    WHERE tasks.status = 'Queued';

-- name: store_get
-- One stored task by id.
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at, queue, scheduled_at, retry_policy, dead_letter,
       dispatched
FROM tasks WHERE task_id = :task_id;

-- name: store_count_by_status
-- Number of stored tasks per status.
SELECT status, count(*) FROM tasks GROUP BY status;

-- name: store_count_by_status_in_queue
-- Number of stored tasks of one named queue per status.
SELECT status, count(*) FROM tasks WHERE queue = :queue GROUP BY status;

-- name: status_counts
-- Number of tasks per status in one snapshot: Queued from the queue table, the rest from the
-- store (a stored row marked Queued is a Redis requeue's, which no SQL queue makes).
SELECT status, count(*) FROM tasks WHERE status <> 'Queued' GROUP BY status
UNION ALL
SELECT 'Queued', count(*) FROM queued_tasks;

-- name: status_counts_in_queue
-- The same for one named queue.
SELECT status, count(*) FROM tasks WHERE queue = :queue AND status <> 'Queued' GROUP BY status
UNION ALL
SELECT 'Queued', count(*) FROM queued_tasks WHERE queue = :queue;

-- name: execution_insert
-- Append one attempt to the log; the (task_id, attempt) key makes a repeat a no-op.
INSERT INTO task_executions (task_id, attempt, started_at, finished_at, duration_ms, http_status,
                             result, error)
VALUES (:task_id, :attempt, :started_at, :finished_at, :duration_ms, :http_status, :result,
        :error)
ON CONFLICT (task_id, attempt, started_at) DO NOTHING;

-- name: execution_list
-- The attempt log of one task, oldest first (a re-drive starts the attempt numbers again).
SELECT task_id, attempt, started_at, finished_at, duration_ms, http_status, result, error
FROM task_executions WHERE task_id = :task_id ORDER BY id;

-- name: ping
-- A round trip that touches the schema.
SELECT count(*) FROM tasks WHERE task_id = '';

-- name: store_expired_leases
-- Tasks in one status whose lease ran out, oldest deadline first (the reaper's candidates).
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at, queue, scheduled_at, retry_policy, dead_letter,
       dispatched
FROM tasks WHERE status = :status AND lease_expires_at < :now
ORDER BY lease_expires_at LIMIT :limit;

-- name: store_dequeued_under
-- The Dequeued tasks under one lease token: those of a dequeue whose answer was lost (the status
-- index leads to the Dequeued rows, few: those pulled and not yet executed).
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at, queue, scheduled_at, retry_policy, dead_letter,
       dispatched
FROM tasks WHERE status = 'Dequeued' AND lease_token = :lease_token;

-- name: requeue_delete
-- Take a Dequeued task whose lease this caller holds out of the store (first half of a requeue).
DELETE FROM tasks WHERE task_id = :task_id AND status = 'Dequeued' AND lease_token = :lease_token
RETURNING task_id, sequence, status, priority, task_data, callback_url, max_retries,
          timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at, result,
          error, created_at, updated_at, dequeued_at, completed_at, queue, scheduled_at,
          retry_policy, dead_letter, dispatched;

-- name: redrive_delete
-- Take a Failed task out of the store (first half of a re-drive to the queue).
DELETE FROM tasks WHERE task_id = :task_id AND status = 'Failed'
RETURNING task_id, sequence, status, priority, task_data, callback_url, max_retries,
          timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at, result,
          error, created_at, updated_at, dequeued_at, completed_at, queue, scheduled_at,
          retry_policy, dead_letter, dispatched;

-- name: requeue_insert
-- Put a task back into the queue at its original position (its old sequence number). No row
-- back means another queued task holds that number (both numbered by a Redis queue since
-- switched away from, or one by Redis and one by this table): the caller enqueues it anew.
INSERT INTO queued_tasks (seq, task_id, priority, task_data, callback_url, max_retries,
                          timeout_seconds, attempts, error, created_at, updated_at, queue,
                          scheduled_at, retry_policy)
VALUES (:sequence, :task_id, :priority, :task_data, :callback_url, :max_retries,
        :timeout_seconds, :attempts, :error, :created_at, :updated_at, :queue, :scheduled_at,
        :retry_policy)
ON CONFLICT (seq) DO NOTHING
RETURNING seq;

-- name: store_delete_returning
-- Remove a task that a Redis requeue marked Queued in the store, once it is back in Redis.
DELETE FROM tasks WHERE task_id = :task_id AND status = 'Queued' AND lease_token = :lease_token;

-- name: idempotency_claim
-- Claim an idempotency key for a new task, or take over an expired claim; no row means taken.
INSERT INTO idempotency_keys (key, request_hash, task_id, expires_at)
VALUES (:key, :request_hash, :task_id, :expires_at)
ON CONFLICT (key) DO UPDATE
    SET request_hash = excluded.request_hash, task_id = excluded.task_id,
        expires_at = excluded.expires_at
    WHERE idempotency_keys.expires_at <= :now
RETURNING key;

-- name: idempotency_get
-- The live claim of an idempotency key.
SELECT request_hash, task_id FROM idempotency_keys WHERE key = :key;

-- name: idempotency_purge
-- Forget up to :most idempotency keys past their expiry: a bounded statement, so that a backlog
-- (after a burst of keyed creates) holds no lock long and stays within the statement timeout.
DELETE FROM idempotency_keys
WHERE key IN (SELECT key FROM idempotency_keys WHERE expires_at <= :now LIMIT :most);

-- name: queue_stats
-- Per queue: Queued tasks, and since when the longest-waiting due one has been due (its
-- creation, or its scheduled time if later); NULL when none is due.
SELECT queue, count(*),
       min(CASE WHEN scheduled_at IS NULL OR scheduled_at <= :now THEN
                CASE WHEN scheduled_at > created_at THEN scheduled_at ELSE created_at END
           END)
FROM queued_tasks GROUP BY queue;

-- name: queue_cancel
-- Take one Queued task out of the queue (to store it Cancelled).
DELETE FROM queued_tasks WHERE task_id = :task_id
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at, queue, scheduled_at, retry_policy;

-- name: store_due_retries
-- Dispatched tasks of one queue waiting in Retry whose next attempt is due, highest priority first.
SELECT task_id, sequence, status, priority, task_data, callback_url, max_retries, timeout_seconds,
       attempts, lease_token, lease_expires_at, next_attempt_at, result, error, created_at,
       updated_at, dequeued_at, completed_at, queue, scheduled_at, retry_policy, dead_letter,
       dispatched
FROM tasks WHERE status = 'Retry' AND queue = :queue AND next_attempt_at <= :now AND dispatched
ORDER BY priority DESC, next_attempt_at LIMIT :limit;

-- name: store_queue_activity
-- Per queue: tasks in Processing, and attempts started since a time (the dispatch rate).
SELECT queue, sum(CASE WHEN status = 'Processing' THEN 1 ELSE 0 END),
       (SELECT count(*) FROM task_executions e JOIN tasks t2 ON t2.task_id = e.task_id
        WHERE t2.queue = tasks.queue AND e.started_at >= :since)
FROM tasks GROUP BY queue;

-- name: queues_paused
-- Names of paused queues.
SELECT name FROM queues WHERE paused;

-- name: queue_set_paused
-- Pause or resume one queue.
INSERT INTO queues (name, paused, updated_at) VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at;

-- name: depth_sample_upsert
-- Record one queue's depth for one sampling interval; a second writer of the interval overwrites.
INSERT INTO queue_depth_samples (queue, sampled_at, depth) VALUES (:queue, :sampled_at, :depth)
ON CONFLICT (queue, sampled_at) DO UPDATE SET depth = excluded.depth;

-- name: depth_sample_prune
-- Forget depth samples older than the retention.
DELETE FROM queue_depth_samples WHERE sampled_at < :before;

-- name: depth_sample_list
-- Depth samples since a time, per queue, oldest first.
SELECT queue, sampled_at, depth FROM queue_depth_samples WHERE sampled_at >= :since
ORDER BY queue, sampled_at;

-- name: process_upsert
-- This process is alive (and which queue it uses): its row, kept fresh.
INSERT INTO processes (process_id, queue, started_at, seen_at)
VALUES (:process_id, :queue, :started_at, :seen_at)
ON CONFLICT (process_id) DO UPDATE SET queue = excluded.queue, seen_at = excluded.seen_at;

-- name: process_prune
-- Forget processes not seen for a long time (stopped, killed).
DELETE FROM processes WHERE seen_at < :before;

-- name: process_delete
-- A process that stops cleanly takes its row out.
DELETE FROM processes WHERE process_id = :process_id;

-- name: process_list
-- The processes seen since a time, the longest running first.
SELECT process_id, queue, started_at, seen_at FROM processes WHERE seen_at >= :since
ORDER BY started_at, process_id;

-- name: store_id
-- This database's id (migration 0006), which it names in a Redis queue it uses.
SELECT store_id FROM store_identity;
