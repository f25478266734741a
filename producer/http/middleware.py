"""What wraps every request of the HTTP API: the body limit (413 before a large body is read), a
SERVER span per request where FastAPI does not make one, and the one error shape ``{"detail"}``
for every error, promptq's and FastAPI's."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.errors import (
    EvictionPolicyError,
    JobConflictError,
    JobNotFoundError,
    NotReplicatedError,
    QueueFullError,
    QueueUnavailableError,
    RetryRefusedError,
)
from promptq_core import tracing
from promptq_core.contract import dumps
from promptq_core.validation import InvalidJobError

__all__ = ["MAX_BODY_ENV", "BodyLimit", "Traced", "answer_errors"]

MAX_BODY_ENV = "PROMPTQ_MAX_BODY_BYTES"
"""Default: twice ``PROMPTQ_MAX_PAYLOAD_BYTES`` (one job at the payload limit, with room for JSON's escapes)."""


def answer_errors(app: FastAPI) -> None:
    """Every error in the one shape ``{"detail": "..."}``, with its status."""
    app.add_exception_handler(QueueUnavailableError, _unavailable)
    app.add_exception_handler(JobNotFoundError, _error_handler(404))
    app.add_exception_handler(InvalidJobError, _error_handler(422))
    app.add_exception_handler(RetryRefusedError, _error_handler(409))
    app.add_exception_handler(JobConflictError, _error_handler(409))
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


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


UNAVAILABLE = {
    QueueFullError: "the queue is full for a moment (Redis is out of memory): nothing was written; try again shortly",
    NotReplicatedError: "the write was not confirmed by enough replicas in time; sending it again is safe",
    EvictionPolicyError: "the queue refuses writes: its Redis may evict keys (for the operator to fix)",
}
log = logging.getLogger("uvicorn.error")


async def _unavailable(_: Request, e: Exception) -> JSONResponse:
    """Redis away or refusing: the caller learns that, in general words (the full message, which
    names the host, goes to the API's log)."""
    log.warning("promptq API: %s", e)
    detail = next((text for kind, text in UNAVAILABLE.items() if isinstance(e, kind)), None)
    headers = {"Retry-After": str(QueueFullError.retry_after_s)}
    return JSONResponse({"detail": detail or "the queue is unavailable for a moment; try again shortly"}, 503, headers)


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
