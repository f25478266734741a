"""What the HTTP API takes and answers, as pydantic models: they validate a request's body and
write the OpenAPI schema (``docs/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from promptq_core.contract import DEFAULT_QUEUE, FAIRNESS_KEY_MAX_BYTES, QUEUE_NAME_RE
from promptq_core.validation import CALLER_JOB_ID_RE, MAX_DEADLINE_S, MAX_FALLBACKS, MODEL_RE
from promptq_core.webhooks import MAX_URL_CHARS

__all__ = [
    "BatchDoc",
    "BatchItem",
    "BatchPage",
    "BatchTierDoc",
    "Cancelled",
    "DashboardDocument",
    "ErrorBody",
    "ErrorDoc",
    "FailureDoc",
    "Health",
    "JobRequest",
    "MinuteDoc",
    "ModelDoc",
    "QueueDoc",
    "QueueRow",
    "QueueTotals",
    "ResultDocument",
    "UsageDoc",
    "WorkerDoc",
]


class JobRequest(BaseModel):
    """One job: ``prompt`` or ``messages`` (chat), or ``prompt`` or ``input`` (``endpoint``
    ``/v1/embeddings`` or ``/v1/responses``), plus any parameter promptq passes on for that endpoint
    (``temperature``, ``max_tokens``, ``dimensions``, ``instructions``...). Checked as
    ``Producer.submit`` checks it."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"prompt": "What is the capital of Vietnam?", "stream": True}]},
    )
    prompt: str | None = Field(None, min_length=1)
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses"] | None = Field(
        None, description="the API endpoint the job calls (default /v1/chat/completions)"
    )
    input: str | list[Any] | None = Field(
        None,
        description="an embeddings job's input (strings or token arrays), or a response's input (a string or items)",
    )
    model: str | None = Field(None, pattern=f"^{MODEL_RE.pattern}$")
    queue: str | None = Field(
        None,
        pattern=f"^{QUEUE_NAME_RE.pattern}$",
        description="the named queue (default: the API's PROMPTQ_QUEUE, else default)",
    )
    job_id: str | None = Field(
        None,
        pattern=f"^{CALLER_JOB_ID_RE.pattern}$",
        description="your own id; submitting it again with the same request enqueues nothing new, "
        "with another request is refused (409)",
    )
    metadata: dict[str, Any] | None = None
    stream: bool = False
    tier: Literal["live", "flex", "batch"] | None = Field(
        None,
        description="live (default), flex (the provider's cheaper service_tier, slower) or batch (the provider's "
        "Batch API where a backend offers it, at half the price within 24 hours; else it runs live)",
    )
    webhook_url: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="an http(s) URL the job's final result document is POSTed to, signed (Standard Webhooks), "
        "when it ends; its host must be public or listed in the API's PROMPTQ_WEBHOOK_HOSTS",
    )
    priority: int | None = Field(None, ge=0, le=9, strict=True, description="0 runs first, 9 last (default 5)")
    fairness_key: str | None = Field(
        None,
        min_length=1,
        max_length=FAIRNESS_KEY_MAX_BYTES,
        description="jobs under different keys take turns for the workers at one priority (default: a shared key)",
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        le=MAX_DEADLINE_S,
        description="seconds from now after which the job is not started any more: it fails `expired`",
    )
    deadline: float | None = Field(None, gt=0, description="the same as deadline_s, as a Unix time (seconds)")
    fallbacks: list[Annotated[str, StringConstraints(pattern=f"^{MODEL_RE.pattern}$")]] | None = Field(
        None,
        max_length=MAX_FALLBACKS,
        description="models to move to, in order, when the job's model stays down or its input is too long for it",
    )


