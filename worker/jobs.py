"""The arq job: one attempt at a claimed job (the claim marked it running), ended in one outcome.

``run_prompt`` validates the job, checks its deadline, routes the call (:mod:`worker.routing`: a
backend of the job's model, or of a fallback model, with budget now and its circuit closed), calls
the API once, records what the call says of the backend's health (:mod:`worker.circuit`) and turns
what happened into one :data:`worker.lifecycle.Outcome` (finish, back off, release, ended
elsewhere), which :func:`worker.lifecycle.end` settles and reports. The job function itself decides about
retries (arq's ``max_tries`` is only a backstop) and bounds each attempt by
``PROMPTQ_JOB_TIMEOUT_S`` before arq's own timeout could fire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import structlog

from promptq_core.background import REDIS_TROUBLE
from promptq_core.contract import JobResult, split_arq_id
from promptq_core.tenants import Policy
from promptq_core.validation import BATCH_TIER, FLEX_TIER, InvalidJobError, PromptJob
from worker import llm, tracing
from worker.arq_seam import UNDECODABLE
from worker.circuit import PARK_S, PROCESSED_MAYBE
from worker.config import WorkerConfig
from worker.lifecycle import Backoff, Collect, EndedElsewhere, Finish, Outcome, Release, end
from worker.limiter import BudgetWaitTooLongError, LimitTooSmallError, estimate_tokens, server_budget_wait_s
from worker.logs import get_logger
from worker.retry import backoff_s
from worker.routing import AllDownError, NoBackendError, Route
from worker.state import WorkerState
from worker.tenants import TenantBudget

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
    handle: str = ctx["job_id"]  # arq's id: the queue's tag, then the job id
    queue, job_id = split_arq_id(handle)
    attempt: int = ctx["job_try"]
    structlog.contextvars.bind_contextvars(job_id=job_id, queue=queue, attempt=attempt)
    base = JobResult(job_id=job_id, status="running", attempts=attempt, queue=queue, enqueued_at=_enqueued_at(ctx))

    try:
        if isinstance(payload, dict) and UNDECODABLE in payload:
            raise InvalidJobError(str(payload[UNDECODABLE]))
        job = PromptJob.from_payload(job_id, payload, config.max_payload_bytes, queue)
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
        request=job.request,
        tier=job.tier,
        started_at=_claimed_at(ctx),
    )
    if (deadline := _deadline(config, job, base)) is not None and time.time() >= deadline:
        error = llm.LLMError("expired", "the job's deadline passed before it could run", retryable=False)
        return await _end(state, _failed(base, error, started_s=time.monotonic()), job)
    if attempt > config.max_tries:  # a worker died during each of the earlier attempts
        error = llm.LLMError("too_many_attempts", f"{attempt - 1} attempts did not finish", retryable=True)
        return await _end(state, _failed(base, error, started_s=time.monotonic()), job)
    with state.leases.holding(handle):
        if state.leases.cancelled_before_start(handle):  # its document says cancelled: no call
            return await _end(state, EndedElsewhere(base, "cancelled"))
        with state.tracing.attempt(job, base):  # the attempt's span, around how it ends too
            await _attempt_ending(state, job, base)


async def _attempt_ending(state: WorkerState, job: PromptJob, base: JobResult) -> None:
    """One attempt and its outcome, including a cancel, a shutdown and a bug."""
    try:
        outcome = await _attempt(state, job, base)
    except asyncio.CancelledError:
        if not state.leases.cancelled(job.keys.arq_id(job.job_id)):
            # A shutdown past its grace (our own timeout raises TimeoutError, and fires before
            # arq's): put the job back as it was, without spending a try.
            await _end(state, Release(_released(base), "shutdown"))
            raise
        task = asyncio.current_task()  # Producer.cancel: the document already says so
        if task is not None:
            task.uncancel()
        outcome = EndedElsewhere(base, "cancelled")
    except REDIS_TROUBLE as e:  # Redis failed past every retry before the call
        log.warning("job.redis_error", error=str(e), note="it runs again once its lease runs out")
        tracing.ended("deferred", "redis_error")
        return
    except Exception as e:  # a bug: end the job visibly rather than leave its document unfinished
        log.exception("job.internal_error")
        error = llm.LLMError("internal_error", f"{type(e).__name__}: {e}", retryable=False)
        outcome = _failed(base, error, started_s=time.monotonic())
    await _end(state, outcome, job)


async def _end(state: WorkerState, outcome: Outcome, job: PromptJob | None = None) -> None:
    """Settle and report the outcome (a job's finish with its webhook, if it names one); a settle
    Redis did not take leaves the job leased (it runs again once its lease runs out)."""
    if job is not None and job.webhook_url and isinstance(outcome, Finish):
        outcome = dataclasses.replace(outcome, webhook_url=job.webhook_url)
    try:
        await end(state, outcome)
    except REDIS_TROUBLE as e:
        log.warning("job.settle_failed", error=str(e), note="it runs again once its lease runs out")
        tracing.ended("deferred", "redis_error")


MAX_BUDGET_WAIT_S = 10.0
"""A job waits this long at most in its slot for rate-limit budget; longer, it waits in the queue."""
BUDGET_RECHECK_S = 3600.0
"""A job held for its tenant's next budget period looks again this often (a budget raised meanwhile
lets it go); its record and document are kept alive as long as it waits."""
TENANT_BUDGET_WAIT_S = 1.0
"""A job held to its tenant's budgets waits this long at most in its slot (longer, in the queue): a
tenant at its limit keeps no slot from the others."""
FALLBACK_CHECK_S = 0.5
"""A job with a fallback model, waiting for its own, comes back no sooner than this to look again."""


async def _attempt(state: WorkerState, job: PromptJob, base: JobResult) -> Outcome:
    """Route the call (the job's model, then its fallbacks), call the API once, and say how the
    attempt ends."""
    config = state.config
    assert base.model is not None
    policy = await state.tenants.policy(job.job_id)
    if (held := await _held(state, job, base, policy)) is not None:
        return held
    tenant = state.tenants.budget(policy, job.keys.arq_id(job.job_id))
    fallbacks = job.fallbacks or config.fallbacks.get(base.model, ())
    if policy is not None and policy.models:  # the fleet's fallbacks too stay within the tenant's models
        fallbacks = tuple(m for m in fallbacks if m in policy.models)
    chain = (base.model, *fallbacks)
    down: tuple[JobResult, AllDownError] | None = None
    """The first model found with every backend down: if no later one can run, the job waits for it."""
    for step, model in enumerate(chain):
        last = step == len(chain) - 1
        base = dataclasses.replace(base, model=model)
        counted = state.router.limited(model) or (tenant is not None and tenant.tpm > 0)
        estimate = estimate_tokens(job, config.completion_estimate_tokens) if counted else 0
        falls_back_s = math.inf if last else config.fallback_after_s
        try:
            max_wait_s = MAX_BUDGET_WAIT_S if tenant is None else TENANT_BUDGET_WAIT_S
            route = await state.router.route(model, estimate, max_wait_s, falls_back_s, tenant)
        except asyncio.CancelledError:  # (in the route's wait for its budget: its place is given back)
            await _settled_after_call(state.tenants.call_ended(tenant))
            raise
        except (NoBackendError, LimitTooSmallError) as e:
            if down is not None:  # a fallback that cannot run: wait for the model that is down
                return _wait_for_backend(state, job, *down, falls_back_s=math.inf)
            if not last:
                continue
            kind = "no_backend" if isinstance(e, NoBackendError) else "limit_exceeded"
            return _failed(base, llm.LLMError(kind, str(e), retryable=False), started_s=time.monotonic())
        except BudgetWaitTooLongError as e:
            # A tenant's queued jobs all see the same wait: spread their returns so they do not all
            # come back at once for the one that can go (the others would be sent back again).
            wait_s = e.wait_s if tenant is None else e.wait_s * (1 + random.random())
            return Release(_released(base), "rate limit", wait_s)
        except AllDownError as e:
            down = down or (base, e)
            if not last and e.down_s >= falls_back_s:
                continue  # down long enough: the next model
            return _wait_for_backend(state, job, base, e, falls_back_s=falls_back_s)
        try:
            outcome = await _call_routed(
                state, job, dataclasses.replace(base, backend=route.backend.name), route, estimate, tenant
            )
        finally:
            await _settled_after_call(state.tenants.call_ended(tenant))
        if last or not _moves_on(outcome):
            return outcome
    raise AssertionError("unreachable: the last model's attempt returns")


async def _held(state: WorkerState, job: PromptJob, base: JobResult, policy: Policy | None) -> Outcome | None:
    """How the attempt ends before any call: its tenant's budget is spent (it waits for the next
    period), or it is a batch-tier job (it goes into a provider batch); None: it calls live."""
    if policy is not None and (renews_s := await state.tenants.over_budget_s(policy)) is not None:
        spent = f"tenant {policy.tenant}'s budget for the {policy.budget_period} is spent: it waits for the next"
        error = llm.LLMError("over_budget", spent, retryable=True)
        return Release(_released(base, error), "budget", min(renews_s, BUDGET_RECHECK_S))
    if job.tier == BATCH_TIER:
        return await _to_batch(state, job, base)
    return None


BATCH_KEEP_S = 2 * 86_400.0
"""A batched job's record and document are kept at least this long (a provider batch has a day to
answer; its answers may be read later), and then its result for ``PROMPTQ_RESULT_TTL_S``."""


async def _to_batch(state: WorkerState, job: PromptJob, base: JobResult) -> Outcome | None:
    """A batch-tier job goes into the collection of the first backend with the Batch API serving its
    model (:mod:`worker.provider_batches` sends it); None: it runs live (no such backend, or its
    provider batch expired with ``PROMPTQ_BATCH_EXPIRED=live``)."""
    assert base.model is not None
    backend = state.config.batch_backend(base.model)
    if backend is None:
        if not state.config.batch.strict:
            return None
        served = "no backend with the Batch API serves it (PROMPTQ_BATCH_STRICT is set)"
        error = llm.LLMError("no_batch_backend", f"model {base.model!r}: {served}", retryable=False)
        return _failed(base, error, started_s=time.monotonic())
    if await state.settle.runs_live(job.keys, job.job_id):
        return None
    batched = dataclasses.replace(base, status="batched", backend=backend.name, error=None)
    collection = f"{backend.name} {job.endpoint} {base.model}"
    return Collect(batched, collection, BATCH_KEEP_S + state.config.result_ttl_s)


def _moves_on(outcome: Outcome) -> bool:
    """The attempt failed for a reason the next fallback model may not have (its input is too long)."""
    return isinstance(outcome, Finish) and outcome.error is not None and outcome.error.type == "context_length_exceeded"


async def _call_routed(
    state: WorkerState, job: PromptJob, base: JobResult, route: Route, estimate: int, tenant: TenantBudget | None
) -> Outcome:
    """The call on its route, and what it means for the budgets, the backend's circuit and the job."""
    config = state.config
    assert base.model is not None
    if route.waited_s:
        log.debug("job.budget_waited", waited_ms=round(route.waited_s * 1000))
        tracing.event("promptq.rate_limit_wait", **{"promptq.wait_ms": round(route.waited_s * 1000)})
        state.metrics.budget_wait.labels(state.metrics.model(base.model)).inc(route.waited_s)
    if not route.probe and state.circuits.down_here(route.backend.name):  # it failed since the route: again
        return Release(_released(base), "backend down")
    on_delta = None
    if job.stream:
        writer = state.streams.writer(job.keys.stream(job.job_id))
        await writer.begin(base.attempts)
        on_delta = writer.delta
    started_s = time.monotonic()
    try:
        completion = await _call(state, job, route, base.model, on_delta)
    except (llm.LLMError, TimeoutError) as e:
        error = e if isinstance(e, llm.LLMError) else _attempt_timeout(config)
        if error.type == "rate_limited":  # every worker pauses for the advised time, not just this one
            state.metrics.rate_limited.labels(state.metrics.model(base.model)).inc()
            await state.router.cool_down(route.backend, base.model, error.retry_after_s or 1.0)
            await _settled_after_call(_answered(state, route))  # the backend answered: it is up
        elif error.retryable:  # enough of these in a row open its circuit
            state.router.stale()
            health = await state.circuits.failed(route.backend.name, probe=route.probe, routed_at_ms=route.routed_at_ms)
            state.metrics.backend_health(route.backend.name, up=not health.open)
            if route.probe and error.type not in PROCESSED_MAYBE:  # known down: no try spent, routed again
                return Release(_released(base, error), "backend down")
        else:  # an error of the job's own (400, 401...): the backend answered, it is up
            await _settled_after_call(_answered(state, route))
        if error.retryable and base.attempts < config.max_tries:
            queued = dataclasses.replace(base, status="queued", error=error.to_error(), latency_ms=_ms_since(started_s))
            return Backoff(queued, error, backoff_s(base.attempts, error.retry_after_s))
        return _failed(base, error, started_s=started_s, streamed=job.stream)
    await _settled_after_call(_after_success(state, route, base.model, estimate, completion, started_s, tenant))
    final = completion.succeeded(base, finished_at=_now_s(), latency_ms=_ms_since(started_s))
    return Finish(final, streamed=job.stream)


