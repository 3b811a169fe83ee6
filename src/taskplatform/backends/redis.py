"""The Redis queue: Queued tasks in Redis, moved into a SQL store by reserve, insert, ack.

Keys, all under one prefix (``{taskplatform}`` by default; the braces keep them in one cluster
slot so the Lua scripts may touch them together):

- ``<p>:ready:<queue>``: sorted set of the due members of one named queue. The score is
  ``-priority``, exact for the whole int32 range (far below 2^53); members are
  ``<16-digit sequence>:<task id>``, and Redis orders equal scores by member bytes, so equal
  priorities come out FIFO with no limit on the sequence.
- ``<p>:scheduled:<queue>``: members scheduled for later, scored by their time (epoch ms); reserve
  moves the due ones into ``ready`` first.
- ``<p>:inflight``: sorted set of reserved members, scored by their reservation deadline (epoch ms).
- ``<p>:ids`` and ``<p>:qids:<queue>``: sorted sets of task ids (score 0), all and per queue, for
  listing newest first by id (task ids are time-ordered, so the first is the oldest).
- ``<p>:queues``: set of the queue names ever used.
- ``<p>:task:<id>``: hash with everything GET needs, until the task is acked.
- ``<p>:seq``: the sequence counter.
- ``<p>:reserve:<process>:<n>``: what one reserve call took, until its ack (see ``_RESERVE``).
- ``<p>:followed``: the store's highest sequence number when the counter was last moved past it
  (:meth:`RedisQueue.follow_store`); gone when Redis lost its data, which recovery notices.

Dequeue (seed FR-009): a Lua script moves the next member (or the next several, for a batch claim)
from ``ready`` to ``inflight``; the tasks are inserted into the store idempotently (``ON CONFLICT
DO NOTHING``), in one store call; only after the store commits are the members acked (removed with
their hashes). If the insert fails the members go straight back; if the process dies in
between, or the ack fails, the recovery loop of any server finds the expired reservations and acks
each whose task the store has, or returns it to ``ready`` (same position) when not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from taskplatform.backends.base import (
    IdempotencyClaim,
    IdempotentReplay,
    Queue,
    QueueCounts,
    Store,
    TaskChanges,
)
from taskplatform.backends.grouping import DequeueGroups, GroupCommit
from taskplatform.exceptions import BackendUnavailable, raise_if_cancelled
from taskplatform.faults import Faults
from taskplatform.models import (
    DEFAULT_QUEUE,
    QUEUED_FIELDS,
    Status,
    TaskRecord,
    now_ms,
    policy_of,
    queued_values,
)

logger = logging.getLogger(__name__)

_DUE_SCAN_PAGE = 100
_DUE_SCAN_MOST = 1000
"""Most tasks :meth:`RedisQueue._oldest_due` reads past from a queue's oldest (a page at a time)."""

_STORE_FORGET_MS = 24 * 3600 * 1000
"""How long a process's entry in the queue's ``stores`` hash outlives its last heartbeat
(see :meth:`RedisQueue.register_store`)."""

# The task hash's fields after ``member`` and ``sequence``, in the order of _hash_values(): the
# id is the hash's key, not a field.
_FIELDS = QUEUED_FIELDS[1:]
_HSET = "redis.call('HSET', {key}, 'member', member, 'sequence', seq, {pairs})"


def _hset(key: str, values: str, first: int) -> str:
    """Lua that writes a task hash: ``key`` is its key; the values of :data:`_FIELDS` are
    ``values`` (a Lua table) at indexes ``first``, ``first + 1``, ..."""
    pairs = ", ".join(f"'{name}', {values}[{first + n}]" for n, name in enumerate(_FIELDS))
    return _HSET.format(key=key, pairs=pairs)


# Lua helper: index a queued member of queue q (ready, or scheduled when due later).
_PLACE = """
local function place(prefix, q, member, id, priority, scheduled_at, now)
  if scheduled_at ~= '' and tonumber(scheduled_at) > tonumber(now) then
    redis.call('ZADD', prefix .. ':scheduled:' .. q, scheduled_at, member)
  else
    redis.call('ZADD', prefix .. ':ready:' .. q, -tonumber(priority), member)
  end
  redis.call('ZADD', prefix .. ':ids', 0, id)
  redis.call('ZADD', prefix .. ':qids:' .. q, 0, id)
  redis.call('SADD', prefix .. ':queues', q)
end
"""

