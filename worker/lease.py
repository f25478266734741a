"""Short, renewed leases on running jobs, so that a dead worker's jobs run again within seconds.

arq marks a job it starts with an in-progress key that lives as long as the job's timeout plus
margins (minutes, with promptq's defaults); a worker killed mid-job blocks the job for that long.
promptq has arq claim a job for ``PROMPTQ_LEASE_S`` (``worker.shutdown.adopt``) and renews the claim
every third of that while the job runs: once the renewals stop, the key expires and any worker can take the
job again (it is still in the queue until its result is written).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from producer.contract import ARQ_IN_PROGRESS_KEY_PREFIX
from worker.logs import get_logger

__all__ = ["Leases"]

log = get_logger("promptq.lease")


class Leases:
    """The running jobs of one worker process, and the task that renews their in-progress keys.

    Also where a cancel message finds the task running a job (``cancel``)."""

    def __init__(self, redis: Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_ms = max(1, round(lease_s * 1000))
        self.renew_every_s = lease_s / 3
        self.held: dict[str, asyncio.Task[object] | None] = {}
        self._cancelled: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """Renew the job's lease while the block runs (arq's claim set the first one)."""
        self.held[job_id] = asyncio.current_task()
        try:
            yield
        finally:
            self.held.pop(job_id, None)
            self._cancelled.discard(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel the task running ``job_id`` here, if any (its document already says cancelled)."""
        task = self.held.get(job_id)
        if task is None or task.done():
            return False
        self._cancelled.add(job_id)
        task.cancel()
        return True

    def cancelled(self, job_id: str) -> bool:
        """True if the job's task was cancelled by :meth:`cancel` (not by a shutdown)."""
        return job_id in self._cancelled

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_forever(), name="promptq-leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def renew(self) -> None:
        """One round: every held job's in-progress key expires ``lease_ms`` from now."""
        held = list(self.held)
        if not held:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in held:
                pipe.pexpire(ARQ_IN_PROGRESS_KEY_PREFIX + job_id, self.lease_ms)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                await self.renew()
            except (RedisError, OSError) as e:  # Redis away for a moment: the next round tries again
                log.warning("lease.renew_failed", error=str(e), jobs=len(self.held))