async def _after_success(
    state: WorkerState,
    route: Route,
    model: str,
    estimate: int,
    completion: llm.Completion,
    started_s: float,
    tenant: TenantBudget | None = None,
) -> None:
    """The bookkeeping of a call that succeeded: the backend's health, its token budget (and the
    tenant's), its server's word."""
    await _answered(state, route)
    if estimate and completion.usage:
        await state.router.settle(route.backend, model, estimate, completion.usage.total_tokens)
        if tenant is not None and tenant.tpm:
            await state.router.settle_tenant(tenant, estimate, completion.usage.total_tokens)
    if estimate and (pause_s := server_budget_wait_s(completion.rate_headers, estimate, time.monotonic() - started_s)):
        await state.router.cool_down(route.backend, model, pause_s)  # the server's budget is spent: pause all


async def _settled_after_call(bookkeeping: Awaitable[None]) -> None:
    """Run the bookkeeping after an answered call; Redis failing it (past every retry) loses the
    bookkeeping, never the answer, which is paid for."""
    try:
        await bookkeeping
    except REDIS_TROUBLE as e:
        log.warning("job.bookkeeping_failed", error=str(e), note="the answer is kept")


async def _answered(state: WorkerState, route: Route) -> None:
    """The backend answered: its circuit closes (written only when it had failures on record when
    the call was routed, or this worker saw one since, or this was its probe)."""
    if route.probe or not route.clean or state.circuits.failing_here(route.backend.name):
        health = await state.circuits.succeeded(route.backend.name, probe=route.probe, routed_at_ms=route.routed_at_ms)
        state.metrics.backend_health(route.backend.name, up=True)
        if health.recovered:
            log.info("backend.recovered", backend=route.backend.name)
            await state.backends_recovered(health.recoveries)


