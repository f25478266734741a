"""The result document's transitions, each one atomic (a Lua script, registered once).

- ``start``: ``queued`` -> ``running``, unless the document is already terminal (then the job must
  not call the API again: it returns the stored result instead).
- ``requeue``: back to ``queued`` with the failed attempt's error, while a retry waits.
- ``release``: back to ``queued`` when a shutdown interrupts the call, giving back arq's try.
- ``finish``: the terminal document, written together with the removal of arq's bookkeeping for
  the job, so that no redelivery can run it again once its result is stored; a failed job's id
  joins the failed set and its request is kept for ``Producer.retry``; a streamed job's stream gets
  its ``done`` entry. A document ``Producer.cancel`` marked ``cancelled`` is never overwritten.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from producer.contract import (
    ARQ_IN_PROGRESS_KEY_PREFIX,
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    FAILED_JOB_KEY_PREFIX,
    FAILED_SET,
    FAILED_SET_MAX,
    QUEUE_NAME,
    STREAM_MAXLEN,
    TERMINAL_STATUSES,
    JobResult,
    done_channel,
    result_key,
    stream_key,
)
from worker.redis_conn import persist

__all__ = ["ResultStore"]

_TERMINAL_LUA_SET = "{" + ", ".join(f"{s} = true" for s in sorted(TERMINAL_STATUSES)) + "}"

# The status of a stored document (nil when there is none, or it is not one).
_STATUS_OF_LUA = """
local function status_of(raw)
  if not raw then return nil end
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' then return doc['status'] end
  return nil
end
"""

# Shared head of the scripts below: KEYS[1] is the result document, ARGV[1] the new document,
# ARGV[2] its time to live (ms) if there is none yet (else the current one is kept). A terminal
# document is returned as is and nothing is written.
_UNLESS_TERMINAL_LUA = (
    _STATUS_OF_LUA
    + f"""
local terminal = {_TERMINAL_LUA_SET}
local current = redis.call('GET', KEYS[1])
if terminal[status_of(current)] then return current end
if current then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""
)

# ``start`` and ``requeue``: the head alone.
_WRITE_LUA = _UNLESS_TERMINAL_LUA + "return false"

# KEYS[2]: arq's try counter, which arq raised when it started the job.
_RELEASE_LUA = (
    _UNLESS_TERMINAL_LUA
    + """
local tries = tonumber(redis.call('GET', KEYS[2]) or '0')
if tries > 0 then redis.call('DECR', KEYS[2]) end
return false"""
)

# KEYS: result document, arq job record, arq in-progress key, arq try counter, queue, failed set,
# kept job record, event stream. ARGV: terminal document, time to live (ms), job id, failed ('1' or
# '0'), time of the failure (ms), size of the failed set, the job's done channel (the document is
# published there), its status, '1' for a streamed job (its stream gets the done entry), the stream's length.
# A failed job's record is kept beside its result (for Producer.retry) and its id joins the failed set.
# A job cancelled meanwhile keeps its cancelled document (arq's bookkeeping goes all the same).
_FINISH_LUA = (
    _STATUS_OF_LUA
    + """
local current = redis.call('GET', KEYS[1])
local cancelled = status_of(current) == 'cancelled'
if not cancelled then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if ARGV[4] == '1' then
    local record = redis.call('GET', KEYS[2])
    if record then redis.call('SET', KEYS[7], record, 'PX', ARGV[2]) end
    redis.call('ZADD', KEYS[6], ARGV[5], ARGV[3])
    redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -(tonumber(ARGV[6]) + 1))
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[3])
if cancelled then return current end
if ARGV[9] == '1' then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[10], '*', 'type', 'done', 'status', ARGV[8])
  redis.call('PEXPIRE', KEYS[8], ARGV[2])
end
redis.call('PUBLISH', ARGV[7], ARGV[1])
return false
"""
)


class ResultStore:
    def __init__(self, redis: Redis, result_ttl_s: int) -> None:
        self.redis = redis
        self.result_ttl_ms = result_ttl_s * 1000
        self._write = redis.register_script(_WRITE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._finish = redis.register_script(_FINISH_LUA)

    async def start(self, running: JobResult) -> JobResult | None:
        """Mark the job running; return the stored result instead (and change nothing) if it is
        already terminal."""
        return await self._write_unless_terminal(running)

    async def requeue(self, queued: JobResult) -> JobResult | None:
        """Mark the job queued again (a retry waits); a terminal document is left alone."""
        return await self._write_unless_terminal(queued)

    async def _write_unless_terminal(self, doc: JobResult) -> JobResult | None:
        keys = [result_key(doc.job_id)]
        args: list[str | int] = [doc.to_json(), self.result_ttl_ms]
        return _parse(await persist(lambda: self._write(keys=keys, args=args)))

    async def release(self, queued: JobResult) -> JobResult | None:
        """Mark the job queued again after an interrupted attempt and give back arq's try for it."""
        keys = [result_key(queued.job_id), ARQ_RETRY_KEY_PREFIX + queued.job_id]
        args: list[str | int] = [queued.to_json(), self.result_ttl_ms]
        return _parse(await persist(lambda: self._release(keys=keys, args=args)))

    async def finish(self, final: JobResult, *, streamed: bool = False) -> JobResult | None:
        """Write the terminal document; return the stored one instead if the job was cancelled
        meanwhile (that one stays)."""
        job_id = final.job_id
        keys = [
            result_key(job_id),
            ARQ_JOB_KEY_PREFIX + job_id,
            ARQ_IN_PROGRESS_KEY_PREFIX + job_id,
            ARQ_RETRY_KEY_PREFIX + job_id,
            QUEUE_NAME,
            FAILED_SET,
            FAILED_JOB_KEY_PREFIX + job_id,
            stream_key(job_id),
        ]
        failed = "1" if final.status == "failed" else "0"
        now_ms = int(time.time() * 1000)
        args: list[str | int] = [
            final.to_json(),
            self.result_ttl_ms,
            job_id,
            failed,
            now_ms,
            FAILED_SET_MAX,
            done_channel(job_id),
            final.status,
            "1" if streamed else "0",
            STREAM_MAXLEN,
        ]
        return _parse(await persist(lambda: self._finish(keys=keys, args=args)))


def _parse(stored: Any) -> JobResult | None:
    return JobResult.from_json(stored) if stored else None
