"""The HTTP API, for web apps in any language: ``uvicorn producer.http:app`` (``pip install promptq[http]``).

- ``POST /v1/jobs``: one job or a list (the arguments of ``Producer.submit`` as JSON); 202 with the
  result document(s), ``job_id`` included.
- ``GET /v1/jobs/{id}``: the result document.
- ``GET /v1/jobs/{id}/events``: Server-Sent Events: ``delta`` and ``restart`` events as the answer
  streams in, then one ``done`` event with the result document. Each event's ``id`` is its stream
  position: a client reconnecting with ``Last-Event-ID`` resumes behind it.
- ``DELETE /v1/jobs/{id}``: cancel (``Producer.cancel``).
- ``POST /v1/jobs/{id}/retry``: run a failed job again (``Producer.retry``); 202 with its document,
  409 when it is not failed or its request is no longer kept.
- ``GET /v1/dashboard``: the fleet at a glance (``Producer.overview``), as the dashboard shows it.
- ``GET /v1/batches/{name}``: a batch's jobs, a page at a time (``offset``, ``limit``), with their status.
- ``GET /healthz``: 200 when Redis answers, else 503. ``GET /``: a page to try a prompt.
  ``GET /dashboard``: the operator's dashboard (its figures come through ``/v1``, with the token).

Settings: the producer's (``REDIS_URL``, ``PROMPTQ_RESULT_TTL_S``, ``PROMPTQ_MAX_PAYLOAD_BYTES``),
``PROMPTQ_API_TOKEN``: when set, every ``/v1`` request needs ``Authorization: Bearer <token>``,
``PROMPTQ_SSE_KEEPALIVE_S`` (15): an events stream sends a comment line when silent that long, and
``PROMPTQ_MAX_BODY_BYTES`` (16 MiB): a larger request body is refused with 413 before it is read.
Every error answers ``{"detail": "..."}``: 400 a bad ``Last-Event-ID``, 401 without the token, 404 an
unknown id, 409 a retry refused, 413 a body over the limit, 422 a bad job (the message names the
problem), 503 Redis away, full (with ``Retry-After``) or unsafe. Like the rest of the producer, it never imports openai.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.cli.batch import manifest_items
from producer.client import Producer
from producer.errors import JobNotFoundError, QueueFullError, QueueUnavailableError, RetryRefusedError
from producer.types import ProducerConfig, StreamEvent
from promptq_core import tracing
from promptq_core.contract import BATCH_NAME_RE, FAIRNESS_KEY_MAX_BYTES, JobResult, dumps
from promptq_core.env import env_float, env_int
from promptq_core.validation import JOB_ID_RE, InvalidJobError

__all__ = ["app", "create_app"]

TOKEN_ENV = "PROMPTQ_API_TOKEN"
KEEPALIVE_ENV = "PROMPTQ_SSE_KEEPALIVE_S"
MAX_BODY_ENV = "PROMPTQ_MAX_BODY_BYTES"
DEFAULT_KEEPALIVE_S = 15.0
"""An events stream with nothing to send sends an SSE comment this often."""
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_JOBS_PER_REQUEST = 10_000
EVENT_ID_RE = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")


# -- what goes in and comes out ---------------------------------------------------------------------
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
    model: str | None = Field(None, min_length=1)
    job_id: str | None = Field(
        None,
        pattern=f"^{JOB_ID_RE.pattern}$",
        description="your own id; submitting it again enqueues nothing new",
    )
    metadata: dict[str, Any] | None = None
    stream: bool = False
    priority: int | None = Field(None, ge=0, le=9, strict=True, description="0 runs first, 9 last (default 5)")
    fairness_key: str | None = Field(
        None,
        min_length=1,
        max_length=FAIRNESS_KEY_MAX_BYTES,
        description="jobs under different keys take turns for the workers at one priority (default: a shared key)",
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
    """The result document (``promptq:result:{job_id}``), as ``GET`` and the ``done`` event give it."""

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
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


class QueueDoc(BaseModel):
    totals: QueueTotals
    rows: list[QueueRow]


class WorkerDoc(BaseModel):
    id: str
    host: str | None
    pid: int | None
    slots: int
    busy: int
    started_at: float | None
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


class DashboardDocument(BaseModel):
    """``Producer.overview``: the last 15 minutes' figures come from per-minute roll-ups the workers
    write as jobs end, so every API replica shows the whole fleet."""

    now: float
    queue: QueueDoc
    workers: list[WorkerDoc]
    minutes: list[MinuteDoc]
    models: list[ModelDoc]
    batches: list[BatchDoc]
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


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "a body that cannot be read as JSON, or a Last-Event-ID that is not an event id",
        401: "missing or wrong bearer token",
        404: "no such job or batch (never submitted, or expired)",
        409: "the job is not failed, or its request is no longer kept",
        413: f"request body over {MAX_BODY_ENV}",
        422: "a bad job or query parameter; the message names the problem",
        503: "Redis away, out of memory (with Retry-After) or evicting keys",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


# -- the app ------------------------------------------------------------------------------------
def create_app(config: ProducerConfig | None = None, token: str | None = None) -> FastAPI:
    """The API app; ``config`` and ``token`` default to the environment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup("promptq-api")
        try:
            async with Producer(config=config or ProducerConfig.from_env()) as producer:
                app.state.producer = producer
                yield
        finally:
            tracing.shutdown()

    app = FastAPI(title="promptq", version="0.1.0", summary="LLM prompt jobs over Redis", lifespan=lifespan)
    app.state.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
    app.state.keepalive_s = env_float(os.environ, KEEPALIVE_ENV, DEFAULT_KEEPALIVE_S)
    app.add_middleware(BodyLimit, max_bytes=env_int(os.environ, MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES))
    if tracing.enabled() and importlib.util.find_spec("fastapi.telemetry") is None:
        app.add_middleware(Traced)  # newer FastAPI makes these spans itself
    app.add_exception_handler(QueueUnavailableError, _error_handler(503))
    app.add_exception_handler(QueueFullError, _error_handler(503, {"Retry-After": str(QueueFullError.retry_after_s)}))
    app.add_exception_handler(JobNotFoundError, _error_handler(404))
    app.add_exception_handler(InvalidJobError, _error_handler(422))
    app.add_exception_handler(RetryRefusedError, _error_handler(409))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(jobs)
    app.include_router(fleet)
    app.include_router(site)
    return app


