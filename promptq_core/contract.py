"""The promptq contract: queue and key names, the job record and the result document.

Standard library only. The producer, the worker and any other program that reads Redis (in any
language) agree through what is written here; nothing else in the code base spells a key.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

__all__ = [
    "ACTIVE",
    "ARQ_IN_PROGRESS_KEY_PREFIX",
    "ARQ_JOB_KEY_PREFIX",
    "ARQ_QUEUE_NAME",
    "ARQ_RETRY_KEY_PREFIX",
    "ARQ_TRIES_TTL_S",
    "BACKENDS_CHANNEL",
    "BACKEND_NAME_RE",
    "BACKEND_RECOVERIES_KEY",
    "BACKEND_WAITS",
    "BATCH",
    "BATCHER",
    "BATCHES",
    "BATCHES_MAX",
    "BATCH_NAME_RE",
    "BATCH_TALLY",
    "CANCEL",
    "CHAT_ENDPOINT",
    "CIRCUIT_KEY_PREFIX",
    "COLLECT",
    "COLLECTING",
    "DEFAULT_BACKEND",
    "DEFAULT_FAIRNESS_KEY",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_PRIORITY",
    "DEFAULT_QUEUE",
    "DEFAULT_REDIS_URL",
    "DEFAULT_RESULT_TTL_S",
    "DELAYED",
    "DONE",
    "EMBEDDINGS_ENDPOINT",
    "ENDPOINTS",
    "FAILED",
    "FAILED_JOB",
    "FAILED_SET_MAX",
    "FAIRNESS_KEY_MAX_BYTES",
    "HANDOFF",
    "JOB_FUNCTION",
    "LEASES",
    "LEGACY_PLACE_OFFSET",
    "LEGACY_QUEUE",
    "LEVELS",
    "LIMIT_KEY_PREFIX",
    "OLD_KEYS",
    "OLD_KEY_PREFIX",
    "OLD_PREFIXES",
    "PARKED",
    "PRIORITIES",
    "PROVIDER_BATCH",
    "PROVIDER_BATCHES",
    "PROVIDER_BATCHES_ENDED",
    "PROVIDER_BATCHES_KEPT",
    "PROVIDER_BATCH_JOBS",
    "PROVIDER_BATCH_STEPS",
    "QUEUE_KEY_PREFIX",
    "QUEUE_NAME_RE",
    "READY",
    "RECOVERIES",
    "RESERVED_QUEUE_NAMES",
    "RESPONSES_ENDPOINT",
    "RESULT",
    "ROUTES",
    "RUN_LIVE",
    "SEQUENCE",
    "STATS",
    "STATS_FIELDS_MAX",
    "STATS_KEEP_S",
    "STATS_OTHER_MODEL",
    "STATUSES",
    "STREAM",
    "STREAM_MAXLEN",
    "SUBMIT_MEMORY_PERCENT",
    "TERMINAL_STATUSES",
    "WAKE",
    "WEBHOOK",
    "WEBHOOKS",
    "WEBHOOK_GIVE_UP_MS",
    "WEBHOOK_KEEP_MS",
    "WORKERS_KEY",
    "WORKERS_SEEN_KEY",
    "WORKER_BEAT_S",
    "WORKER_FORGET_S",
    "JobError",
    "JobResult",
    "QueueKeys",
    "Reply",
    "Status",
    "Usage",
    "as_text",
    "batch_of",
    "budget_share",
    "circuit_failures_key",
    "circuit_key",
    "decode_vector",
    "dumps",
    "dumps_sorted",
    "encode_job",
    "encode_vector",
    "latency_bucket",
    "latency_bucket_bounds",
    "limit_keys",
    "loads",
    "queue_keys",
    "queued_doc",
    "split_arq_id",
]

# -- names ---------------------------------------------------------------------------------------
# Every key of one named queue carries the queue's hash tag, ``{queue}``: ``promptq:{default}:levels``,
# ``promptq:{default}:result:order-42``, and arq's records ``arq:job:{default}order-42``. So a queue
# lives in one Redis Cluster slot, different queues spread over the shards, and each script touches
# the keys of one slot. Keys that are not per queue have a tag of their own: the workers' registry
# ``{fleet}``, the backends' budgets and circuits ``{backends}``.
QUEUE_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a queue name may be: 1 to 64 letters, digits, ``_``, ``.`` and ``-`` (no braces, colon or
space: a name sits inside a key's hash tag)."""
RESERVED_QUEUE_NAMES: Final = frozenset({"fleet", "backends"})
"""The tags of the keys that belong to no queue: no queue may be named so."""
DEFAULT_QUEUE: Final = "default"
"""The queue of jobs submitted without one, and the one a worker serves without ``PROMPTQ_QUEUES``."""
QUEUE_KEY_PREFIX: Final = "promptq:"
"""A queue's keys are ``promptq:{queue}:`` followed by one of the names below (``QueueKeys``)."""