# Enqueue many tasks and publish once. KEYS: seq. ARGV: key prefix (1), channel (2), the tasks
# as one MessagePack array (3) of {task id, the 12 values of _hash_values() as strings} and, for
# a keyed create, three more: the idempotency key, its claim ("<hash> <task id>") and the claim's
# TTL in ms; the highest sequence number the calling process knows of (4). One argument rather
# than thirteen a task, as redis-py packs each argument in Python.
# A counter that is gone (Redis lost its data) starts past (4), not at 1: tasks requeued from
# the store keep their numbers, and new ones numbered from 1 went ahead of them until recovery
# moved the counter past the store's (RedisQueue.recover).
# Returns per task, in order, its sequence, or the live claim's value when its key was taken.
# Running it twice for one task id (a retry after a dropped connection) adds nothing the second
# time. The keys of one call are distinct (the group commit keeps them so).
_ENQUEUE_MANY = (
    _PLACE
    + """
local prefix = ARGV[1]
local answers = {}
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[4]) end
for i, task in ipairs(cmsgpack.unpack(ARGV[3])) do
  local key = prefix .. ':task:' .. task[1]
  local existing = redis.call('HGET', key, 'sequence')
  local claimed = false
  if not existing and task[14] then
    local claim = prefix .. ':idempotency:' .. task[14]
    claimed = redis.call('GET', claim)
    if not claimed then
      redis.call('SET', claim, task[15], 'PX', task[16])
    end
  end
  if existing then
    answers[i] = tonumber(existing)
  elseif claimed then
    answers[i] = claimed
  else
    local seq = redis.call('INCR', KEYS[1])
    local member = string.format('%016d:%s', seq, task[1])
    """
    + _hset("key", "task", 2)
    + """
    place(prefix, task[11], member, task[1], task[2], task[12], task[9])
    answers[i] = seq
  end
end
redis.call('PUBLISH', ARGV[2], '')
return answers
"""
)

# Put a task back at its original position. KEYS: task hash. ARGV: member, sequence, task id, the
# 12 values of _hash_values() (4..15), the channel (16), the key prefix (17), now (18). Idempotent.
# A reservation of the member still in inflight is one whose ack failed (the store has had the
# task since): it ends here, so that recovery does not settle it later by acking, which would
# delete the hash this writes while the member waits in ready, and lose the task.
_REQUEUE = (
    _PLACE
    + """
local member, seq = ARGV[1], ARGV[2]
redis.call('ZREM', ARGV[17] .. ':inflight', member)
"""
    + _hset("KEYS[1]", "ARGV", 4)
    + """
place(ARGV[17], ARGV[13], member, ARGV[3], ARGV[4], ARGV[14], ARGV[18])
redis.call('PUBLISH', ARGV[16], '')
return 1
"""
)

