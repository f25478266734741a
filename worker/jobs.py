"""The arq job: one attempt at a claimed job (the claim marked it running), ended in one outcome.

``run_prompt`` validates the job, waits for its rate-limit budget, calls the API once and turns what
happened into one :data:`worker.lifecycle.Outcome` (finish, back off, release, ended elsewhere),
which :func:`worker.lifecycle.end` settles and reports. The job function itself decides about
retries (arq's ``max_tries`` is only a backstop) and bounds each attempt by
``PROMPTQ_JOB_TIMEOUT_S`` before arq's own timeout could fire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime
from typing import Any

import structlog
from redis.exceptions import RedisError

from promptq_core.contract import JobResult
from promptq_core.validation import InvalidJobError, PromptJob
from worker import llm, tracing
from worker.arq_seam import UNDECODABLE
from worker.config import WorkerConfig
from worker.lifecycle import Backoff, EndedElsewhere, Finish, Outcome, Release, end
from worker.limiter import BudgetWaitTooLongError, LimitTooSmallError, estimate_tokens, server_budget_wait_s
from worker.logs import get_logger
from worker.retry import backoff_s
from worker.state import WorkerState

__all__ = ["run_prompt"]

log = get_logger("promptq.job")


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
        return await _end(state, _failed(base, error, started_s=time.monotonic()))

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
        return await _end(state, _failed(base, error, started_s=time.monotonic()))
    with state.leases.holding(job_id):
        if state.leases.cancelled_before_start(job_id):  # its document says cancelled: no call
            return await _end(state, EndedElsewhere(base, "cancelled"))
        with state.tracing.attempt(job, base):  # the attempt's span, around how it ends too
            await _attempt_ending(state, job, base)


async def _attempt_ending(state: WorkerState, job: PromptJob, base: JobResult) -> None:
    """One attempt and its outcome, including a cancel, a shutdown and a bug."""
    try:
        outcome = await _attempt(state, job, base)
    except asyncio.CancelledError:
        if not state.leases.cancelled(job.job_id):
            # A shutdown past its grace (our own timeout raises TimeoutError, and fires before
            # arq's): put the job back as it was, without spending a try.
            await _end(state, Release(_released(base), "shutdown"))
            raise
        task = asyncio.current_task()  # Producer.cancel: the document already says so
        if task is not None:
            task.uncancel()
        outcome = EndedElsewhere(base, "cancelled")
    except (RedisError, OSError) as e:  # Redis failed past every retry before the call
        log.warning("job.redis_error", error=str(e), note="it runs again once its lease runs out")
        tracing.ended("deferred", "redis_error")
        return
    except Exception as e:  # a bug: end the job visibly rather than leave its document unfinished
        log.exception("job.internal_error")
        error = llm.LLMError("internal_error", f"{type(e).__name__}: {e}", retryable=False)
        outcome = _failed(base, error, started_s=time.monotonic())
    await _end(state, outcome)


async def _end(state: WorkerState, outcome: Outcome) -> None:
    """Settle and report the outcome; a settle Redis did not take leaves the job leased (it runs again
    once its lease runs out)."""
    try:
        await end(state, outcome)
    except (RedisError, OSError) as e:
        log.warning("job.settle_failed", error=str(e), note="it runs again once its lease runs out")
        tracing.ended("deferred", "redis_error")


MAX_BUDGET_WAIT_S = 10.0
"""A job waits this long at most in its slot for rate-limit budget; longer, it waits in the queue."""


async def _attempt(state: WorkerState, job: PromptJob, base: JobResult) -> Outcome:
    """Take the rate-limit budget, call the API once, and say how the attempt ends."""
    config = state.config
    assert base.model is not None
    estimate = estimate_tokens(job, config.completion_estimate_tokens) if state.limiter.enabled else 0
    try:
        waited_s = await state.limiter.acquire(base.model, estimate, max_wait_s=MAX_BUDGET_WAIT_S)
    except LimitTooSmallError as e:
        return _failed(base, llm.LLMError("limit_exceeded", str(e), retryable=False), started_s=time.monotonic())
    except BudgetWaitTooLongError as e:
        return Release(_released(base), "rate limit", e.wait_s)
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
            queued = dataclasses.replace(base, status="queued", error=error.to_error(), latency_ms=_ms_since(started_s))
            return Backoff(queued, error, backoff_s(base.attempts, error.retry_after_s))
        return _failed(base, error, started_s=started_s, streamed=job.stream)
    if estimate and completion.usage:
        await state.limiter.settle(base.model, estimate, completion.usage.total_tokens)
    if estimate and (pause_s := server_budget_wait_s(completion.rate_headers, estimate, time.monotonic() - started_s)):
        await state.limiter.cool_down(base.model, pause_s)  # the server's budget is spent: pause every worker
    final = dataclasses.replace(
        base,
        status="succeeded",
        content=completion.content,
        output=completion.output,
        embeddings=completion.embeddings,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        finished_at=_now_s(),
        latency_ms=_ms_since(started_s),
    )
    return Finish(final, streamed=job.stream)


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


def _failed(base: JobResult, error: llm.LLMError, *, started_s: float, streamed: bool = False) -> Finish:
    final = dataclasses.replace(
        base, status="failed", error=error.to_error(), finished_at=_now_s(), latency_ms=_ms_since(started_s)
    )
    return Finish(final, error, streamed)


def _released(base: JobResult) -> JobResult:
    """The document of a job going back in line without spending its try."""
    return dataclasses.replace(base, status="queued", attempts=base.attempts - 1, started_at=None)


def _ms_since(started_s: float) -> int:
    return round((time.monotonic() - started_s) * 1000)
