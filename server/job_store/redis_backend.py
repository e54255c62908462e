"""RedisJobBackend: v2 jobs in Redis, shared by server processes on any number of machines.

Keys, under PREFIX:
  job:<id>             hash: the job's fields and, once COMPLETED, its audio; expires with the result
  all                  sorted set of the stored jobs' ids, scored by when each expires (+inf while
                       unfinished): max_jobs counts it
  owner:<digest>       the same for one API key's jobs ("owner:" on an open server): its quota
  instances            set of the instances that have inserted jobs
  alive:<instance>     present while the instance's lease lasts (Redis expires it)
  unfinished:<instance>  set of the ids the instance is generating

Every check-then-write is one Lua script, so it is atomic for all clients. Scripts reach keys that
they compute (the jobs of an expired instance): one Redis server, or a primary with replicas, not
Redis Cluster.
"""

from __future__ import annotations

import asyncio
import functools
import math
from typing import Iterable

from redis.asyncio import Redis

from .records import UNFINISHED, Refusal, StoredJob

PREFIX = "orpheus-local:jobs:"
_FIELDS = ("owner", "instance", "status", "created", "started", "finished", "expires", "error")

# KEYS: all, owner's set, job hash, instance's unfinished set, instances.
# ARGV: now, max_jobs, quota (0: none), id, owner, instance, created.
_INSERT = """
local function earliest(key)
  local first = redis.call('ZRANGEBYSCORE', key, '-inf', '(+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return first[2] or false
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local quota = tonumber(ARGV[3])
if quota > 0 and redis.call('ZCARD', KEYS[2]) >= quota then return {'quota', earliest(KEYS[2])} end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return {'full', earliest(KEYS[1])} end
redis.call('HSET', KEYS[3], 'owner', ARGV[5], 'instance', ARGV[6], 'status', 'QUEUED', 'created', ARGV[7])
redis.call('ZADD', KEYS[1], '+inf', ARGV[4])
redis.call('ZADD', KEYS[2], '+inf', ARGV[4])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('SADD', KEYS[5], ARGV[6])
return {'ok', false}
"""

# KEYS: job hash. ARGV: started.
_MARK_PROCESSING = """
if redis.call('HGET', KEYS[1], 'status') == 'QUEUED' then
  redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'started', ARGV[1])
end
"""

# KEYS: job hash, all, owner's set, instance's unfinished set.
# ARGV: id, status, finished, expires, time to live (ms), error, audio.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'QUEUED' and status ~= 'PROCESSING' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[3], 'expires', ARGV[4], 'error', ARGV[6],
           'audio', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""

# KEYS: job hash, all. ARGV: id, owner, now, prefix.
_DELETE = """
local job = redis.call('HMGET', KEYS[1], 'owner', 'instance', 'expires')
if job[1] ~= ARGV[2] then return 0 end
if job[3] and tonumber(job[3]) <= tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[4] .. 'owner:' .. job[1], ARGV[1])
redis.call('SREM', ARGV[4] .. 'unfinished:' .. job[2], ARGV[1])
return 1
"""

# ARGV: prefix, finished, expires, time to live (ms), reason, retiring instance ('' for none).
_FAIL_ORPHANS = """
local prefix = ARGV[1]
if ARGV[6] ~= '' then redis.call('DEL', prefix .. 'alive:' .. ARGV[6]) end
local failed = 0
for _, instance in ipairs(redis.call('SMEMBERS', prefix .. 'instances')) do
  if redis.call('EXISTS', prefix .. 'alive:' .. instance) == 0 then
    local unfinished = prefix .. 'unfinished:' .. instance
    for _, id in ipairs(redis.call('SMEMBERS', unfinished)) do
      local key = prefix .. 'job:' .. id
      local job = redis.call('HMGET', key, 'status', 'owner')
      if job[1] == 'QUEUED' or job[1] == 'PROCESSING' then
        redis.call('HSET', key, 'status', 'FAILED', 'finished', ARGV[2], 'expires', ARGV[3], 'error', ARGV[5])
        redis.call('PEXPIRE', key, ARGV[4])
        redis.call('ZADD', prefix .. 'all', ARGV[3], id)
        redis.call('ZADD', prefix .. 'owner:' .. job[2], ARGV[3], id)
        failed = failed + 1
      end
    end
    redis.call('DEL', unfinished)
    redis.call('SREM', prefix .. 'instances', instance)
  end
end
return failed
"""


