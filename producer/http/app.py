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

Who may call it is ``producer.http.access``'s: the operator (``PROMPTQ_API_TOKEN``; without one,
loopback callers, or everyone with ``PROMPTQ_API_OPEN=1``) or a tenant with its key (``promptq keys``),
who reaches its own jobs only; hosts outside ``PROMPTQ_API_HOSTS`` are refused. Settings besides: the
producer's (``REDIS_URL``, ``PROMPTQ_RESULT_TTL_S``, ``PROMPTQ_MAX_PAYLOAD_BYTES``),
``PROMPTQ_MAX_BODY_BYTES`` (twice the payload limit: a larger body is refused with 413 before it is
read) and the events streams' ``PROMPTQ_SSE_KEEPALIVE_S``, ``PROMPTQ_SSE_MAX_S``,
``PROMPTQ_SSE_MAX_STREAMS`` and ``PROMPTQ_SSE_MAX_PER_TENANT``. Every error answers ``{"detail": "..."}``
(the statuses are in the schema). Like the rest of the producer, it never imports openai.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from producer.client import Producer
from producer.http.access import Access, Guarded
from producer.http.middleware import MAX_BODY_ENV, BodyLimit, Traced, answer_errors
from producer.http.routes import KEEPALIVE_ENV, SharedOverview, StreamLimits, fleet, jobs, site
from producer.types import ProducerConfig
from promptq_core import tracing
from promptq_core.contract import DEFAULT_MAX_PAYLOAD_BYTES
from promptq_core.env import env_float, env_int

__all__ = ["app", "create_app"]

DEFAULT_KEEPALIVE_S = 15.0
"""An events stream with nothing to send sends an SSE comment this often."""


def create_app(config: ProducerConfig | None = None, token: str | None = None) -> FastAPI:
    """The API app; ``config`` and ``token`` default to the environment."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup("promptq-api")
        say = logging.getLogger("uvicorn.error")
        (say.warning if access.open and access.token is None else say.info)("promptq API: %s", access.start_up_line())
        try:
            async with Producer(config=config or ProducerConfig.from_env()) as producer:
                app.state.producer = producer
                yield
        finally:
            tracing.shutdown()

    # No /docs or /redoc: they load scripts from a CDN, on the origin where the dashboard keeps its
    # token (the schema is at /openapi.json, and in docs/openapi.json).
    app = FastAPI(
        title="promptq",
        version="0.1.0",
        summary="LLM prompt jobs over Redis",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    access = Access.from_env(token=token)
    app.state.access = access
    app.state.overview = SharedOverview(lambda: app.state.producer)
    app.state.streams = StreamLimits(
        keepalive_s=env_float(os.environ, KEEPALIVE_ENV, DEFAULT_KEEPALIVE_S),
        max_s=env_float(os.environ, "PROMPTQ_SSE_MAX_S", 300.0),
        max_open=env_int(os.environ, "PROMPTQ_SSE_MAX_STREAMS", 10_000),
        max_per_tenant=env_int(os.environ, "PROMPTQ_SSE_MAX_PER_TENANT", 100),
    )
    payload_limit = env_int(os.environ, "PROMPTQ_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)
    app.add_middleware(BodyLimit, max_bytes=env_int(os.environ, MAX_BODY_ENV, 2 * payload_limit))
    if tracing.enabled() and importlib.util.find_spec("fastapi.telemetry") is None:
        app.add_middleware(Traced)  # newer FastAPI makes these spans itself
    app.add_middleware(Guarded, access=access)  # (added last: it runs first)
    answer_errors(app)
    app.include_router(jobs)
    app.include_router(fleet)
    app.include_router(site)
    return app


app = create_app()
"""The app ``uvicorn producer.http:app`` serves, configured from the environment."""
