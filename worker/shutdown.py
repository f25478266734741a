"""Graceful shutdown, and the parts of arq's worker that its settings class cannot reach.

On SIGTERM or SIGINT arq cancels every job at once (or, with ``job_completion_wait``, after a wait,
and then also the jobs it was still starting, which ends the process with a traceback). promptq
installs its own handler instead: it stops taking jobs at once, lets the calls in flight finish
within ``PROMPTQ_SHUTDOWN_GRACE_S``, then interrupts the rest; ``jobs.run_prompt`` puts an
interrupted job back in the queue without spending a try.

arq also claims a job for its whole timeout plus margins; promptq claims it for ``PROMPTQ_LEASE_S``
and renews the claim while the job runs (``worker.lease``), so a killed worker's jobs are free again
within seconds.

arq's claim loop is replaced by a batched one (``worker.claim``), and arq's poll loop, which ends
the worker on a Redis error, is wrapped: the error is logged and the next poll tries again.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from arq.worker import Worker
from redis.exceptions import RedisError

from worker.claim import Claimer
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


def adopt(worker: Worker, *, lease_s: float, grace_s: float, wake: asyncio.Event | None = None) -> Claimer:
    """Claim jobs for ``lease_s`` in batches (``worker.claim``; ``wake`` ends a poll's sleep when a
    slot frees), and handle SIGTERM and SIGINT with :func:`drain`."""
    worker.in_progress_timeout_s = lease_s
    claimer = Claimer(worker, wake)
    _survive_redis_errors(worker)
    if getattr(worker, "_handle_signals", False):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _start_drain, worker, grace_s, sig)
    return claimer


def _survive_redis_errors(worker: Worker) -> None:
    poll_iteration_of = worker._poll_iteration

    async def poll_iteration() -> None:
        try:
            await poll_iteration_of()
        except (RedisError, OSError) as e:
            log.warning("worker.poll_failed", error=str(e), note="the next poll tries again")

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