# The queue: ready jobs wait in one sorted set per (priority, fairness key); a claim takes the lowest
# priority level that has ready jobs, and within it serves the fairness keys in turn. Claimed jobs
# sit in the lease set, deferred retries in the delayed set; neither is in a claim's way.
READY: Final = "ready:"
"""``ready:{priority}:{fairness_key}``: a sorted set of the ids of the jobs ready to run at that
priority under that fairness key, scored by their place in line (submit order)."""
ACTIVE: Final = "active:"
"""``active:{priority}``: a sorted set of the fairness keys that have ready jobs at that priority,
scored by their turn (a claim serves the lowest turn, then moves it on by 1 / weight)."""
LEVELS: Final = "levels"
"""A sorted set of the priorities (``"0"`` to ``"9"``, scored by their number) that have ready jobs."""
LEASES: Final = "leases"
"""A sorted set of claimed (running) job ids scored by when their lease runs out (ms, Redis time); a
job whose lease runs out goes back in line at its place."""
DELAYED: Final = "delayed"
"""A sorted set of the ids of jobs waiting for a retry, scored by when they may run (ms, Redis time)."""
ROUTES: Final = "routes"
"""A hash: job id -> ``"{priority} {place} {fairness_key}"``, where the job goes back in line (while
it is queued, deferred or running)."""
SEQUENCE: Final = "seq"
"""The counter that gives each submitted job its place in line."""
RESULT: Final = "result:"
"""``result:{job_id}`` holds the result document (JSON), written at submit."""
FAILED: Final = "failed"
"""A sorted set of failed job ids scored by the time they failed (ms), the newest ``FAILED_SET_MAX`` kept."""
FAILED_SET_MAX: Final = 10_000
FAILED_JOB: Final = "failed-job:"
"""``failed-job:{job_id}``: a failed job's arq record, kept as long as its result for a retry."""
STREAM: Final = "stream:"
"""``stream:{job_id}``: a Redis stream of a ``stream=True`` job's events, kept as long as its
result. Each entry has a ``type``: ``delta`` (with ``text``), ``restart`` (with ``attempt``: a new
attempt begins, discard the text so far) or ``done`` (with ``status``; the last entry)."""
STREAM_MAXLEN: Final = 100_000
"""Entries a stream keeps at most (older ones are trimmed)."""
BACKEND_WAITS: Final = "backend-waits"
"""A sorted set of the ids of jobs waiting for a backend (every backend of their model down), scored
by when they went to wait (ms): when a circuit closes, they are all due at once."""
RECOVERIES: Final = "recoveries"
"""The backends' recoveries count (``BACKEND_RECOVERIES_KEY``) the queue's workers have heard of: a
job told every backend of its model was down before that recovery does not wait."""
BATCH: Final = "batch:"
"""``batch:{name}``: a batch's manifest (JSON): ``{"name", "submitted_at", "items": [[custom_id,
job_id], ...]}`` in input order, written by ``promptq submit``, kept as long as a queued job."""
BATCH_TALLY: Final = "batch-tally:"
"""``batch-tally:{name}``: a batch's running totals (a hash), written with its manifest (``total``,
``submitted_ms``) and counted as its jobs end (the workers' roll-ups, a cancel): ``succeeded``,
``failed`` (less those retried), ``cancelled``, ``tokens``, ``cost_usd`` and ``last_ms`` (when its
latest counts came, Redis time). A batch's jobs are those of its queue whose id is ``{name}:...``
(``batch_of``). Kept as long as the manifest."""
BATCHES: Final = "batches"
"""A sorted set of batch names scored by when they were submitted (ms), the newest ``BATCHES_MAX`` kept."""
BATCHES_MAX: Final = 1000
# The Batch tier (``worker.provider_batches``): a batch-tier job a worker claims joins the collection
# of its backend, endpoint and model; a collection is sealed into a provider batch (one JSONL file at
# the provider) when it is full or its window is over; the provider batch moves through its steps
# (``PROVIDER_BATCH_STEPS``), each recorded before the next, until its answers are read.
COLLECTING: Final = "collecting"
"""A sorted set: each collection (``"{backend} {endpoint} {model}"``) with jobs waiting to be sent,
scored by when its oldest one joined (ms, Redis time; 0: send at once)."""
COLLECT: Final = "collect:"
"""``collect:{collection}``: a sorted set of the ids of the jobs waiting to be sent in it, scored by
when they joined (claim order: priorities and fair shares decide which jobs fill a file first)."""
PROVIDER_BATCHES: Final = "provider-batches"
"""A sorted set of the provider batches not ended, by when their next step is due (ms)."""
PROVIDER_BATCHES_ENDED: Final = "provider-batches-ended"
"""A sorted set of ended provider batches, by when they ended (ms), the newest ``PROVIDER_BATCHES_KEPT`` kept."""
PROVIDER_BATCHES_KEPT: Final = 100
PROVIDER_BATCH: Final = "provider-batch:"
"""``provider-batch:{id}``: a hash, one provider batch as promptq records it (``id`` is promptq's,
sent in the batch's ``metadata``): ``step`` (``PROVIDER_BATCH_STEPS``), ``collection``, ``lines``,
``bytes``, ``sealed_ms``, and as the steps go ``file_id``, ``creating_ms``, ``provider_batch`` (the
provider's id), ``status`` (the provider's), ``counts`` (JSON), ``polls``, ``output_file_id``,
``error_file_id``, ``ended_ms``, ``error``. Kept ``result_ttl`` after it ends."""
PROVIDER_BATCH_JOBS: Final = "provider-batch-jobs:"
"""``provider-batch-jobs:{id}``: a sorted set of the ids of the jobs in a provider batch whose answer
is not read yet, scored by their line."""
PROVIDER_BATCH_STEPS: Final = ("sealed", "uploaded", "creating", "created", "reading", "ended")
"""A provider batch's steps: its jobs chosen (``sealed``), its file uploaded, its creation asked
(``creating``: a batch may exist at the provider whose id promptq has not heard), created (waiting
for it to end), its answers being read, ended."""
RUN_LIVE: Final = "run-live"
"""A set of batch-tier job ids whose provider batch expired with ``PROMPTQ_BATCH_EXPIRED=live``:
their next attempt calls the API live."""
BATCHER: Final = "batcher"
"""The worker sending and reading the queue's provider batches (its id, with a time to live): one at
a time per queue."""
WEBHOOKS: Final = "webhooks"
"""A sorted set of the ids of webhook deliveries (``msg_...``) by when each is due (ms; a worker
sending one moves it on by ``WEBHOOK_SEND_MS`` first, so that no other sends it meanwhile)."""
WEBHOOK: Final = "webhook:"
"""``webhook:{id}``: one delivery (a hash): ``url``, ``job_id``, ``body`` (the job's final document,
as sent), ``tries`` and ``since_ms`` (when the job ended); kept ``WEBHOOK_KEEP_MS`` at most."""
WEBHOOK_GIVE_UP_MS: Final = 86_400_000
"""A delivery is tried again, with backoff, for a day after the job ended; then given up."""
WEBHOOK_KEEP_MS: Final = WEBHOOK_GIVE_UP_MS + 3_600_000
STATS: Final = "stats:"
"""``stats:{minute}`` (Unix minute): a hash counting what ended in that minute in the queue, added to
by the workers (the jobs they end, counted as they end and rolled up every second:
``lua/roll_up.lua``) and by a cancel, expiring ``STATS_KEEP_S`` after the minute: ``s:{status}``
jobs ended; ``t:{bucket}`` their time from submit to end and ``c:{bucket}`` their last attempt's
(``latency_bucket``); per model ``j:{model}`` jobs ended, ``i:{model}`` and ``o:{model}`` input and
output tokens, ``$:{model}`` estimated cost in USD. Once the hash holds ``STATS_FIELDS_MAX`` fields,
a new model is counted as ``STATS_OTHER_MODEL``."""
STATS_KEEP_S: Final = 3600
STATS_FIELDS_MAX: Final = 1000
STATS_OTHER_MODEL: Final = "(other)"
LATENCY_BUCKET_BASE_MS: Final = 10
LATENCY_BUCKET_RATIO: Final = 1.25
LATENCY_BUCKETS: Final = 64
"""Latency bucket 0 holds times under 10 ms; bucket ``i`` (1 to 63) times from ``10 * 1.25 ** (i - 1)``
to ``10 * 1.25 ** i`` ms (a quarter wider each; the last one holds everything from 2.8 hours on)."""
DONE: Final = "done:"
"""``done:{job_id}``: a pub/sub channel; the final result document is published there when the job
ends (by the worker, or by ``cancel``)."""
WAKE: Final = "wake"
"""A pub/sub channel; producers publish to it after enqueueing, so the queue's idle workers start at once."""
PARKED: Final = "parked"
"""A hash: the queue's parked workers (idle, with ordinary slots free: a claim of theirs left no
job ready), by their handoff id -> ``{until_ms} {free} {lease_ms} {model_json}``: until when the
parking holds (ms, Redis time), the slots it offers, and what a claim of theirs would pass. A submit
finding no job ready hands its job to one of them (``producer/lua/submit.lua``)."""
HANDOFF: Final = "handoff:"
"""``handoff:{handoff_id}``: a pub/sub channel per worker; a submit that hands it a job publishes
``{now_ms} {urgent} {job_id}``, a newline and the job's record there."""
CANCEL: Final = "cancel"
"""A pub/sub channel; ``Producer.cancel`` publishes a running job's id there, after marking its
document ``cancelled``, and the worker running it stops its request."""