def _cancellable(method):
    """redis-py can swallow a cancellation that arrives in the middle of a command (the cancelled
    task then runs on, e.g. a deleted job's generation): the command runs shielded, in a task of its
    own, so that the caller is cancelled at once while the command completes by itself."""

    @functools.wraps(method)
    async def shielded(self, *args, **kwargs):
        return await asyncio.shield(method(self, *args, **kwargs))

    return shielded


def _owner_tag(owner: str | None) -> str:
    return "" if owner is None else owner


def _number(value: bytes | None) -> float | None:
    return None if value is None else float(value)


class RedisJobBackend:
    def __init__(self, url: str):
        self.url = url
        self.description = f"Redis at {_without_password(url)}"
        self._redis: Redis | None = None

    async def open(self) -> None:
        self._redis = Redis.from_url(self.url)  # bytes back: audio is binary
        await self._redis.ping()  # a wrong URL fails here, at start-up, not on a client's request
        register = self._redis.register_script
        self._insert, self._mark_processing, self._finish = register(_INSERT), register(_MARK_PROCESSING), register(_FINISH)
        self._delete, self._fail_orphans = register(_DELETE), register(_FAIL_ORPHANS)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @_cancellable
    async def insert(self, job: StoredJob, *, now: float, max_jobs: int, quota: int | None) -> Refusal | None:
        keys = [_key("all"), _key("owner:", _owner_tag(job.owner)), _key("job:", job.id),
                _key("unfinished:", job.instance), _key("instances")]
        outcome, earliest = await self._insert(keys=keys, args=[repr(now), max_jobs, quota or 0, job.id,
                                                                _owner_tag(job.owner), job.instance, repr(job.created)])
        if outcome == b"ok":
            return None
        return Refusal(outcome.decode(), _number(earliest))

    @_cancellable
    async def get(self, job_id: str) -> StoredJob | None:
        job = dict(zip(_FIELDS, await self._redis.hmget(_key("job:", job_id), _FIELDS)))
        if job["status"] is None:
            return None
        return StoredJob(id=job_id, owner=job["owner"].decode() or None, instance=job["instance"].decode(),
                         status=job["status"].decode(), created=float(job["created"]),
                         started=_number(job["started"]), finished=_number(job["finished"]),
                         expires=_number(job["expires"]), error=(job["error"] or b"").decode() or None)

    @_cancellable
    async def audio(self, job_id: str) -> bytes | None:
        return await self._redis.hget(_key("job:", job_id), "audio")

    @_cancellable
    async def mark_processing(self, job_id: str, started: float) -> None:
        await self._mark_processing(keys=[_key("job:", job_id)], args=[repr(started)])

    @_cancellable
    async def finish(self, job: StoredJob, audio: bytes | None) -> bool:
        keys = [_key("job:", job.id), _key("all"), _key("owner:", _owner_tag(job.owner)), _key("unfinished:", job.instance)]
        args = [job.id, job.status, repr(job.finished), repr(job.expires), _ttl_ms(job.expires - job.finished),
                job.error or "", audio or b""]
        return await self._finish(keys=keys, args=args) == 1

    @_cancellable
    async def delete(self, job_id: str, owner: str | None, now: float) -> bool:
        keys = [_key("job:", job_id), _key("all")]
        return await self._delete(keys=keys, args=[job_id, _owner_tag(owner), repr(now), PREFIX]) == 1

    @_cancellable
    async def heartbeat(self, instance: str, lease_s: float) -> None:
        await self._redis.set(_key("alive:", instance), b"1", px=_ttl_ms(lease_s))

    @_cancellable
    async def unfinished(self, job_ids: Iterable[str]) -> set[str]:
        job_ids = list(job_ids)
        if not job_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(_key("job:", job_id), "status")
            statuses = await pipe.execute()
        return {job_id for job_id, status in zip(job_ids, statuses) if status is not None and status.decode() in UNFINISHED}

    @_cancellable
    async def fail_orphans(self, finished: float, expires: float, reason: str, *, retiring: str | None = None) -> int:
        # The expired jobs go by themselves: their hashes expire, and insert() drops them from the sets.
        return await self._fail_orphans(args=[PREFIX, repr(finished), repr(expires), _ttl_ms(expires - finished),
                                              reason, retiring or ""])


def _key(*parts: str) -> str:
    return PREFIX + "".join(parts)


def _ttl_ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{host}" if at else url