class BodyLimit:
    """Refuses a request body over ``max_bytes`` with 413: by its Content-Length before reading it,
    or, without one, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(send)
            return
        seen, refused, started = 0, False, False

        async def counting() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                if not started:
                    await self._too_large(send)
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting, sending)

    async def _too_large(self, send: Send) -> None:
        body = dumps({"detail": f"the request body is over {self.max_bytes} bytes ({MAX_BODY_ENV})"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class Traced:
    """A SERVER span for each request (traces on, with a FastAPI that does not make them itself),
    child of the caller's ``traceparent``: the jobs a request submits carry its context on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.span(f"{method} {scope['path']}", "SERVER", carrier=headers, **attributes) as span:

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                await send(message)

            await self.app(scope, receive, sending)


def _error_handler(status: int, headers: dict[str, str] | None = None) -> Any:
    async def handle(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=status, headers=headers)

    return handle


async def _validation_error(_: Request, e: Exception) -> JSONResponse:
    """FastAPI's own checks answer in the one error shape: the first problem, in words."""
    problems = e.errors() if isinstance(e, RequestValidationError) else []
    words = []
    for problem in problems[:3]:
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        words.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
    return JSONResponse({"detail": "; ".join(words) or "invalid request"}, status_code=422)


async def _http_error(_: Request, e: Exception) -> JSONResponse:
    status = e.status_code if isinstance(e, StarletteHTTPException) else 500
    detail = e.detail if isinstance(e, StarletteHTTPException) else "error"
    headers = getattr(e, "headers", None)
    return JSONResponse({"detail": str(detail)}, status_code=status, headers=headers)


