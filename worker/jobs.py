"""The arq job: call the API once for a claimed job (the claim marked it running), write the outcome.

Every outcome ends in the result document. The job function itself decides about retries (arq's
``max_tries`` is only a backstop) and bounds each attempt by ``PROMPTQ_JOB_TIMEOUT_S`` before arq's
own timeout could fire, since arq would fail the job without writing the document.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from redis.exceptions import RedisError

from producer.contract import JobResult
from producer.validation import InvalidJobError, PromptJob
from worker import llm, tracing
from worker.arq_seam import UNDECODABLE, Retry
from worker.config import WorkerConfig
from worker.lease import Leases
from worker.limiter import BudgetWaitTooLongError, Limiter, LimitTooSmallError, estimate_tokens, server_budget_wait_s
from worker.logs import get_logger
from worker.metrics import Metrics
from worker.presence import Presence
from worker.queue import JobQueue
from worker.retry import backoff_s
from worker.store import ResultStore
from worker.streams import Streams
from worker.tally import Tally
from worker.wake import WakeListener

__all__ = ["WorkerState", "run_prompt"]

log = get_logger("promptq.job")


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What every job of one worker process shares (``ctx["promptq"]``)."""

    config: WorkerConfig
    clients: llm.Clients
    queue: JobQueue
    store: ResultStore
    leases: Leases
    wake: WakeListener
    limiter: Limiter
    streams: Streams
    metrics: Metrics
    presence: Presence
    tally: Tally
    tracing: tracing.Tracing
    settled: set[str]
    """Jobs the finish script let go of (nothing is left to do once arq is done with them)."""

    @property
    def wake_event(self) -> asyncio.Event:
        """Set by a submit (``worker.wake``) or a freed slot: the poll loop looks at the queue at once."""
        return self.wake.event

    @property
    def shutdown_grace_s(self) -> float:
        return self.config.shutdown_grace_s


def _now_s() -> float:
    return round(time.time(), 3)


def _claimed_at(ctx: dict[str, Any]) -> float:
    """When the claim took the job (arq's score, Redis time in ms; the claim wrote it as ``started_at``)."""
    score = ctx.get("score")
    return round(score / 1000, 3) if isinstance(score, int) and score > 0 else _now_s()


def _enqueued_at(ctx: dict[str, Any]) -> float | None:
    enqueued: datetime | None = ctx.get("enqueue_time")
    return round(enqueued.timestamp(), 3) if enqueued and enqueued.timestamp() > 0 else None


async def run_prompt(ctx: dict[str, Any], payload: Any) -> None:
    """Run one prompt job (the function every promptq job is enqueued under)."""
    state: WorkerState = ctx["promptq"]
    config = state.config
    job_id: str = ctx["job_id"]
    attempt: int = ctx["job_try"]
    structlog.contextvars.bind_contextvars(job_id=job_id, attempt=attempt)
    base = JobResult(job_id=job_id, status="running", attempts=attempt, enqueued_at=_enqueued_at(ctx))

    try:
        if isinstance(payload, dict) and UNDECODABLE in payload:
            raise InvalidJobError(str(payload[UNDECODABLE]))
        job = PromptJob.from_payload(job_id, payload, config.max_payload_bytes)
    except InvalidJobError as e:
        error = llm.LLMError("invalid_payload", str(e), retryable=False)
        return await _finish(state, base, started_s=time.monotonic(), error=error)

    base = dataclasses.replace(
        base,
        model=job.model or config.model,
        endpoint=job.endpoint,
        metadata=job.metadata,
        priority=job.priority,
        fairness_key=job.fairness_key,
        started_at=_claimed_at(ctx),
    )
    if attempt > config.max_tries:  # a worker died during each of the earlier attempts
        error = llm.LLMError("too_many_attempts", f"{attempt - 1} attempts did not finish", retryable=True)
        return await _finish(state, base, started_s=time.monotonic(), error=error)
    with state.leases.holding(job_id):
        if state.leases.cancelled_before_start(job_id):  # its document says cancelled: no call
            return _ended_elsewhere(state, base, "cancelled")
        with state.tracing.attempt(job, base):  # the attempt's span, around how it ends too
            await _attempt_ending(state, job, base)