# arq's own bookkeeping keys; arq fixes these prefixes and puts the job id after them: promptq's arq
# job id is the queue's tag and the job id (``{default}order-42``), so they are in the queue's slot.
ARQ_JOB_KEY_PREFIX: Final = "arq:job:"
ARQ_IN_PROGRESS_KEY_PREFIX: Final = "arq:in-progress:"
ARQ_RETRY_KEY_PREFIX: Final = "arq:retry:"
ARQ_TRIES_TTL_S: Final = 88400
"""How long a job's try counter lives after its last try began (arq's own figure)."""

# The fleet: keys that belong to no queue.
WORKERS_KEY: Final = "promptq:{fleet}:workers"
"""A hash: worker id -> JSON ``{"id", "host", "pid", "slots", "busy", "started_at", "queues",
"backends"}`` (``backends``: per backend, the ``calls``, ``errors`` and ``seconds`` of its calls
since it started, and ``budget``: per model it called in the last minute, ``[calls, tokens, rpm,
tpm]``, those calls and tokens beside the model's limits there, null for none), rewritten by each
worker every ``WORKER_BEAT_S`` and removed when it stops."""


def budget_share(doc: dict[str, Any]) -> float | None:
    """The largest share of a limit a backend's entry (``Metrics.backend_summary``) says was used in
    the last minute, over its models and both limits; None when none of them has a limit."""
    shares = [
        used / limit
        for calls, tokens, rpm, tpm in (doc.get("budget") or {}).values()
        for used, limit in ((calls, rpm), (tokens, tpm))
        if limit
    ]
    return round(max(shares), 4) if shares else None


