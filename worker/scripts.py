"""The worker's Lua scripts, each registered once on the worker's Redis and called by its header's
names: ``await claim(lease_ms=..., want=...)`` binds them (``LuaScript.bind``) and runs the script.
A step that must not be lost rides out a short Redis outage (``ride_out=True``: ``worker.redis_conn``);
the others (a claim, a renewal, a roll-up) fail at once and are tried again by their loop.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from promptq_core.connect import load_everywhere
from promptq_core.contract import QueueKeys
from promptq_core.scripts import script
from worker.redis_conn import ride_out

__all__ = ["WorkerScript"]


class WorkerScript:
    """One script of ``worker/lua`` (or the core's), registered on ``redis``."""

    def __init__(self, redis: Redis, name: str, *, rides_out: bool = False) -> None:
        self.lua = script(name)
        self.redis = redis
        self.rides_out = rides_out
        self._registered = redis.register_script(self.lua.source)

    async def __call__(self, queue: QueueKeys | None = None, client: Any = None, **values: Any) -> Any:
        """Run the script with the header's names bound to ``values``, a queue's script on ``queue``
        (on ``client``: a pipeline)."""
        keys, args = self.lua.bind(queue, **values)
        if client is not None:  # queued on a pipeline: its execute() runs it
            return await self._registered(keys=keys, args=args, client=client)
        if self.rides_out:
            return await ride_out(lambda: self._run(keys, args))
        return await self._run(keys, args)

    async def _run(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._registered(keys=keys, args=args)
        except NoScriptError:  # a node that lacks it even after redis-py loaded it: loaded everywhere
            await load_everywhere(self.redis, self.lua.source)
            return await self._registered(keys=keys, args=args)
