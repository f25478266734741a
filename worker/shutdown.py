"""Graceful shutdown, and the two arq worker settings that the settings class cannot reach.

On SIGTERM or SIGINT arq cancels every job at once (or, with ``job_completion_wait``, after a wait,
and then also the jobs it was still starting, which ends the process with a traceback). promptq
installs its own handler instead: it stops taking jobs at once, lets the calls in flight finish
within ``PROMPTQ_SHUTDOWN_GRACE_S``, then interrupts the rest; ``jobs.run_prompt`` puts an
interrupted job back in the queue without spending a try.

arq also claims a job for its whole timeout plus margins; promptq claims it for ``PROMPTQ_LEASE_S``
and renews the claim while the job runs (``worker.lease``), so a killed worker's jobs are free again
within seconds.

And arq's poll loop ends the worker on a Redis error that its claim transaction cannot retry (a
WATCH broken by a lost connection); promptq's wrappers log it, give back the slot arq had taken for
the claim, and let the next poll try again. They also keep a worker from starting a job it is
still running (possible when Redis lost the claim during an outage).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from arq.worker import Worker
from redis.exceptions import RedisError

from worker.logs import get_logger

__all__ = ["adopt", "drain", "running_worker"]

log = get_logger("promptq.worker")
_draining: set[asyncio.Task[None]] = set()


def running_worker() -> Worker | None:
    """The arq ``Worker`` whose ``main`` runs the current task (from ``on_startup``), if any."""
    task = asyncio.current_task()
    frame = getattr(task.get_coro() if task else None, "cr_frame", None)
    candidate = frame.f_locals.get("self") if frame is not None else None
    return candidate if isinstance(candidate, Worker) else None


def adopt(worker: Worker, *, lease_s: float, grace_s: float) -> None:
    """Claim jobs for ``lease_s``, and handle SIGTERM and SIGINT with :func:`drain`."""
    worker.in_progress_timeout_s = lease_s
    _survive_redis_errors(worker)
    if not getattr(worker, "_handle_signals", False):
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _start_drain, worker, grace_s, sig)


def _survive_redis_errors(worker: Worker) -> None:
    arq_poll_iteration, arq_start_jobs = worker._poll_iteration, worker.start_jobs

    async def start_jobs_once(job_ids: list[bytes]) -> None:
        running = {job_id for job_id, task in worker.tasks.items() if not task.done()}
        try:
            await arq_start_jobs([j for j in job_ids if j.decode() not in running])
        except (RedisError, OSError):
            # arq had taken a slot for the job it was claiming when Redis failed: give it back
            worker.job_counter -= 1
            worker.sem.release()
            raise

    async def poll_iteration() -> None:
        try:
            await arq_poll_iteration()
        except (RedisError, OSError) as e:
            log.warning("worker.poll_failed", error=str(e), note="the next poll tries again")

    worker.start_jobs = start_jobs_once  # type: ignore[method-assign]
    worker._poll_iteration = poll_iteration  # type: ignore[method-assign]


def _start_drain(worker: Worker, grace_s: float, sig: signal.Signals) -> None:
    if _draining:  # a second signal: the first drain is already under way
        log.info("worker.draining", signal=sig.name, note="already draining")
        return
    task = asyncio.get_running_loop().create_task(drain(worker, grace_s, sig.name))
    _draining.add(task)
    task.add_done_callback(_draining.discard)


async def drain(worker: Worker, grace_s: float, reason: str = "shutdown") -> None:
    """Take no new job, give the running ones ``grace_s``, interrupt the rest, then stop the worker."""
    worker.allow_pick_jobs = False
    if worker.main_task is not None:
        worker.main_task.cancel()  # no further poll; arq's close() then waits for the running jobs
    log.info("worker.draining", reason=reason, running=len(_running(worker)), grace_s=grace_s)
    if running := _running(worker):
        await asyncio.wait(running, timeout=grace_s)
    interrupted: set[str] = set()
    while running := _running(worker):  # past the grace: interrupt each call, including any that starts now
        fresh = [(job_id, task) for job_id, task in worker.job_tasks.items() if job_id not in interrupted]
        if fresh:
            # A task created this very moment has not run yet; cancelled now, it would end before
            # run_prompt could put its job back. One turn of the loop lets it reach its first await.
            await asyncio.sleep(0)
            for job_id, task in fresh:
                interrupted.add(job_id)
                task.cancel()
        await asyncio.wait(running, timeout=0.05)
    log.info("worker.drained", reason=reason, interrupted=len(interrupted))


def _running(worker: Worker) -> list[asyncio.Task[Any]]:
    tasks: dict[str, asyncio.Task[Any]] = worker.tasks
    return [t for t in tasks.values() if not t.done()]