WORKERS_SEEN_KEY: Final = "promptq:{fleet}:workers-seen"
"""A sorted set: worker id -> when it last wrote its entry (ms, Redis time); an entry silent for
``WORKER_FORGET_S`` is dropped by the next worker's write."""
WORKER_BEAT_S: Final = 5
WORKER_FORGET_S: Final = 3600
TENANTS_KEY: Final = "promptq:{fleet}:tenants"
"""A hash: tenant name -> its policy as JSON (``promptq_core.tenants.Policy``)."""
API_KEYS_KEY: Final = "promptq:{fleet}:api-keys"
"""A hash: the SHA-256 of an API key (hex) -> JSON ``{"id", "tenant", "created_at"}``. Keys are
never stored in clear: ``promptq keys create`` prints a key once."""
LIMIT_KEY_PREFIX: Final = "promptq:{backends}:limit:"
"""``promptq:{backends}:limit:{scope}{backend}/{model}:rpm``, ``:tpm`` and ``:cooldown``: the
rate-limit budgets of one model on one backend (``limit_keys``), kept by the worker's router and
limiter. All the backends' keys share one slot: a route reads every backend of a model at once."""
CIRCUIT_KEY_PREFIX: Final = "promptq:{backends}:circuit:"
"""``promptq:{backends}:circuit:{backend}``: a backend's circuit breaker (a hash,
``worker/lua/route.lua`` and ``circuit.lua``): ``fails`` (retryable failures on record: of the calls
routed after the latest-routed success, kept in ``...:circuit:{backend}:fails``), ``ok_at`` (when
that success was routed, ms), and while it is open ``open_until`` (ms, Redis time: a probe may go
from then on), ``cooldown_ms`` (the latest cool-down), ``opened_at`` (ms), ``probe_until`` (a probe
is out until then) and ``scout`` (the ``open_until`` a waiting job was sent back for, to carry the
probe). No key: closed, no failure."""
BACKEND_RECOVERIES_KEY: Final = "promptq:{backends}:recoveries"
"""A counter of the circuits that closed after being open."""
BACKENDS_CHANNEL: Final = "promptq:backends"
"""A pub/sub channel: a backend's name is published there when its circuit closes after being open;
every worker then makes the jobs waiting for a backend in its queues due at once."""
ARQ_QUEUE_NAME: Final = "promptq:{fleet}:arq"
"""The queue name arq is given (promptq claims from its own queues: arq only counts this one's
length, never filled, in its hourly health line, written to ``promptq:{fleet}:arq:health-check``)."""
JOB_FUNCTION: Final = "run_prompt"
"""The arq function name every promptq job is enqueued under."""


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys and channels of one named queue, all under its hash tag."""

    name: str

    @property
    def tag(self) -> str:
        """The queue's hash tag, ``{name}``."""
        return "{" + self.name + "}"

    @property
    def base(self) -> str:
        return f"{QUEUE_KEY_PREFIX}{{{self.name}}}:"

    def key(self, name: str) -> str:
        """The queue's key (or key prefix, or channel) of that name (``LEVELS``, ``RESULT``...)."""
        return self.base + name

    def ready(self, priority: int, fairness_key: str) -> str:
        return f"{self.base}{READY}{priority}:{fairness_key}"

    def result(self, job_id: str) -> str:
        return self.base + RESULT + job_id

    def stream(self, job_id: str) -> str:
        return self.base + STREAM + job_id

    def kept(self, job_id: str) -> str:
        """Where a failed job's record is kept for a retry."""
        return self.base + FAILED_JOB + job_id

    def done(self, job_id: str) -> str:
        return self.base + DONE + job_id

    def handoff(self, handoff_id: str) -> str:
        """The channel a submit hands a job to the worker ``handoff_id`` on."""
        return self.base + HANDOFF + handoff_id

    def batch(self, name: str) -> str:
        return self.base + BATCH + name

    def batch_tally(self, name: str) -> str:
        return self.base + BATCH_TALLY + name

    def collect(self, collection: str) -> str:
        return self.base + COLLECT + collection

    def provider_batch(self, batch: str) -> str:
        return self.base + PROVIDER_BATCH + batch

    def provider_batch_jobs(self, batch: str) -> str:
        return self.base + PROVIDER_BATCH_JOBS + batch

    def webhook(self, delivery: str) -> str:
        return self.base + WEBHOOK + delivery

    def stats(self, minute: int | str) -> str:
        return f"{self.base}{STATS}{minute}"

    def arq_id(self, job_id: str) -> str:
        """The id arq knows the job by: the queue's tag, then the job id."""
        return self.tag + job_id

    def record(self, job_id: str) -> str:
        """arq's job record."""
        return ARQ_JOB_KEY_PREFIX + self.tag + job_id

    def tries(self, job_id: str) -> str:
        """arq's try counter."""
        return ARQ_RETRY_KEY_PREFIX + self.tag + job_id


