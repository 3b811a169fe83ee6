-- Named queries of the PostgreSQL backend that differ from common.sql.

-- name: promote_due
-- Put the tasks of one queue that were scheduled for later and have come due into the order
-- dequeue_next reads (migration 0007): each once, read from the index of waiting tasks alone.
-- SKIP LOCKED: processes promoting at once share the rows out rather than wait for each other
-- (or deadlock, should their plans lock in different orders).
UPDATE queued_tasks SET promoted = true
WHERE seq IN (SELECT seq FROM queued_tasks
              WHERE queue = :queue AND NOT promoted AND scheduled_at IS NOT NULL
                    AND scheduled_at <= :now
              FOR UPDATE SKIP LOCKED);

-- name: dequeue_next
-- Move the next :most due tasks of one queue (priority descending, then FIFO) from the queue into
-- the store in one statement (a dequeue takes one, a dispatcher's claim a batch). SKIP LOCKED
-- lets concurrent dequeues take different rows instead of waiting; the CTE fences the row choice
-- so each statement locks exactly the rows it moves. A task scheduled for later is due once
-- promote_due has promoted it; the order's index holds due tasks alone.
WITH next AS (
    SELECT seq FROM queued_tasks
    WHERE queue = :queue AND (scheduled_at IS NULL OR promoted)
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

-- name: enqueue_claimed_rows
-- Keyed creates, many in one statement (a group commit): claim each idempotency key (or take
-- over an expired claim, as idempotency_claim does) and add the task of every claim won. Gives
-- back, per key, the new task's seq, or the live claim that held the key (seq NULL). The keys
-- of one statement are distinct. A claim committed by another statement after this one began
-- (a new key, or the takeover of an expired claim) is held yet not in this statement's
-- snapshot, where the key has no row or an expired one: such a key gives back no row, and the
-- caller reads its claim afterwards.
WITH input AS (
    SELECT *
    FROM unnest(CAST(:key AS text[]), CAST(:request_hash AS text[]),
                CAST(:expires_at AS bigint[]), CAST(:task_id AS text[]),
                CAST(:priority AS integer[]), CAST(:task_data AS text[]),
                CAST(:callback_url AS text[]), CAST(:max_retries AS integer[]),
                CAST(:timeout_seconds AS double precision[]), CAST(:attempts AS integer[]),
                CAST(:error AS text[]), CAST(:created_at AS bigint[]),
                CAST(:updated_at AS bigint[]), CAST(:queue AS text[]),
                CAST(:scheduled_at AS bigint[]), CAST(:retry_policy AS text[]))
         WITH ORDINALITY AS r (key, request_hash, expires_at, task_id, priority, task_data,
                               callback_url, max_retries, timeout_seconds, attempts, error,
                               created_at, updated_at, queue, scheduled_at, retry_policy, n)
), claimed AS (
    -- In key order: a key's row is locked as it is claimed, and two processes claiming the
    -- same keys in the orders their requests came would deadlock (one group aborted: all 503).
    INSERT INTO idempotency_keys (key, request_hash, task_id, expires_at)
    SELECT key, request_hash, task_id, expires_at FROM input ORDER BY key
    ON CONFLICT (key) DO UPDATE
        SET request_hash = excluded.request_hash, task_id = excluded.task_id,
            expires_at = excluded.expires_at
        WHERE idempotency_keys.expires_at <= :now
    RETURNING task_id
), inserted AS (
    INSERT INTO queued_tasks (task_id, priority, task_data, callback_url, max_retries,
                              timeout_seconds, attempts, error, created_at, updated_at, queue,
                              scheduled_at, retry_policy)
    SELECT task_id, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
           error, created_at, updated_at, queue, scheduled_at, retry_policy
    FROM input WHERE task_id IN (SELECT task_id FROM claimed)
    ORDER BY n
    RETURNING task_id, seq
)
SELECT input.key, inserted.seq, NULL, NULL
FROM input JOIN inserted USING (task_id)
UNION ALL
SELECT input.key, NULL, held.request_hash, held.task_id
FROM input JOIN idempotency_keys AS held USING (key)
WHERE input.task_id NOT IN (SELECT task_id FROM claimed) AND held.expires_at > :now;

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

-- name: finish_attempts
-- Record the outcomes of many attempts in one statement (a group commit of concurrent
-- outcomes). Each element of the arrays is one compare-and-set from Processing, fenced by its
-- lease token, exactly as the single statement (compare_and_set_sql wrapped by
-- _logging_attempt) does it, and its attempt's entry in the log is written only if that task's
-- row changed. A NULL completed_at or dead_letter leaves the column as it is (the single
-- statement's UNSET). Task ids are unique within one call.
WITH input AS (
    SELECT * FROM unnest(
        CAST(:task_id AS text[]), CAST(:lease_token AS text[]), CAST(:target AS text[]),
        CAST(:now AS bigint[]), CAST(:result AS text[]), CAST(:error AS text[]),
        CAST(:completed_at AS bigint[]), CAST(:next_attempt_at AS bigint[]),
        CAST(:dead_letter AS boolean[]), CAST(:log_attempt AS integer[]),
        CAST(:log_started_at AS bigint[]), CAST(:log_finished_at AS bigint[]),
        CAST(:log_duration_ms AS integer[]), CAST(:log_http_status AS integer[]),
        CAST(:log_result AS text[]), CAST(:log_error AS text[])
    ) AS i(task_id, lease_token, target, now, result, error, completed_at, next_attempt_at,
           dead_letter, log_attempt, log_started_at, log_finished_at, log_duration_ms,
           log_http_status, log_result, log_error)
), changed AS (
    UPDATE tasks AS t
    SET status = i.target, updated_at = i.now, lease_token = NULL, lease_expires_at = NULL,
        result = i.result, error = i.error, next_attempt_at = i.next_attempt_at,
        completed_at = COALESCE(i.completed_at, t.completed_at),
        dead_letter = COALESCE(i.dead_letter, t.dead_letter)
    FROM input AS i
    WHERE t.task_id = i.task_id AND t.status = 'Processing' AND t.lease_token = i.lease_token
    RETURNING t.task_id, t.sequence, t.status, t.priority, t.task_data, t.callback_url,
              t.max_retries, t.timeout_seconds, t.attempts, t.lease_token, t.lease_expires_at,
              t.next_attempt_at, t.result, t.error, t.created_at, t.updated_at, t.dequeued_at,
              t.completed_at, t.queue, t.scheduled_at, t.retry_policy, t.dead_letter,
              t.dispatched
), logged AS (
    INSERT INTO task_executions (task_id, attempt, started_at, finished_at, duration_ms,
                                 http_status, result, error)
    SELECT i.task_id, i.log_attempt, i.log_started_at, i.log_finished_at, i.log_duration_ms,
           i.log_http_status, i.log_result, i.log_error
    FROM input AS i JOIN changed AS c ON c.task_id = i.task_id
    ON CONFLICT (task_id, attempt, started_at) DO NOTHING
)
SELECT * FROM changed;

-- name: store_insert_rows
-- store_insert for many tasks in one statement (a Redis queue's batch claim). Each parameter is
-- an array holding one column; the ids of the rows inserted (or revived) come back.
INSERT INTO tasks (task_id, sequence, status, priority, task_data, callback_url, max_retries,
                   timeout_seconds, attempts, lease_token, lease_expires_at, next_attempt_at,
                   result, error, created_at, updated_at, dequeued_at, completed_at, queue,
                   scheduled_at, retry_policy, dead_letter, dispatched)
SELECT * FROM unnest(
    CAST(:task_id AS text[]), CAST(:sequence AS bigint[]), CAST(:status AS text[]),
    CAST(:priority AS integer[]), CAST(:task_data AS text[]), CAST(:callback_url AS text[]),
    CAST(:max_retries AS integer[]), CAST(:timeout_seconds AS double precision[]),
    CAST(:attempts AS integer[]), CAST(:lease_token AS text[]),
    CAST(:lease_expires_at AS bigint[]), CAST(:next_attempt_at AS bigint[]),
    CAST(:result AS text[]), CAST(:error AS text[]), CAST(:created_at AS bigint[]),
    CAST(:updated_at AS bigint[]), CAST(:dequeued_at AS bigint[]),
    CAST(:completed_at AS bigint[]), CAST(:queue AS text[]), CAST(:scheduled_at AS bigint[]),
    CAST(:retry_policy AS text[]), CAST(:dead_letter AS boolean[]),
    CAST(:dispatched AS boolean[]))
ON CONFLICT (task_id) DO UPDATE
    SET status = excluded.status, lease_token = excluded.lease_token,
        lease_expires_at = excluded.lease_expires_at, updated_at = excluded.updated_at,
        dequeued_at = excluded.dequeued_at, attempts = excluded.attempts,
        error = excluded.error, dispatched = excluded.dispatched,
        dead_letter = excluded.dead_letter, next_attempt_at = excluded.next_attempt_at
    WHERE tasks.status = 'Queued'
RETURNING task_id;

-- name: queue_hand_over
-- Remove up to :most tasks of every queue, due or not, oldest number first, and return them (to
-- move them into a queue elsewhere: a switch to Redis). Processes doing it at once take
-- different rows.
DELETE FROM queued_tasks
WHERE seq IN (SELECT seq FROM queued_tasks ORDER BY seq LIMIT :most FOR UPDATE SKIP LOCKED)
RETURNING task_id, seq, priority, task_data, callback_url, max_retries, timeout_seconds, attempts,
          error, created_at, updated_at, queue, scheduled_at, retry_policy;

-- name: queue_sequence
-- The highest sequence number the database knows: the last its own queue handed out (NULL in
-- pg_sequences for a role that may not read the sequence), or any stored task's (numbered by a
-- Redis queue); 0 before the first. One scan of tasks (sequence has no index).
SELECT greatest(coalesce((SELECT last_value FROM pg_sequences
                          WHERE format('%I.%I', schemaname, sequencename)
                                = pg_get_serial_sequence('queued_tasks', 'seq')), 0),
                coalesce((SELECT max(sequence) FROM tasks), 0));

-- name: clock
-- The database server's clock in epoch milliseconds: the clock every API process on this
-- database follows (clock_timestamp() is the time now, not at the transaction's start).
SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint;

-- name: requeue_insert
-- Put a task back into the queue at its original position (its old sequence number), if the
-- queue's counter has handed that number out already and no queued task holds it. A number past
-- the counter (given by a Redis queue since switched away from) would be handed out again to a
-- new task by a later create; so no row back, as for a taken number: the caller enqueues anew.
INSERT INTO queued_tasks (seq, task_id, priority, task_data, callback_url, max_retries,
                          timeout_seconds, attempts, error, created_at, updated_at, queue,
                          scheduled_at, retry_policy)
SELECT :sequence, :task_id, :priority, :task_data, :callback_url, :max_retries,
       :timeout_seconds, :attempts, :error, :created_at, :updated_at, :queue, :scheduled_at,
       :retry_policy
WHERE :sequence <= (SELECT COALESCE(last_value, 0) FROM pg_sequences
                    WHERE format('%I.%I', schemaname, sequencename)
                          = pg_get_serial_sequence('queued_tasks', 'seq'))
ON CONFLICT (seq) DO NOTHING
RETURNING seq;
