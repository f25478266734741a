"""The HTTP API's routes: jobs (``/v1/jobs``), the fleet (``/v1/dashboard``, ``/v1/batches``) and the
site (health, the pages), each through the client's public methods (``producer.Producer``), each
for its caller (``producer.http.access``): a tenant reaches its own jobs only."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import Field

from producer.cli.batch import manifest_items
from producer.client import Producer
from producer.errors import RetryRefusedError
from producer.http.access import Caller, CallerDep, page_policy
from producer.http.middleware import MAX_BODY_ENV
from producer.http.schema import (
    BatchItem,
    BatchPage,
    Cancelled,
    DashboardDocument,
    ErrorBody,
    Health,
    JobRequest,
    ResultDocument,
)
from producer.types import StreamEvent
from promptq_core.contract import BATCH_NAME_RE, QUEUE_NAME_RE, JobResult, dumps
from promptq_core.tenants import Policy, budget_period
from promptq_core.validation import TENANT_RE, InvalidJobError

__all__ = ["KEEPALIVE_ENV", "SharedOverview", "StreamLimits", "fleet", "jobs", "site"]

KEEPALIVE_ENV = "PROMPTQ_SSE_KEEPALIVE_S"
MAX_JOBS_PER_REQUEST = 10_000
EVENT_ID_RE = re.compile(r"0|[0-9]{1,20}-[0-9]{1,20}")
OWNED_EXTRAS = frozenset({"self", "cls", "max_payload_bytes", "trace", "webhook_hosts"})
"""Names a body may not use beside the schema's fields (the submit's own arguments; the trace
context comes from the request's ``traceparent`` header). A tenant's ``tenant`` is its key's."""
PATH_ID_RE = re.compile(r"[A-Za-z0-9_.:@+=~-]{1,200}")
"""A job id in a path: an id a caller chose, or a batch's job (``{batch}:{custom_id}``)."""


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "a body that cannot be read as JSON, or a Last-Event-ID that is not an event id",
        401: "missing or wrong bearer token or key (or a caller from outside loopback without one)",
        403: "a request that changes something without the bearer header or a JSON content type",
        404: "no such job or batch (never submitted, or expired)",
        409: "an id submitted before with another request; or a retry of a job that is not failed",
        429: "a tenant key whose budget for the period is spent (with Retry-After)",
        413: f"request body over {MAX_BODY_ENV}",
        422: "a bad job or query parameter; the message names the problem",
        503: "Redis away, out of memory (with Retry-After) or evicting keys",
    }
    return {status: {"model": ErrorBody, "description": meaning[status]} for status in statuses}


def known_query(request: Request) -> None:
    """A query parameter the route does not take is refused (422), not silently ignored."""
    route = request.scope.get("route")
    taken = {p.alias for p in route.dependant.query_params} if route is not None else set()
    if unknown := sorted(set(request.query_params) - taken):
        raise InvalidJobError(
            f"unknown query parameter {unknown[0][:40]!r} (this route takes {sorted(taken) or 'none'})"
        )


def producer_of(request: Request) -> Producer:
    producer: Producer = request.app.state.producer
    return producer


ProducerDep = Annotated[Producer, Depends(producer_of)]
QueueParam = Annotated[
    str | None,
    Query(pattern=f"^{QUEUE_NAME_RE.pattern}$", description="the named queue (default: the API's PROMPTQ_QUEUE)"),
]
TenantParam = Annotated[
    str | None,
    Query(pattern=f"^{TENANT_RE.pattern}$", description="the operator's: the tenant whose job this is"),
]
JobIdPath = Annotated[str, Path(pattern=f"^{PATH_ID_RE.pattern}$", description="the job's id (as you named it)")]
jobs = APIRouter(prefix="/v1/jobs", dependencies=[Depends(known_query)])
fleet = APIRouter(prefix="/v1", dependencies=[Depends(known_query)])
site = APIRouter()


