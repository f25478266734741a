"""Push-based waiting: the worker publishes the final document on ``promptq:{queue}:done:{job_id}`` when a
job ends, so a waiter has it without reading the key again.

A waiter subscribes to the job's channel first and reads the result document second, once Redis has
confirmed the subscription (the read goes on another connection, which Redis may serve first), so a
result written before the subscription is seen by the read, and one written after it by the message.
One pub/sub connection per ``Producer`` carries every channel its waits watch; waits started
together subscribe in one SUBSCRIBE and have their documents read in one MGET right after it. When that connection
fails, every waiter re-reads its document once the subscriptions are back (a message may have been
lost meanwhile); beyond that, a waiter re-reads every ``FALLBACK_POLL_S`` only as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio

from promptq_core.background import REDIS_TROUBLE, Background
from promptq_core.connect import pubsub_client
from promptq_core.contract import JobResult, QueueKeys, as_text

__all__ = ["CONFIRM_TIMEOUT_S", "FALLBACK_POLL_S", "DoneWatcher", "Signal", "published_result"]

FALLBACK_POLL_S = 15.0
"""How often a waiter re-reads the document even without a message (a safety net only)."""
RECONNECT_S = 0.5
"""How long a lost subscription waits before it connects again."""
CONFIRM_TIMEOUT_S = 5.0
"""How long a subscription's confirmation is waited for at most before the documents are read
(a connection that fails meanwhile ends the wait at once: every waiter reads again once it is back)."""
READ_CHUNK = 1_000
"""Documents read in one MGET, at most: after a subscription, and by ``get_many``."""
UNSUBSCRIBE_DELAY_S = 0.05
"""How long a finished wait's channel stays subscribed (its job publishes nothing more), so that the
unsubscriptions of many waits go out as one command."""


_UNREAD: Any = object()


class Signal:
    """One waiter's side of a subscription: ``event`` is set on each message; ``final`` is the
    document the worker published with it, when it was one; ``first`` the document as read just
    after the subscription (when the subscribing call read it)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.final: JobResult | None = None
        self.first: bytes | None = _UNREAD

    @property
    def read(self) -> bool:
        return self.first is not _UNREAD

    def raise_(self, final: JobResult | None) -> None:
        self.final = final
        self.event.set()


def published_result(data: bytes | str | None) -> JobResult | None:
    """The final document a done message carries (None for anything else: re-read the key)."""
    if not data or (data[:1] not in (b"{", "{")):
        return None
    try:
        result = JobResult.from_json(data)
    except ValueError:
        return None
    return result if result.done else None


