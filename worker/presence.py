"""The worker's entry in the fleet's list (``WORKERS_KEY``): its host, pid and slots, how many of
them are busy, and its calls to each backend since it started, written every ``WORKER_BEAT_S`` and
removed at shutdown. The dashboard reads it:
a worker whose last beat is older than a few beats is shown gone; one silent for
``WORKER_FORGET_S`` is dropped by the next beat of any worker."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from promptq_core.background import Background, repeat
from promptq_core.contract import DEFAULT_QUEUE, WORKER_BEAT_S, WORKER_FORGET_S, WORKERS_KEY, WORKERS_SEEN_KEY, dumps
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["Presence"]

log = get_logger("promptq.presence")


class Presence:
    def __init__(
        self,
        redis: Redis,
        slots: int,
        busy: Callable[[], int],
        every_s: float = WORKER_BEAT_S,
        backends: Callable[[], dict[str, Any]] = dict,
        queues: tuple[str, ...] = (DEFAULT_QUEUE,),
    ) -> None:
        self.redis, self.slots, self.busy, self.every_s = redis, slots, busy, every_s
        self.backends, self.queues = backends, queues
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{secrets.token_hex(2)}"
        self.started_at = round(time.time(), 3)
        self._beat = WorkerScript(redis, "beat")
        self._beats = Background("promptq-presence")

    def start(self) -> None:
        self._beats.start(lambda: repeat(self.beat, self.every_s, _beat_failed))

    async def beat(self) -> None:
        entry = {
            "id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "slots": self.slots,
            "busy": self.busy(),
            "started_at": self.started_at,
            "queues": list(self.queues),
            "backends": self.backends(),
        }
        await self._beat(worker_id=self.worker_id, entry_json=dumps(entry), forget_ms=WORKER_FORGET_S * 1000)

    async def stop(self) -> None:
        """Stop beating and take the entry out (Redis away: it is shown gone after a few beats)."""
        await self._beats.stop()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(WORKERS_KEY, self.worker_id)
                pipe.zrem(WORKERS_SEEN_KEY, self.worker_id)
                await pipe.execute()
        except Exception as e:  # a shutdown goes on whatever Redis does
            log.debug("presence.leave_failed", error=str(e))


def _beat_failed(e: BaseException) -> None:
    log.debug("presence.beat_failed", error=str(e))