@jobs.post(
    "",
    status_code=202,
    summary="Submit one job or a list of jobs",
    response_model=None,
    responses={
        202: {
            "model": ResultDocument | list[ResultDocument],
            "description": "the result document(s): queued, or running when handed to an idle worker at once",
        },
        **_errors(400, 401, 403, 409, 413, 422, 429, 503),
    },
)
async def submit(
    body: JobRequest | Annotated[list[JobRequest], Field(min_length=1, max_length=MAX_JOBS_PER_REQUEST)],
    producer: ProducerDep,
    who: CallerDep,
) -> Any:
    if who.policy is not None:
        await _within_budget(who.policy, producer)
    if isinstance(body, list):
        if not 0 < len(body) <= MAX_JOBS_PER_REQUEST:
            raise InvalidJobError(f"a list of jobs must hold 1 to {MAX_JOBS_PER_REQUEST}")
        ids = await producer.submit_many([_arguments(j, who, producer) for j in body])
        queues = [j.queue for j in body]
        docs: dict[tuple[str | None, str], Any] = {}
        for queue in dict.fromkeys(queues):  # every document of a queue in one read
            mine = [i for i, q in zip(ids, queues, strict=True) if q == queue]
            docs.update(zip(((queue, i) for i in mine), await producer.get_many(mine, queue=queue), strict=True))
        return [_doc(docs[q, i], i, who) for i, q in zip(ids, queues, strict=True)]
    job_id = await producer.submit(**_arguments(body, who, producer))
    return _doc(await producer.get(job_id, queue=body.queue), job_id, who)


@jobs.get(
    "/{job_id}",
    summary="The job's result document",
    response_model=None,
    responses={200: {"model": ResultDocument, "description": "the result document"}, **_errors(401, 404, 422, 503)},
)
async def get(
    job_id: JobIdPath, producer: ProducerDep, who: CallerDep, queue: QueueParam = None, tenant: TenantParam = None
) -> Any:
    return _doc(await producer.get(who.job_id(job_id, tenant), queue=queue), job_id, who)


@jobs.get(
    "/{job_id}/events",
    summary="The job's events as Server-Sent Events (delta, restart, done)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the events, then the stream ends"},
        **_errors(400, 401, 404, 422, 429, 503),
    },
)
async def events(
    request: Request,
    job_id: JobIdPath,
    producer: ProducerDep,
    who: CallerDep,
    last_event_id: Annotated[
        str | None, Header(description="resume behind this event (its id); 0 or absent: from the start")
    ] = None,
    queue: QueueParam = None,
    tenant: TenantParam = None,
) -> StreamingResponse:
    after = last_event_id or "0"
    if not EVENT_ID_RE.fullmatch(after):
        raise HTTPException(400, f"Last-Event-ID {after[:40]!a} is not an event id (like 1795636687650-0)")
    stored = who.job_id(job_id, tenant)
    _doc(await producer.get(stored, queue=queue), job_id, who)  # 404 before the stream starts
    limits: StreamLimits = request.app.state.streams
    limits.open(who.tenant)  # (429 or 503 past a cap; given back when the response is done, however)

    async def sse() -> AsyncIterator[str]:
        ends_at = time.monotonic() + limits.max_s  # then it ends: the client resumes with Last-Event-ID
        tick_s = min(limits.keepalive_s, limits.max_s)
        async for event in _with_keepalive(producer.stream(stored, after=after, queue=queue), tick_s):
            if event is not None:
                yield _sse(event, who)
            elif time.monotonic() >= ends_at:
                yield ": the stream's time is up; resume with Last-Event-ID\n\n"
                return
            else:
                yield ": keep-alive\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return _CountedStream(sse(), lambda: limits.closed(who.tenant), media_type="text/event-stream", headers=headers)


@jobs.delete("/{job_id}", summary="Cancel a queued or running job", responses=_errors(401, 403, 404, 422, 503))
async def cancel(
    job_id: JobIdPath, producer: ProducerDep, who: CallerDep, queue: QueueParam = None, tenant: TenantParam = None
) -> Cancelled:
    stored = who.job_id(job_id, tenant)
    outcome = await producer.cancel(stored, queue=queue)
    if outcome.result is None and not outcome.cancelled:
        raise HTTPException(404, f"no job {job_id!r} (never submitted, or its result expired)")
    doc = ResultDocument.model_validate(_doc(outcome.result, job_id, who)) if outcome.result else None
    message = outcome.message.replace(repr(stored), repr(job_id))
    return Cancelled(job_id=job_id, cancelled=outcome.cancelled, message=message, result=doc)