@functools.cache
def queue_keys(name: str = DEFAULT_QUEUE) -> QueueKeys:
    """The keys of the queue ``name`` (a valid name: ``QUEUE_NAME_RE``)."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        raise ValueError(f"queue name {name!r} is not 1 to 64 of A-Z a-z 0-9 _ . -")
    if name in RESERVED_QUEUE_NAMES:
        raise ValueError(f"queue name {name!r} is reserved (the tag of keys that belong to no queue)")
    return QueueKeys(name)


def split_arq_id(arq_id: str) -> tuple[str, str]:
    """``(queue, job_id)`` of an id arq knows a job by (``QueueKeys.arq_id``)."""
    if arq_id.startswith("{"):
        queue, brace, job_id = arq_id[1:].partition("}")
        if brace and QUEUE_NAME_RE.fullmatch(queue):
            return queue, job_id
    raise ValueError(f"{arq_id!r} is not a promptq job's arq id ({{queue}}job_id)")


# Older layouts, read only to move what they hold into the default queue (``worker/lua/upgrade.lua``).
OLD_KEY_PREFIX: Final = "promptq:"
"""promptq before named queues wrote a queue's keys without a tag, under ``promptq:`` with the same
names (``promptq:levels``, ``promptq:result:{job_id}``...), and arq's records as ``arq:job:{job_id}``."""
OLD_PREFIXES: Final = {
    "READY": READY,
    "ACTIVE": ACTIVE,
    "RESULT": RESULT,
    "STREAM": STREAM,
    "FAILED_JOB": FAILED_JOB,
    "BATCH": BATCH,
    "BATCH_TALLY": BATCH_TALLY,
}
"""The older layout's prefixes of keys built from ids (``OLD_KEY_PREFIX`` and the name)."""
OLD_KEYS: Final = (LEVELS, LEASES, DELAYED, ROUTES, SEQUENCE, FAILED, BATCHES)
"""The older layout's fixed keys (``OLD_KEY_PREFIX`` and the name)."""
LEGACY_QUEUE: Final = "promptq:queue"
"""The single queue of promptq 0.1 (a sorted set of ids scored by when they may run, in ms)."""
LEGACY_PLACE_OFFSET: Final = 10**13
"""A job moved from the legacy queue takes the place ``score - LEGACY_PLACE_OFFSET``: ahead of every
job submitted since, in its old order."""

PRIORITIES: Final = range(10)
"""``priority``: 0 runs first, 9 last."""
CHAT_ENDPOINT: Final = "/v1/chat/completions"
EMBEDDINGS_ENDPOINT: Final = "/v1/embeddings"
RESPONSES_ENDPOINT: Final = "/v1/responses"
ENDPOINTS: Final = (CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT)
"""The API endpoints a job may call, as the Batch API's ``url`` names them."""

DEFAULT_PRIORITY: Final = 5
DEFAULT_BACKEND: Final = "default"
"""The backend a worker makes of ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` when no backends are listed."""
BACKEND_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_FAIRNESS_KEY: Final = "default"
"""The fairness key of jobs submitted without one."""
FAIRNESS_KEY_MAX_BYTES: Final = 128
SUBMIT_MEMORY_PERCENT: Final = 90
"""Submits are refused (``QueueFullError``) once Redis holds this share of its ``maxmemory``: the rest
is left for the workers, whose claims and finishes a full Redis would refuse."""

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_RESULT_TTL_S: Final = 86_400
DEFAULT_MAX_PAYLOAD_BYTES: Final = 1_048_576


def limit_keys(backend: str, model: str, scope: str = "") -> tuple[str, str, str]:
    """A model's rate-limit keys on a backend: requests' and tokens' theoretical arrival times (ms),
    and the cool-down every worker pauses for. ``scope`` is empty for the budget all workers share,
    a process's own prefix for one budget per process."""
    base = f"{LIMIT_KEY_PREFIX}{scope}{backend}/{model}"
    return f"{base}:rpm", f"{base}:tpm", f"{base}:cooldown"


