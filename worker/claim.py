"""Taking jobs from the queue: one Lua script claims as many ready jobs as there are free slots.

arq reads a window of ids from the queue, then claims them one at a time, each claim a WATCH /
EXISTS / ZSCORE / MULTI transaction (four round trips), waiting for a free slot before each. Under
load those round trips queue behind every running job's work on the event loop, and a freed slot
is refilled only after them: the claim loop, not the API, limits throughput. promptq replaces
arq's poll iteration: each turn claims up to the number of free slots in one script (skipping jobs
another worker holds), starts them, and when every slot is taken, a finishing job wakes the loop
at once instead of leaving its slot empty until the next poll.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker

from producer.contract import ARQ_IN_PROGRESS_KEY_PREFIX

__all__ = ["CLAIM_LUA", "install_claim"]

SCAN_CHUNK = 500
SCAN_MAX = 10_000
"""Ids the script looks at, at most, past jobs other workers hold, before it gives up for this turn."""

# KEYS: the queue. ARGV: now (ms), lease (ms), in-progress key prefix, how many to claim, chunk, scan max.
# Returns [id, score, id, score, ...] of the jobs claimed (ready, and not held by anyone), in queue order.
CLAIM_LUA = """
local want, chunk, scan_max = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local out, claimed, offset = {}, 0, 0
while claimed < want and offset < scan_max do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', offset, chunk)
  if #ids == 0 then break end
  for i = 1, #ids, 2 do
    local key = ARGV[3] .. ids[i]
    if redis.call('EXISTS', key) == 0 then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      out[#out + 1] = ids[i]
      out[#out + 1] = ids[i + 1]
      claimed = claimed + 1
      if claimed >= want then break end
    end
  end
  offset = offset + chunk
end
return out
"""


def install_claim(worker: Worker, wake: asyncio.Event | None) -> None:
    """Replace ``worker``'s poll iteration with :func:`poll_iteration`'s batched claim."""
    claim = worker.pool.register_script(CLAIM_LUA)
    state = {"full": False}

    def slot_freed() -> None:  # arq's own bookkeeping, then a new turn if jobs may be waiting
        worker._release_sem_dec_counter_on_complete()
        if state["full"] and wake is not None:
            wake.set()

    async def poll_iteration() -> None:
        if worker.allow_pick_jobs:
            while (free := _free_slots(worker)) > 0:
                reply: Any = await claim(
                    keys=[worker.queue_name],
                    args=[
                        timestamp_ms(),
                        int(worker.in_progress_timeout_s * 1000),
                        ARQ_IN_PROGRESS_KEY_PREFIX,
                        free,
                        SCAN_CHUNK,
                        SCAN_MAX,
                    ],
                )
                pairs = list(zip(reply[::2], reply[1::2], strict=True))
                for raw_id, raw_score in pairs:
                    job_id = raw_id.decode()
                    running = worker.tasks.get(job_id)
                    if running is not None and not running.done():
                        continue  # still running here (its claim lapsed in an outage): the claim is ours again
                    await worker.sem.acquire()  # free while job_counter < max_jobs: no wait
                    _start(worker, job_id, int(float(raw_score)), slot_freed)
                state["full"] = len(pairs) == free  # more may be ready: a freed slot should look at once
                if len(pairs) < free:
                    break
        for job_id, task in list(worker.tasks.items()):
            if task.done():
                del worker.tasks[job_id]
                task.result()  # as arq does: an error in run_job surfaces here
        await worker.heart_beat()

    worker._poll_iteration = poll_iteration  # type: ignore[method-assign]


def _free_slots(worker: Worker) -> int:
    free = worker.max_jobs - worker.job_counter
    if worker.burst and worker.max_burst_jobs >= 0:
        free = min(free, worker.max_burst_jobs - worker._jobs_started())
    return free


def _start(worker: Worker, job_id: str, score: int, on_done: Any) -> None:
    """Run the claimed job as arq's own ``start_jobs`` would (its slot taken already)."""
    worker.job_counter += 1
    task = worker.loop.create_task(worker.run_job(job_id, score))
    task.add_done_callback(lambda _: on_done())
    worker.tasks[job_id] = task