# Move the sequence counter up to a number, never down. KEYS: seq, and the followed key to write
# the number into (optional, in the same step: see RedisQueue.follow_store). ARGV: the number.
_ADVANCE = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[1]) end
if (tonumber(redis.call('GET', KEYS[1])) or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: ready, scheduled (of one queue), inflight, this call's key. ARGV: reservation deadline
# (ms), task hash key prefix, now (ms), most, reservation (ms). Moves members that came due from
# scheduled to ready, then reserves the first ``most``: returns {member, hash fields, member, hash
# fields, ...}, empty when none is ready.
# Run twice for one call, it reserves once: redis-py runs a script again when the connection
# drops before its reply (a failover, a proxy's idle cut), and the second run reserved the next
# members while the first run's, the highest priority, waited in inflight for the reservation's
# 30 s, Queued to GET and passed over by every dequeue. The call's key (a random name per call)
# holds what it reserved, for as long as the reservation; a second run answers those of them
# still reserved. The ack or release of the call deletes the key; a Redis that evicts keys with
# a TTL (volatile-*) may drop it sooner, and a second run then reserves anew as before.
# Every due member moves before any is taken, or a due task of a higher priority behind the ones
# moved would wait behind lower ones (it did, past the first 100); a bound keeps one call from
# holding Redis for long after a mass of tasks came due at one moment (10,000 take about 30 ms).
# A due member whose hash is gone (evicted) is reserved too, with no fields, so that the caller
# says so and its ack takes it out of the indexes: it has no priority to be placed by.
_RESERVE = """
local reserved = {}
local done = redis.call('GET', KEYS[4])
if done then
  for _, member in ipairs(cmsgpack.unpack(done)) do
    if redis.call('ZSCORE', KEYS[3], member) then
      reserved[#reserved + 1] = member
      reserved[#reserved + 1] = redis.call('HGETALL', ARGV[2] .. string.sub(member, 18))
    end
  end
  return reserved
end
local taken = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, 10000)
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[2], m)
  local priority = redis.call('HGET', ARGV[2] .. string.sub(m, 18), 'priority')
  if priority then
    redis.call('ZADD', KEYS[1], -tonumber(priority), m)
  else
    redis.call('ZADD', KEYS[3], ARGV[1], m)
    taken[#taken + 1] = m
    reserved[#reserved + 1] = m
    reserved[#reserved + 1] = {}
  end
end
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[4]) - 1)
for _, member in ipairs(members) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[3], ARGV[1], member)
  taken[#taken + 1] = member
  reserved[#reserved + 1] = member
  reserved[#reserved + 1] = redis.call('HGETALL', ARGV[2] .. string.sub(member, 18))
end
if #taken > 0 then redis.call('SET', KEYS[4], cmsgpack.pack(taken), 'PX', ARGV[5]) end
return reserved
"""

# KEYS: task hash, inflight. ARGV: key prefix, reservation deadline (ms). Reserves one given task
# if it is queued, or reserved already (its deadline moves): returns {member, hash fields}, else
# false (no hash: not queued here). A reserved member is taken too because its reservation may
# be a dead process's (killed between reserve and insert): refused, the cancel answered 409
# task_processing until recover() returned it, 30 s later. Taking it is safe: the cancel and the
# dequeue holding it then both insert the task with ON CONFLICT DO NOTHING, so the store keeps
# exactly one of them (Cancelled or Dequeued) and only its winner hands the task on; each acks
# after its insert, and the second ack finds the member gone and leaves the hash alone. If the
# one insert fails, its release may put the member back in ready while the other's insert
# commits: a later dequeue's insert then conflicts and acks it, as for a reservation recover()
# returned while its owner was slow (_transfer_batch).
_RESERVE_ONE = """
local member = redis.call('HGET', KEYS[1], 'member')
if not member then return false end
local q = redis.call('HGET', KEYS[1], 'queue') or 'default'
local removed = redis.call('ZREM', ARGV[1] .. ':ready:' .. q, member)
  + redis.call('ZREM', ARGV[1] .. ':scheduled:' .. q, member)
if removed == 0 and not redis.call('ZSCORE', KEYS[2], member) then return false end
redis.call('ZADD', KEYS[2], ARGV[2], member)
return {member, redis.call('HGETALL', KEYS[1])}
"""

# ARGV: key prefix. Moves the members of the single ready set that versions before named queues
# kept (``<p>:ready``) into the default queue's, once; returns how many.
_UPGRADE = """
local old = ARGV[1] .. ':ready'
if redis.call('TYPE', old)['ok'] ~= 'zset' then return 0 end
local members = redis.call('ZRANGE', old, 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local id = string.sub(members[i], 18)
  redis.call('ZADD', ARGV[1] .. ':ready:default', members[i + 1], members[i])
  redis.call('ZADD', ARGV[1] .. ':qids:default', 0, id)
  redis.call('HSET', ARGV[1] .. ':task:' .. id, 'queue', 'default')
end
redis.call('SADD', ARGV[1] .. ':queues', 'default')
redis.call('DEL', old)
return #members / 2
"""

# KEYS: inflight, ids, and the key of the reserve call that took them (optional: see _RESERVE),
# deleted. ARGV: key prefix, then member and task id of each reservation to ack.
# Only a reservation still held is settled: one already ended (acked before, released, or ended
# by a requeue that has put the task back in ready) leaves the task's hash alone.
_ACK = """
if KEYS[3] then redis.call('DEL', KEYS[3]) end
for i = 2, #ARGV, 2 do
  local member, id = ARGV[i], ARGV[i + 1]
  local hash = ARGV[1] .. ':task:' .. id
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('ZREM', KEYS[2], id)
    local q = redis.call('HGET', hash, 'queue')
    if q then redis.call('ZREM', ARGV[1] .. ':qids:' .. q, id) end
    redis.call('DEL', hash)
  end
end
return 1
"""

# KEYS: inflight, and the key of the reserve call that took them (optional: see _RESERVE),
# deleted. ARGV: key prefix, now (ms), then member and task id of each reservation to release.
# Returns {how many members went back to their queue, then the id of each dropped}: a member
# goes back to ready, or to scheduled when the task is due later (a cancel reserves a task
# scheduled for later too); a member no longer reserved stays where it is; one whose hash is
# lost is dropped.
_RELEASE = """
if KEYS[2] then redis.call('DEL', KEYS[2]) end
local moved, dropped = 0, {}
for i = 3, #ARGV, 2 do
  local member, hash = ARGV[i], ARGV[1] .. ':task:' .. ARGV[i + 1]
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local priority = redis.call('HGET', hash, 'priority')
    if priority then
      local q = redis.call('HGET', hash, 'queue') or 'default'
      local scheduled_at = redis.call('HGET', hash, 'scheduled_at')
      if scheduled_at and scheduled_at ~= '' and tonumber(scheduled_at) > tonumber(ARGV[2]) then
        redis.call('ZADD', ARGV[1] .. ':scheduled:' .. q, scheduled_at, member)
      else
        redis.call('ZADD', ARGV[1] .. ':ready:' .. q, -tonumber(priority), member)
      end
      moved = moved + 1
    else
      redis.call('ZREM', ARGV[1] .. ':ids', ARGV[i + 1])  -- its hash is lost: nothing to return
      dropped[#dropped + 1] = ARGV[i + 1]
    end
  end
end
return {moved, unpack(dropped)}
"""

REDIS_POOL_SIZE = 64
"""Connections one process keeps to Redis at most (commands beyond wait for one)."""


class RedisQueue(Queue):
    """The queue in Redis, feeding any :class:`Store`.

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        key_prefix: Prefix of every key.
        reservation_seconds: How long a reserved task may take to reach the store before
            :meth:`recover` may return it to the queue.
        faults: Test-only fault injection.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "{taskplatform}",
        reservation_seconds: float = 30.0,
        faults: Faults | None = None,
    ) -> None:
        # A connection Redis (or a proxy) dropped while it sat in the pool fails its next command;
        # retry that on a fresh connection. Every script here is safe to run twice: enqueue is
        # keyed by task id, ack/release/requeue are idempotent, a reserve answers what its first
        # run reserved (its call's key, see _RESERVE), and a cancel's reserve takes a reserved
        # task again (_RESERVE_ONE). Timeouts are not retried: Redis is slow, not gone, and a
        # retry would only add load.
        # A blocking pool: past its size a command waits for a free connection (up to 10 s)
        # rather than failing at once, as redis-py's default pool does past 100 (found by the
        # issue-7 contract test of 300 concurrent enqueues).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=REDIS_POOL_SIZE,
            timeout=10,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=30,
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=1.0),
                retries=3,
                supported_errors=(RedisConnectionError,),
            ),
        )
        self.client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._prefix = key_prefix
        self._group: GroupCommit[TaskRecord, int] = GroupCommit(
            self._enqueue_together, key=lambda task: task.task_id, name="enqueue group commit"
        )
        self._keyed_group: GroupCommit[
            tuple[TaskRecord, IdempotencyClaim], int | IdempotentReplay
        ] = GroupCommit(
            self._enqueue_claimed_together,
            key=lambda row: row[1].key,
            name="keyed enqueue group commit",
        )
        self._dequeues: DequeueGroups[Store, TaskRecord] = DequeueGroups(self.transfer_many, faults)
        self._inflight = f"{key_prefix}:inflight"
        self._ids = f"{key_prefix}:ids"
        self._seq = f"{key_prefix}:seq"
        self._task_prefix = f"{key_prefix}:task:"
        self._channel = f"{key_prefix}:enqueued"
        self._queues = f"{key_prefix}:queues"
        self._stores = f"{key_prefix}:stores"  # see register_store
        self._reservation_ms = round(reservation_seconds * 1000)
        self._faults = faults or Faults()
        self._enqueue_many = self.client.register_script(_ENQUEUE_MANY)
        self._reserve = self.client.register_script(_RESERVE)
        self._ack = self.client.register_script(_ACK)
        self._release = self.client.register_script(_RELEASE)
        self._reserve_one = self.client.register_script(_RESERVE_ONE)
        self._upgrade = self.client.register_script(_UPGRADE)
        self._advance = self.client.register_script(_ADVANCE)
        self._followed = False  # see follow_store
        self._followed_key = f"{key_prefix}:followed"
        # Reserve calls' keys (see _RESERVE): this instance's random name, then a number.
        self._calls_prefix = f"{key_prefix}:reserve:{uuid.uuid4()}:"
        self._calls = itertools.count()
        self._known_sequence = 0  # the highest this process has seen; see _ENQUEUE_MANY
        self._abandoned: dict[str, str] = {}  # task id -> marker of a failed return; see requeue
        self._requeue = self.client.register_script(_REQUEUE)

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            raise_if_cancelled()
            logger.warning("redis error: %s", exc)
            raise BackendUnavailable(f"the Redis queue failed: {exc}") from exc

    def _task_key(self, task_id: str) -> str:
        return f"{self._task_prefix}{task_id}"

    async def enqueue(
        self, task: TaskRecord, *, claim: IdempotencyClaim | None = None
    ) -> IdempotentReplay | None:
        if claim is None:
            # Concurrent creates share one script call (group commit; see _enqueue_together).
            sequence = await self._group.write(task)
            if sequence is None:  # cannot be: the script answers for every task it enqueued
                raise BackendUnavailable("the Redis enqueue returned no sequence")
            task.sequence = sequence
            return None
        # Concurrent keyed creates share one script call too, keyed by their idempotency keys.
        outcome = await self._keyed_group.write((task, claim))
        if isinstance(outcome, IdempotentReplay):
            return outcome
        if outcome is None:  # cannot be: the script answers for every task
            raise BackendUnavailable("the Redis enqueue returned no sequence")
        task.sequence = outcome
        return None

    async def _enqueue_claimed_together(
        self, rows: list[tuple[TaskRecord, IdempotencyClaim]]
    ) -> dict[str, int | IdempotentReplay]:
        """Claim the keys of ``rows`` and enqueue the tasks of the claims won, in one script;
        by key, the new task's sequence or the claim that held the key."""
        answers = await self._run_enqueue_many(
            [
                [
                    *_enqueue_entry(task),
                    claim.key,
                    f"{claim.request_hash} {task.task_id}",
                    max(1, claim.expires_at - task.created_at),
                ]
                for task, claim in rows
            ]
        )
        outcomes: dict[str, int | IdempotentReplay] = {}
        for (_, claim), answer in zip(rows, answers, strict=True):
            if isinstance(answer, bytes):
                request_hash, _, task_id = answer.decode().partition(" ")
                outcomes[claim.key] = IdempotentReplay(task_id=task_id, request_hash=request_hash)
            else:
                outcomes[claim.key] = int(answer)
        return outcomes

    async def enqueue_many(self, tasks: list[TaskRecord]) -> None:
        """Enqueue ``tasks`` in one script: Redis runs all or none."""
        sequences = await self._enqueue_together(tasks)
        for task in tasks:
            task.sequence = sequences[task.task_id]

    async def _enqueue_together(self, tasks: list[TaskRecord]) -> dict[str, int]:
        # One script call for the lot: one round trip, one PUBLISH, and a single argument for
        # redis-py to pack. A pipeline of single-task scripts cost twice the server's CPU per task
        # (bench/README) and a SCRIPT EXISTS round trip before each MULTI/EXEC.
        sequences = await self._run_enqueue_many([_enqueue_entry(task) for task in tasks])
        return {task.task_id: int(seq) for task, seq in zip(tasks, sequences, strict=True)}

    async def _run_enqueue_many(self, entries: list[list[Any]]) -> list[Any]:
        """Run :data:`_ENQUEUE_MANY` over ``entries`` (see it for their shape); its answers."""
        payload = msgspec.msgpack.encode(entries)
        async with self._guard():
            answers: list[Any] = await self._enqueue_many(
                keys=[self._seq],
                args=[self._prefix, self._channel, payload, self._known_sequence],
            )
        numbers = [answer for answer in answers if isinstance(answer, int)]
        if numbers:
            self._known_sequence = max(self._known_sequence, *numbers)
        return answers

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._guard():
            fields = await _await(self.client.hgetall(self._task_key(task_id)))
        return _record(task_id, fields) if fields else None

    async def list_tasks(
        self, *, before: str | None, limit: int, queue: str | None = None
    ) -> list[TaskRecord]:
        upper = f"({before}" if before else "+"
        index = self._ids if queue is None else f"{self._prefix}:qids:{queue}"
        async with self._guard():
            ids = await self.client.zrevrangebylex(index, upper, "-", start=0, num=limit)
            async with self.client.pipeline(transaction=False) as pipe:
                for raw_id in ids:
                    pipe.hgetall(self._task_key(_text(raw_id)))
                hashes = await pipe.execute()
        return [
            _record(_text(raw_id), fields)
            for raw_id, fields in zip(ids, hashes, strict=True)
            if fields  # acked between the two reads
        ]

    async def depth(self) -> int:
        async with self._guard():
            count: int = await self.client.zcard(self._ids)
        return count

    async def queue_counts(self, *, now: int) -> dict[str, QueueCounts]:
        async with self._guard():
            names = sorted(_text(name) for name in await _await(self.client.smembers(self._queues)))
            async with self.client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.zcard(f"{self._prefix}:qids:{name}")
                depths = await pipe.execute()
            counts: dict[str, QueueCounts] = {}
            for name, depth in zip(names, depths, strict=True):
                if depth:
                    counts[name] = QueueCounts(int(depth), await self._oldest_due(name, now))
        return counts

    async def _oldest_due(self, queue: str, now: int) -> int | None:
        """Since when the longest-waiting due task of ``queue`` has been due (epoch ms), or None.

        The queue's ids sorted by id are in creation order (UUIDv7): read in pages from the
        oldest, a task is due since its creation or, if later, its scheduled time, and the
        search ends at the first task created after the best found (none after it can have
        been due sooner). Usually two tasks are read; a head of tasks scheduled for later is
        read past, up to :data:`_DUE_SCAN_MOST` of them (then the best found is the answer).
        """
        best: int | None = None
        index = f"{self._prefix}:qids:{queue}"
        for start in range(0, _DUE_SCAN_MOST, _DUE_SCAN_PAGE):
            ids = await self.client.zrange(index, start, start + _DUE_SCAN_PAGE - 1)
            if not ids:
                break
            async with self.client.pipeline(transaction=False) as pipe:
                for raw_id in ids:
                    pipe.hmget(self._task_key(_text(raw_id)), "created_at", "scheduled_at")
                times = await pipe.execute()
            for created, scheduled in times:
                if created is None:  # dequeued between the two reads
                    continue
                created_at = int(created)
                if best is not None and created_at >= best:
                    return best
                scheduled_at = int(scheduled) if scheduled else None
                if scheduled_at is not None and scheduled_at > now:
                    continue
                due = max(created_at, scheduled_at or 0)
                best = due if best is None else min(best, due)
        return best

    async def cancel(self, store: Store, task_id: str, *, now: int) -> TaskRecord | None:
        """Reserve the task itself, store it Cancelled, ack: the three steps of a transfer."""
        async with self._guard():
            reserved = await self._reserve_one(
                keys=[self._task_key(task_id), self._inflight],
                args=[self._prefix, now + self._reservation_ms],
            )
        if reserved is None:
            return None
        member = reserved[0].decode()
        task = _record(task_id, _pairs(reserved[1]))
        task.status, task.updated_at = Status.CANCELLED, now
        inserted = await self._store_reserved(store, {task_id: member}, [task])
        return task if task_id in inserted else None

    async def transfer(
        self,
        store: Store,
        *,
        now: int,
        queue: str = DEFAULT_QUEUE,
        lease_token: str | None = None,
        lease_expires_at: int | None = None,
        dispatched: bool = False,
    ) -> TaskRecord | None:
        # Concurrent dequeues of a queue share one reserve, insert and ack (group commit).
        return await self._dequeues.transfer(
            store,
            now=now,
            queue=queue,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            dispatched=dispatched,
        )

    async def _transfer_batch(
        self,
        store: Store,
        *,
        now: int,
        most: int,
        queue: str,
        lease_token: str | None,
        lease_expires_at: int | None,
        dispatched: bool,
    ) -> list[TaskRecord] | None:
        """Reserve up to ``most`` in one script, insert them in one store call, ack them in one
        script: three round trips for the whole batch. None when the queue had nothing ready.

        The batch may come back shorter than it was reserved, even empty: a task already in
        the store was handed out before (a recovered reservation raced its original owner), and
        is never handed out twice; :meth:`Queue.transfer_many` then takes another batch.
        """
        ready = f"{self._prefix}:ready:{queue}"
        scheduled = f"{self._prefix}:scheduled:{queue}"
        call = f"{self._calls_prefix}{next(self._calls)}"  # see _RESERVE
        async with self._guard():
            reply = await self._reserve(
                keys=[ready, scheduled, self._inflight, call],
                args=[
                    now + self._reservation_ms,
                    self._task_prefix,
                    now,
                    most,
                    max(1, self._reservation_ms),
                ],
            )
        if not reply:
            return None
        members: dict[str, str] = {}  # task id -> member, of every reservation to settle
        tasks: list[TaskRecord] = []
        for raw_member, flat in zip(reply[::2], reply[1::2], strict=True):
            member = raw_member.decode()
            task_id = member[17:]
            members[task_id] = member
            if not flat:  # a hash lost: nothing to deliver, only the member to ack
                _say_lost(task_id)
                continue
            task = _record(task_id, _pairs(flat))
            task.status = Status.DEQUEUED
            task.dequeued_at = task.updated_at = now
            task.lease_token, task.lease_expires_at = lease_token, lease_expires_at
            task.dispatched = dispatched
            tasks.append(task)
        inserted = await self._store_reserved(store, members, tasks, call=call)
        return [task for task in tasks if task.task_id in inserted]

    async def _store_reserved(
        self,
        store: Store,
        members: dict[str, str],
        tasks: list[TaskRecord],
        *,
        call: str | None = None,
    ) -> set[str]:
        """Insert reserved ``tasks`` into ``store``, then ack every reservation in ``members``
        (task id -> member), and delete ``call``, the key of the reserve call that took them
        (see :data:`_RESERVE`).

        If the insert fails the members go back to their places at once; if even that fails,
        :meth:`recover` returns them later. If the ack fails after the insert, :meth:`recover`
        acks them later. Returns the ids of the tasks this call inserted.
        """
        try:
            self._faults.hit("after_reserve")
            inserted = await store.insert_dequeued(tasks)
        except BaseException:
            with contextlib.suppress(BackendUnavailable):
                await asyncio.shield(self._release_members(members, call))
            raise
        try:
            self._faults.hit("after_insert")
            await self._ack_members(members, call)
        except BackendUnavailable:
            # The store has committed: the tasks are handed out and must be returned, or they
            # would sit unseen until their lease ran out. recover() acks the reservations later,
            # since the store has the tasks.
            logger.warning("acking %d reservations failed; recovery settles them", len(members))
        return inserted

    async def _ack_members(self, members: dict[str, str], call: str | None = None) -> None:
        keys = [self._inflight, self._ids] + ([call] if call else [])
        async with self._guard():
            await self._ack(keys=keys, args=[self._prefix, *_flat_pairs(members)])

    async def _release_members(self, members: dict[str, str], call: str | None = None) -> int:
        keys = [self._inflight] + ([call] if call else [])
        async with self._guard():
            moved, *dropped = await self._release(
                keys=keys, args=[self._prefix, now_ms(), *_flat_pairs(members)]
            )
        for task_id in dropped:
            _say_lost(_text(task_id))
        return int(moved)

    async def requeue(
        self, store: Store, task: TaskRecord, *, now: int, note: str | None, redrive: bool = False
    ) -> bool:
        """Return a Dequeued task to Redis, at its original position, in three steps.

        1. In the store, Dequeued -> Queued under a new token (fenced by the lease token): the row
           now marks a task on its way back. 2. Add it to Redis. 3. Delete the marked row. A crash
           after 1 or 2 is finished by :meth:`recover`; a dequeue that takes the task between 2 and
           3 revives the marked row (``store_insert``), and step 3 then deletes nothing.
        """
        marker = str(uuid.uuid4())
        changes = TaskChanges(lease_token=marker, lease_expires_at=None, error=note)
        if redrive:
            # Written in step 1, so that a re-drive cut off before Redis has it (by a Redis
            # outage, a crash) is finished by recover() with a fresh set of attempts: with the
            # spent ones it came back Dequeued and unable to start, again and again.
            changes = msgspec.structs.replace(
                changes,
                attempts=0,
                scheduled_at=None,
                next_attempt_at=None,
                dead_letter=False,
                dispatched=False,
                result=None,
                completed_at=None,
            )
        marked = await store.compare_and_set(
            task.task_id,
            expected={Status.FAILED if redrive else Status.DEQUEUED},
            target=Status.QUEUED,
            now=now,
            changes=changes,
            lease_token=None if redrive else task.lease_token,
        )
        if marked is None:
            return False
        try:
            await self._return(store, marked, marker)
        except BackendUnavailable:
            # This process knows the mark is abandoned: its next recover() finishes it as soon
            # as Redis answers. Otherwise it waited reservation_seconds (30 s) like a mark of a
            # process that died mid-requeue, which might still be at work: a re-drive answered
            # 503 was Queued to GET (409 to a second re-drive) and yet not dequeuable that long.
            self._abandoned[marked.task_id] = marker
            raise
        return True

    async def _return(self, store: Store, task: TaskRecord, marker: str) -> None:
        member = f"{task.sequence:016d}:{task.task_id}"
        async with self._guard():
            await self._requeue(
                keys=[self._task_key(task.task_id)],
                args=[
                    member,
                    task.sequence,
                    task.task_id,
                    *_hash_values(task),
                    self._channel,
                    self._prefix,
                    now_ms(),
                ],
            )
        await store.remove_queued(task.task_id, marker)

    async def listen(self, on_enqueue: Callable[[], None]) -> None:
        """Subscribe to the channel every enqueue publishes on, until cancelled."""
        async with self._guard():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                async for _ in pubsub.listen():
                    on_enqueue()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        raise BackendUnavailable("the Redis subscription ended")

    async def follow_store(self, store: Store) -> None:
        """Once per process: move the queued tasks of versions before 0.3 into the ``default``
        queue, and move the sequence counter past every number the store's own database queue
        handed out (:meth:`Store.queue_sequence`).

        Why the counter: the README's way up switches a store from its database's queue to
        Redis, whose counter starts at 1, while a task dequeued before the switch keeps its
        number. Its requeue (a lease that ran out) or re-drive put it back behind every task of
        its priority created since, until the counter caught up: after a million tasks on the
        database's queue, behind the next million. A Redis that lost its data (restarted
        without it) starts again at 1 too, behind the numbers of the tasks the store holds:
        those of the tasks Redis itself numbered count as well (:meth:`Store.queue_sequence`,
        one scan of the tasks), and :meth:`recover` follows again when the ``followed`` key,
        written with the counter in one script, is gone.

        Raises:
            BackendUnavailable: Redis or the store cannot be reached (the next call tries again).
        """
        if self._followed:
            return
        top = await store.queue_sequence()
        async with self._guard():
            moved = await self._upgrade(keys=[], args=[self._prefix])
            if await self._advance(keys=[self._seq, self._followed_key], args=[top]):
                logger.info("the queue's sequence counter moved past %d", top)
        self._known_sequence = max(self._known_sequence, top)
        if moved:
            logger.info("moved %d queued tasks from the pre-0.3 ready set to 'default'", moved)
        self._followed = True

    async def follow_sequence(self, number: int) -> None:
        async with self._guard():
            if await self._advance(keys=[self._seq], args=[number]):
                logger.info("the queue's sequence counter moved past %d", number)

    async def recover(self, store: Store, *, now: int) -> int:
        """Settle reservations whose deadline passed: ack those in the store, return the rest;
        and finish requeues (and re-drives) left half-done, rows still marked Queued in the
        store: at once those whose return to Redis failed in this process, and those of any
        process once ``reservation_seconds`` old (a crash interrupted them).

        Returns:
            How many reservations were returned to the queue.
        """
        if self._followed:
            async with self._guard():
                kept = await _await(self.client.exists(self._followed_key))
            if not kept:
                logger.warning(
                    "the Redis queue's keys are gone (Redis restarted without its data, or lost "
                    "it): the tasks queued in it are lost; its sequence counter follows the "
                    "store's numbers again"
                )
                self._followed = False
        await self.follow_store(store)
        for task_id, marker in list(self._abandoned.items()):
            current = await store.get(task_id)
            # Still this process's mark: not taken by a dequeue meanwhile (which revives the
            # row, Dequeued) nor finished by another server's recovery (which deletes it).
            mark = None if current is None else (current.status, current.lease_token)
            if current is not None and mark == (Status.QUEUED, marker):
                await self._return(store, current, marker)
            del self._abandoned[task_id]
        for marked in await store.list_tasks(status=Status.QUEUED, before=None, limit=100):
            if marked.updated_at < now - self._reservation_ms and marked.lease_token:
                await self._return(store, marked, marked.lease_token)
        async with self._guard():
            expired = await self.client.zrangebyscore(self._inflight, "-inf", now, start=0, num=100)
        returned = 0
        for raw in expired:
            member = _text(raw)
            task_id = member[17:]
            if await store.get(task_id) is not None:
                await self._ack_members({task_id: member})
            elif await self._release_members({task_id: member}):
                returned += 1
                logger.warning("task %s: returned an expired reservation to the queue", task_id)
        return returned

    async def register_store(
        self, store_id: str, process_id: str, *, now: int, since: int
    ) -> dict[str, int]:
        # One field per process, "store_id process_id" -> last seen: a process that stops
        # cleanly takes its own field out, and a killed one's ages out, without touching the
        # others'. Fields unseen for a day are forgotten here, by whoever reads.
        field = f"{store_id} {process_id}"
        async with self._guard():
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(self._stores, field, now)
                pipe.hgetall(self._stores)
                _, fields = await pipe.execute()
            seen: dict[str, int] = {}
            stale = []
            for key, value in fields.items():
                other, at = _text(key).split(" ", 1)[0], int(value)
                if at < now - _STORE_FORGET_MS:
                    stale.append(key)
                elif other != store_id and at >= since:
                    seen[other] = max(at, seen.get(other, at))
            if stale:
                await _await(self.client.hdel(self._stores, *stale))
        return seen

    async def unregister_store(self, store_id: str, process_id: str) -> None:
        async with self._guard():
            await _await(self.client.hdel(self._stores, f"{store_id} {process_id}"))

    async def ping(self) -> None:
        async with self._guard():
            await _await(self.client.ping())

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory_policy``, read from ``INFO memory`` (hosted Redis services that
        refuse ``CONFIG GET`` mostly allow ``INFO``); ``"unknown"`` when Redis refuses INFO (an
        ACL user without it, a renamed command: the queue works all the same), None when the
        answer does not say.

        Raises:
            BackendUnavailable: Redis cannot be reached.
        """
        try:
            info = await self.client.info("memory")
        except ResponseError:
            return "unknown"
        except RedisError as exc:
            raise BackendUnavailable(f"the Redis queue failed: {exc}") from exc
        policy = info.get("maxmemory_policy")
        return None if policy is None else _text(policy)

    async def close(self) -> None:
        await self.client.aclose()

    async def flush(self) -> None:
        """Delete every key under this queue's prefix (tests and resets)."""
        async with self._guard():
            keys = [key async for key in self.client.scan_iter(match=f"{self._prefix}:*")]
            if keys:
                await self.client.delete(*keys)


def _say_lost(task_id: str) -> None:
    """Warn that the queued member of ``task_id`` was found without its task hash and dropped:
    Redis evicted the hash (a ``maxmemory-policy`` other than ``noeviction``) or it was deleted
    by hand; the task is lost and was never stored."""
    logger.warning(
        "task %s: its queued entry in Redis has no task hash (evicted by Redis, whose "
        "maxmemory-policy must be noeviction, or deleted by hand): the task is lost, dropped",
        task_id,
        extra={"task_id": task_id},
    )


async def _await(value: Awaitable[Any] | Any) -> Any:
    # redis-py types some commands as "Awaitable[T] | T" for its sync/async union.
    return await cast(Awaitable[Any], value)


def _enqueue_entry(task: TaskRecord) -> list[Any]:
    """A task as :data:`_ENQUEUE_MANY` takes it: its id, then its hash values as strings."""
    return [task.task_id, *map(_redis_text, _hash_values(task))]


def _hash_values(task: TaskRecord) -> list[Any]:
    """The task hash's values of :data:`_FIELDS`, in order ("" for none)."""
    return ["" if value is None else value for value in queued_values(task)[1:]]


def _redis_text(value: Any) -> str:
    """``value`` as redis-py would send it (``str`` of a number), so a hash field holds the same
    text whichever script wrote it."""
    return value if isinstance(value, str) else str(value)


def _flat_pairs(members: dict[str, str]) -> list[str]:
    """Return ``members`` (task id -> member) as the scripts' ARGV: member, task id, ..."""
    return [value for task_id, member in members.items() for value in (member, task_id)]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _record(task_id: str, fields: dict[bytes, bytes]) -> TaskRecord:
    error = fields[b"error"].decode()
    return TaskRecord(
        task_id=task_id,
        sequence=int(fields[b"sequence"]),
        status=Status.QUEUED,
        priority=int(fields[b"priority"]),
        task_data=fields[b"task_data"],
        callback_url=fields[b"callback_url"].decode(),
        max_retries=int(fields[b"max_retries"]),
        timeout_seconds=float(fields[b"timeout_seconds"]),
        attempts=int(fields[b"attempts"]),
        error=error or None,
        created_at=int(fields[b"created_at"]),
        updated_at=int(fields[b"updated_at"]),
        queue=fields.get(b"queue", b"default").decode(),
        scheduled_at=int(scheduled) if (scheduled := fields.get(b"scheduled_at")) else None,
        retry_policy=policy_of(fields.get(b"retry_policy")),
    )
