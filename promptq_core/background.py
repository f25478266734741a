"""Background tasks, supervised one way: started by name, kept going through Redis trouble, stopped
with one verb.

    renewals = Background("promptq-leases")
    renewals.start(lambda: repeat(renew, every_s=5.0, on_error=log_it))
    ...
    await renewals.stop()           # cancels it and waits until it has ended

The worker's lease renewals, wake listener and queue-depth reader, and the producer's done-channel
reader, run this way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

from redis.exceptions import RedisClusterException, RedisError

__all__ = ["REDIS_TROUBLE", "Background", "repeat"]

REDIS_TROUBLE = (RedisError, OSError, RedisClusterException)
"""What a background task outlives: Redis away, a connection reset, a Cluster with no node answering
for a moment. Anything else is a bug and ends it."""


class Background:
    """One named task, at most one run at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, body: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``body()`` as the task, unless it runs already."""
        if not self.running:
            self._task = asyncio.create_task(body(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended (nothing when it is not running)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def repeat(
    step: Callable[[], Awaitable[object]], every_s: float, on_error: Callable[[BaseException], object]
) -> NoReturn:
    """Run ``step``, then pause ``every_s``, forever. Redis trouble in a step goes to ``on_error``
    (to be logged) and the next round tries again."""
    while True:
        try:
            await step()
        except REDIS_TROUBLE as e:
            on_error(e)
        await asyncio.sleep(every_s)
