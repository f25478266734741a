"""A streamed job's events, written to ``promptq:stream:{job_id}`` as the API sends its deltas.

The entries are the contract's (``producer.contract.STREAM_KEY_PREFIX``): ``delta`` entries while
the answer arrives, a ``restart`` entry when a later attempt begins after an earlier one wrote
to the stream (a reader drops the text it had), and the ``done`` entry, which ``ResultStore.finish``
writes together with the result document. The stream lives as long as the result.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from producer.contract import STREAM_MAXLEN, stream_key
from worker.logs import get_logger
from worker.redis_conn import persist

__all__ = ["StreamWriter"]

log = get_logger("promptq.stream")

# KEYS: the stream. ARGV: attempt, max length, time to live (ms). A restart entry only when an
# earlier attempt wrote something.
_BEGIN_LUA = """#!lua flags=allow-oom
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', 'restart', 'attempt', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


class StreamWriter:
    """Appends one job's events; one per attempt."""

    def __init__(self, redis: Redis, job_id: str, ttl_ms: int) -> None:
        self.redis, self.key, self.ttl_ms = redis, stream_key(job_id), ttl_ms
        self._begin = redis.register_script(_BEGIN_LUA)
        self._fresh = True
        self._dropping = False

    async def begin(self, attempt: int) -> None:
        """Mark a new attempt, if an earlier one left deltas behind."""
        await persist(lambda: self._begin(keys=[self.key], args=[attempt, STREAM_MAXLEN, self.ttl_ms]))

    async def delta(self, text: str) -> None:
        """Append a piece of the answer; a full Redis drops it (the document will hold the whole
        answer, and the call goes on)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.key, {"type": "delta", "text": text}, maxlen=STREAM_MAXLEN, approximate=True)
                if self._fresh:  # the first entry creates the stream: give it the result's lifetime
                    pipe.pexpire(self.key, self.ttl_ms)
                await pipe.execute()
        except OutOfMemoryError as e:
            if not self._dropping:
                log.warning("stream.delta_dropped", error=str(e), note="Redis is full; the result keeps the answer")
            self._dropping = True
            return
        self._fresh = False
