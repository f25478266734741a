"""Waking an idle worker as soon as a job is submitted, instead of at its next poll (and hearing
of cancelled jobs, on the same pub/sub connection).

arq polls the queue every ``poll_delay`` seconds. Producers publish on ``promptq:wake`` after
enqueueing (once a job, or once a ``submit_many`` chunk); each worker listens there and ends its
poll sleep early, so a new job starts within milliseconds while an idle worker still polls rarely
(``PROMPTQ_POLL_DELAY_S``, for retries whose wait has passed). A busy worker is not slowed either:
while jobs wait for its slots, a finishing job sets the same event (``worker.claim``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

import arq.worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from producer.contract import CANCEL_CHANNEL, WAKE_CHANNEL
from worker.logs import get_logger
from worker.metrics import heartbeat
from worker.shutdown import running_worker

__all__ = ["WakeListener", "install_poll"]

log = get_logger("promptq.wake")
RECONNECT_S = 1.0


class WakeListener:
    """Sets ``event`` whenever a producer publishes on the wake channel, and hands each job id
    published on the cancel channel to ``on_cancel``."""

    def __init__(self, redis: Redis, on_cancel: Callable[[str], object] | None = None) -> None:
        self.redis = redis
        self.on_cancel = on_cancel
        self.event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="promptq-wake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
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
            except (RedisError, OSError) as e:  # the poll goes on meanwhile; listen again shortly
                log.warning("wake.listen_failed", error=str(e))
                await asyncio.sleep(RECONNECT_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()


async def _poll(step: float = 0.5) -> AsyncGenerator[float, None]:
    """arq's poll loop, whose sleep a wake message ends early (for a worker promptq set up)."""
    worker = running_worker()
    wake: asyncio.Event | None = getattr(worker, "promptq_wake", None)
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        heartbeat()
        yield before
        left_s = max(0.0, step - (loop.time() - before))
        if wake is None:
            await asyncio.sleep(left_s)
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left_s):
                await wake.wait()
        wake.clear()


def install_poll() -> None:
    """Use :func:`_poll` for arq's main loop (idempotent; a worker without a wake event polls as arq does)."""
    arq.worker.poll = _poll  # type: ignore[attr-defined]
