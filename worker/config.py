"""The worker's configuration: read from the environment once, validated, frozen."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from promptq_core import tracing
from promptq_core.connect import is_cluster
from promptq_core.contract import (
    DEFAULT_BACKEND,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_TTL_S,
)
from promptq_core.env import (
    HOST_RE,
    NO_REPLICAS_ON_CLUSTER,
    ConfigError,
    env_choice,
    env_flag,
    env_float,
    env_int,
    env_json_table,
    env_queues,
    env_redis_url,
    env_str,
)
from promptq_core.prices import Price, prices_from_env
from promptq_core.settings import WORKER, read_by
from promptq_core.validation import InvalidJobError, check_fairness_key
from promptq_core.webhooks import WebhookHosts, secret_from_env
from worker.backends import (
    BACKENDS_ENV,
    BACKENDS_FILE_ENV,
    UNUSED_API_KEY,
    Backend,
    Limit,
    backends_from_env,
    fallbacks_from_env,
)
from worker.circuit import CircuitRules

__all__ = [
    "DEFAULT_MODEL",
    "ENV_NAMES",
    "BatchRules",
    "ConfigError",
    "Limit",
    "WorkerConfig",
    "default_urgent_slots",
    "ignored_variables",
    "limits_from_env",
    "weights_from_env",
]

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
LIMIT_SCOPES = ("shared", "process")
HTTP_CLIENTS = ("http1", "aiohttp", "httpx")
WEIGHTS_ENV = "PROMPTQ_FAIRNESS_WEIGHTS"
DEFAULT_BACKEND_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PROMPTQ_RPM", "PROMPTQ_TPM", "PROMPTQ_LIMITS")
"""What the ``default`` backend is made of; not used when backends are listed."""

ENV_NAMES = read_by(WORKER)
"""Every variable the worker reads (from ``promptq_core.settings``, which the docs' table is made of;
compose.yaml and the Kubernetes manifests are checked against it)."""


def limits_from_env(env: Mapping[str, str]) -> tuple[Limit, dict[str, Limit]]:
    """``PROMPTQ_RPM`` / ``PROMPTQ_TPM`` (every model) and ``PROMPTQ_LIMITS`` (JSON, per model)."""
    default = Limit(_optional_int(env, "PROMPTQ_RPM"), _optional_int(env, "PROMPTQ_TPM"))
    parsed = env_json_table(env, "PROMPTQ_LIMITS", '{"gpt-4o-mini": {"rpm": 500}}')
    per_model = {}
    for model, spec in parsed.items():
        if not isinstance(spec, dict) or not set(spec) <= {"rpm", "tpm"}:
            raise ConfigError(f"PROMPTQ_LIMITS[{model!r}] must be an object with rpm and/or tpm")
        for name, value in spec.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"PROMPTQ_LIMITS[{model!r}].{name} must be a positive integer, got {value!r}")
        per_model[model] = Limit(spec.get("rpm", default.rpm), spec.get("tpm", default.tpm))
    return default, per_model


def weights_from_env(env: Mapping[str, str]) -> dict[str, float]:
    """``PROMPTQ_FAIRNESS_WEIGHTS``: JSON, a positive number of turns per fairness key (others: 1)."""
    parsed = env_json_table(env, WEIGHTS_ENV, '{"tenant-42": 3, "batch-nightly": 0.5}')
    weights = {}
    for key, weight in parsed.items():
        try:
            check_fairness_key(key, f"{WEIGHTS_ENV}: a key")
        except InvalidJobError as e:
            raise ConfigError(str(e)) from None
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"{WEIGHTS_ENV}[{key!r}] must be a positive number, got {weight!r}")
        weights[key] = float(weight)
    return weights


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    return env_int(env, name, 0) or None if env.get(name, "").strip() else None


BATCH_MAX_LINES = 50_000
"""The lines of one provider batch at most (OpenAI's limit), and ``PROMPTQ_BATCH_MAX_LINES``'s default."""
BATCH_EXPIRED_CHOICES = ("batch", "live")


@dataclass(frozen=True, slots=True)
class BatchRules:
    """How batch-tier jobs are sent in provider batches (``worker.provider_batches``)."""

    strict: bool = False
    """A batch-tier job whose model no batch-capable backend serves fails (``no_batch_backend``)
    instead of running live (``PROMPTQ_BATCH_STRICT``)."""
    max_lines: int = BATCH_MAX_LINES
    """A collection is sent once it holds this many jobs (``PROMPTQ_BATCH_MAX_LINES``, at most 50,000)."""
    window_s: float = 60.0
    """...or this long after its first job joined (``PROMPTQ_BATCH_WINDOW_S``)."""
    poll_s: float = 30.0
    """A provider batch is first looked at this long after it is created, then less and less often,
    up to every 10 minutes (``PROMPTQ_BATCH_POLL_S``)."""
    expired: str = "batch"
    """Where the unanswered jobs of an expired or cancelled provider batch go: into a later provider
    batch (``batch``) or back in line to run live (``live``) (``PROMPTQ_BATCH_EXPIRED``)."""


DEFAULT_MODEL = "gpt-4o-mini"
"""The model of a job that names none (``PROMPTQ_MODEL``)."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    redis_url: str = DEFAULT_REDIS_URL
    openai_api_key: str = field(default=UNUSED_API_KEY, repr=False)
    openai_base_url: str | None = None
    model: str = DEFAULT_MODEL
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    """The named queues this worker serves, claiming from each in turn (``PROMPTQ_QUEUES``)."""
    max_jobs: int = 16
    urgent_slots: int = 1
    """Slots beyond ``max_jobs`` that only priority-0 jobs may take (default a tenth of ``max_jobs``,
    at least 1): an urgent job starts at once even while a batch fills every ordinary slot."""
    request_timeout_s: float = 120.0
    job_timeout_s: float = 130.0
    flex_timeout_s: float = 900.0
    """A flex-tier call's time to answer (``PROMPTQ_FLEX_TIMEOUT_S``): the provider's cheaper tier
    queues requests, and answers more slowly; the job's own bound is this plus 10 s."""
    http_client: str = "http1"
    """The HTTP client under the openai package's (``PROMPTQ_HTTP_CLIENT``): ``http1`` (promptq's own
    HTTP/1.1 transport, ``worker.http1``, the default: about 150 µs less CPU a call here than aiohttp),
    ``aiohttp`` (the package's ``DefaultAioHttpClient``) or ``httpx`` (its own default)."""
    max_tries: int = 5
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    poll_delay_s: float = 0.5
    """An idle worker's poll (new jobs wake it at once; this is for retries whose wait is over)."""
    lease_s: float = 15.0
    """A dead worker's job may run again this long after its last renewal."""
    allow_eviction: bool = False
    """Run on a Redis whose ``maxmemory-policy`` may evict keys (``PROMPTQ_ALLOW_EVICTION``), with a warning."""
    min_replicas: int = 0
    """Replicas that must confirm each result written (``PROMPTQ_MIN_REPLICAS``; fewer: a warning)."""
    replica_timeout_ms: int = 1000
    fairness_weights: dict[str, float] = field(default_factory=dict)
    """Turns per fairness key when keys take turns at one priority (``PROMPTQ_FAIRNESS_WEIGHTS``; others 1)."""
    shutdown_grace_s: float = 25.0
    """After SIGTERM, in-flight calls get this long to finish before they are put back."""
    limit: Limit = field(default_factory=Limit)
    """Requests and tokens per minute for every model, shared by all workers (None: no limit)."""
    limits: dict[str, Limit] = field(default_factory=dict)
    """Per-model limits (``PROMPTQ_LIMITS``), over ``limit``."""
    limit_scope: str = "shared"
    """``shared``: one budget for every worker on this Redis; ``process``: one budget per worker
    process (for workers that each have an API key, and an organisation, of their own)."""
    backends: tuple[Backend, ...] = ()
    """The listed backends (``PROMPTQ_BACKENDS`` or ``PROMPTQ_BACKENDS_FILE``); none: one backend
    named ``default`` made of ``openai_base_url``, ``openai_api_key``, ``limit`` and ``limits``."""
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """A model -> the models its jobs move to when its backends stay down (``PROMPTQ_FALLBACKS``)."""
    fallback_after_s: float = 30.0
    """A job moves to its next model once every backend of its model has been down this long."""
    circuit: CircuitRules = field(default_factory=CircuitRules)
    default_deadline_s: float | None = None
    """A job submitted without a deadline fails ``expired`` this long after its submit, if it has
    not run by then (``PROMPTQ_DEFAULT_DEADLINE_S``; None: it waits as long as it takes)."""
    completion_estimate_tokens: int = 500
    """Completion tokens reserved for a request that sets no max_tokens (settled after the call)."""
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    """The address the metrics and health endpoints listen on (``0.0.0.0`` for every interface:
    compose and Kubernetes, where the scraper is on another host)."""
    """Serve ``/metrics`` and ``/healthz`` on this port (None: no server)."""
    prices: dict[str, Price] = field(default_factory=dict)
    """USD per million input and output tokens, per model (``PROMPTQ_PRICES``), for the cost metric."""
    log_format: str = "auto"
    log_level: str = "info"
    traces: bool = False
    """Send OpenTelemetry traces (``PROMPTQ_OTEL``, or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set)."""
    trace_content: bool = False
    """Record prompts and answers in the spans (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``)."""
    batch_api: bool = False
    """The ``default`` backend offers the Batch API (``PROMPTQ_BATCH_API``); listed backends say so
    each with ``"batch": true``."""
    batch: BatchRules = field(default_factory=BatchRules)
    webhook_secret: bytes | None = field(default=None, repr=False)
    """The key webhook deliveries are signed with (``PROMPTQ_WEBHOOK_SECRET``, ``whsec_...``)."""
    webhook_hosts: WebhookHosts = field(default_factory=WebhookHosts)
    """The hosts a delivery may go to besides public ones (``PROMPTQ_WEBHOOK_HOSTS``)."""

    def all_backends(self) -> tuple[Backend, ...]:
        """The backends calls go to: the listed ones, or the ``default`` one."""
        if self.backends:
            return self.backends
        default = Backend(
            DEFAULT_BACKEND,
            self.openai_base_url,
            self.openai_api_key,
            None,
            limit=self.limit,
            limits=self.limits,
            batch=self.batch_api,
        )
        return (default,)

    def batch_backend(self, model: str) -> Backend | None:
        """The backend a batch-tier job of ``model`` is sent to in a provider batch: the first listed
        that offers the Batch API and serves the model; None when none does."""
        return next((b for b in self.all_backends() if b.batch and b.serves(model) is not None), None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """Read and check every variable; raise :class:`ConfigError` naming the first bad one."""
        env = os.environ if env is None else env
        d = cls()
        listed = env_str(env, BACKENDS_ENV) is not None or env_str(env, BACKENDS_FILE_ENV) is not None
        base_url = env_str(env, "OPENAI_BASE_URL")
        if base_url is not None and not listed and not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"OPENAI_BASE_URL must be an http:// or https:// URL, got {base_url!r}")
        api_key = env_str(env, "OPENAI_API_KEY")
        if api_key is None:
            if base_url is None and not listed:
                raise ConfigError(
                    "OPENAI_API_KEY is not set (set it, or set OPENAI_BASE_URL to a server that needs no key, "
                    f"or list backends in {BACKENDS_ENV})"
                )
            api_key = UNUSED_API_KEY
        request_timeout_s = env_float(env, "PROMPTQ_REQUEST_TIMEOUT_S", d.request_timeout_s)
        job_timeout_s = env_float(env, "PROMPTQ_JOB_TIMEOUT_S", request_timeout_s + 10)
        if job_timeout_s <= request_timeout_s:
            raise ConfigError(
                f"PROMPTQ_JOB_TIMEOUT_S ({job_timeout_s:g}) must be greater than "
                f"PROMPTQ_REQUEST_TIMEOUT_S ({request_timeout_s:g})"
            )
        limit, limits = limits_from_env(env)
        max_jobs = env_int(env, "PROMPTQ_MAX_JOBS", d.max_jobs)
        backends = backends_from_env(env, Backend(DEFAULT_BACKEND, base_url, api_key, None, limit, limits))
        circuit = CircuitRules(
            failures=env_int(env, "PROMPTQ_CIRCUIT_FAILURES", d.circuit.failures),
            cool_down_s=env_float(env, "PROMPTQ_CIRCUIT_COOL_DOWN_S", d.circuit.cool_down_s),
            max_cool_down_s=env_float(env, "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S", d.circuit.max_cool_down_s),
        )
        if circuit.max_cool_down_s < circuit.cool_down_s:
            raise ConfigError(
                f"PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S ({circuit.max_cool_down_s:g}) must be at least "
                f"PROMPTQ_CIRCUIT_COOL_DOWN_S ({circuit.cool_down_s:g})"
            )
        deadline = env_float(env, "PROMPTQ_DEFAULT_DEADLINE_S", 0.0)
        redis_url = env_redis_url(env, DEFAULT_REDIS_URL)
        min_replicas = env_int(env, "PROMPTQ_MIN_REPLICAS", 0, minimum=0)
        if min_replicas and is_cluster(redis_url):
            raise ConfigError(NO_REPLICAS_ON_CLUSTER)
        max_lines = env_int(env, "PROMPTQ_BATCH_MAX_LINES", BATCH_MAX_LINES)
        if max_lines > BATCH_MAX_LINES:
            raise ConfigError(f"PROMPTQ_BATCH_MAX_LINES must be at most {BATCH_MAX_LINES:,}, got {max_lines}")
        batch = BatchRules(
            strict=env_flag(env, "PROMPTQ_BATCH_STRICT"),
            max_lines=max_lines,
            window_s=env_float(env, "PROMPTQ_BATCH_WINDOW_S", d.batch.window_s),
            poll_s=env_float(env, "PROMPTQ_BATCH_POLL_S", d.batch.poll_s),
            expired=env_choice(env, "PROMPTQ_BATCH_EXPIRED", d.batch.expired, BATCH_EXPIRED_CHOICES),
        )
        batch_api = env_flag(env, "PROMPTQ_BATCH_API")
        if batch_api and listed:
            raise ConfigError(
                f'PROMPTQ_BATCH_API is for the default backend: with {BACKENDS_ENV}, give a backend "batch": true'
            )
        return cls(
            webhook_secret=secret_from_env(env),
            webhook_hosts=WebhookHosts.from_env(env),
            batch_api=batch_api,
            batch=batch,
            redis_url=redis_url,
            openai_api_key=api_key,
            openai_base_url=base_url,
            model=env_str(env, "PROMPTQ_MODEL", d.model) or d.model,
            queues=env_queues(env, "PROMPTQ_QUEUES"),
            max_jobs=max_jobs,
            urgent_slots=env_int(env, "PROMPTQ_URGENT_SLOTS", default_urgent_slots(max_jobs), minimum=0),
            request_timeout_s=request_timeout_s,
            job_timeout_s=job_timeout_s,
            flex_timeout_s=env_float(env, "PROMPTQ_FLEX_TIMEOUT_S", d.flex_timeout_s),
            http_client=env_choice(env, "PROMPTQ_HTTP_CLIENT", d.http_client, HTTP_CLIENTS),
            max_tries=env_int(env, "PROMPTQ_MAX_TRIES", d.max_tries),
            result_ttl_s=env_int(env, "PROMPTQ_RESULT_TTL_S", d.result_ttl_s),
            max_payload_bytes=env_int(env, "PROMPTQ_MAX_PAYLOAD_BYTES", d.max_payload_bytes),
            poll_delay_s=env_float(env, "PROMPTQ_POLL_DELAY_S", d.poll_delay_s),
            lease_s=env_float(env, "PROMPTQ_LEASE_S", d.lease_s, minimum=1.0, or_equal=True),
            fairness_weights=weights_from_env(env),
            allow_eviction=env_flag(env, "PROMPTQ_ALLOW_EVICTION"),
            min_replicas=min_replicas,
            replica_timeout_ms=env_int(env, "PROMPTQ_REPLICA_TIMEOUT_MS", d.replica_timeout_ms),
            shutdown_grace_s=env_float(env, "PROMPTQ_SHUTDOWN_GRACE_S", d.shutdown_grace_s, or_equal=True),
            limit=limit,
            limits=limits,
            limit_scope=env_choice(env, "PROMPTQ_LIMIT_SCOPE", d.limit_scope, LIMIT_SCOPES),
            backends=backends if listed else (),
            fallbacks=fallbacks_from_env(env, backends),
            fallback_after_s=env_float(env, "PROMPTQ_FALLBACK_AFTER_S", d.fallback_after_s, or_equal=True),
            circuit=circuit,
            default_deadline_s=deadline or None,
            completion_estimate_tokens=env_int(env, "PROMPTQ_COMPLETION_ESTIMATE_TOKENS", d.completion_estimate_tokens),
            metrics_port=_optional_port(env, "PROMPTQ_METRICS_PORT"),
            metrics_host=_host(env, "PROMPTQ_METRICS_HOST", d.metrics_host),
            prices=prices_from_env(env),
            log_format=env_choice(env, "PROMPTQ_LOG_FORMAT", d.log_format, LOG_FORMATS),
            log_level=env_choice(env, "PROMPTQ_LOG_LEVEL", d.log_level, LOG_LEVELS),
            traces=tracing.wanted(env),
            trace_content=tracing.capture_content(env),
        )


def ignored_variables(env: Mapping[str, str]) -> list[str]:
    """The variables of the ``default`` backend that are set although backends are listed (unused)."""
    if env_str(env, BACKENDS_ENV) is None and env_str(env, BACKENDS_FILE_ENV) is None:
        return []
    return [name for name in DEFAULT_BACKEND_VARIABLES if env_str(env, name) is not None]


def default_urgent_slots(max_jobs: int) -> int:
    return max(1, max_jobs // 10)


def _optional_port(env: Mapping[str, str], name: str) -> int | None:
    if env_str(env, name) is None:
        return None
    port = env_int(env, name, 0)
    if port > 65535:
        raise ConfigError(f"{name} must be a TCP port from 1 to 65535, got {port}")
    return port


def _host(env: Mapping[str, str], name: str, default: str) -> str:
    host = env_str(env, name) or default
    if not HOST_RE.fullmatch(host) or host.startswith("["):
        raise ConfigError(f"{name} must be an address to listen on (127.0.0.1, 0.0.0.0, ::), got {host[:40]!r}")
    return host
