"""Push-based waiting: the worker publishes on ``promptq:done:{job_id}`` when a job ends.

A waiter subscribes to the job's channel first and reads the result document second, so a result
written before the subscription is seen by the read, and one written after it by the message.
One pub/sub connection per ``Producer`` carries every channel its waits watch. When that connection
fails, every waiter re-reads its document once the subscriptions are back (a message may have been
lost meanwhile); beyond that, a waiter re-reads every ``FALLBACK_POLL_S`` only as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError

from producer.contract import DONE_CHANNEL_PREFIX, done_channel

__all__ = ["FALLBACK_POLL_S", "DoneWatcher"]

FALLBACK_POLL_S = 15.0
"""How often a waiter re-reads the document even without a message (a safety net only)."""
RECONNECT_S = 0.5


class DoneWatcher:
    """The done-channel subscriptions of one asyncio producer, and the task that reads them."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pubsub: Any = None
        self._events: dict[str, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._resync = False

    @contextlib.asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the job's channel has a message, subscribed before the block runs."""
        event = asyncio.Event()
        await self._add(job_id, event)
        try:
            yield event
        finally:
            await asyncio.shield(self._remove(job_id, event))

    async def _add(self, job_id: str, event: asyncio.Event) -> None:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            events = self._events.setdefault(job_id, set())
            events.add(event)
            if len(events) == 1:
                await self._pubsub.subscribe(done_channel(job_id))
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="promptq-done-watcher")

    async def _remove(self, job_id: str, event: asyncio.Event) -> None:
        async with self._lock:
            events = self._events.get(job_id, set())
            events.discard(event)
            if not events:
                self._events.pop(job_id, None)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(done_channel(job_id))

    async def _read(self) -> None:
        while self._events:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=FALLBACK_POLL_S)
            except (RedisError, OSError):
                self._resync = True  # messages may be lost until the subscriptions are back
                self._wake_all()
                await asyncio.sleep(RECONNECT_S)
                continue
            if self._resync:  # connected and subscribed again: every waiter reads once more
                self._resync = False
                self._wake_all()
            if message and message.get("type") == "message":
                channel = message["channel"]
                job_id = (channel.decode() if isinstance(channel, bytes) else channel)[len(DONE_CHANNEL_PREFIX) :]
                for event in self._events.get(job_id, ()):
                    event.set()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