@jobs.post(
    "/{job_id}/retry",
    status_code=202,
    summary="Run a failed job again",
    response_model=None,
    responses={
        202: {"model": ResultDocument, "description": "the result document, queued again"},
        **_errors(401, 403, 404, 409, 422, 503),
    },
)
async def retry(
    job_id: JobIdPath, producer: ProducerDep, who: CallerDep, queue: QueueParam = None, tenant: TenantParam = None
) -> Any:
    if who.policy is not None:
        await _within_budget(who.policy, producer)
    stored = who.job_id(job_id, tenant)
    if await producer.get(stored, queue=queue) is None:
        raise HTTPException(404, f"no job {job_id!r} (never submitted, or its result expired)")
    try:
        await producer.retry(stored, queue=queue)
    except RetryRefusedError as e:
        raise RetryRefusedError(str(e).replace(repr(stored), repr(job_id))) from None
    return _doc(await producer.get(stored, queue=queue), job_id, who)


@fleet.get(
    "/dashboard",
    summary="The fleet at a glance: queue, workers, the last 15 minutes, batches, failures",
    responses=_errors(401, 422, 503),
)
async def dashboard(request: Request, who: CallerDep, queue: QueueParam = None) -> DashboardDocument:
    shared: SharedOverview = request.app.state.overview
    doc = await shared.get(queue)
    return DashboardDocument.model_validate(doc if who.policy is None else _tenant_view(doc, who))


@fleet.get(
    "/batches/{name}",
    summary="A batch's jobs, a page at a time",
    responses=_errors(401, 404, 422, 503),
)
async def batch(
    name: str,
    producer: ProducerDep,
    who: CallerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    queue: QueueParam = None,
) -> BatchPage:
    mine = who.policy is None and BATCH_NAME_RE.fullmatch(name)  # batches are the operator's (promptq submit)
    raw = await producer.manifest(name, queue=queue) if mine else None
    if raw is None:
        raise HTTPException(404, f"no batch {name[:100]!a} (never submitted, or expired)")
    items = manifest_items(raw, name)
    page = items[offset : offset + limit]
    results = await producer.get_many([job_id for _, job_id in page], queue=queue)
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
    except Exception as e:  # any failure to reach Redis (what it was goes to no caller: it may name hosts)
        cause = e.__cause__ or e  # redis-py's error, which the producer's names
        return JSONResponse({"ok": False, "detail": f"Redis unavailable: {type(cause).__name__}"}, status_code=503)
    return {"ok": True}


@site.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return _page("static/index.html")


@site.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    return _page("static/dashboard.html")


def _page(path: str) -> HTMLResponse:
    html = resources.files("producer.http").joinpath(path).read_text()
    return HTMLResponse(html, headers={"Content-Security-Policy": page_policy(html), "Cache-Control": "no-store"})


def _arguments(job: JobRequest, who: Caller, producer: Producer) -> dict[str, Any]:
    """The submit arguments as sent (fields left out stay out, so the producer's checks see them);
    a tenant's, within its policy, under its fairness key and in its namespace of ids."""
    arguments = job.model_dump(exclude_unset=True)
    owned_here = OWNED_EXTRAS if who.policy is None else OWNED_EXTRAS | {"tenant"}
    if owned := sorted(set(job.model_extra or ()) & owned_here):
        raise InvalidJobError(f"{owned[0]} is not a field of a job (promptq sets it)")
    if who.policy is None:
        return arguments
    policy = who.policy
    priority = arguments.get("priority")
    queue = arguments.get("queue") or producer.config.queue
    policy.admit(priority=priority, queue=queue, models=[arguments.get("model"), *(arguments.get("fallbacks") or ())])
    if arguments.get("fairness_key", policy.tenant) != policy.tenant:
        raise InvalidJobError(f"fairness_key is the tenant's ({policy.tenant}) for a tenant key")
    arguments["fairness_key"] = policy.tenant
    arguments["priority"] = policy.default_priority if priority is None else priority
    arguments["tenant"] = policy.tenant
    return arguments


async def _within_budget(policy: Policy, producer: Producer) -> None:
    """429 for a tenant whose spend has reached its budget for the period."""
    if policy.budget_usd is None:
        return
    spent = (await producer.spent(policy.tenant))[policy.budget_period]
    if spent >= policy.budget_usd:
        _, renews_at = budget_period(policy.budget_period, time.time())
        renews = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(renews_at))
        raise HTTPException(
            429,
            f"this key's budget of ${policy.budget_usd:g} a {policy.budget_period} is spent (${spent:.4f}); "
            f"it renews at {renews}",
            headers={"Retry-After": str(max(1, round(renews_at - time.time())))},
        )