bearer = HTTPBearer(auto_error=False, description=f"the token in {TOKEN_ENV}, when it is set")


async def authorised(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """With ``PROMPTQ_API_TOKEN`` set, ``Authorization: Bearer <token>`` (compared in constant time)."""
    token: str | None = request.app.state.token
    if token is None:
        return
    given = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else ""
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


ProducerDep = Annotated[Producer, Depends(producer_of)]
jobs = APIRouter(prefix="/v1/jobs", dependencies=[Depends(authorised)])
fleet = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])
site = APIRouter()


@jobs.post(
    "",
    status_code=202,
    summary="Submit one job or a list of jobs",
    response_model=None,
    responses={
        202: {"model": ResultDocument | list[ResultDocument], "description": "the result document(s), queued"},
        **_errors(400, 401, 413, 422, 503),
    },
)
async def submit(
    body: JobRequest | Annotated[list[JobRequest], Field(min_length=1, max_length=MAX_JOBS_PER_REQUEST)],
    producer: ProducerDep,
) -> Any:
    if isinstance(body, list):
        if not 0 < len(body) <= MAX_JOBS_PER_REQUEST:
            raise InvalidJobError(f"a list of jobs must hold 1 to {MAX_JOBS_PER_REQUEST}")
        ids = await producer.submit_many([_arguments(j) for j in body])
        docs = await producer.get_many(ids)  # every document in one read
        return [_doc(d, i) for i, d in zip(ids, docs, strict=True)]
    job_id = await producer.submit(**_arguments(body))
    return _doc(await producer.get(job_id), job_id)


@jobs.get(
    "/{job_id}",
    summary="The job's result document",
    response_model=None,
    responses={200: {"model": ResultDocument, "description": "the result document"}, **_errors(401, 404, 503)},
)
async def get(job_id: str, producer: ProducerDep) -> Any:
    return _doc(await producer.get(job_id), job_id)


@jobs.get(
    "/{job_id}/events",
    summary="The job's events as Server-Sent Events (delta, restart, done)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the events, then the stream ends"},
        **_errors(400, 401, 404, 503),
    },
)
async def events(
    request: Request,
    job_id: str,
    producer: ProducerDep,
    last_event_id: Annotated[
        str | None, Header(description="resume behind this event (its id); 0 or absent: from the start")
    ] = None,
) -> StreamingResponse:
    after = last_event_id or "0"
    if not EVENT_ID_RE.fullmatch(after):
        raise HTTPException(400, f"Last-Event-ID {last_event_id!r} is not an event id (like 1795636687650-0)")
    _doc(await producer.get(job_id), job_id)  # 404 before the stream starts
    keepalive_s: float = request.app.state.keepalive_s

    async def sse() -> AsyncIterator[str]:
        async for event in _with_keepalive(producer.stream(job_id, after=after), keepalive_s):
            yield ": keep-alive\n\n" if event is None else _sse(event)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)


@jobs.delete("/{job_id}", summary="Cancel a queued or running job", responses=_errors(401, 404, 503))
async def cancel(job_id: str, producer: ProducerDep) -> Cancelled:
    outcome = await producer.cancel(job_id)
    if outcome.result is None and not outcome.cancelled:
        raise HTTPException(404, outcome.message)
    doc = ResultDocument.model_validate(outcome.result.to_doc()) if outcome.result else None
    return Cancelled(job_id=job_id, cancelled=outcome.cancelled, message=outcome.message, result=doc)


