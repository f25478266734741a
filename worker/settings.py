"""``arq worker.Settings``: the arq worker settings, built from the environment.

The worker reads jobs as JSON (never pickle), runs ``run_prompt`` with ``PROMPTQ_MAX_JOBS`` slots,
shares its ``AsyncOpenAI`` clients among its jobs (``llm.Clients``: made at start-up, closed at
shutdown) and keeps no arq result of its own: the result document is promptq's.
"""

from __future__ import annotations

import json
from typing import Any

from arq.worker import func

from producer.contract import JOB_FUNCTION, QUEUE_NAME
from producer.env import redact_url
from worker import llm, shutdown
from worker.config import WorkerConfig
from worker.jobs import UNDECODABLE, WorkerState, run_prompt
from worker.lease import Leases
from worker.limiter import Limiter
from worker.logs import configure_logging, get_logger
from worker.metrics import Metrics
from worker.redis_conn import check_access, redis_settings
from worker.store import ResultStore
from worker.wake import WakeListener, install_poll

__all__ = ["make_settings", "settings_kwargs"]

log = get_logger("promptq.worker")

ARQ_TIMEOUT_MARGIN_S = 60.0
"""arq's own job timeout sits this far above ``PROMPTQ_JOB_TIMEOUT_S``, which fires first: arq's
timeout would end the job without its result, so it is kept out of reach of a Redis outage too."""
ARQ_MAX_TRIES_MARGIN = 10
"""arq's own try limit is a backstop this far above ``PROMPTQ_MAX_TRIES``, which the job enforces."""
POISON_FUNCTION_ARGS: dict[str, Any] = {"t": None, "f": JOB_FUNCTION, "k": {}, "et": 0}


def job_serializer(obj: Any) -> bytes:
    """arq's job and failure records as JSON; what JSON cannot hold is written as its repr."""
    return json.dumps(obj, separators=(",", ":"), default=repr).encode()


def job_deserializer(raw: bytes) -> Any:
    """arq's job records from JSON. A record that cannot be read still reaches ``run_prompt``,
    which fails the job with a clear error instead of leaving its document queued."""
    try:
        record = json.loads(raw)
    except ValueError as e:
        return _poison(f"job record is not JSON: {e}")
    if not isinstance(record, dict) or not {"f", "a", "k", "et"} <= record.keys():
        return _poison("job record is not an arq job object (f, a, k, et)")
    if record["f"] != JOB_FUNCTION or not isinstance(record["a"], list) or len(record["a"]) != 1:
        return _poison(f"job record is not a promptq job ({JOB_FUNCTION} with one argument)")
    if record["k"] or not isinstance(record["et"], int | float):
        return _poison("job record has keyword arguments or a bad enqueue time")
    record.setdefault("t", None)
    return record


def _poison(reason: str) -> dict[str, Any]:
    return {**POISON_FUNCTION_ARGS, "a": [{UNDECODABLE: reason}]}


async def on_startup(ctx: dict[str, Any]) -> None:
    config: WorkerConfig = ctx["config"]
    leases = Leases(ctx["redis"], config.lease_s)
    leases.start()
    wake = WakeListener(ctx["redis"], on_cancel=leases.cancel)
    wake.start()
    worker = shutdown.running_worker()
    settled: set[str] = set()
    if worker is not None:  # batched claims for the lease; signals drain; wake messages end the poll
        claimer = shutdown.adopt(worker, lease_s=config.lease_s, grace_s=config.shutdown_grace_s, wake=wake.event)
        settled = claimer.settled
        worker.promptq_wake = wake.event  # type: ignore[attr-defined]  # read by worker.wake._poll
    metrics = Metrics(config.prices, running=lambda: len(leases.held))
    if config.metrics_port is not None:
        await metrics.serve(config.metrics_port, ctx["redis"], poll_delay_s=config.poll_delay_s)
    ctx["promptq"] = WorkerState(
        config=config,
        clients=llm.Clients(config),
        store=ResultStore(ctx["redis"], config.result_ttl_s),
        leases=leases,
        wake=wake,
        limiter=Limiter(ctx["redis"], config.limit, config.limits, shared=config.limit_scope == "shared"),
        metrics=metrics,
        settled=settled,
    )
    log.info(
        "worker.started",
        redis_url=redact_url(config.redis_url),
        api_base_url=config.openai_base_url or "https://api.openai.com/v1",
        model=config.model,
        max_jobs=config.max_jobs,
    )


async def on_shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("promptq")
    if state is not None:
        await state.leases.stop()
        await state.wake.stop()
        await state.metrics.close()
        await state.clients.aclose()
    log.info("worker.stopped")


def settings_kwargs(config: WorkerConfig) -> dict[str, Any]:
    """Keyword arguments for ``arq.worker.Worker`` (the attributes of ``Settings``)."""
    install_poll()
    return {
        "functions": [
            func(
                run_prompt,
                name=JOB_FUNCTION,
                timeout=config.job_timeout_s + ARQ_TIMEOUT_MARGIN_S,
                max_tries=config.max_tries + ARQ_MAX_TRIES_MARGIN,
            )
        ],
        "queue_name": QUEUE_NAME,
        "redis_settings": redis_settings(config.redis_url),
        "max_jobs": config.max_jobs,
        "job_timeout": config.job_timeout_s + ARQ_TIMEOUT_MARGIN_S,
        "keep_result": 0,
        "poll_delay": config.poll_delay_s,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": {"config": config},
    }


def make_settings(config: WorkerConfig | None = None) -> type:
    """A ``Settings`` class for ``arq``, from ``config`` or the environment."""
    config = config or WorkerConfig.from_env()
    configure_logging(config.log_format, config.log_level)
    check_access(config.redis_url)
    return type("Settings", (), settings_kwargs(config))