def _doc(result: JobResult | None, job_id: str, who: Caller) -> dict[str, Any]:
    """The document as ``who`` reads it: 404 for none, or another tenant's; a tenant's ids its own."""
    seen = None if result is None else who.sees(result.job_id)
    if result is None or seen is None:
        raise HTTPException(404, f"no job {job_id!r} (never submitted, or its result expired)")
    doc: dict[str, Any] = result.to_doc()
    doc["job_id"] = seen
    return doc


def _tenant_view(doc: dict[str, Any], who: Caller) -> dict[str, Any]:
    """The dashboard for a tenant: its own rows of the queue and its own failures; the fleet's
    figures (workers, backends, minutes, models, batches, the Batch tier) are the operator's."""
    rows = [row for row in doc["queue"]["rows"] if row["key"] == who.tenant]
    totals = {name: sum(row[name] for row in rows) for name in ("ready", "running", "deferred")}
    failures = []
    for failure in doc["failures"]:
        if (own := who.sees(failure["job_id"])) is not None:
            failures.append({**failure, "job_id": own})
    queue = {**doc["queue"], "rows": rows, "totals": {**totals, "failed": len(failures), "waiting_for_backend": 0}}
    return {
        **doc,
        "queue": queue,
        "backends": [],
        "workers": [],
        "minutes": [],
        "models": [],
        "batches": [],
        "batch_tier": {"collecting": [], "provider_batches": []},
        "failures": failures,
    }


class SharedOverview:
    """``Producer.overview`` computed once every ``every_s`` per queue, however many callers ask
    (those asking meanwhile wait for the same computation)."""

    def __init__(self, producer: Callable[[], Producer], every_s: float = 1.0) -> None:
        self.producer, self.every_s = producer, every_s
        self._made: dict[str | None, tuple[float, asyncio.Task[dict[str, Any]]]] = {}

    async def get(self, queue: str | None) -> dict[str, Any]:
        made = self._made.get(queue)
        now = time.monotonic()
        if made is None or now - made[0] >= self.every_s or (made[1].done() and made[1].exception()):
            if len(self._made) > 1_000:
                self._made.clear()
            task = asyncio.ensure_future(self._compute(queue))
            self._made[queue] = made = (now, task)
        return dict(await asyncio.shield(made[1]))

    async def _compute(self, queue: str | None) -> dict[str, Any]:
        producer = self.producer()
        doc: dict[str, Any] = (await producer.overview(queue=queue)).to_doc()
        doc["batch_tier"] = await producer.provider_batches(queue=queue)
        return doc


class _CountedStream(StreamingResponse):
    """An events stream that gives its place back when the response is over, however it ended (a
    client gone before the first event included)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class StreamLimits:
    """The events streams one API process keeps open: at most ``max_open`` in all (503 past it),
    ``max_per_tenant`` per tenant (429), each for ``max_s`` at most."""

    def __init__(self, *, keepalive_s: float, max_s: float, max_open: int, max_per_tenant: int) -> None:
        self.keepalive_s, self.max_s = keepalive_s, max_s
        self.max_open, self.max_per_tenant = max_open, max_per_tenant
        self.total = 0
        self.per_tenant: dict[str, int] = {}

    def open(self, tenant: str | None) -> None:
        if self.total >= self.max_open:
            raise HTTPException(503, "too many open event streams here; try again shortly", {"Retry-After": "5"})
        if tenant is not None:
            if self.per_tenant.get(tenant, 0) >= self.max_per_tenant:
                raise HTTPException(429, f"this key has {self.max_per_tenant} event streams open, its most")
            self.per_tenant[tenant] = self.per_tenant.get(tenant, 0) + 1
        self.total += 1

    def closed(self, tenant: str | None) -> None:
        self.total -= 1
        if tenant is not None and (left := self.per_tenant.get(tenant, 0) - 1) > 0:
            self.per_tenant[tenant] = left
        elif tenant is not None:
            self.per_tenant.pop(tenant, None)


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
        await asyncio.wait({pending}, timeout=1.0)  # (its outcome is of no interest now)
        with contextlib.suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]  # (its watch let go now, not when collected)


def _sse(event: StreamEvent, who: Caller) -> str:
    if event.type == "delta":
        data = dumps({"text": event.text})
    elif event.type == "restart":
        data = dumps({"attempt": event.attempt})
    elif event.result is None:
        data = "null"
    else:
        data = dumps({**event.result.to_doc(), "job_id": who.sees(event.result.job_id)})
    head = f"id: {event.id}\n" if event.id and event.id != "0" else ""
    return f"{head}event: {event.type}\ndata: {data}\n\n"