async def _attempt_ending(state: WorkerState, job: PromptJob, base: JobResult) -> None:
    """One attempt, and what becomes of the job when it is cancelled, shut down or hits a bug."""
    job_id = job.job_id
    try:
        await _attempt(state, job, base)
    except asyncio.CancelledError:
        if state.leases.cancelled(job_id):  # Producer.cancel: the document already says so
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return _ended_elsewhere(state, base, "cancelled")
        # A shutdown past its grace (our own timeout raises TimeoutError, and fires before
        # arq's): put the job back as it was, without spending a try.
        try:
            await asyncio.shield(_release(state, base))
        except (RedisError, OSError) as e:  # Redis away: the job stays leased and runs again after the lease
            log.warning("job.release_failed", error=str(e))
        tracing.ended("released")
        raise
    except Retry:
        raise
    except (RedisError, OSError) as e:
        # Redis failed past every retry: keep the job in arq's queue rather than let arq drop it
        log.warning("job.redis_error", error=str(e))
        tracing.ended("deferred", "redis_error")
        raise Retry(defer=REDIS_ERROR_DEFER_S) from e
    except Exception as e:  # a bug: end the job visibly rather than leave its document unfinished
        log.exception("job.internal_error")
        error = llm.LLMError("internal_error", f"{type(e).__name__}: {e}", retryable=False)
        await _finish(state, base, started_s=time.monotonic(), error=error)


REDIS_ERROR_DEFER_S = 5.0
MAX_BUDGET_WAIT_S = 10.0
"""A job waits this long at most in its slot for rate-limit budget; longer, it waits in the queue."""


async def _attempt(state: WorkerState, job: PromptJob, base: JobResult) -> None:
    """Take the rate-limit budget, call the API once, then retry, fail or finish."""
    config = state.config
    assert base.model is not None
    estimate = estimate_tokens(job, config.completion_estimate_tokens) if state.limiter.enabled else 0
    try:
        waited_s = await state.limiter.acquire(base.model, estimate, max_wait_s=MAX_BUDGET_WAIT_S)
    except LimitTooSmallError as e:
        error = llm.LLMError("limit_exceeded", str(e), retryable=False)
        return await _finish(state, base, started_s=time.monotonic(), error=error)
    except BudgetWaitTooLongError as e:
        tracing.event("promptq.rate_limit_wait", **{"promptq.defer_ms": round(e.wait_s * 1000)})
        await _release(state, base, reason="rate limit")
        tracing.ended("deferred")
        raise Retry(defer=e.wait_s) from None
    if waited_s:
        log.debug("job.budget_waited", waited_ms=round(waited_s * 1000))
        tracing.event("promptq.rate_limit_wait", **{"promptq.wait_ms": round(waited_s * 1000)})
        state.metrics.budget_wait.labels(base.model).inc(waited_s)

    on_delta = None
    if job.stream:
        writer = state.streams.writer(job.job_id)
        await writer.begin(base.attempts)
        on_delta = writer.delta
    started_s = time.monotonic()
    try:
        completion = await _call(state, job, base.model, on_delta)
    except (llm.LLMError, TimeoutError) as e:
        error = e if isinstance(e, llm.LLMError) else _attempt_timeout(config)
        if error.type == "rate_limited":  # every worker pauses for the advised time, not just this one
            state.metrics.rate_limited.labels(base.model).inc()
            await state.limiter.cool_down(base.model, error.retry_after_s or 1.0)
        if error.retryable and base.attempts < config.max_tries:
            return await _retry(state, base, started_s, error)
        return await _finish(state, base, started_s=started_s, error=error, streamed=job.stream)
    if estimate and completion.usage:
        await state.limiter.settle(base.model, estimate, completion.usage.total_tokens)
    if estimate and (pause_s := server_budget_wait_s(completion.rate_headers, estimate, time.monotonic() - started_s)):
        await state.limiter.cool_down(base.model, pause_s)  # the server's budget is spent: pause every worker
    await _finish(state, base, started_s=started_s, completion=completion, streamed=job.stream)


