"""Prometheus metrics and a liveness check, served over HTTP when ``PROMPTQ_METRICS_PORT`` is set.

``GET /metrics``: the metrics below (text format). ``GET /healthz``: 200 while the worker's loop
runs (it answers at all, and arq's poll went round lately or jobs are running), else 503; usable
as a compose health check or a Kubernetes liveness probe. A Redis outage alone does not fail it:
the worker rides outages out (``worker.redis_conn``).

Metrics (labels in brackets):

- ``promptq_jobs_total`` [model, status, endpoint]: jobs ended here: succeeded, failed, cancelled;
  ``endpoint`` is the API path the job calls (``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``).
- ``promptq_attempts_total`` [model]: API calls started.
- ``promptq_retries_total`` [model, error_type]: failed attempts put back for a retry.
- ``promptq_attempt_seconds`` [model]: histogram of API call durations (successes and failures).
- ``promptq_tokens_total`` [model, kind]: tokens by ``kind``: prompt or completion, from ``usage``.
- ``promptq_cost_usd_total`` [model]: estimated cost, for models in ``PROMPTQ_PRICES``.
- ``promptq_rate_limit_wait_seconds_total`` [model]: time spent waiting for shared budget.
- ``promptq_rate_limited_total`` [model]: 429 answers from the API.
- ``promptq_in_flight``: API calls running in this worker.
- ``promptq_backend_calls_total`` [backend, outcome]: API calls per backend, by how they ended
  (``ok``, or the error type: ``server_error``, ``connection_error``, ``timeout``, ``rate_limited``...).
- ``promptq_backend_call_seconds`` [backend]: histogram of their durations.
- ``promptq_backend_up`` [backend]: 1 while the backend's circuit is closed, 0 while it is open
  (fleet-wide: read with the queue depths, and set by each call this worker records).
- ``promptq_backend_budget_in_use`` [backend]: this worker's share of the backend's RPM or TPM
  limit over the last minute (the largest of its models'; the workers' shares add up to the
  fleet's, which the dashboard shows), read every 5 s; backends without limits have none.
- ``promptq_backend_waits_total`` [model]: attempts sent back to wait because every backend of
  their model was down (no try spent).
- ``promptq_queue_depth`` [queue, priority]: jobs ready to run, per priority, fleet-wide, for each
  queue the worker serves; with ``promptq_queue_running`` [queue] (jobs claimed by any worker) and
  ``promptq_queue_deferred`` [queue] (retries waiting; of them ``promptq_queue_waiting_for_backend``
  [queue], the jobs waiting for a backend to recover), read every 5 s. Counts per fairness key:
  ``Producer.depths`` or ``promptq status``.
- ``promptq_queue_oldest_age_seconds`` [queue]: how long the ready job first in line has waited
  since its submit (0 when none is ready), read with the depths: a queue that does not move grows it.
- ``promptq_redis_memory_used_bytes`` and ``promptq_redis_memory_max_bytes`` [queue]: the Redis node
  holding the queue, its ``used_memory`` and ``maxmemory`` (0: none set); submits are refused at 90 %.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis

from promptq_core.background import Background, repeat
from promptq_core.contract import (
    BACKEND_WAITS,
    CHAT_ENDPOINT,
    DEFAULT_QUEUE,
    PRIORITIES,
    Usage,
    budget_share,
    circuit_key,
    queue_keys,
)
from promptq_core.depths import DEPTHS_KEYS_MAX, QueueDepths
from promptq_core.prices import Price, cost_usd
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["Metrics", "heartbeat"]

log = get_logger("promptq.metrics")
QUEUE_DEPTH_EVERY_S = 5.0
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_last_poll_s = time.monotonic()


def heartbeat() -> None:
    """Called at every turn of arq's poll loop (``worker.wake``): the liveness check reads it."""
    global _last_poll_s
    _last_poll_s = time.monotonic()


