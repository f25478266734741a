"""A job's lifecycle, written down once: its states, the ways an attempt can end, and the one place
where each ending is settled in Redis and reported.

The states are the result document's ``status``. Who moves a job from one to another, and how:

=========  ===========  ==============================================  ==================
from       to           when                                            step (Lua script)
=========  ===========  ==============================================  ==================
(none)     queued       ``submit``                                      submit, submit_many
(none)     running      ``submit`` when no job is ready and a worker    submit (a handoff)
                        is parked: handed to it, as a claim would
queued     running      a claim (leased for ``PROMPTQ_LEASE_S``)        claim
running    succeeded    :class:`Finish`: the call answered              finish
running    failed       :class:`Finish`: a final error, no try left,    finish
                        no backend for its model, or its deadline
                        passed (``expired``)
running    queued       :class:`Backoff`: a retryable error, tries      defer (try spent)
                        left: waits in the delayed set
running    queued       :class:`Release`: a shutdown interrupted the    defer (try given back)
                        call, the rate-limit budget is too far away,
                        or every backend of its model is down (it
                        waits for one: due when a circuit closes)
running    batched      :class:`Collect`: a batch-tier job joins the     collect
                        collection of its backend, endpoint and model
batched    succeeded,   its provider batch answered (or expired, was    batch_settle
           failed,      cancelled: ``PROMPTQ_BATCH_EXPIRED``; or its
           batched,     line failed and it has tries left: again in a
           queued       later provider batch) (``worker.provider_batches``)
running    queued       the lease ran out (the worker died, or lost     claim
                        Redis for longer than a lease)
running    queued       a shutdown let go of a claimed job before its   unclaim (try given
                        attempt began, or a worker had no slot for a    back)
                        job handed to it (``worker.arq_seam``)
queued,    cancelled    ``Producer.cancel`` (a batched job's answer,    cancel
running,                when it comes, is dropped)
batched
running    (cancelled)  :class:`EndedElsewhere`: the worker lets go     ack
failed     queued       ``Producer.retry``                              retry
=========  ===========  ==============================================  ==================

The terminal states (``contract.TERMINAL_STATUSES``) are left only by ``Producer.retry`` of a failed
job. Every attempt the worker runs ends in exactly one :data:`Outcome`; :func:`end` settles it with the
one script of its row and reports it once: the metrics, the dashboard's tally, the attempt's span
and the job's canonical log line (``job.finished``, or ``job.retrying`` / ``job.released``). A
document a cancel wrote meanwhile is never overwritten: the settle step hands it back and the
outcome is reported as that cancel. A settle Redis does not take (an outage longer than the
worker rides out) leaves the job leased: it runs again once its lease runs out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

from promptq_core.background import REDIS_TROUBLE
from promptq_core.contract import JobResult, queue_keys
from worker import tracing
from worker.llm import LLMError
from worker.logs import get_logger
from worker.settle import LeaseLostError
from worker.state import WorkerState

__all__ = ["Backoff", "Collect", "EndedElsewhere", "Finish", "Outcome", "Release", "end", "report_finished"]

log = get_logger("promptq.job")


@dataclass(frozen=True, slots=True)
class Finish:
    """The attempt settled the job for good: ``result`` is its terminal document."""

    result: JobResult
    error: LLMError | None = None
    streamed: bool = False
    webhook_url: str | None = None
    """The job's webhook: told of the terminal document once it is stored."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """A retryable error with tries left: queued again with the error, waiting ``delay_s``."""

    queued: JobResult
    error: LLMError
    delay_s: float


@dataclass(frozen=True, slots=True)
class Release:
    """The attempt ended before its call counted: its try is given back, and the job goes back in line
    at once (a shutdown; a failed probe, to be routed again) or after ``delay_s`` (rate-limit budget
    that far away; every backend of its model down: it waits for a backend, due at once when a
    circuit closes, or at once if one closed since ``recoveries``, the count it was told; its
    tenant's budget spent: it waits for the next period)."""

    queued: JobResult
    reason: Literal["shutdown", "rate limit", "backend down", "budget"]
    delay_s: float = 0.0
    recoveries: int | None = None
    """Waiting for a backend: the recoveries count when the job found every backend down."""


@dataclass(frozen=True, slots=True)
class Collect:
    """A batch-tier job goes into ``collection`` (``"{backend} {endpoint} {model}"``), to be sent in a
    provider batch; ``batched`` is its document meanwhile, kept at least ``keep_s``."""

    batched: JobResult
    collection: str
    keep_s: float


@dataclass(frozen=True, slots=True)
class EndedElsewhere:
    """Another party ended the job meanwhile (a cancel): the worker lets go of it."""

    base: JobResult
    status: str


Outcome = Finish | Backoff | Release | Collect | EndedElsewhere