async def _call(state: WorkerState, job: PromptJob, model: str, on_delta: llm.DeltaSink | None) -> llm.Completion:
    """The API call itself, bounded by PROMPTQ_JOB_TIMEOUT_S and counted in the metrics."""
    metrics = state.metrics
    metrics.attempts.labels(model).inc()
    metrics.in_flight.inc()
    started_s = time.monotonic()
    try:
        with state.tracing.call(job, model) as span:
            async with asyncio.timeout(state.config.job_timeout_s):
                completion = await llm.complete(state.clients.take(), job, model, on_delta)
            state.tracing.answered(span, completion)
            return completion
    finally:
        metrics.in_flight.dec()
        metrics.latency.labels(model).observe(time.monotonic() - started_s)


def _attempt_timeout(config: WorkerConfig) -> llm.LLMError:
    message = f"the attempt took longer than PROMPTQ_JOB_TIMEOUT_S ({config.job_timeout_s:g} s)"
    return llm.LLMError("timeout", message, retryable=True)


async def _retry(state: WorkerState, base: JobResult, started_s: float, error: llm.LLMError) -> None:
    delay_s = backoff_s(base.attempts, error.retry_after_s)
    queued = dataclasses.replace(base, status="queued", error=error.to_error(), latency_ms=_ms_since(started_s))
    state.metrics.retries.labels(base.model or "", error.type).inc()
    if (stored := await state.store.requeue(queued)) is not None:  # cancelled meanwhile: no retry
        return _ended_elsewhere(state, base, stored.status)
    tracing.event("promptq.retry", **{"error.type": error.type, "promptq.delay_ms": round(delay_s * 1000)})
    tracing.ended("retrying", error.type)
    log.info(
        "job.retrying",
        error_type=error.type,
        status_code=error.status_code,
        delay_ms=round(delay_s * 1000),
        retry_after_ms=None if error.retry_after_s is None else round(error.retry_after_s * 1000),
    )
    raise Retry(defer=delay_s)


async def _release(state: WorkerState, base: JobResult, reason: str = "shutdown") -> None:
    queued = dataclasses.replace(base, status="queued", attempts=base.attempts - 1, started_at=None)
    await state.store.release(queued)
    log.info("job.released", reason=reason)


def _ended_elsewhere(state: WorkerState, base: JobResult, status: str) -> None:
    """The canonical line for a job whose document another party ended meanwhile (a cancel, which
    nobody else counts in the metrics; or, rarely, another worker)."""
    tracing.ended(status)
    log.info("job.finished", status=status, model=base.model, endpoint=base.endpoint, attempts=base.attempts)
    if status == "cancelled":
        state.metrics.job_ended(base.model, status, None, base.endpoint)


def _ms_since(started_s: float) -> int:
    return round((time.monotonic() - started_s) * 1000)


async def _finish(
    state: WorkerState,
    base: JobResult,
    *,
    started_s: float,
    completion: llm.Completion | None = None,
    error: llm.LLMError | None = None,
    streamed: bool = False,
) -> None:
    """Write the terminal document and log the job's one canonical line."""
    final = dataclasses.replace(
        base,
        status="succeeded" if completion else "failed",
        content=completion.content if completion else None,
        output=completion.output if completion else None,
        embeddings=completion.embeddings if completion else None,
        finish_reason=completion.finish_reason if completion else None,
        usage=completion.usage if completion else None,
        error=error.to_error() if error else None,
        finished_at=_now_s(),
        latency_ms=_ms_since(started_s),
    )
    cost = state.metrics.cost_of(final.model, final.usage)
    finished = await asyncio.shield(state.store.finish(final, streamed=streamed))
    state.settled.add(final.job_id)
    if finished.cancelled is not None:  # cancelled while the call ran: the cancelled document stays
        final = dataclasses.replace(finished.cancelled, latency_ms=final.latency_ms, attempts=final.attempts)
        cost = None
    elif finished.ended_here:  # (not a second delivery of a job stored already)
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
        error_type=error.type if error else None,
        status_code=error.status_code if error else None,
    )


def _queued_ms(result: JobResult) -> int | None:
    if result.enqueued_at is None or result.started_at is None:
        return None
    return max(0, round((result.started_at - result.enqueued_at) * 1000))