@jobs.post(
    "/{job_id}/retry",
    status_code=202,
    summary="Run a failed job again",
    response_model=None,
    responses={
        202: {"model": ResultDocument, "description": "the result document, queued again"},
        **_errors(401, 404, 409, 503),
    },
)
async def retry(job_id: str, producer: ProducerDep) -> Any:
    if await producer.get(job_id) is None:
        raise HTTPException(404, f"no job {job_id!r} (never submitted, or its result expired)")
    await producer.retry(job_id)
    return _doc(await producer.get(job_id), job_id)


@fleet.get(
    "/dashboard",
    summary="The fleet at a glance: queue, workers, the last 15 minutes, batches, failures",
    responses=_errors(401, 503),
)
async def dashboard(producer: ProducerDep) -> DashboardDocument:
    return DashboardDocument.model_validate((await producer.overview()).to_doc())


@fleet.get(
    "/batches/{name}",
    summary="A batch's jobs, a page at a time",
    responses=_errors(401, 404, 422, 503),
)
async def batch(
    name: str,
    producer: ProducerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BatchPage:
    raw = await producer.manifest(name) if BATCH_NAME_RE.fullmatch(name) else None
    if raw is None:
        raise HTTPException(404, f"no batch {name!r} (never submitted, or expired)")
    items = manifest_items(raw, name)
    page = items[offset : offset + limit]
    results = await producer.get_many([job_id for _, job_id in page])
    return BatchPage(
        name=name,
        total=len(items),
        offset=offset,
        items=[_batch_item(custom_id, job_id, r) for (custom_id, job_id), r in zip(page, results, strict=True)],
    )


def _batch_item(custom_id: str, job_id: str, result: JobResult | None) -> BatchItem:
    return BatchItem(
        custom_id=custom_id,
        job_id=job_id,
        status=result.status if result else None,
        attempts=result.attempts if result else None,
        latency_ms=result.latency_ms if result else None,
        error_type=result.error.type if result and result.error else None,
    )


@site.get(
    "/healthz",
    summary="200 when Redis answers",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health, "description": "Redis does not answer"}},
)
async def healthz(producer: ProducerDep) -> Any:
    try:
        await producer.ping()
    except Exception as e:  # any failure to reach Redis
        cause = e.__cause__ or e  # redis-py's error, which the producer's names
        return JSONResponse({"ok": False, "detail": f"Redis unavailable: {type(cause).__name__}"}, status_code=503)
    return {"ok": True}


@site.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> str:
    return resources.files("producer.http").joinpath("static/index.html").read_text()


@site.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> str:
    return resources.files("producer.http").joinpath("static/dashboard.html").read_text()


def _arguments(job: JobRequest) -> dict[str, Any]:
    """The submit arguments as sent (fields left out stay out, so the producer's checks see them)."""
    return job.model_dump(exclude_unset=True)


def _doc(result: Any, job_id: str) -> dict[str, Any]:
    if result is None:
        raise HTTPException(404, f"no job {job_id!r} (never submitted, or its result expired)")
    doc: dict[str, Any] = result.to_doc()
    return doc


async def _with_keepalive(events: AsyncIterator[StreamEvent], every_s: float) -> AsyncIterator[StreamEvent | None]:
    """The events, with a None whenever ``every_s`` passes without one (a job waiting in the queue
    sends nothing for minutes; proxies close a connection that stays silent)."""
    pending: asyncio.Future[StreamEvent] = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield event
            pending = asyncio.ensure_future(anext(events))
    finally:
        pending.cancel()


def _sse(event: StreamEvent) -> str:
    if event.type == "delta":
        data = dumps({"text": event.text})
    elif event.type == "restart":
        data = dumps({"attempt": event.attempt})
    else:
        data = dumps(event.result.to_doc() if event.result else None)
    head = f"id: {event.id}\n" if event.id and event.id != "0" else ""
    return f"{head}event: {event.type}\ndata: {data}\n\n"


app = create_app()
"""The app ``uvicorn producer.http:app`` serves, configured from the environment."""
