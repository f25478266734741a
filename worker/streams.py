"""A streamed job's events, written to the job's stream (``QueueKeys.stream``) as the API sends its deltas.

The entries are the contract's (``promptq_core.contract.STREAM_KEY_PREFIX``): ``delta`` entries while
the answer arrives, a ``restart`` entry when a later attempt begins after an earlier one wrote
to the stream (a reader drops the text it had), and the ``done`` entry, which ``Settle.finish``
writes together with the result document. The stream lives as long as the result.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from promptq_core.contract import STREAM_MAXLEN
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["StreamWriter", "Streams"]

log = get_logger("promptq.stream")


class Streams:
    """The event streams of one worker's jobs (their script registered once)."""

    def __init__(self, redis: Redis, ttl_ms: int) -> None:
        self.redis, self.ttl_ms = redis, ttl_ms
        self._begin = WorkerScript(redis, "stream_begin", rides_out=True)

    def writer(self, key: str) -> StreamWriter:
        """A writer for one attempt of the job whose stream is at ``key`` (``QueueKeys.stream``)."""
        return StreamWriter(self, key)

    async def begin(self, key: str, attempt: int) -> None:
        """Mark a new attempt on the stream at ``key``, if an earlier one left deltas behind."""
        await self._begin(stream=key, attempt=attempt, ttl_ms=self.ttl_ms)


class StreamWriter:
    """Appends one job's events; one per attempt."""

    def __init__(self, streams: Streams, key: str) -> None:
        self.streams, self.key = streams, key
        self._fresh = True
        self._dropping = False

    async def begin(self, attempt: int) -> None:
        """Mark a new attempt, if an earlier one left deltas behind."""
        await self.streams.begin(self.key, attempt)

    async def delta(self, text: str) -> None:
        """Append a piece of the answer; a full Redis drops it (the document will hold the whole
        answer, and the call goes on)."""
        try:
            async with self.streams.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.key, {"type": "delta", "text": text}, maxlen=STREAM_MAXLEN, approximate=True)
                if self._fresh:  # the first entry creates the stream: give it the result's lifetime
                    pipe.pexpire(self.key, self.streams.ttl_ms)
                await pipe.execute()
        except OutOfMemoryError as e:
            if not self._dropping:
                log.warning("stream.delta_dropped", error=str(e), note="Redis is full; the result keeps the answer")
            self._dropping = True
            return
        self._fresh = False
