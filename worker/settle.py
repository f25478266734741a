"""How an attempt's end reaches Redis: one Lua script per transition (``worker/lua``), registered once.

- ``finish`` (running → succeeded | failed): the terminal document, written together with the
  removal of the job from the queue (its record, try counter, lease and route), so that no
  redelivery can run it again once its result is stored; a failed job's id joins the failed set and
  its request is kept for ``Producer.retry``; a streamed job's stream gets its ``done`` entry. The
  jobs whose attempts end while a finish is on its way go together in the next, each as if alone.
- ``defer`` (running → queued): the document queued again and the job out of the lease set, into
  the delayed set for a wait or back in line at its place, the try kept (a retry after its backoff)
  or given back (a shutdown, a rate-limit budget too far away).
- ``ack``: let go of a job that ended without a result of this attempt's (a cancel).
- ``collect`` (running → batched): a batch-tier job joins its collection, to be sent in a provider
  batch (:mod:`worker.provider_batches` settles it when the provider answers).

A document ``Producer.cancel`` marked ``cancelled`` is never overwritten: ``finish`` and ``defer``
hand it back instead, and let go of the job. Which outcome takes which step is written in
:mod:`worker.lifecycle`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from promptq_core.contract import RUN_LIVE, JobResult, QueueKeys, Reply, queue_keys
from worker.logs import get_logger
from worker.redis_conn import ride_out
from worker.scripts import WorkerScript

__all__ = ["Finished", "LeaseLostError", "Settle"]

log = get_logger("promptq.settle")

FINISH_GROUP_MAX = 200
"""Jobs one finish script ends at most."""


class LeaseLostError(Exception):
    """The attempt no longer holds its job (its lease ran out meanwhile): it changed nothing."""


class Finished(NamedTuple):
    cancelled: JobResult | None
    """The cancelled document that stays, when the job was cancelled while it ran."""
    ended_here: bool
    """The job ended with this finish (False: its document was terminal already, or cancelled)."""


class Settle:
    """The three steps an attempt can end in, each one script call (riding out a short Redis outage)."""

    def __init__(self, redis: Redis, result_ttl_s: int, min_replicas: int = 0, replica_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.result_ttl_ms = result_ttl_s * 1000
        self.min_replicas, self.replica_timeout_ms = min_replicas, replica_timeout_ms
        self._finish = WorkerScript(redis, "finish", rides_out=True)
        self._waiting: dict[str, list[tuple[list[str], asyncio.Future[Any]]]] = {}
        """Finishes waiting for the one on its way, by queue."""
        self._sending: asyncio.Task[None] | None = None
        self._defer = WorkerScript(redis, "defer", rides_out=True)
        self._ack = WorkerScript(redis, "ack", rides_out=True)
        self._unclaim = WorkerScript(redis, "unclaim", rides_out=True)
        self._collect = WorkerScript(redis, "collect", rides_out=True)

    async def finish(self, final: JobResult, *, streamed: bool = False, webhook_url: str | None = None) -> Finished:
        """Write the terminal document and let go of the job; say whether the job ended here, or
        return the stored document instead if it was cancelled meanwhile (that one stays). A job
        that ended here with a ``webhook_url`` has its delivery due at once (``worker.webhooks``).
        Jobs whose attempts end while a finish is on its way go together in the next one (one script
        call for all of them, up to ``FINISH_GROUP_MAX``), each told its own answer."""
        job = [final.job_id, final.to_json(), final.status, "1" if streamed else "0", webhook_url or ""]
        if not self.min_replicas:
            reply = await self._in_group(final.queue, job)
        else:
            reply = await ride_out(lambda: self._finish_replicated(queue_keys(final.queue), job))
        if isinstance(reply, int):
            return Finished(None, ended_here=reply == Reply.ENDED_HERE)
        return Finished(_parse(reply), ended_here=False)

    async def _in_group(self, queue: str, job: list[str]) -> Any:
        """The finish script's answer for ``job``, sent in the next group of its queue."""
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(queue, []).append((job, answered))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send())
        return await answered

    async def _send(self) -> None:
        """Send the waiting finishes, a group a queue at a time, until none is left."""
        waiting: dict[str, list[tuple[list[str], asyncio.Future[Any]]]] = {}
        try:
            while self._waiting:
                waiting, self._waiting = self._waiting, {}
                for queue, jobs in waiting.items():
                    for start in range(0, len(jobs), FINISH_GROUP_MAX):
                        await self._send_group(queue, jobs[start : start + FINISH_GROUP_MAX])
        except BaseException as e:  # (cancelled with the loop): no finish waits in vain, sent or not
            for jobs in (*waiting.values(), *self._waiting.values()):
                _answer([answered for _, answered in jobs], error=e)
            self._waiting = {}
            raise

    async def _send_group(self, queue: str, jobs: list[tuple[list[str], asyncio.Future[Any]]]) -> None:
        """One finish script for ``jobs``; if Redis refuses it (an error of the script, not of the
        connection), each job is sent alone, so that only a job the script cannot take fails."""
        try:
            await self._send_together(queue, jobs)
        except ResponseError:  # (only the script's own error comes out: see _send_together)
            log.warning("job.finish_group_refused", jobs=len(jobs), note="each job is finished alone")
            for job in jobs:  # (a job's own refusal is told to its attempt)
                await self._send_together(queue, [job])

    async def _send_together(self, queue: str, jobs: list[tuple[list[str], asyncio.Future[Any]]]) -> None:
        waiters = [answered for _, answered in jobs]
        try:
            replies = await self._finish(
                queue_keys(queue),
                ttl_ms=self.result_ttl_ms,
                now_ms=int(time.time() * 1000),
                jobs=[value for job, _ in jobs for value in job],
            )
        except BaseException as e:  # Redis away past every retry: each attempt is left as it is
            if type(e) is ResponseError and len(jobs) > 1:
                raise  # the script refused (not a Redis in trouble): ``_send_group`` sends each alone
            _answer(waiters, error=e)
            if not isinstance(e, Exception):
                raise
        else:
            _answer(waiters, replies=replies)

    async def defer(
        self,
        queued: JobResult,
        delay_s: float,
        *,
        try_spent: bool,
        recoveries: int | None = None,
        keep_s: float = 0.0,
    ) -> JobResult | None:
        """Mark the job queued again and let it wait ``delay_s`` (0: back in line now), keeping or
        giving back the attempt's try (``recoveries``: it waits for a backend, and is due at once
        when a circuit closes, or at once if one closed since that count; ``keep_s``: its record and
        document live at least that long); a job that ended meanwhile is let go of, its terminal
        document returned."""
        job_id, keys = queued.job_id, queue_keys(queued.queue)
        stored = await self._defer(
            keys,
            doc=keys.result(job_id),
            record=keys.record(job_id),
            tries=keys.tries(job_id),
            job_id=job_id,
            doc_json=queued.to_json(),
            ttl_ms=self.result_ttl_ms,
            delay_ms=max(0, round(delay_s * 1000)),
            try_spent="1" if try_spent else "0",
            for_backend="0" if recoveries is None else "1",
            recoveries=recoveries or 0,
            keep_ms=max(0, round(keep_s * 1000)),
        )
        return _parse(stored)

    async def collect(self, batched: JobResult, collection: str, keep_s: float) -> JobResult | None:
        """Mark a batch-tier job batched and add it to ``collection`` (its record and document kept
        ``keep_s`` at least); a job that ended meanwhile is let go of, its terminal document returned;
        a job this attempt no longer holds is left as it is (``LeaseLostError``)."""
        job_id, keys = batched.job_id, queue_keys(batched.queue)
        reply = await self._collect(
            keys,
            doc=keys.result(job_id),
            record=keys.record(job_id),
            tries=keys.tries(job_id),
            collect=keys.collect(collection),
            job_id=job_id,
            doc_json=batched.to_json(),
            collection=collection,
            keep_ms=round(keep_s * 1000),
            attempt=batched.attempts,
        )
        if reply == Reply.COLLECTED:
            return None
        if reply == Reply.LEASE_LOST:
            raise LeaseLostError(job_id)
        return _parse(reply) or dataclasses.replace(batched, status="cancelled")

    async def runs_live(self, queue: QueueKeys, job_id: str) -> bool:
        """Whether a batch-tier job is to run live this once (its provider batch expired, with
        ``PROMPTQ_BATCH_EXPIRED=live``); the mark is taken."""
        redis: Any = self.redis
        return bool(await ride_out(lambda: redis.srem(queue.key(RUN_LIVE), job_id)))

    async def ack(self, queue: QueueKeys, job_id: str) -> None:
        """Let go of a job that ended elsewhere (its record, try counter, lease and route go)."""
        await self._ack(queue, record=queue.record(job_id), tries=queue.tries(job_id), job_id=job_id)

    async def unclaim(self, queue: QueueKeys, job_id: str, tried: int, *, back: bool) -> None:
        """Give back the try a claim counted for a job whose attempt never began (``tried``: that
        count); ``back``: the job also goes back in line now (else it runs here still, from an
        earlier claim)."""
        tries = queue.tries(job_id)
        await self._unclaim(queue, tries=tries, job_id=job_id, claimed_try=tried, back="1" if back else "0")

    async def _finish_replicated(self, queue: QueueKeys, job: list[str]) -> Any:
        """The finish script (of one job) and its WAIT on one connection (``PROMPTQ_MIN_REPLICAS``).
        A result fewer replicas confirmed is logged: if the primary fails before they have it, the
        job's lease comes back on the new primary and the job runs again (once more paid, never lost)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._finish(queue, pipe, ttl_ms=self.result_ttl_ms, now_ms=int(time.time() * 1000), jobs=job)
            pipe.wait(self.min_replicas, self.replica_timeout_ms)
            stored, acked = await pipe.execute()
        if int(acked) < self.min_replicas:
            log.warning("job.result_not_replicated", job_id=job[0], replicas=int(acked), wanted=self.min_replicas)
        return stored[0]


def _answer(
    waiters: list[asyncio.Future[Any]], replies: list[Any] | None = None, error: BaseException | None = None
) -> None:
    for n, answered in enumerate(waiters):
        if answered.done():  # (its job's task was torn down with the loop)
            continue
        if replies is not None:
            answered.set_result(replies[n])
        else:
            answered.set_exception(error or RuntimeError("promptq: the finish was not sent"))


def _parse(stored: Any) -> JobResult | None:
    return JobResult.from_json(stored) if stored else None