class UsageDoc(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDoc(BaseModel):
    type: str
    message: str
    status_code: int | None
    retryable: bool


class ResultDocument(BaseModel):
    """The result document (``promptq:{queue}:result:{job_id}``), as ``GET`` and the ``done`` event give it."""

    job_id: str
    status: Literal["queued", "running", "batched", "succeeded", "failed", "cancelled"]
    attempts: int
    model: str | None
    endpoint: Literal["/v1/chat/completions", "/v1/embeddings", "/v1/responses"]
    content: str | None
    output: list[Any] | None
    embeddings: list[str | list[str]] | None
    finish_reason: str | None
    usage: UsageDoc | None
    error: ErrorDoc | None
    metadata: dict[str, Any] | None
    priority: int
    fairness_key: str
    queue: str = Field(DEFAULT_QUEUE, description="the named queue the job waits in")
    tier: Literal["live", "flex", "batch"] = Field("live", description="how the job is called")
    backend: str | None = Field(None, description="the backend the latest attempt went to")
    provider_batch: str | None = Field(None, description="a batch-tier job's provider batch (the provider's id)")
    request: str | None = Field(
        None, description="a digest of the request the id was submitted with (the same id with another is refused)"
    )
    enqueued_at: float | None
    started_at: float | None
    finished_at: float | None
    latency_ms: int | None


class QueueRow(BaseModel):
    priority: int
    key: str
    ready: int
    running: int
    deferred: int


class QueueTotals(BaseModel):
    ready: int
    running: int
    deferred: int
    failed: int
    waiting_for_backend: int = Field(description="deferred jobs waiting for a backend of their model to come back")


class BudgetDoc(BaseModel):
    model: str
    requests: int = Field(description="calls in the last minute, every live worker's")
    rpm: int | None
    tokens: int = Field(description="tokens those calls used")
    tpm: int | None


class BackendDoc(BaseModel):
    name: str
    up: bool = Field(description="its circuit is closed (fleet-wide, kept in Redis)")
    down_for_s: float | None = Field(description="open: since when its circuit opened")
    probe_in_s: float | None = Field(description="open: when a probe call may go")
    failures_in_a_row: int
    calls: int = Field(description="calls the workers alive made to it since they started")
    errors: int
    mean_call_ms: float | None
    budget: list[BudgetDoc] = Field(description="per model called in the last minute: its use beside its limits")
    budget_in_use: float | None = Field(
        description="the largest share of a model's RPM or TPM the live workers used in the last minute "
        "(null: no limit, or no call)"
    )


class QueueDoc(BaseModel):
    name: str
    totals: QueueTotals
    rows: list[QueueRow]


class WorkerDoc(BaseModel):
    id: str
    host: str | None
    pid: int | None
    slots: int
    busy: int
    started_at: float | None
    queues: list[str]
    seen_at: float
    alive: bool


class MinuteDoc(BaseModel):
    t: int = Field(description="the minute's start, Unix seconds")
    succeeded: int
    failed: int
    cancelled: int
    p50_ms: float | None = Field(description="median time from submit to end of the jobs that ended")
    p95_ms: float | None
    call_p50_ms: float | None = Field(description="median duration of their last attempt")
    call_p95_ms: float | None


class ModelDoc(BaseModel):
    model: str
    jobs: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None


class BatchDoc(BaseModel):
    name: str
    submitted_at: float
    total: int
    succeeded: int
    failed: int
    cancelled: int
    running: int
    deferred: int
    waiting: int
    rate_per_s: float | None
    eta_s: float | None
    cost_usd: float | None
    tokens: int


class FailureDoc(BaseModel):
    job_id: str
    model: str | None
    endpoint: str
    finished_at: float | None
    attempts: int
    error: ErrorDoc | None


class CollectingDoc(BaseModel):
    backend: str
    endpoint: str
    model: str
    jobs: int = Field(description="batch-tier jobs waiting to be sent to this backend for this model")
    since: float | None = Field(description="when the oldest of them joined (Unix s)")


class ProviderBatchDoc(BaseModel):
    id: str | None = Field(description="promptq's id of the provider batch (in its metadata)")
    provider_batch: str | None = Field(description="the provider's id, once created")
    step: str | None = Field(description="sealed, uploaded, creating, created, reading or ended")
    status: str | None = Field(description="the provider's status (validating, in_progress, completed...)")
    backend: str
    endpoint: str
    model: str
    lines: int
    counts: dict[str, Any] | None = Field(description="the provider's request counts: total, completed, failed")
    sealed_at: float | None
    ended_at: float | None
    error: str | None


class BatchTierDoc(BaseModel):
    """``Producer.provider_batches``: the jobs waiting to be sent, and the provider batches."""

    collecting: list[CollectingDoc]
    provider_batches: list[ProviderBatchDoc]


class DashboardDocument(BaseModel):
    """``Producer.overview``: the last 15 minutes' figures come from per-minute roll-ups the workers
    write as jobs end, so every API replica shows the whole fleet."""

    now: float
    queue: QueueDoc
    backends: list[BackendDoc]
    workers: list[WorkerDoc]
    minutes: list[MinuteDoc]
    models: list[ModelDoc]
    batches: list[BatchDoc]
    batch_tier: BatchTierDoc = Field(default_factory=lambda: BatchTierDoc(collecting=[], provider_batches=[]))
    failures: list[FailureDoc]


class BatchItem(BaseModel):
    custom_id: str
    job_id: str
    status: str | None = Field(description="null when the job's document has expired")
    attempts: int | None
    latency_ms: int | None
    error_type: str | None


class BatchPage(BaseModel):
    name: str
    total: int
    offset: int
    items: list[BatchItem]


class Cancelled(BaseModel):
    job_id: str
    cancelled: bool
    message: str
    result: ResultDocument | None


class ErrorBody(BaseModel):
    """Every error: what went wrong, in words."""

    detail: str


class Health(BaseModel):
    ok: bool
    detail: str | None = None
