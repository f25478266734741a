"""Short, renewed leases on running jobs, so that a dead worker's jobs run again within seconds.

A claim leases a job for ``PROMPTQ_LEASE_S`` (``worker.queue``); the worker renews the leases of
its running jobs every third of that, all in one script call (a thousand at a time). Once the
renewals stop, the lease runs out and the next claim, by any worker, puts the job back in line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping

from promptq_core.background import REDIS_TROUBLE, Background, repeat
from promptq_core.contract import split_arq_id
from worker.logs import get_logger
from worker.queue import JobQueue

__all__ = ["Leases"]

log = get_logger("promptq.lease")
EARLY_CANCEL_S = 60.0
"""How long a cancel for a job not (yet) running here is remembered."""


class Leases:
    """The jobs one worker process has claimed, and the task that renews their leases.

    Also where a cancel message finds the task running a job (``cancel``). Jobs are named by arq's
    ids (``{queue}job_id``), so the jobs of every queue the worker serves are told apart."""

    def __init__(self, queues: Mapping[str, JobQueue], lease_s: float) -> None:
        self.queues = queues
        self.renew_every_s = lease_s / 3
        self.leased: set[str] = set()
        """Every job claimed here and not yet let go of: renewed from the claim on (a worker that
        claims thousands at once takes a while to start them all)."""
        self.starting: set[str] = set()
        """Leased jobs whose attempt has not begun yet (the worker claims a few hundred ahead at most)."""
        self.running: dict[str, asyncio.Task[object] | None] = {}
        """The jobs whose attempt is under way here, with the task running each."""
        self.on_start: Callable[[], object] | None = None
        """Called when a job's call begins (the worker waits for its claimed jobs to start)."""
        self._cancelled: set[str] = set()
        self._cancelled_early: dict[str, float] = {}
        """Jobs cancelled before their task got here (claimed a moment ago), with when: they do not start."""
        self._renewals = Background("promptq-leases")

    def claimed(self, job_id: str) -> None:
        """A claim leased the job to this worker: renewed from now on, starting until its attempt begins."""
        self.leased.add(job_id)
        self.starting.add(job_id)

    def let_go(self, job_id: str) -> None:
        """The job's attempt is over here (settled, or handed back): no more renewals."""
        self.leased.discard(job_id)
        self.starting.discard(job_id)

    @contextlib.contextmanager
    def holding(self, job_id: str) -> Iterator[None]:
        """The job's attempt runs while the block does (its lease renewed since the claim)."""
        self.starting.discard(job_id)
        self.running[job_id] = asyncio.current_task()
        if self.on_start is not None:
            self.on_start()
        try:
            yield
        finally:
            self.running.pop(job_id, None)
            self._cancelled.discard(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel the task running ``job_id`` here, if any (its document already says cancelled). A job
        not running yet is remembered for a while: claimed here a moment ago, it must not start."""
        task = self.running.get(job_id)
        if task is None or task.done():
            now = time.monotonic()
            self._cancelled_early = {j: t for j, t in self._cancelled_early.items() if now - t < EARLY_CANCEL_S}
            self._cancelled_early[job_id] = now
            return False
        self._cancelled.add(job_id)
        task.cancel()
        return True

    def cancelled_before_start(self, job_id: str) -> bool:
        """True if a cancel for the job came before its task started here."""
        return self._cancelled_early.pop(job_id, None) is not None

    def cancelled(self, job_id: str) -> bool:
        """True if the job's task was cancelled by :meth:`cancel` (not by a shutdown)."""
        return job_id in self._cancelled

    def start(self) -> None:
        self._renewals.start(lambda: repeat(self.renew, self.renew_every_s, self._renew_failed))

    async def stop(self) -> None:
        await self._renewals.stop()

    async def renew(self) -> None:
        """One round: every claimed job's lease runs out ``PROMPTQ_LEASE_S`` from now (a script call
        per queue, a thousand jobs each)."""
        by_queue: dict[str, list[str]] = {}
        for handle in list(self.leased):
            queue, job_id = split_arq_id(handle)
            by_queue.setdefault(queue, []).append(job_id)
        failed: BaseException | None = None
        for queue, job_ids in by_queue.items():  # a queue whose shard fails holds up no other's
            try:
                await self.queues[queue].renew(job_ids)
            except REDIS_TROUBLE as e:
                failed = failed or e
        if failed is not None:
            raise failed

    def _renew_failed(self, e: BaseException) -> None:  # Redis away for a moment: the next round tries again
        log.warning("lease.renew_failed", error=str(e), jobs=len(self.leased))