MAX_MODEL_LABELS: Final = 64
"""Distinct ``model`` label values a worker exports at most (the rest are ``other``)."""
OTHER_MODEL: Final = "other"


MINUTE_MODELS_MAX: Final = 16
"""Models per backend whose last minute a worker's entry carries at most."""


class MinuteUse:
    """Calls and tokens per backend and model over the last minute, in one-second buckets."""

    def __init__(self) -> None:
        self._seconds: dict[str, dict[str, deque[list[int]]]] = {}

    def add(self, backend: str, model: str, tokens: int, now_s: float | None = None) -> None:
        second = int(time.monotonic() if now_s is None else now_s)
        models = self._seconds.setdefault(backend, {})
        buckets = models.get(model)
        if buckets is None:
            if len(models) >= MINUTE_MODELS_MAX:
                return
            buckets = models[model] = deque()
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
            buckets[-1][2] += tokens
        else:
            buckets.append([second, 1, tokens])

    def last_minute(self, now_s: float | None = None) -> dict[str, dict[str, tuple[int, int]]]:
        """Per backend and model: calls and tokens in the last 60 s (models without any are dropped)."""
        since = int(time.monotonic() if now_s is None else now_s) - 59
        found: dict[str, dict[str, tuple[int, int]]] = {}
        for backend, models in self._seconds.items():
            for model, buckets in list(models.items()):
                while buckets and buckets[0][0] < since:
                    buckets.popleft()
                if not buckets:
                    del models[model]
                    continue
                found.setdefault(backend, {})[model] = (sum(b[1] for b in buckets), sum(b[2] for b in buckets))
        return found