def _wait_for_backend(
    state: WorkerState, job: PromptJob, base: JobResult, down: AllDownError, *, falls_back_s: float
) -> Release:
    """Every backend of the model is down: the job waits in the queue, its try given back. The scout
    comes back when a probe may go; the others when a circuit closes (or after ``PARK_S``); none past
    its deadline, nor past the time it moves to its next model (``falls_back_s`` of the outage)."""
    wait_s = down.wait_s if down.scout else PARK_S
    wait_s = min(wait_s, max(FALLBACK_CHECK_S, falls_back_s - down.down_s))
    if (deadline := _deadline(state.config, job, base)) is not None:
        wait_s = max(0.0, min(wait_s, deadline - time.time()))
    error = llm.LLMError("backend_down", f"{down}: the job waits for one", retryable=True)
    return Release(_released(base, error), "backend down", wait_s, down.recoveries)


def _deadline(config: WorkerConfig, job: PromptJob, base: JobResult) -> float | None:
    """When the job stops being worth starting (Unix s): its own deadline, or the fleet's default."""
    if job.deadline is not None:
        return job.deadline
    if config.default_deadline_s is not None and base.enqueued_at is not None:
        return base.enqueued_at + config.default_deadline_s
    return None


async def _call(
    state: WorkerState, job: PromptJob, route: Route, model: str, on_delta: llm.DeltaSink | None
) -> llm.Completion:
    """The API call itself, bounded by PROMPTQ_JOB_TIMEOUT_S and counted in the metrics (under the
    job's name for the model, whatever the backend calls it)."""
    metrics = state.metrics
    backend = route.backend.name
    metrics.attempts.labels(metrics.model(model)).inc()
    metrics.in_flight.inc()
    started_s = time.monotonic()
    outcome, tokens = "error", 0
    try:
        with state.tracing.call(job, route.model, route.backend) as span:
            flex = job.tier == FLEX_TIER
            bound_s = state.config.flex_timeout_s + 10 if flex else state.config.job_timeout_s
            async with asyncio.timeout(bound_s):
                call_s = state.config.flex_timeout_s if flex else None
                completion = await llm.complete(state.clients.take(backend), job, route.model, on_delta, call_s)
            state.tracing.answered(span, completion)
            outcome = "ok"
            tokens = completion.usage.total_tokens if completion.usage is not None else 0
            return completion
    except llm.LLMError as e:
        outcome = e.type
        raise
    except TimeoutError:
        outcome = "timeout"
        raise
    finally:
        metrics.in_flight.dec()
        elapsed_s = time.monotonic() - started_s
        metrics.latency.labels(metrics.model(model)).observe(elapsed_s)
        metrics.backend_call(backend, outcome, elapsed_s, model, tokens)


def _attempt_timeout(config: WorkerConfig) -> llm.LLMError:
    message = f"the attempt took longer than PROMPTQ_JOB_TIMEOUT_S ({config.job_timeout_s:g} s)"
    return llm.LLMError("timeout", message, retryable=True)


def _failed(base: JobResult, error: llm.LLMError, *, started_s: float, streamed: bool = False) -> Finish:
    final = dataclasses.replace(
        base, status="failed", error=error.to_error(), finished_at=_now_s(), latency_ms=_ms_since(started_s)
    )
    return Finish(final, error, streamed)


def _released(base: JobResult, why: llm.LLMError | None = None) -> JobResult:
    """The document of a job going back in line without spending its try (``why``: the error it shows meanwhile)."""
    error = None if why is None else why.to_error()
    return dataclasses.replace(base, status="queued", attempts=base.attempts - 1, started_at=None, error=error)


def _ms_since(started_s: float) -> int:
    return round((time.monotonic() - started_s) * 1000)
