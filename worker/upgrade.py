"""Moving a Redis written by promptq before named queues into the default queue (``lua/upgrade.lua``).

A worker looks once at start-up, before its first claim: it moves the jobs in line, deferred and
leased (their places and times kept), the documents of ended jobs (found with ``SCAN``), the failed
set and the batches, a few hundred at a time. Then it looks again every ``UPGRADE_EVERY_S`` (a
producer not yet upgraded may still submit in the older layout), with one ``EXISTS`` when there
is nothing to move, and no scan. Stop the older workers first: a job one of them is running is leased to it
in the older layout, comes over with its lease, and runs again when the lease runs out.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from promptq_core.background import Background, repeat
from promptq_core.contract import LEGACY_QUEUE, OLD_KEY_PREFIX, OLD_KEYS, RESULT, queue_keys
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["UPGRADE_EVERY_S", "Upgrade"]

log = get_logger("promptq.upgrade")

UPGRADE_EVERY_S: Final = 60.0
STEP: Final = 500
"""Jobs moved at most of each kind in one script call."""


class Upgrade:
    """Moves the older layout's jobs into the default queue (a plain Redis or Sentinel only)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.keys = queue_keys()
        self._old = [OLD_KEY_PREFIX + name for name in OLD_KEYS]
        self._script = WorkerScript(redis, "upgrade", rides_out=True)
        self._checks = Background("promptq-upgrade")

    async def run(self, *, ended: bool = True) -> int:
        """Move what the older layout holds (with ``ended``, the ended jobs' documents too, found in
        one pass of ``SCAN``); how many jobs moved."""
        moved = 0
        if isinstance(self.redis, RedisCluster):  # promptq before named queues never ran on one
            return 0
        if await self.redis.exists(*self._old, LEGACY_QUEUE):
            while True:
                done, more = await self._call([])
                moved += done
                if not more:
                    break
        if ended:
            prefix = OLD_KEY_PREFIX + RESULT
            found: list[str] = []
            async for key in self.redis.scan_iter(match=prefix + "*", count=1000):
                found.append(key.decode()[len(prefix) :])
                if len(found) >= STEP:
                    moved += (await self._call(found))[0]
                    found = []
            if found:
                moved += (await self._call(found))[0]
        if moved:
            log.info("upgrade.moved", jobs=moved, queue=self.keys.name, note="from the layout before named queues")
        return moved

    async def check(self) -> None:
        """The periodic look: jobs an older producer submitted since (no scan for documents)."""
        await self.run(ended=False)

    def start(self) -> None:
        self._checks.start(lambda: repeat(self.check, UPGRADE_EVERY_S, _failed))

    async def stop(self) -> None:
        await self._checks.stop()

    async def _call(self, ended: list[str]) -> tuple[int, bool]:
        old = dict(
            zip(("levels", "leases", "delayed", "routes", "sequence", "failed", "batches"), self._old, strict=True)
        )
        reply = await self._script(
            self.keys,
            **{f"old_{name}": key for name, key in old.items()},
            legacy=LEGACY_QUEUE,
            step=STEP,
            ended=ended,
        )
        return int(reply[0]), bool(int(reply[1]))


def _failed(e: BaseException) -> None:
    log.warning("upgrade.failed", error=str(e), note="tried again in a minute")