TENANT_LIMIT_PREFIX: Final = "promptq:{backends}:tenant:"
"""``promptq:{backends}:tenant:{tenant}:rpm``, ``:tpm`` (its budgets' TATs) and ``:running`` (a sorted
set: its calls in flight, by when their hold runs out): beside the backends' budgets, in their
slot, so that one route reserves in both."""
SPEND_KEY_PREFIX: Final = "promptq:{fleet}:spend:"
"""``promptq:{fleet}:spend:{tenant}:{period}`` (``2026-12`` or ``2026-12-03``, UTC): the cost in USD
of a tenant's finished jobs in that period (``PROMPTQ_PRICES``), added by the workers' roll-ups."""


IN_FLIGHT_RETRY_MS: Final = 250
"""A tenant's job that finds its calls in flight at their limit looks again this much later."""


def tenant_limit_keys(tenant: str) -> tuple[str, str, str]:
    """A tenant's budget keys: requests' TAT, tokens' TAT, calls in flight."""
    base = f"{TENANT_LIMIT_PREFIX}{tenant}"
    return f"{base}:rpm", f"{base}:tpm", f"{base}:running"


def spend_key(tenant: str, period: str) -> str:
    return f"{SPEND_KEY_PREFIX}{tenant}:{period}"


def circuit_key(backend: str) -> str:
    return CIRCUIT_KEY_PREFIX + backend


def circuit_failures_key(backend: str) -> str:
    """The failures a backend's circuit has on record: a sorted set of calls, by when they were routed."""
    return f"{CIRCUIT_KEY_PREFIX}{backend}:fails"


def batch_of(job_id: str) -> str:
    """The batch a job id names (``{batch}:{custom_id}``), or ``""``: a batch's manifest and tally
    exist only for a name ``promptq submit`` gave, so any other id with a colon counts in none."""
    name, colon, _ = job_id.partition(":")
    return name if colon and BATCH_NAME_RE.fullmatch(name) else ""


BATCH_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
"""What a batch name may be (no colon: a batch's job ids are ``{name}:{custom_id}``)."""


def latency_bucket(ms: float) -> int:
    """The latency bucket (``LATENCY_BUCKETS``) a time in milliseconds falls in."""
    if ms < LATENCY_BUCKET_BASE_MS:
        return 0
    return min(LATENCY_BUCKETS - 1, 1 + int(math.log(ms / LATENCY_BUCKET_BASE_MS) / _LOG_RATIO))


def latency_bucket_bounds(bucket: int) -> tuple[float, float]:
    """The times (ms) a latency bucket holds, from and to."""
    if bucket <= 0:
        return 0.0, float(LATENCY_BUCKET_BASE_MS)
    low = LATENCY_BUCKET_BASE_MS * LATENCY_BUCKET_RATIO ** (bucket - 1)
    return low, low * LATENCY_BUCKET_RATIO


_LOG_RATIO = math.log(LATENCY_BUCKET_RATIO)


# -- what the scripts answer ----------------------------------------------------------------------
class Reply:
    """The answers of the Lua scripts, named once: the loader defines each in a script that uses it
    (``return ENQUEUED``), and Python compares with the same name (``Reply.ENQUEUED``)."""

    ENQUEUED: Final = 1
    """submit: the job was new and is in line."""
    ALREADY_KNOWN: Final = 0
    """submit: a job or result with that id exists, submitted with the same request; nothing was written."""
    CONFLICT: Final = 2
    """submit: a job or result with that id exists, submitted with another request; nothing was written."""
    CANCELLED: Final = 1
    """cancel: the document was marked cancelled."""
    CHANGED_MEANWHILE: Final = 0
    """cancel: the document was no longer the one read (read it again)."""
    ENDED_HERE: Final = 1
    """finish: the job ended with this finish."""
    ENDED_BEFORE: Final = 0
    """finish: the job's document was terminal already (a second delivery's finish)."""
    RESERVED: Final = 1
    """route: a backend was chosen and a reservation made in its budget."""
    NOT_RESERVED: Final = 0
    """route: none was (the soonest budget is further away than the job may wait in its slot)."""
    ALL_DOWN: Final = 2
    """route: every backend serving the model is down (its circuit open)."""
    CIRCUIT_CLOSED: Final = 0
    """circuit: the backend's circuit is closed."""
    CIRCUIT_OPEN: Final = 1
    """circuit: it is open (no call goes there until its cool-down ends)."""
    CIRCUIT_RECOVERED: Final = 2
    """circuit: it was open and this success closed it."""
    COLLECTED: Final = 1
    """collect: the batch-tier job joined its collection."""
    LEASE_LOST: Final = 3
    """collect: the attempt no longer holds the job (its lease ran out, or another claim took it): untouched."""
    STEP_RECORDED: Final = 1
    """batch_step: the provider batch's step was recorded."""
    STEP_MOVED: Final = 0
    """batch_step: the provider batch was not at the step expected (another worker moved it on)."""
    LEADS: Final = 1
    """lead: this worker sends and reads the queue's provider batches (``BATCHER``)."""
    RETRIED: Final = "ok"
    """retry: the failed job is back in line."""
    NO_DOCUMENT: Final = "unknown"
    """retry: no document (never submitted, or expired)."""
    NOT_FAILED: Final = "not_failed"
    """retry: the job is not failed (retried already?), or its request is no longer kept."""

    @classmethod
    def names(cls) -> dict[str, int | str]:
        return {name: value for name, value in vars(cls).items() if name.isupper()}


