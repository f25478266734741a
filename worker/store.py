"""The result document's transitions, each one atomic (a Lua script, registered once).

- ``start``: ``queued`` -> ``running``, unless the document is already terminal (then the job must
  not call the API again: it returns the stored result instead).
- ``requeue``: back to ``queued`` with the failed attempt's error, while a retry waits.
- ``finish``: the terminal document, written together with the removal of arq's bookkeeping for
  the job, so that no redelivery can run it again once its result is stored.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from producer.contract import (
    ARQ_IN_PROGRESS_KEY_PREFIX,
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    QUEUE_NAME,
    TERMINAL_STATUSES,
    JobResult,
    result_key,
)

__all__ = ["ResultStore"]

_TERMINAL_LUA_SET = "{" + ", ".join(f"{s} = true" for s in sorted(TERMINAL_STATUSES)) + "}"

# KEYS: result document. ARGV: new document, time to live (ms) if there is none yet (else it is kept).
# Returns the stored document when it is already terminal (and writes nothing), else nil.
_WRITE_UNLESS_TERMINAL_LUA = f"""
local terminal = {_TERMINAL_LUA_SET}
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and terminal[doc['status']] then return current end
end
if current then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return false
"""

# KEYS: result document, arq job record, arq in-progress key, arq retry counter, queue.
# ARGV: terminal document, time to live (ms), job id.
_FINISH_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[3])
return 1
"""


class ResultStore:
    def __init__(self, redis: Redis, result_ttl_s: int) -> None:
        self.redis = redis
        self.result_ttl_ms = result_ttl_s * 1000
        self._write_unless_terminal = redis.register_script(_WRITE_UNLESS_TERMINAL_LUA)
        self._finish = redis.register_script(_FINISH_LUA)

    async def start(self, running: JobResult) -> JobResult | None:
        """Mark the job running; return the stored result instead if it is already terminal."""
        return await self._unless_terminal(running)

    async def requeue(self, queued: JobResult) -> JobResult | None:
        """Mark the job queued again (a retry waits); a terminal document is left alone."""
        return await self._unless_terminal(queued)

    async def finish(self, final: JobResult) -> None:
        job_id = final.job_id
        keys = [
            result_key(job_id),
            ARQ_JOB_KEY_PREFIX + job_id,
            ARQ_IN_PROGRESS_KEY_PREFIX + job_id,
            ARQ_RETRY_KEY_PREFIX + job_id,
            QUEUE_NAME,
        ]
        await self._finish(keys=keys, args=[final.to_json(), self.result_ttl_ms, job_id])

    async def _unless_terminal(self, doc: JobResult) -> JobResult | None:
        stored: Any = await self._write_unless_terminal(
            keys=[result_key(doc.job_id)], args=[doc.to_json(), self.result_ttl_ms]
        )
        return JobResult.from_json(stored) if stored else None
