"""``arq worker.Settings``: the arq worker settings, built from the environment.

The worker reads jobs as JSON (never pickle), runs ``run_prompt`` with ``PROMPTQ_MAX_JOBS`` slots,
shares its ``AsyncOpenAI`` clients among its jobs (``llm.Clients``: made at start-up, closed at
shutdown) and keeps no arq result of its own: the result document is promptq's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

from promptq_core import tracing as core_tracing
from promptq_core.background import REDIS_TROUBLE
from promptq_core.connect import is_cluster
from promptq_core.contract import ARQ_QUEUE_NAME, JOB_FUNCTION
from promptq_core.env import ConfigError, redact_url
from promptq_core.guard import read_facts
from worker import arq_seam, heap, llm
from worker.arq_seam import (
    CTX_CONFIG,
    CTX_STATE,
    CTX_WORKER,
    PromptqWorker,
    func,
    job_deserializer,
    job_serializer,
)
from worker.backends import describe
from worker.circuit import Circuits
from worker.config import WorkerConfig, ignored_variables
from worker.jobs import run_prompt
from worker.lease import Leases
from worker.logs import configure_logging, get_logger
from worker.metrics import Metrics
from worker.presence import Presence
from worker.provider_batches import Batcher
from worker.queue import JobQueue
from worker.redis_conn import check_access, check_facts, redis_settings
from worker.routing import Router
from worker.settle import Settle
from worker.state import WorkerState
from worker.streams import Streams
from worker.tally import Tally
from worker.tenants import Tenants
from worker.tracing import Tracing
from worker.upgrade import Upgrade
from worker.wake import WakeListener
from worker.webhooks import Deliveries

__all__ = ["make_settings", "on_startup", "settings_kwargs"]

CTX_DELIVERIES = "promptq.webhooks"
"""In ``ctx``: the worker's webhook sender (``worker.webhooks``)."""
CTX_BATCHER = "promptq.batcher"
"""In ``ctx``: the worker's part in the Batch tier (``worker.provider_batches``), when a backend offers it."""
CTX_CHECKED = "promptq.checked"
"""In ``ctx``: Redis was checked (``check_access``) when the settings were made."""
CTX_HEAP = "promptq.heap"
"""In ``ctx``: this worker set the collector for short jobs (``worker.heap``); its shutdown undoes it."""

log = get_logger("promptq.worker")

ARQ_TIMEOUT_MARGIN_S = 60.0
"""arq's own job timeout sits this far above ``PROMPTQ_JOB_TIMEOUT_S``, which fires first: arq's
timeout would end the job without its result, so it is kept out of reach of a Redis outage too."""
LISTEN_TIMEOUT_S = 5.0
"""A worker starting waits this long at most for its pub/sub channels before it claims."""
PARK_POLLS = 3
"""An idle worker's parking lasts this many polls (``PROMPTQ_POLL_DELAY_S``): each idle poll renews
it, and a worker that died is handed no job once it has run out. On a Redis Cluster workers do not
park: a submit could not tell whether the worker hears its channel (a node counts only its own
subscribers), so its jobs go in line and wake the workers."""
ARQ_MAX_TRIES_MARGIN = 10
"""arq's own try limit is a backstop this far above ``PROMPTQ_MAX_TRIES``, which the job enforces."""


async def on_startup(ctx: dict[str, Any]) -> None:
    config: WorkerConfig = ctx[CTX_CONFIG]
    worker = ctx.get(CTX_WORKER)
    if not isinstance(worker, PromptqWorker):
        raise RuntimeError(
            "promptq: this arq Worker was not set up by promptq (its claim, leases and drain would be "
            "missing); start it with `arq worker.Settings`, or build it from worker.settings.settings_kwargs"
        )
    if not ctx.get(CTX_CHECKED):  # Redis was away when the settings were made: check it now
        check_facts(await read_facts(ctx["redis"]), config.redis_url, config.allow_eviction)
    core_tracing.setup("promptq-worker", on=config.traces)
    upgrade = Upgrade(ctx["redis"])
    await upgrade.run()  # jobs an older promptq left, into the default queue before the first claim
    upgrade.start()
    handoff_id = secrets.token_hex(8)  # (its name among each queue's parked workers)
    queues = tuple(
        JobQueue(
            ctx["redis"],
            config.lease_s,
            config.fairness_weights,
            config.model,
            name,
            handoff_id=handoff_id,
            park_s=0.0 if is_cluster(config.redis_url) else PARK_POLLS * config.poll_delay_s,
        )
        for name in config.queues
    )
    leases = Leases({q.keys.name: q for q in queues}, config.lease_s)
    leases.start()
    recovered: list[asyncio.Task[None]] = []  # (the tasks a recovery message starts, held until done)

    def on_recovery(recoveries: int) -> None:
        state: WorkerState | None = ctx.get(CTX_STATE)
        if state is not None:
            task = asyncio.get_running_loop().create_task(_recovered(state, recoveries))
            recovered.append(task)
            task.add_done_callback(recovered.remove)

    wake = WakeListener(
        ctx["redis"],
        tuple(q.keys for q in queues),
        on_cancel=leases.cancel,
        on_recovery=on_recovery,
        on_handoff=worker.handed,
        handoff_id=handoff_id,
        on_deaf=worker.unpark,
    )
    wake.start()
    await wake.started(LISTEN_TIMEOUT_S)  # before the first claim: a cancel published for a job claimed is heard
    metrics = Metrics(
        config.prices,
        running=lambda: len(leases.running),
        backends=tuple(b.name for b in config.all_backends()),
        queues=config.queues,
        limit_of=_limit_of(config),
    )
    presence = Presence(
        ctx["redis"],
        config.max_jobs + config.urgent_slots,
        busy=lambda: len(leases.running),
        backends=metrics.backend_summary,
        queues=config.queues,
    )
    presence.start()
    tally = Tally(ctx["redis"])
    tally.start()
    if config.metrics_port is not None:
        await metrics.serve(
            config.metrics_port, ctx["redis"], host=config.metrics_host, poll_delay_s=config.poll_delay_s
        )
    circuits = Circuits(ctx["redis"], config.circuit)
    ctx[CTX_STATE] = WorkerState(
        config=config,
        clients=llm.Clients(config),
        queues=queues,
        settle=Settle(ctx["redis"], config.result_ttl_s, config.min_replicas, config.replica_timeout_ms),
        leases=leases,
        wake=wake,
        router=Router(
            ctx["redis"],
            config.all_backends(),
            probe_s=config.job_timeout_s + 5,
            shared=config.limit_scope == "shared",
            failing_here=circuits.failing_here,
        ),
        circuits=circuits,
        tenants=Tenants(ctx["redis"], hold_s=config.job_timeout_s + 5),
        streams=Streams(ctx["redis"], config.result_ttl_s * 1000),
        metrics=metrics,
        presence=presence,
        tally=tally,
        upgrade=upgrade,
        tracing=Tracing(on=config.traces, capture=config.trace_content),
    )
    deliveries = Deliveries(ctx["redis"], tuple(q.keys for q in queues), config.webhook_secret, config.webhook_hosts)
    deliveries.start()  # webhooks: jobs' final documents POSTed where they asked, signed
    ctx[CTX_DELIVERIES] = deliveries
    if any(b.batch for b in config.all_backends()):  # the Batch tier: provider batches sent and read
        batcher = Batcher(ctx["redis"], ctx[CTX_STATE], presence.worker_id)
        batcher.start()
        ctx[CTX_BATCHER] = batcher
    heap.settle_in()  # start-up is done: the collector from here on is set for short jobs
    ctx[CTX_HEAP] = True  # (undone by this worker's shutdown only)
    if ignored := ignored_variables(os.environ):
        log.warning("worker.variables_ignored", variables=ignored, note="backends are listed: these are not used")
    log.info(
        "worker.started",
        redis_url=redact_url(config.redis_url),
        backends=describe(config.all_backends()),
        queues=list(config.queues),
        model=config.model,
        max_jobs=config.max_jobs,
    )