# -- JSON codec --------------------------------------------------------------------------------
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(obj: Any) -> str:
    """Compact, strict JSON (no NaN or Infinity), as every promptq value in Redis is written."""
    return _ENCODER.encode(obj)


_SORTED_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)


def dumps_sorted(obj: Any) -> str:
    """:func:`dumps` with every object's keys sorted: one text for one value, whatever order its
    keys were given in (a job's request, whose digest says whether two submits asked the same)."""
    return _SORTED_ENCODER.encode(obj)


def loads(raw: str | bytes) -> Any:
    return json.loads(raw)


def as_text(value: Any) -> str:
    """A value Redis answered (bytes, or already text, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def encode_job(payload_json: str, enqueued_at_ms: int) -> str:
    """The job record arq reads at ``arq:job:{job_id}``: arq's field names, JSON instead of pickle.

    ``payload_json`` is the already encoded payload, the job function's one argument.
    """
    return f'{{"t":null,"f":"{JOB_FUNCTION}","a":[{payload_json}],"k":{{}},"et":{int(enqueued_at_ms)}}}'


# -- the result document -----------------------------------------------------------------------
Status = Literal["queued", "running", "batched", "succeeded", "failed", "cancelled"]
"""``batched``: a batch-tier job waiting to be sent in a provider batch, or sent and waiting for its answer."""
STATUSES: Final[frozenset[str]] = frozenset(get_args(Status))
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the API reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class JobError:
    """Why the job failed (or why its last attempt failed, while a retry waits)."""

    type: str
    """A short class name: ``rate_limited``, ``server_error``, ``bad_request``, ``invalid_payload``..."""
    message: str
    status_code: int | None
    """The API's HTTP status, when the API answered."""
    retryable: bool
    """True when the failure was transient (the job failed because its tries ran out)."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """The result document at ``promptq:{queue}:result:{job_id}``; timestamps are Unix time in seconds."""

    job_id: str
    status: Status
    attempts: int = 0
    """API calls started for this job so far."""
    model: str | None = None
    endpoint: str = CHAT_ENDPOINT
    """The API endpoint the job calls (``ENDPOINTS``)."""
    content: str | None = None
    """The answer's text: a chat completion's message, or a response's output text."""
    output: list[Any] | None = None
    """A response's output items, as the API sent them (``/v1/responses``)."""
    embeddings: list[Any] | None = None
    """An embeddings job's vectors, one an input, each as base64 little-endian float32 (``vectors``
    decodes them); a server that answers one vector a token gives a list of them for that input."""
    finish_reason: str | None = None
    usage: Usage | None = None
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    """The caller's ``metadata``, echoed."""
    priority: int = DEFAULT_PRIORITY
    """0 (runs first) to 9 (last)."""
    fairness_key: str = DEFAULT_FAIRNESS_KEY
    """The key the job shares the workers under: keys with ready jobs at one priority take turns."""
    queue: str = DEFAULT_QUEUE
    """The named queue the job waits in."""
    tier: str = "live"
    """``live``, ``flex`` or ``batch`` (``PromptJob.tier``)."""
    backend: str | None = None
    """The backend the latest attempt went to (``PROMPTQ_BACKENDS``; ``default`` without them)."""
    provider_batch: str | None = None
    """A batch-tier job's provider batch: the id the provider gave it (``batch_...``)."""
    request: str | None = None
    """A digest of the request the id was submitted with (``PromptJob.request``): the same id
    submitted again with another request is refused instead of answered with this job's result."""
    enqueued_at: float | None = None
    started_at: float | None = None
    """When the latest attempt started."""
    finished_at: float | None = None
    latency_ms: int | None = None
    """Duration of the latest attempt, from its start until its result was known."""

    @property
    def done(self) -> bool:
        """True once the status is terminal: ``succeeded``, ``failed`` or ``cancelled``."""
        return self.status in TERMINAL_STATUSES

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def vectors(self) -> list[Any] | None:
        """``embeddings`` as lists of floats (lists of them, for an input a server answered per token)."""
        if self.embeddings is None:
            return None
        return [decode_vector(v) if isinstance(v, str) else [decode_vector(t) for t in v] for v in self.embeddings]

    def to_doc(self) -> dict[str, Any]:
        """The document as a dict, in field order (written out: ``dataclasses.asdict`` deep-copies
        and is the slowest step of a submit)."""
        u, e = self.usage, self.error
        return {
            "job_id": self.job_id,
            "status": self.status,
            "attempts": self.attempts,
            "model": self.model,
            "endpoint": self.endpoint,
            "content": self.content,
            "output": self.output,
            "embeddings": self.embeddings,
            "finish_reason": self.finish_reason,
            "usage": None
            if u is None
            else {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            },
            "error": None
            if e is None
            else {"type": e.type, "message": e.message, "status_code": e.status_code, "retryable": e.retryable},
            "metadata": self.metadata,
            "priority": self.priority,
            "fairness_key": self.fairness_key,
            "queue": self.queue,
            "tier": self.tier,
            "backend": self.backend,
            "provider_batch": self.provider_batch,
            "request": self.request,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "latency_ms": self.latency_ms,
        }

    def to_json(self) -> str:
        return dumps(self.to_doc())

    @classmethod
    def from_doc(cls, doc: Any) -> JobResult:
        if not isinstance(doc, dict):
            raise ValueError("result document is not a JSON object")
        status = doc.get("status")
        if status not in STATUSES:
            raise ValueError(f"result document has an unknown status: {status!r}")
        job_id = doc.get("job_id")
        if not isinstance(job_id, str):
            raise ValueError("result document has no job_id")
        usage, error = doc.get("usage"), doc.get("error")
        priority, fairness_key = doc.get("priority"), doc.get("fairness_key")
        endpoint, output, embeddings = doc.get("endpoint"), doc.get("output"), doc.get("embeddings")
        backend, queue, request, tier = doc.get("backend"), doc.get("queue"), doc.get("request"), doc.get("tier")
        provider_batch = doc.get("provider_batch")
        return cls(
            job_id=job_id,
            status=cast(Status, status),
            attempts=int(doc.get("attempts") or 0),
            model=doc.get("model"),
            endpoint=endpoint if isinstance(endpoint, str) else CHAT_ENDPOINT,  # promptq 0.1: chat only
            content=doc.get("content"),
            output=output if isinstance(output, list) else None,
            embeddings=embeddings if isinstance(embeddings, list) else None,
            finish_reason=doc.get("finish_reason"),
            usage=_usage(usage) if isinstance(usage, dict) else None,
            error=_error(error) if isinstance(error, dict) else None,
            metadata=doc.get("metadata"),
            priority=priority if isinstance(priority, int) else DEFAULT_PRIORITY,  # documents of promptq 0.1 have none
            fairness_key=fairness_key if isinstance(fairness_key, str) else DEFAULT_FAIRNESS_KEY,
            queue=queue if isinstance(queue, str) else DEFAULT_QUEUE,  # documents before named queues
            tier=tier if isinstance(tier, str) else "live",
            backend=backend if isinstance(backend, str) else None,
            provider_batch=provider_batch if isinstance(provider_batch, str) else None,
            request=request if isinstance(request, str) else None,
            enqueued_at=doc.get("enqueued_at"),
            started_at=doc.get("started_at"),
            finished_at=doc.get("finished_at"),
            latency_ms=doc.get("latency_ms"),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobResult:
        return cls.from_doc(loads(raw))


def queued_doc(
    job_id: str,
    model: str | None,
    metadata: Any,
    enqueued_at: float,
    priority: int = DEFAULT_PRIORITY,
    fairness_key: str = DEFAULT_FAIRNESS_KEY,
    endpoint: str = CHAT_ENDPOINT,
    queue: str = DEFAULT_QUEUE,
    request: str | None = None,
    tier: str = "live",
) -> str:
    """``JobResult(job_id, "queued", model=..., metadata=..., priority=..., fairness_key=...,
    queue=..., tier=..., endpoint=..., request=..., enqueued_at=...).to_json()``, written straight from a
    template (a submit's hottest step; a test keeps the two equal)."""
    return (
        f'{{"job_id":{_string(job_id)},"status":"queued","attempts":0,"model":{_string(model)},'
        f'"endpoint":{_string(endpoint)},"content":null,"output":null,"embeddings":null,"finish_reason":null,'
        f'"usage":null,"error":null,"metadata":{"null" if metadata is None else dumps(metadata)},'
        f'"priority":{int(priority)},"fairness_key":{_string(fairness_key)},"queue":{_string(queue)},"tier":{_string(tier)},"backend":null,'
        f'"provider_batch":null,"request":{_string(request)},"enqueued_at":{float(enqueued_at)!r},"started_at":null,"finished_at":null,"latency_ms":null}}'
    )


def _string(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


_encode_string = cast(Any, json.encoder).encode_basestring  # what dumps does to a str (ensure_ascii off)


def _usage(doc: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=int(doc.get("prompt_tokens") or 0),
        completion_tokens=int(doc.get("completion_tokens") or 0),
        total_tokens=int(doc.get("total_tokens") or 0),
    )


def _error(doc: dict[str, Any]) -> JobError:
    status_code = doc.get("status_code")
    return JobError(
        type=str(doc.get("type") or "error"),
        message=str(doc.get("message") or ""),
        status_code=int(status_code) if status_code is not None else None,
        retryable=bool(doc.get("retryable")),
    )


# -- vectors ----------------------------------------------------------------------------------------
def encode_vector(values: list[float]) -> str:
    """A vector as the API's ``encoding_format="base64"`` gives it: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def decode_vector(text: str) -> list[float]:
    """:func:`encode_vector` undone (the float32 values, bit for bit); ``ValueError`` when ``text``
    is not base64 of whole float32 values."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"a vector of {len(raw)} bytes is not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
