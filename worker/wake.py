"""Waking an idle worker as soon as a job is submitted, instead of at its next poll (and hearing
of cancelled jobs, on the same pub/sub connection).

An idle worker polls the queue every ``PROMPTQ_POLL_DELAY_S`` (for retries whose wait has passed).
Producers publish on ``promptq:wake`` after enqueueing (once a job, or once a ``submit_many``
chunk); each worker listens there and sets ``event``, which ends its poll's sleep
(``worker.arq_seam``), so a new job starts within milliseconds. A busy worker is not slowed either:
while jobs wait for its slots, a finishing job sets the same event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from promptq_core.background import REDIS_TROUBLE, Background, repeat
from promptq_core.contract import CANCEL_CHANNEL, WAKE_CHANNEL
from worker.logs import get_logger

__all__ = ["WakeListener"]

log = get_logger("promptq.wake")
RECONNECT_S = 1.0


class WakeListener:
    """Sets ``event`` whenever a producer publishes on the wake channel, and hands each job id
    published on the cancel channel to ``on_cancel``."""

    def __init__(self, redis: Redis, on_cancel: Callable[[str], object] | None = None) -> None:
        self.redis = redis
        self.on_cancel = on_cancel
        self.event = asyncio.Event()
        self._listener = Background("promptq-wake")

    def start(self) -> None:
        # a failure is logged, and the poll goes on meanwhile; listen again shortly
        self._listener.start(lambda: repeat(self._listen, RECONNECT_S, self._listen_failed))

    async def stop(self) -> None:
        await self._listener.stop()

    async def _listen(self) -> None:
        pubsub: Any = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(WAKE_CHANNEL, CANCEL_CHANNEL)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=60.0)
                if message is None:
                    continue
                if message["channel"] == CANCEL_CHANNEL.encode():
                    if self.on_cancel is not None:
                        self.on_cancel(message["data"].decode())
                else:
                    self.event.set()
        finally:
            with contextlib.suppress(*REDIS_TROUBLE):
                await pubsub.aclose()

    @staticmethod
    def _listen_failed(e: BaseException) -> None:
        log.warning("wake.listen_failed", error=str(e))
