"""Every setting promptq reads from the environment, written down once: its name, its default as
the docs show it, which processes read it, and what it means. The documentation's settings table is
made from this list (``devtools/docs_hooks.py``), the worker's ``ENV_NAMES`` too, and a test checks
that the sources read no variable missing here and that none listed here goes unread; so the table
cannot drift from the code. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["API", "CLI", "GROUPS", "PRODUCER", "SETTINGS", "WORKER", "Setting", "read_by"]

WORKER: Final = "worker"
PRODUCER: Final = "producer"
API: Final = "HTTP API"
CLI: Final = "CLI"

GROUPS: Final = (
    "Redis",
    "Backends and models",
    "Jobs and slots",
    "Rate limits and prices",
    "The Batch tier",
    "Webhooks",
    "HTTP API",
    "Metrics, logs and traces",
)
"""The settings table's sections, in order."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable."""

    name: str
    default: str
    """As the docs show it (Markdown): a value in backticks, or words (``none``, ``off``...)."""
    readers: tuple[str, ...]
    """The processes that read it: ``WORKER``, ``PRODUCER`` (the Python API), ``API``, ``CLI``."""
    group: str
    """Its section of the table: one of ``GROUPS``."""
    meaning: str
    """What it does (Markdown; links are relative to the docs' folder)."""


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "REDIS_URL",
        "`redis://localhost:6379/0`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "`redis://` or `rediss://`, with `user:password@` and `/db`; or Redis Sentinel: `redis+sentinel://[user:password@]host1:port1,host2:port2,.../service_name[/db]` (`rediss+sentinel://` for TLS to Redis); or Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS; any nodes of the cluster, no `/db`)",
    ),
    Setting(
        "PROMPTQ_SENTINEL_PASSWORD",
        "none",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "the Sentinels' own password, when they have one (the URL's is the Redis servers')",
    ),
    Setting(
        "PROMPTQ_MIN_REPLICAS",
        "`0`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "replicas that must confirm each write that matters (`WAIT`): a submit raises `NotReplicatedError` without them; a worker's result logs `job.result_not_replicated` (see [Guarantees](guarantees.md))",
    ),
    Setting(
        "PROMPTQ_REPLICA_TIMEOUT_MS",
        "`1000`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "how long such a write waits for the replicas",
    ),
    Setting(
        "PROMPTQ_QUEUES",
        "`default`",
        (WORKER,),
        "Redis",
        "the named queues the worker serves, comma-separated (each 1 to 64 of `A-Z a-z 0-9 _ . -`, none twice); it claims from each in turn, the first one moving on each poll",
    ),
    Setting(
        "PROMPTQ_RESULT_TTL_S",
        "`86400`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "how long a finished result is kept (producer and worker)",
    ),
    Setting(
        "PROMPTQ_MAX_PAYLOAD_BYTES",
        "`1048576`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "largest job payload accepted (producer and worker)",
    ),
    Setting(
        "PROMPTQ_ALLOW_EVICTION",
        "`0`",
        (WORKER, PRODUCER, API, CLI),
        "Redis",
        "`1`: run on a Redis whose `maxmemory-policy` may evict keys (anything but `noeviction`), with a warning, instead of refusing to start (producers: to write)",
    ),
    Setting(
        "PROMPTQ_QUEUE",
        "`default`",
        (PRODUCER, API, CLI),
        "Redis",
        "the named queue a producer, the HTTP API and the CLI submit to and read from when a call names none",
    ),
    Setting(
        "OPENAI_API_KEY",
        "(required for OpenAI)",
        (WORKER,),
        "Backends and models",
        "may be left unset when `OPENAI_BASE_URL` points at a server that needs no key, or when backends are listed",
    ),
    Setting(
        "OPENAI_BASE_URL",
        "OpenAI's",
        (WORKER,),
        "Backends and models",
        "any OpenAI-compatible API, e.g. `http://localhost:8000/v1` (vLLM), `http://localhost:11434/v1` (Ollama); the `default` backend, used when no backends are listed",
    ),
    Setting(
        "PROMPTQ_BACKENDS",
        "none",
        (WORKER,),
        "Backends and models",
        "the backends as JSON (see [Backends](backends.md)); set, `OPENAI_*`, `PROMPTQ_RPM`, `PROMPTQ_TPM` and `PROMPTQ_LIMITS` are not used",
    ),
    Setting(
        "PROMPTQ_BACKENDS_FILE",
        "none",
        (WORKER,),
        "Backends and models",
        "the same in a file: JSON, or TOML when its name ends in `.toml` (`[[backends]]` tables)",
    ),
    Setting(
        "PROMPTQ_FALLBACKS",
        "none",
        (WORKER,),
        "Backends and models",
        'each model\'s fallback models as JSON, e.g. `{"gpt-4o": ["gpt-4o-mini"]}` (a job\'s own `fallbacks` come first)',
    ),
    Setting(
        "PROMPTQ_FALLBACK_AFTER_S",
        "`30`",
        (WORKER,),
        "Backends and models",
        "a job moves to its next model once every backend of its model has been down this long",
    ),
    Setting(
        "PROMPTQ_CIRCUIT_FAILURES",
        "`5`",
        (WORKER,),
        "Backends and models",
        "retryable failures in a row that open a backend's circuit",
    ),
    Setting(
        "PROMPTQ_CIRCUIT_COOL_DOWN_S",
        "`1`",
        (WORKER,),
        "Backends and models",
        "the first cool-down of an open circuit before its probe; doubled after each failed probe",
    ),
    Setting(
        "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S",
        "`8`",
        (WORKER,),
        "Backends and models",
        "the longest cool-down: a recovered backend is found within about this long",
    ),
    Setting(
        "PROMPTQ_MODEL",
        "`gpt-4o-mini`",
        (WORKER,),
        "Backends and models",
        "the model for jobs submitted without one",
    ),
    Setting(
        "PROMPTQ_HTTP_CLIENT",
        "http1",
        (WORKER,),
        "Backends and models",
        "the HTTP client under the openai package's: `http1` (promptq's own HTTP/1.1 transport; about 150 µs less CPU a call here than `aiohttp`; proxies go through aiohttp), `aiohttp` (the package's `DefaultAioHttpClient`) or `httpx` (its own default)",
    ),
    Setting(
        "PROMPTQ_DEFAULT_DEADLINE_S",
        "none",
        (WORKER,),
        "Jobs and slots",
        "a job submitted without `deadline_s` fails `expired` if it has not started this long after its submit",
    ),
    Setting(
        "PROMPTQ_MAX_JOBS",
        "`16`",
        (WORKER,),
        "Jobs and slots",
        "calls in flight per worker process",
    ),
    Setting(
        "PROMPTQ_URGENT_SLOTS",
        "a tenth of `PROMPTQ_MAX_JOBS`, at least 1",
        (WORKER,),
        "Jobs and slots",
        "slots beyond `PROMPTQ_MAX_JOBS` that only priority-0 jobs may take, so an urgent job starts at once while a batch fills the others (`0`: none)",
    ),
    Setting(
        "PROMPTQ_REQUEST_TIMEOUT_S",
        "`120`",
        (WORKER,),
        "Jobs and slots",
        "bound on one API call (a timed-out call is retried)",
    ),
    Setting(
        "PROMPTQ_JOB_TIMEOUT_S",
        "request timeout + 10",
        (WORKER,),
        "Jobs and slots",
        "bound on one attempt; must be above the request timeout",
    ),
    Setting(
        "PROMPTQ_FLEX_TIMEOUT_S",
        "900",
        (WORKER,),
        "Jobs and slots",
        "a flex-tier call's time to answer (its attempt's bound is this + 10 s)",
    ),
    Setting(
        "PROMPTQ_MAX_TRIES",
        "`5`",
        (WORKER,),
        "Jobs and slots",
        "attempts per job, the first included",
    ),
    Setting(
        "PROMPTQ_POLL_DELAY_S",
        "`0.5`",
        (WORKER,),
        "Jobs and slots",
        "how often an idle worker looks at the queue; a submit wakes it at once, so this bounds only how late a deferred retry starts",
    ),
    Setting(
        "PROMPTQ_LEASE_S",
        "`15`",
        (WORKER,),
        "Jobs and slots",
        "a running job's lease, renewed every third of it: a killed worker's jobs run again this long after its last renewal",
    ),
    Setting(
        "PROMPTQ_FAIRNESS_WEIGHTS",
        "none",
        (WORKER,),
        "Jobs and slots",
        'turns per fairness key as JSON, e.g. `{"tenant-42": 3, "nightly": 0.5}`: at one priority, keys take turns in proportion (a key not named weighs 1)',
    ),
    Setting(
        "PROMPTQ_SHUTDOWN_GRACE_S",
        "`25`",
        (WORKER,),
        "Jobs and slots",
        "after SIGTERM, how long in-flight calls may take to finish before they are put back in the queue",
    ),
    Setting(
        "PROMPTQ_RPM",
        "none",
        (WORKER,),
        "Rate limits and prices",
        "requests per minute for every model, shared by all workers through Redis",
    ),
    Setting(
        "PROMPTQ_TPM",
        "none",
        (WORKER,),
        "Rate limits and prices",
        "tokens per minute for every model, shared the same way",
    ),
    Setting(
        "PROMPTQ_LIMITS",
        "none",
        (WORKER,),
        "Rate limits and prices",
        'per-model limits as JSON, e.g. `{"gpt-4o-mini": {"rpm": 500, "tpm": 200000}}` (a model not named there gets `PROMPTQ_RPM`/`PROMPTQ_TPM`)',
    ),
    Setting(
        "PROMPTQ_LIMIT_SCOPE",
        "`shared`",
        (WORKER,),
        "Rate limits and prices",
        "`shared`: one budget for all workers on this Redis; `process`: one per worker process (only for workers that each use an API key of their own)",
    ),
    Setting(
        "PROMPTQ_COMPLETION_ESTIMATE_TOKENS",
        "`500`",
        (WORKER,),
        "Rate limits and prices",
        "completion tokens reserved for a request without `max_tokens`, settled against `usage` after the call",
    ),
    Setting(
        "PROMPTQ_PRICES",
        "none",
        (WORKER, CLI),
        "Rate limits and prices",
        'prices per model as JSON, USD per million tokens, e.g. `{"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "text-embedding-3-small": {"input": 0.02}}` (an embedding model needs only `input`): the cost metric, and the cost in `promptq status`',
    ),
    Setting(
        "PROMPTQ_BATCH_API",
        "off",
        (WORKER,),
        "The Batch tier",
        '`1`: the `default` backend offers the Batch API (listed backends say `"batch": true`)',
    ),
    Setting(
        "PROMPTQ_BATCH_STRICT",
        "off",
        (WORKER,),
        "The Batch tier",
        "`1`: a batch-tier job no backend with the Batch API serves fails `no_batch_backend` instead of running live",
    ),
    Setting(
        "PROMPTQ_BATCH_MAX_LINES",
        "50000",
        (WORKER,),
        "The Batch tier",
        "a collection is sent as a provider batch once it holds this many jobs (at most 50,000)",
    ),
    Setting(
        "PROMPTQ_BATCH_WINDOW_S",
        "60",
        (WORKER,),
        "The Batch tier",
        "...or this long after its first job joined",
    ),
    Setting(
        "PROMPTQ_BATCH_POLL_S",
        "30",
        (WORKER,),
        "The Batch tier",
        "a provider batch is looked at this long after it is created, then twice as long each time (at most 10 minutes)",
    ),
    Setting(
        "PROMPTQ_BATCH_EXPIRED",
        "batch",
        (WORKER,),
        "The Batch tier",
        "where an expired or cancelled provider batch's unanswered jobs go: `batch` (a later provider batch) or `live`",
    ),
    Setting(
        "PROMPTQ_WEBHOOK_SECRET",
        "none",
        (WORKER,),
        "Webhooks",
        "the key webhook deliveries are signed with: `whsec_` and the base64 of 24 to 64 random bytes (see [Webhooks](webhooks.md))",
    ),
    Setting(
        "PROMPTQ_WEBHOOK_HOSTS",
        "none",
        (WORKER, PRODUCER, API, CLI),
        "Webhooks",
        "the hosts a webhook may name, comma-separated (`*.example.com` for subdomains); none: any public host",
    ),
    Setting(
        "PROMPTQ_API_TOKEN",
        "none",
        (API,),
        "HTTP API",
        "the operator's key (`Authorization: Bearer ...`): sees and does everything; without it, callers without a key are served from loopback only (see [Tenants](tenants.md))",
    ),
    Setting(
        "PROMPTQ_API_OPEN",
        "off",
        (API,),
        "HTTP API",
        "`1`: serve every caller as the operator, with a warning at start-up (compose sets it, its port published on the host's loopback only); ignored when `PROMPTQ_API_TOKEN` is set",
    ),
    Setting(
        "PROMPTQ_API_HOSTS",
        "`localhost,127.0.0.1,::1`",
        (API,),
        "HTTP API",
        "the `Host` headers served, comma-separated (`*`: any); others get 400 (`/healthz` excepted)",
    ),
    Setting(
        "PROMPTQ_MAX_BODY_BYTES",
        "twice `PROMPTQ_MAX_PAYLOAD_BYTES`",
        (API,),
        "HTTP API",
        "largest request body; a larger one is refused with 413 before it is read",
    ),
    Setting(
        "PROMPTQ_SSE_KEEPALIVE_S",
        "`15`",
        (API,),
        "HTTP API",
        "an events stream with nothing to send sends a `: keep-alive` comment this often",
    ),
    Setting(
        "PROMPTQ_SSE_MAX_S",
        "`300`",
        (API,),
        "HTTP API",
        "an events stream ends after this long (a client resumes with `Last-Event-ID`)",
    ),
    Setting(
        "PROMPTQ_SSE_MAX_STREAMS",
        "`10000`",
        (API,),
        "HTTP API",
        "events streams open in one API process at most (503 past it)",
    ),
    Setting(
        "PROMPTQ_SSE_MAX_PER_TENANT",
        "`100`",
        (API,),
        "HTTP API",
        "events streams open per tenant key in one API process at most (429 past it)",
    ),
    Setting(
        "PROMPTQ_METRICS_PORT",
        "none",
        (WORKER,),
        "Metrics, logs and traces",
        "serve Prometheus `/metrics` and a liveness `/healthz` on this port (see [Metrics](metrics.md))",
    ),
    Setting(
        "PROMPTQ_METRICS_HOST",
        "`127.0.0.1`",
        (WORKER,),
        "Metrics, logs and traces",
        "the address that server listens on: `0.0.0.0` where the scraper runs on another host (compose sets it)",
    ),
    Setting(
        "PROMPTQ_LOG_FORMAT",
        "`auto`",
        (WORKER,),
        "Metrics, logs and traces",
        "`json`, `console`, or `auto`: console on a terminal, JSON otherwise",
    ),
    Setting(
        "PROMPTQ_LOG_LEVEL",
        "`info`",
        (WORKER,),
        "Metrics, logs and traces",
        "`debug`, `info`, `warning` or `error`",
    ),
    Setting(
        "PROMPTQ_OTEL",
        "off",
        (WORKER, PRODUCER, API, CLI),
        "Metrics, logs and traces",
        "`1`: send OpenTelemetry traces (`pip install 'promptq[otel]'`); `0`: never, whatever else is set (see [Traces](traces.md))",
    ),
    Setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "none",
        (WORKER, PRODUCER, API, CLI),
        "Metrics, logs and traces",
        "where traces go (OTLP/HTTP, e.g. `http://collector:4318`); set, it turns traces on; the SDK's other `OTEL_*` variables apply as usual",
    ),
    Setting(
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
        "`false`",
        (WORKER,),
        "Metrics, logs and traces",
        "`true`: the LLM call's span records the prompt and the answer (never by default)",
    ),
    Setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "none",
        (WORKER, PRODUCER, API, CLI),
        "Metrics, logs and traces",
        "the same for traces alone (the SDK's own variable); set, it turns traces on too",
    ),
    Setting(
        "OTEL_SERVICE_NAME",
        "the process's own",
        (WORKER, API, CLI),
        "Metrics, logs and traces",
        "the service name on its spans: `promptq-worker`, `promptq-api` or `promptq-cli` unless set",
    ),
    Setting(
        "TRACEPARENT",
        "none",
        (CLI,),
        "Metrics, logs and traces",
        "a W3C trace context: the CLI's command span joins that trace (with `TRACESTATE`)",
    ),
    Setting(
        "TRACESTATE",
        "none",
        (CLI,),
        "Metrics, logs and traces",
        "the trace state that goes with `TRACEPARENT`",
    ),
)


def read_by(reader: str) -> tuple[str, ...]:
    """The names of the settings ``reader`` reads, in the table's order."""
    return tuple(s.name for s in SETTINGS if reader in s.readers)