async def end(state: WorkerState, outcome: Outcome) -> None:
    """Settle ``outcome`` in Redis (one script, shielded from a cancel), then report it once."""
    match outcome:
        case Finish(result, error, streamed, webhook_url):
            finished = await asyncio.shield(state.settle.finish(result, streamed=streamed, webhook_url=webhook_url))
            if finished.cancelled is not None:  # cancelled while the call ran: the cancelled document stays
                cancelled = dataclasses.replace(
                    finished.cancelled, latency_ms=result.latency_ms, attempts=result.attempts
                )
                return _report_finished(state, cancelled, error, counted=False)
            if finished.ended_here:  # a tenant's spend counts before its slot takes another job
                await _settled_spend(state, result)
            _report_finished(state, result, error, counted=finished.ended_here)
        case Backoff(queued, error, delay_s):
            stored = await asyncio.shield(state.settle.defer(queued, delay_s, try_spent=True))
            if stored is not None:  # cancelled meanwhile: no retry
                return _report_ended_elsewhere(state, queued, stored.status)
            _report_backoff(state, queued, error, delay_s)
        case Release(queued, reason, delay_s, recoveries):
            keep_s = delay_s + state.config.result_ttl_s if reason == "budget" else 0.0
            deferred = state.settle.defer(queued, delay_s, try_spent=False, recoveries=recoveries, keep_s=keep_s)
            stored = await asyncio.shield(deferred)
            if stored is not None:
                return _report_ended_elsewhere(state, queued, stored.status)
            _report_release(state, queued, reason, delay_s, waiting=recoveries is not None)
        case Collect(batched, collection, keep_s):
            try:
                stored = await asyncio.shield(state.settle.collect(batched, collection, keep_s))
            except LeaseLostError:
                log.warning("job.lease_lost", note="its lease ran out before it was collected: it runs again")
                tracing.ended("lease_lost")
                return
            if stored is not None:
                return _report_ended_elsewhere(state, batched, stored.status)
            tracing.ended("batched")
            log.info("job.batched", backend=batched.backend, collection=collection)
        case EndedElsewhere(base, status):
            await asyncio.shield(state.settle.ack(queue_keys(base.queue), base.job_id))
            _report_ended_elsewhere(state, base, status)


async def _settled_spend(state: WorkerState, result: JobResult) -> None:
    cost = state.metrics.cost_of(result.model, result.usage, result.tier)
    if cost:
        try:
            await state.tenants.spent(result.job_id, cost, result.finished_at or time.time())
        except REDIS_TROUBLE as e:  # the job's result is stored: only the tenant's count misses it
            log.warning("tenant.spend_lost", error=str(e))


async def report_finished(state: WorkerState, final: JobResult, error: LLMError | None) -> None:
    """Report a job a provider batch's answer ended (settled by ``worker.provider_batches``), as a
    live attempt's finish is: its tenant's spend, the metrics, the tally, the canonical line."""
    await _settled_spend(state, final)
    _report_finished(state, final, error, counted=True)


def _report_finished(state: WorkerState, final: JobResult, error: LLMError | None, *, counted: bool) -> None:
    cost = None if final.status == "cancelled" else state.metrics.cost_of(final.model, final.usage, final.tier)
    if counted:  # (not a second delivery of a job stored already)
        state.tally.count(final, cost)
    usage = final.usage
    state.metrics.job_ended(final.model, final.status, usage, final.endpoint, cost)
    tracing.ended(final.status, error.type if error and final.status == "failed" else None)
    log.info(
        "job.finished",
        status=final.status,
        model=final.model,
        endpoint=final.endpoint,
        attempts=final.attempts,
        latency_ms=final.latency_ms,
        queued_ms=_queued_ms(final),
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        finish_reason=final.finish_reason,
        backend=final.backend,
        error_type=error.type if error else None,
        status_code=error.status_code if error else None,
    )


def _report_backoff(state: WorkerState, queued: JobResult, error: LLMError, delay_s: float) -> None:
    state.metrics.retries.labels(state.metrics.model(queued.model), error.type).inc()
    tracing.event("promptq.retry", **{"error.type": error.type, "promptq.delay_ms": round(delay_s * 1000)})
    tracing.ended("retrying", error.type)
    log.info(
        "job.retrying",
        backend=queued.backend,
        error_type=error.type,
        status_code=error.status_code,
        delay_ms=round(delay_s * 1000),
        retry_after_ms=None if error.retry_after_s is None else round(error.retry_after_s * 1000),
    )


def _report_release(state: WorkerState, queued: JobResult, reason: str, delay_s: float, *, waiting: bool) -> None:
    if reason == "rate limit":
        tracing.event("promptq.rate_limit_wait", **{"promptq.defer_ms": round(delay_s * 1000)})
        tracing.ended("deferred")
    elif reason == "backend down":
        if waiting:  # (not a failed probe, routed again at once)
            state.metrics.backend_waits.labels(state.metrics.model(queued.model)).inc()
        tracing.event("promptq.backend_wait", **{"promptq.defer_ms": round(delay_s * 1000)})
        tracing.ended("deferred", "backend_down")
    elif reason == "budget":
        tracing.ended("deferred", "over_budget")
    else:
        tracing.ended("released")
    log.info("job.released", reason=reason, backend=queued.backend, delay_ms=round(delay_s * 1000))


def _report_ended_elsewhere(state: WorkerState, base: JobResult, status: str) -> None:
    """The canonical line for a job whose document another party ended meanwhile (a cancel, which
    nobody else counts in the metrics; or, rarely, another worker)."""
    tracing.ended(status)
    log.info("job.finished", status=status, model=base.model, endpoint=base.endpoint, attempts=base.attempts)
    if status == "cancelled":
        state.metrics.job_ended(base.model, status, None, base.endpoint)


def _queued_ms(result: JobResult) -> int | None:
    if result.enqueued_at is None or result.started_at is None:
        return None
    return max(0, round((result.started_at - result.enqueued_at) * 1000))