class DoneWatcher:
    """The done-channel subscriptions of one asyncio producer, and the task that reads them.

    Subscriptions asked for while one is being sent go out together in the next SUBSCRIBE, so many
    waits started at once (``asyncio.gather`` over a batch) cost a few commands, not one each; a
    wait that ends leaves its unsubscription to a background task, batched the same way."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self._pubsub: Any = None
        self._source: Any = None
        self._events: dict[str, set[Signal]] = {}
        """Per done channel (``QueueKeys.done``), the waits on it."""
        self._docs: dict[str, str] = {}
        """Per done channel, the key of its job's document."""
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._confirming: dict[str, asyncio.Future[None]] = {}
        """Per SUBSCRIBE on its way, by its last channel: what that channel's confirmation (read by
        ``_read``) sets."""
        self._reader = Background("promptq-done-watcher")
        self._unsubscriber = Background("promptq-done-unsubscribe")
        self._lock = asyncio.Lock()
        self._resync = False

    @contextlib.asynccontextmanager
    async def watching(self, queue: QueueKeys, job_id: str) -> AsyncIterator[Signal]:
        """A signal raised whenever the job's channel has a message, subscribed before the block runs."""
        signal = Signal()
        channel = queue.done(job_id)
        self._docs[channel] = queue.result(job_id)
        self._add(channel, signal)
        try:
            await self._sync()
            yield signal
        finally:
            self._remove(channel, signal)

    def _add(self, channel: str, signal: Signal) -> None:
        signals = self._events.setdefault(channel, set())
        signals.add(signal)
        if len(signals) == 1:
            self._to_unsubscribe.discard(channel)
            self._to_subscribe.add(channel)

    def _remove(self, channel: str, signal: Signal) -> None:
        signals = self._events.get(channel, set())
        signals.discard(signal)
        if signals:
            return
        self._events.pop(channel, None)
        self._docs.pop(channel, None)
        self._to_subscribe.discard(channel)
        self._to_unsubscribe.add(channel)
        self._unsubscriber.start(self._unsubscribe_all)

    async def _unsubscribe_all(self) -> None:
        while self._to_unsubscribe:
            await asyncio.sleep(UNSUBSCRIBE_DELAY_S)  # gather the waits that end meanwhile into one command
            with contextlib.suppress(*REDIS_TROUBLE):
                await self._sync()

    async def _sync(self) -> None:
        """Send the subscriptions and unsubscriptions asked for so far. When it returns, every
        channel added before the call is subscribed (by this call or by one before it)."""
        async with self._lock:
            if self._pubsub is None:  # (on a Cluster: through one of its nodes)
                self._source = await pubsub_client(self.client)
                self._pubsub = self._source.pubsub(ignore_subscribe_messages=False)
            if gone := self._take(self._to_unsubscribe):
                with contextlib.suppress(*REDIS_TROUBLE):  # best effort: their jobs publish nothing more
                    await self._pubsub.unsubscribe(*gone)
            if wanted := self._take(self._to_subscribe):
                # Redis confirms a SUBSCRIBE's channels in their order: the last one's says all are
                confirmed = asyncio.get_running_loop().create_future()
                self._confirming[wanted[-1]] = confirmed
                try:
                    await self._pubsub.subscribe(*wanted)
                except BaseException:
                    self._to_subscribe.update(channel for channel in wanted if channel in self._events)
                    self._confirm_all()
                    raise
                self._reader.start(self._read)
                await asyncio.wait([confirmed], timeout=CONFIRM_TIMEOUT_S)
                await self._read_first(wanted)
            if self._events:
                self._reader.start(self._read)

    async def _read_first(self, channels: list[str]) -> None:
        """Read the documents of the waits just subscribed (one MGET a thousand, of one queue each:
        a Cluster wants one slot a command); a failure leaves each wait to read its own."""
        by_queue: dict[str, list[str]] = {}
        for channel in channels:
            if channel in self._docs:  # (its tag: the text up to its first "}")
                by_queue.setdefault(channel.partition("}")[0], []).append(channel)
        for same in by_queue.values():
            for start in range(0, len(same), READ_CHUNK):
                chunk = same[start : start + READ_CHUNK]
                try:
                    docs = await self.client.mget([self._docs[channel] for channel in chunk])
                except REDIS_TROUBLE:
                    return
                for channel, doc in zip(chunk, docs, strict=True):
                    for signal in self._events.get(channel, ()):
                        if not signal.read:
                            signal.first = doc

    @staticmethod
    def _take(channels: set[str]) -> list[str]:
        taken = list(channels)
        channels.clear()
        return taken

    async def _read(self) -> None:
        while self._events:
            try:
                message = await self._pubsub.get_message(timeout=FALLBACK_POLL_S)
            except REDIS_TROUBLE:
                self._resync = True  # messages may be lost until the subscriptions are back
                self._confirm_all()
                self._wake_all()
                await asyncio.sleep(RECONNECT_S)
                continue
            if self._resync:  # connected and subscribed again: every waiter reads once more
                self._resync = False
                self._wake_all()
            if not message:
                continue
            kind = message.get("type")
            if kind == "message":
                channel = as_text(message["channel"])
                final = published_result(message["data"])  # parsed once for all its waiters
                for signal in self._events.get(channel, ()):
                    signal.raise_(final)
            elif kind == "subscribe":
                confirmed = self._confirming.pop(as_text(message["channel"]), None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    def _confirm_all(self) -> None:
        """The subscriptions on their way are confirmed, or will not be: stop waiting for them."""
        confirming, self._confirming = self._confirming, {}
        for confirmed in confirming.values():
            if not confirmed.done():
                confirmed.set_result(None)

    def _wake_all(self) -> None:
        for signals in self._events.values():
            for signal in signals:
                signal.raise_(None)

    async def aclose(self) -> None:
        await self._reader.stop()
        await self._unsubscriber.stop()
        if self._pubsub is not None:
            with contextlib.suppress(*REDIS_TROUBLE):
                await self._pubsub.aclose()
                if self._source is not self.client:
                    await self._source.aclose()
