"""Many readers of job streams, one Redis connection: ``Producer.stream`` reads through a
:class:`StreamHub`.

Each open stream is a watch (its key and the position it has reached). Per queue (one Cluster slot)
one task reads every watched stream of that queue with one blocking ``XREAD`` at a time, and hands
each watch the entries past its position. A thousand open streams on a job still queued hold one
connection, not a thousand; a watch added while a read blocks joins the next read, at most
``HUB_BLOCK_MS`` later (its reader caught up without blocking when it joined).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio

from producer.streams import entry_order
from promptq_core.background import REDIS_TROUBLE
from promptq_core.contract import as_text

__all__ = ["HUB_BLOCK_MS", "StreamHub", "Watch"]

HUB_BLOCK_MS: Final = 250
"""A hub's blocking read waits this long at most (a new watch joins the read after it)."""
HUB_COUNT: Final = 500
"""Entries one read takes per stream at most."""
RETRY_S: Final = 0.5
GIVE_UP_S: Final = 10.0
"""Redis failing the hub's reads this long ends the streams it serves (with the error)."""
_TAG_RE = re.compile(r"{[^}]*}")


@dataclass(eq=False)
class Watch:
    """One reader's place in one stream: entries come in ``inbox`` (a Redis error too, to raise)."""

    key: str
    position: str
    inbox: asyncio.Queue[list[Any] | BaseException] = field(default_factory=asyncio.Queue)


class StreamHub:
    """The blocking reads of every stream one producer has open."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.redis = client
        self._watches: dict[str, set[Watch]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}

    @property
    def open(self) -> int:
        """Streams watched now."""
        return sum(len(w) for w in self._watches.values())

    @contextlib.asynccontextmanager
    async def watching(self, key: str, position: str) -> AsyncIterator[Watch]:
        """Watch ``key`` from ``position`` (entries after it) until the block ends."""
        tag = _tag(key)
        watch = Watch(key, position)
        self._watches.setdefault(tag, set()).add(watch)
        reader = self._readers.get(tag)
        if reader is None or reader.done():
            self._readers[tag] = asyncio.create_task(self._read(tag), name=f"promptq-streams-{tag}")
        try:
            yield watch
        finally:
            watches = self._watches.get(tag)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[tag]

    async def aclose(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            reader.cancel()
        for reader in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, tag: str) -> None:
        """Read the queue's watched streams until none is left. Redis failing for a moment is
        ridden out; failing past ``GIVE_UP_S``, each watch is told (its reader raises)."""
        failing_since: float | None = None
        while watches := list(self._watches.get(tag, ())):
            by_key: dict[str, list[Watch]] = {}
            for watch in watches:
                by_key.setdefault(watch.key, []).append(watch)
            # (a stream watched twice is read from the lower position)
            streams = {key: min((w.position for w in ws), key=entry_order) for key, ws in by_key.items()}
            try:
                reply = await self.redis.xread(streams, count=HUB_COUNT, block=HUB_BLOCK_MS)  # type: ignore[arg-type]
            except REDIS_TROUBLE as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since >= GIVE_UP_S:
                    for watch in watches:
                        watch.inbox.put_nowait(e)
                    failing_since = None
                await asyncio.sleep(RETRY_S)
                continue
            failing_since = None
            for raw_key, entries in reply or []:
                for watch in by_key.get(as_text(raw_key), ()):
                    fresh = [e for e in entries if entry_order(as_text(e[0])) > entry_order(watch.position)]
                    if fresh:
                        watch.position = as_text(fresh[-1][0])
                        watch.inbox.put_nowait(fresh)
        self._readers.pop(tag, None)


def _tag(key: str) -> str:
    found = _TAG_RE.search(key)
    return found.group(0) if found else ""
