"""Waking an idle worker as soon as a job is submitted, instead of at its next poll (and hearing
of cancelled jobs and of backends that recovered, on the same pub/sub connection).

An idle worker polls its queues every ``PROMPTQ_POLL_DELAY_S`` (for retries whose wait has passed).
Producers publish on the queue's wake channel (``promptq:{queue}:wake``) after enqueueing (once a
job, or once a ``submit_many`` chunk); each worker listens on its queues' and sets ``event``, which
ends its poll's sleep
(``worker.arq_seam``), so a new job starts within milliseconds. A busy worker is not slowed either:
while jobs wait for its slots, a finishing job sets the same event.

A parked worker (``worker.queue``) also listens on its own handoff channel in each queue, where a
submit publishes the job it handed to it; ``on_handoff`` runs it. While the channels are not
subscribed (``listening`` clear) the worker does not park, and its parking ends when its connection
does; a submit hands nothing to a channel nobody listens to. A connection lost without a word (a
middlebox dropped it) is found by its pings within ``3 * PING_S``; a handoff lost meanwhile runs again
once its lease runs out, as the job of a worker that died.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from promptq_core.background import REDIS_TROUBLE, Background, repeat
from promptq_core.connect import pubsub_client
from promptq_core.contract import BACKENDS_CHANNEL, CANCEL, WAKE, QueueKeys
from worker.logs import get_logger

__all__ = ["WakeListener"]

log = get_logger("promptq.wake")
RECONNECT_S = 1.0
PING_S = 5.0
"""A connection that brings nothing for this long is asked for a pong; one silent for three times
as long is dropped and made anew (a connection a middlebox dropped without a word hears nothing)."""
BACKENDS_BYTES = BACKENDS_CHANNEL.encode()


class WakeListener:
    """Sets ``event`` whenever a producer publishes on a queue's wake channel, hands each job
    published on a queue's cancel channel to ``on_cancel`` (as arq's id: ``{queue}job_id``), each
    recoveries count published on ``BACKENDS_CHANNEL`` to ``on_recovery``, and each job handed to
    this worker (on a queue's handoff channel for ``handoff_id``) to ``on_handoff``, with its queue;
    ``on_deaf`` is awaited whenever the channels are lost (the worker's parking ends then)."""

    def __init__(
        self,
        redis: Redis,
        queues: tuple[QueueKeys, ...],
        on_cancel: Callable[[str], object] | None = None,
        on_recovery: Callable[[int], object] | None = None,
        on_handoff: Callable[[QueueKeys, bytes], Awaitable[None]] | None = None,
        handoff_id: str = "",
        on_deaf: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.redis = redis
        self.on_cancel, self.on_recovery, self.on_handoff = on_cancel, on_recovery, on_handoff
        self.on_deaf = on_deaf
        self._cancels = {q.key(CANCEL).encode(): q.tag for q in queues}
        self._handoffs = {q.handoff(handoff_id).encode(): q for q in queues} if on_handoff and handoff_id else {}
        self._channels = [c for q in queues for c in (q.key(WAKE), q.key(CANCEL))] + [BACKENDS_CHANNEL]
        self._channels += [c.decode() for c in self._handoffs]
        self.event = asyncio.Event()
        self.listening = asyncio.Event()
        """Set once the channels are subscribed (a job claimed before would miss its cancel)."""
        self._listener = Background("promptq-wake")

    def start(self) -> None:
        # a failure is logged, and the poll goes on meanwhile; listen again shortly
        self._listener.start(lambda: repeat(self._listen, RECONNECT_S, self._listen_failed))

    async def started(self, timeout_s: float) -> bool:
        """Wait until the channels are subscribed, for up to ``timeout_s`` (Redis away: the worker
        goes on, and a cancel published before the subscription reaches the job by its document)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.listening.wait()
        return self.listening.is_set()

    async def stop(self) -> None:
        await self._listener.stop()

    async def _listen(self) -> None:
        source = await pubsub_client(self.redis)  # (on a Cluster: a node of its, chosen afresh each time)
        pubsub: Any = source.pubsub(ignore_subscribe_messages=True)
        loop = asyncio.get_running_loop()
        try:
            await pubsub.subscribe(*self._channels)
            self.listening.set()
            heard_at = loop.time()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=PING_S)
                if message is None:
                    if loop.time() - heard_at > 3 * PING_S:
                        raise ConnectionError(f"the pub/sub connection brought nothing for {3 * PING_S:.0f} s")
                    await pubsub.ping()
                    continue
                heard_at = loop.time()
                if message.get("type") != "pong":
                    await self._dispatch(message["channel"], message["data"])
        finally:
            self.listening.clear()  # (no parking until the channels are back)
            with contextlib.suppress(*REDIS_TROUBLE):
                await pubsub.aclose()
                if source is not self.redis:
                    await source.aclose()
            if self.on_deaf is not None:  # (handoffs would go unheard: the parking ends now, not when it runs out)
                await self.on_deaf()

    async def _dispatch(self, channel: bytes, data: bytes) -> None:
        """One message, to whom its channel says."""
        if (tag := self._cancels.get(channel)) is not None:
            if self.on_cancel is not None:
                self.on_cancel(tag + data.decode())
        elif (queue := self._handoffs.get(channel)) is not None:
            if self.on_handoff is not None:
                await self.on_handoff(queue, data)
        elif channel == BACKENDS_BYTES:
            if self.on_recovery is not None and data.isdigit():
                self.on_recovery(int(data))
        else:
            self.event.set()

    @staticmethod
    def _listen_failed(e: BaseException) -> None:
        log.warning("wake.listen_failed", error=str(e))
