"""Taking jobs from the queue: one Lua script claims as many ready jobs as there are free slots.

arq reads a window of ids from the queue, then claims them one at a time, each claim a WATCH /
EXISTS / ZSCORE / MULTI transaction (four round trips), waiting for a free slot before each. Under
load those round trips queue behind every running job's work on the event loop, and a freed slot
is refilled only after them: measured at 100 slots and 500 ms calls, that serial claim loop, not
the API, capped a worker near 110 jobs/s. promptq replaces arq's poll iteration: each turn claims
up to the number of free slots with one script (skipping jobs another worker holds) and starts
them; while every slot is taken, a finishing job wakes the loop at once, so its slot is refilled
without waiting for the next poll.
"""

from __future__ import annotations

import asyncio

from arq.utils import timestamp_ms
from arq.worker import Worker

from producer.contract import ARQ_IN_PROGRESS_KEY_PREFIX

__all__ = ["CLAIM_LUA", "Claimer"]

SCAN_CHUNK = 500
"""Ids the script reads from the queue at a time, at most."""
SCAN_MARGIN = 20
"""The first read is this worker's running jobs (which stay in the queue, ahead of the due ones)
plus the jobs wanted plus this margin, so a claim for one freed slot reads ~100 ids, not 500."""
SCAN_MAX = 10_000
"""Ids the script looks at, at most, past jobs other workers hold, before it gives up for this turn."""

# KEYS: the queue. ARGV: now (ms), lease (ms), in-progress key prefix, how many to claim, chunk, scan max.
# Returns [id, score, id, score, ...] of the jobs claimed (due, and held by no one), in queue order.
CLAIM_LUA = """
local want, chunk, scan_max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out, claimed, offset = {}, 0, 0
while claimed < want and offset < scan_max do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', offset, chunk)
  if #ids == 0 then break end
  for i = 1, #ids do
    local key = ARGV[3] .. ids[i]
    if redis.call('EXISTS', key) == 0 then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      out[#out + 1] = ids[i]
      out[#out + 1] = redis.call('ZSCORE', KEYS[1], ids[i])
      claimed = claimed + 1
      if claimed >= want then break end
    end
  end
  offset = offset + chunk
end
return out
"""


class Claimer:
    """Replaces ``worker``'s poll iteration with a batched claim; ``wake`` (the event that ends
    the poll's sleep) is set when a slot frees while the last claim found more jobs than slots.

    It also spares arq's own clean-up after a job whose terminal document promptq's finish script
    wrote (``settled``): that script has already removed the job's record, claim, try counter and
    queue entry, and arq's second removal, a round trip later, could only remove a job that a
    retry had queued again meanwhile under the same id."""

    def __init__(self, worker: Worker, wake: asyncio.Event | None) -> None:
        self.worker = worker
        self.wake = wake
        self.script = worker.pool.register_script(CLAIM_LUA)
        self.full = False
        """The last claim filled every free slot: more jobs may be ready."""
        self.settled: set[str] = set()
        """Jobs whose arq bookkeeping promptq's finish script has removed (``jobs._finish`` adds them)."""
        self._arq_finish_job = worker.finish_job
        worker._poll_iteration = self.poll_iteration  # type: ignore[method-assign]
        worker.finish_job = self.finish_job  # type: ignore[method-assign]

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's clean-up after a job, unless promptq's finish script has done it already."""
        if job_id in self.settled:
            self.settled.discard(job_id)
            if finish and result_data is None:
                return
        await self._arq_finish_job(
            job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress
        )

    async def claim(self, want: int) -> list[tuple[str, int]]:
        """Claim up to ``want`` due jobs for the worker's lease; their ids and queue scores."""
        worker = self.worker
        lease_ms = int(worker.in_progress_timeout_s * 1000)
        chunk = min(SCAN_CHUNK, worker.job_counter + want + SCAN_MARGIN)
        args: list[int | str] = [timestamp_ms(), lease_ms, ARQ_IN_PROGRESS_KEY_PREFIX, want, chunk, SCAN_MAX]
        reply: list[bytes] = await self.script(keys=[worker.queue_name], args=args)
        return [(job_id.decode(), int(float(score))) for job_id, score in zip(reply[::2], reply[1::2], strict=True)]

    async def poll_iteration(self) -> None:
        worker = self.worker
        if worker.allow_pick_jobs:
            while (free := self.free_slots()) > 0:
                claimed = await self.claim(free)
                for job_id, score in claimed:
                    running = worker.tasks.get(job_id)
                    if running is not None and not running.done():
                        continue  # still running here (its claim lapsed in an outage): the claim is ours again
                    await worker.sem.acquire()  # free while job_counter < max_jobs: no wait
                    self._start(job_id, score)
                self.full = len(claimed) == free
                if not self.full:
                    break
        for job_id, task in list(worker.tasks.items()):
            if task.done():
                del worker.tasks[job_id]
                task.result()  # as arq does: an error in run_job surfaces here
        await worker.heart_beat()

    def free_slots(self) -> int:
        worker = self.worker
        free = worker.max_jobs - worker.job_counter
        if worker.burst and worker.max_burst_jobs >= 0:
            free = min(free, worker.max_burst_jobs - worker._jobs_started())
        return free

    def _start(self, job_id: str, score: int) -> None:
        """Run the claimed job as arq's own ``start_jobs`` would (its slot taken already)."""
        worker = self.worker
        worker.job_counter += 1
        task = worker.loop.create_task(worker.run_job(job_id, score))
        task.add_done_callback(self._slot_freed)
        worker.tasks[job_id] = task

    def _slot_freed(self, _: object) -> None:
        self.worker._release_sem_dec_counter_on_complete()  # arq's own bookkeeping
        if self.full and self.wake is not None:
            self.wake.set()  # jobs may be waiting: claim again now, not at the next poll