class Metrics:
    """One worker's metrics (its own registry), and the HTTP server that exposes them."""

    def __init__(
        self,
        prices: dict[str, Price] | None = None,
        running: Callable[[], int] = lambda: 0,
        backends: tuple[str, ...] = (),
        queues: tuple[str, ...] = (DEFAULT_QUEUE,),
        limit_of: Callable[[str, str], tuple[int | None, int | None]] = lambda backend, model: (None, None),
    ) -> None:
        """``limit_of(backend, model)``: the RPM and TPM of ``model`` on ``backend`` (None: no limit)."""
        self.prices = prices or {}
        self.backends, self.queues = backends, queues
        self._models: set[str] = set()
        self._children: dict[tuple[int | str, ...], Any] = {}
        self.running = running
        """How many jobs hold a slot here (a busy worker's poll loop waits for a free slot)."""
        r = self.registry = CollectorRegistry()
        self.jobs = Counter("promptq_jobs", "Jobs ended, by final status", ["model", "status", "endpoint"], registry=r)
        self.attempts = Counter("promptq_attempts", "API calls started", ["model"], registry=r)
        self.retries = Counter("promptq_retries", "Failed attempts put back", ["model", "error_type"], registry=r)
        self.latency = Histogram(
            "promptq_attempt_seconds", "API call duration", ["model"], buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.tokens = Counter("promptq_tokens", "Tokens used", ["model", "kind"], registry=r)
        self.cost = Counter("promptq_cost_usd", "Estimated cost (PROMPTQ_PRICES)", ["model"], registry=r)
        self.budget_wait = Counter(
            "promptq_rate_limit_wait_seconds", "Time waited for rate-limit budget", ["model"], registry=r
        )
        self.rate_limited = Counter("promptq_rate_limited", "429 answers from the API", ["model"], registry=r)
        self.in_flight = Gauge("promptq_in_flight", "API calls running in this worker", registry=r)
        self.backend_calls = Counter(
            "promptq_backend_calls", "API calls per backend, by outcome", ["backend", "outcome"], registry=r
        )
        self.backend_latency = Histogram(
            "promptq_backend_call_seconds",
            "API call duration per backend",
            ["backend"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.backend_up = Gauge(
            "promptq_backend_up", "1: the backend's circuit is closed; 0: open", ["backend"], registry=r
        )
        for name in backends:
            self.backend_up.labels(name).set(1)
        self._backend_totals: dict[str, list[float]] = {}
        self.minute = MinuteUse()
        self.limit_of = limit_of
        self.backend_budget = Gauge(
            "promptq_backend_budget_in_use",
            "This worker's share of the backend's RPM or TPM limit over the last minute (the largest "
            "of its models'; sum the workers' for the fleet's)",
            ["backend"],
            registry=r,
        )
        self.backend_waits = Counter(
            "promptq_backend_waits", "Attempts sent back to wait for a backend", ["model"], registry=r
        )
        self.queue_depth = Gauge("promptq_queue_depth", "Jobs ready to run", ["queue", "priority"], registry=r)
        self.queue_running = Gauge(
            "promptq_queue_running", "Jobs claimed by a worker (all workers)", ["queue"], registry=r
        )
        self.queue_deferred = Gauge("promptq_queue_deferred", "Jobs waiting for a retry", ["queue"], registry=r)
        self.queue_backend_waits = Gauge(
            "promptq_queue_waiting_for_backend",
            "Jobs waiting for a backend of their model to recover (of the deferred)",
            ["queue"],
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "promptq_queue_oldest_age_seconds",
            "How long the ready job first in line has waited since its submit (0: none ready)",
            ["queue"],
            registry=r,
        )
        self.redis_memory_used = Gauge(
            "promptq_redis_memory_used_bytes", "used_memory of the Redis node holding the queue", ["queue"], registry=r
        )
        self.redis_memory_max = Gauge(
            "promptq_redis_memory_max_bytes",
            "maxmemory of the Redis node holding the queue (0: none set; submits are refused at 90 %)",
            ["queue"],
            registry=r,
        )
        self.stale_after_s = 60.0
        self._depth_reader = Background("promptq-queue-depth")
        self._server: asyncio.Server | None = None

    def cost_of(self, model: str | None, usage: Usage | None, tier: str = "live") -> float | None:
        """A job's estimated cost (``PROMPTQ_PRICES``, at its tier's price), None when its model has no price."""
        return None if usage is None else cost_usd(self.prices, model, usage, tier)

    def job_ended(
        self,
        model: str | None,
        status: str,
        usage: Usage | None,
        endpoint: str = CHAT_ENDPOINT,
        cost: float | None = None,
    ) -> None:
        m = self.model(model)
        self._child(self.jobs, m, status, endpoint).inc()
        if usage is not None:
            self._child(self.tokens, m, "prompt").inc(usage.prompt_tokens)
            self._child(self.tokens, m, "completion").inc(usage.completion_tokens)
        if cost is not None:
            self._child(self.cost, m).inc(cost)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept: the per-job counters skip prometheus-client's lock and
        checks after a label set's first job (the sets are bounded: ``model`` caps the models)."""
        key: tuple[int | str, ...] = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def model(self, model: str | None) -> str:
        """A model's label value: its name, for the first ``MAX_MODEL_LABELS`` models seen;
        ``other`` past that, so that callers naming many models cannot grow the scrape without bound."""
        name = model or ""
        if name in self._models:
            return name
        if len(self._models) >= MAX_MODEL_LABELS:
            return OTHER_MODEL
        self._models.add(name)
        return name

    def backend_call(self, backend: str, outcome: str, seconds: float, model: str = "", tokens: int = 0) -> None:
        """One call to ``backend`` ended (``model``: the job's name for it; ``tokens``: what it used)."""
        self._child(self.backend_calls, backend, outcome).inc()
        self._child(self.backend_latency, backend).observe(seconds)
        totals = self._backend_totals.setdefault(backend, [0, 0, 0.0])
        totals[0] += 1
        totals[1] += outcome != "ok"
        totals[2] += seconds
        if model:
            self.minute.add(backend, model, tokens)

    def backend_summary(self) -> dict[str, dict[str, Any]]:
        """Per backend: calls, errors and seconds spent in calls since start, and per model its
        calls and tokens in the last minute beside its limits (``budget``: the worker's entry
        carries them to the dashboard, which sums the fleet's)."""
        summary: dict[str, dict[str, Any]] = {name: {"calls": 0, "errors": 0, "seconds": 0.0} for name in self.backends}
        for name, (calls, errors, seconds) in self._backend_totals.items():
            summary[name] = {"calls": calls, "errors": errors, "seconds": round(seconds, 3)}
        for name, models in self.minute.last_minute().items():
            if name in summary:
                summary[name]["budget"] = {
                    m: [calls, tokens, *self.limit_of(name, m)] for m, (calls, tokens) in models.items()
                }
        return summary

    def budget_in_use(self) -> dict[str, float]:
        """Per backend with a limit: the largest share of a model's RPM or TPM this worker used in
        the last minute (the workers' shares add up to the fleet's)."""
        return {name: share for name, doc in self.backend_summary().items() if (share := budget_share(doc)) is not None}

    def backend_health(self, backend: str, *, up: bool) -> None:
        self.backend_up.labels(backend).set(1 if up else 0)

    def healthy(self) -> bool:
        return self.running() > 0 or time.monotonic() - _last_poll_s < self.stale_after_s

    async def serve(self, port: int, redis: Redis, host: str = "127.0.0.1", poll_delay_s: float = 0.5) -> int:
        """Start the HTTP server (port 0: any free one) and the queue-depth reader; return the port."""
        self.stale_after_s = max(60.0, 10 * poll_delay_s)
        self._server = await asyncio.start_server(self._answer, host, port)
        depths = WorkerScript(redis, "depths")

        async def read() -> None:
            for name in self.queues:
                keys = queue_keys(name)
                self.set_depths(QueueDepths.from_reply(await depths(keys, keys_max=DEPTHS_KEYS_MAX), name))
                self.queue_backend_waits.labels(name).set(await redis.zcard(keys.key(BACKEND_WAITS)))
            if self.backends:
                async with redis.pipeline(transaction=False) as pipe:
                    for name in self.backends:
                        pipe.hget(circuit_key(name), "open_until")
                    opened = await pipe.execute()
                for name, open_until in zip(self.backends, opened, strict=True):
                    self.backend_health(name, up=not open_until or int(open_until) == 0)
                for name, share in self.budget_in_use().items():
                    self.backend_budget.labels(name).set(share)

        self._depth_reader.start(lambda: repeat(read, QUEUE_DEPTH_EVERY_S, _depth_failed))
        bound: int = self._server.sockets[0].getsockname()[1]
        log.info("metrics.serving", port=bound)
        return bound

    async def close(self) -> None:
        await self._depth_reader.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def set_depths(self, depths: QueueDepths) -> None:
        by_priority = depths.by_priority
        for priority in PRIORITIES:
            self.queue_depth.labels(depths.queue, str(priority)).set(by_priority.get(priority, 0))
        self.queue_running.labels(depths.queue).set(depths.running)
        self.queue_deferred.labels(depths.queue).set(depths.deferred)
        self.queue_oldest_age.labels(depths.queue).set(depths.oldest_age_s())  # (by Redis time, when read)
        self.redis_memory_used.labels(depths.queue).set(depths.memory_used)
        self.redis_memory_max.labels(depths.queue).set(depths.memory_max)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = request.decode("latin-1").split(" ", 2)
            if method != "GET":
                status, kind, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path.split("?")[0] == "/metrics":
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path == "/healthz":
                ok = self.healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                kind, body = "application/json", b'{"ok": true}\n' if ok else b'{"ok": false}\n'
            else:
                status, kind, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def _depth_failed(e: BaseException) -> None:
    log.debug("metrics.queue_depth_failed", error=str(e))