async def _recovered(state: WorkerState, recoveries: int) -> None:
    try:
        await state.backends_recovered(recoveries)
    except REDIS_TROUBLE as e:  # the waiting jobs come back after PARK_S anyway
        log.warning("backend.wake_failed", error=str(e))


async def on_shutdown(ctx: dict[str, Any]) -> None:
    try:
        await _stop(ctx)
    finally:
        if ctx.pop(CTX_HEAP, False):  # (a start-up that failed before it settled in has nothing to undo)
            heap.restore()
    log.info("worker.stopped")


async def _stop(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get(CTX_STATE)
    if (batcher := ctx.get(CTX_BATCHER)) is not None:
        await batcher.stop()
    if (deliveries := ctx.get(CTX_DELIVERIES)) is not None:
        await deliveries.stop()
    if state is not None:  # (its parking ended already: PromptqWorker.close, and the listener's end)
        await state.leases.stop()
        await state.wake.stop()
        await state.metrics.close()
        await state.presence.stop()
        await state.tally.stop()
        await state.upgrade.stop()
        await state.clients.aclose()
    core_tracing.shutdown()  # the spans not yet sent go now


def settings_kwargs(config: WorkerConfig, *, checked: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (the attributes of ``Settings``); a worker built
    from them is a ``PromptqWorker`` (``worker.arq_seam``)."""
    arq_seam.install()
    return {
        "functions": [
            func(
                run_prompt,
                name=JOB_FUNCTION,
                timeout=config.job_timeout_s + ARQ_TIMEOUT_MARGIN_S,
                max_tries=config.max_tries + ARQ_MAX_TRIES_MARGIN,
            )
        ],
        "queue_name": ARQ_QUEUE_NAME,  # arq only counts it in its hourly health line
        "redis_settings": redis_settings(config.redis_url),
        "max_jobs": config.max_jobs + config.urgent_slots,  # the ordinary ones are PromptqWorker's to count
        "job_timeout": config.job_timeout_s + ARQ_TIMEOUT_MARGIN_S,
        "keep_result": 0,
        "poll_delay": config.poll_delay_s,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {CTX_CONFIG: config, CTX_CHECKED: checked},
    }


def _config_errors_in_one_line(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """A configuration error found once the worker runs (Redis was away at start) ends it as one at
    start does: one line naming the variable, no traceback."""
    if isinstance(error, ConfigError):
        print(f"promptq worker: configuration error: {error}", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


def make_settings(config: WorkerConfig | None = None) -> type:
    """A ``Settings`` class for ``arq``, from ``config`` or the environment."""
    config = config or WorkerConfig.from_env()
    configure_logging(config.log_format, config.log_level)
    sys.excepthook = _config_errors_in_one_line
    checked = check_access(config.redis_url, config.allow_eviction)
    return type("Settings", (), settings_kwargs(config, checked=checked))


def _limit_of(config: WorkerConfig) -> Callable[[str, str], tuple[int | None, int | None]]:
    """The RPM and TPM of a model on a backend, by their names (for the budget the metrics show)."""
    backends = {b.name: b for b in config.all_backends()}

    def limit_of(backend: str, model: str) -> tuple[int | None, int | None]:
        found = backends.get(backend)
        limit = found.limit_for(model) if found is not None else None
        return (limit.rpm, limit.tpm) if limit is not None else (None, None)

    return limit_of
