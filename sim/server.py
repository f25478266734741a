"""An OpenAI-compatible HTTP server for the demo, the tests and the benchmarks.

HTTP/1.1 with keep-alive on plain asyncio streams (no framework, so faults such as a reset
connection or a hang are exact). Routes:

- ``POST /v1/chat/completions`` and ``POST /v1/responses`` (plain and ``stream: true``, with
  ``usage``), ``POST /v1/embeddings`` (floats or base64; ``sim.endpoints``), ``GET /v1/models``;
- the Files and Batch API (``sim.batches``): ``POST /v1/files``, ``GET /v1/files/{id}[/content]``,
  ``POST /v1/batches``, ``GET /v1/batches[/{id}]``, ``POST /v1/batches/{id}/cancel``;
- ``GET /_sim/stats`` (requests, completions, in flight, peak in flight, statuses, faults),
  ``POST /_sim/reset`` (zero the counters), ``POST /_sim/config`` (change knobs, JSON), ``GET /healthz``;
- a webhook receiver for tests: ``POST /_sim/hooks/...`` (kept, answered 204), ``GET /_sim/hooks``.

An outage (``outage`` in the knobs) answers every API request 503 or 529 at once, or closes the port
and every connection for ``outage_s`` (connection refused), then reopens it on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import itertools
import json
import math
import random
import re
import time
from typing import Any

from sim import endpoints
from sim.batches import BatchStore, multipart
from sim.behaviour import Bucket, SimConfig, SimStats, Window, chance
from sim.endpoints import Answer, BadRequest

__all__ = ["Simulator"]

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}
MAX_BODY_BYTES = 64 * 1024 * 1024


AZURE_PATH_RE = re.compile(r"^/openai/deployments/([^/]+)(/chat/completions|/embeddings)$")
"""Azure OpenAI's form of an endpoint: the deployment in the path (``?api-version=`` in the query)."""


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, query: str = "") -> None:
        self.method, self.path, self.headers, self.body, self.query = method, path, headers, body, query
        self.deployment: str | None = None
        if azure := AZURE_PATH_RE.match(path):
            self.deployment, self.path = azure.group(1), "/v1" + azure.group(2)

    def authorized(self, key: str) -> bool:
        """The request carries ``key``: as a bearer token (OpenAI), or in ``api-key`` (Azure)."""
        return self.headers.get("authorization") == f"Bearer {key}" or self.headers.get("api-key") == key

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > MAX_BODY_BYTES:
        return None
    body = await reader.readexactly(length) if length else b""
    target, _, query = path.partition("?")
    return Request(method, target, headers, body, query)


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stats = SimStats()
        self.rng = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._buckets: dict[str, Bucket | Window] = {}
        """The rate limits in force: ``requests`` and ``tokens``, as configured."""
        self._server: asyncio.Server | None = None
        self._where: tuple[str, int] = ("127.0.0.1", 0)
        self._writers: set[asyncio.StreamWriter] = set()
        self._outage_end: asyncio.Task[None] | None = None
        self.batch_store = BatchStore(self.config)
        self.calls: list[list[Any]] = []
        """Each API request: [arrival (Unix s), last user message (or first input), status or 0 if unanswered]."""
        self.hooks: list[dict[str, Any]] = []
        """Webhook deliveries received at ``/_sim/hooks/...`` (a receiver for tests)."""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; return the port (useful with ``port=0``)."""
        self._server = await asyncio.start_server(self._serve, host, port, backlog=4096, reuse_address=True)
        self._where = (host, int(self._server.sockets[0].getsockname()[1]))
        return self._where[1]

    async def serve_forever(self) -> None:
        """Serve until cancelled (the listening socket serves by itself, and an outage replaces it)."""
        assert self._server is not None
        await asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        if self._outage_end is not None:
            self._outage_end.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while (request := await read_request(reader)) is not None:
                if not await self._dispatch(request, reader, writer) or not request.keep_alive:
                    break
        except (ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def outage_changed(self) -> None:
        """Start (or end) the outage the knobs now describe (after a change of them, or at start)."""
        if self._outage_end is not None:
            self._outage_end.cancel()
            self._outage_end = None
        if self.config.outage == "refuse":
            self._outage_end = asyncio.create_task(self._refuse(self.config.outage_s))
        elif self.config.outage and self.config.outage_s > 0:
            self._outage_end = asyncio.create_task(self._end_outage_after(self.config.outage_s))

    async def _end_outage_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.config.outage = ""

    async def _refuse(self, seconds: float) -> None:
        """Close the port and every connection for ``seconds``, then listen again on the same port."""
        await asyncio.sleep(0.05)  # the answer to the request that asked for it goes first
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.sleep(seconds)
        host, port = self._where
        while True:  # the port may be a client connection's local end for a moment: try again
            try:
                self._server = await asyncio.start_server(self._serve, host, port, backlog=4096, reuse_address=True)
                break
            except OSError:
                await asyncio.sleep(0.1)
        self.config.outage = ""

    def _log_call(self, prompt: str) -> None:
        call: list[Any] = [round(time.time(), 4), prompt, 0]
        if len(self.calls) < MAX_LOGGED_CALLS:
            self.calls.append(call)
        _current_call.set(call)

    def _count_headers(self, req: Request) -> None:
        """Count the request's own ``x-`` headers (not the openai client's ``x-stainless-*``)."""
        for name, value in req.headers.items():
            if name.startswith("x-") and not name.startswith("x-stainless"):
                key = f"{name}: {value[:100]}"
                if key in self.stats.headers or len(self.stats.headers) < 100:  # (a hundred kinds at most)
                    self.stats.count(self.stats.headers, key)

    async def _dispatch(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        route = (req.method, req.path)
        if req.method == "POST" and req.path in endpoints.ENDPOINTS:
            self.stats.requests += 1
            if req.deployment is not None:
                self.stats.count(self.stats.deployments, f"{req.deployment} {req.query}")
            self._count_headers(req)
            self.stats.in_flight += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
            try:
                return await self._api_call(req, reader, writer)
            finally:
                self.stats.in_flight -= 1
        if await self._side_route(req, writer):
            return True
        # the routes below are not counted in the statistics
        if route == ("GET", "/v1/models"):
            names = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "text-embedding-3-large")
            models = [{"id": m, "object": "model", "owned_by": "promptq-sim"} for m in names]
            await self._json(writer, 200, {"object": "list", "data": models}, counted=False)
        elif route == ("GET", "/_sim/stats"):
            self.stats.batch_lines = self.batch_store.lines
            await self._json(writer, 200, dataclasses.asdict(self.stats), counted=False)
        elif route == ("GET", "/_sim/calls"):
            calls = [{"t": t, "prompt": prompt, "status": status} for t, prompt, status in self.calls]
            await self._json(writer, 200, {"calls": calls}, counted=False)
        elif route == ("POST", "/_sim/reset"):
            self.stats = SimStats()
            self.batch_store = BatchStore(self.config)
            self.calls = []
            self.hooks = []
            await self._json(writer, 200, dataclasses.asdict(self.stats), counted=False)
        elif route == ("POST", "/_sim/config"):
            try:
                changes = json.loads(req.body or b"{}")
                self.config.update(changes)
            except (ValueError, TypeError) as e:
                await self._json(writer, 400, {"error": str(e)}, counted=False)
                return True
            self.rng = random.Random(self.config.seed)
            self._buckets = {}
            await self._json(writer, 200, dataclasses.asdict(self.config), counted=False)
            if {"outage", "outage_s"} & set(changes):
                self.outage_changed()
        elif route == ("GET", "/healthz"):
            await self._json(writer, 200, {"ok": True}, counted=False)
        else:
            await self._error(writer, 404, f"no route {req.method} {req.path}", "invalid_request_error")
        return True

    async def _side_route(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """The Files and Batch API and the webhook receiver (not counted as API calls); False: not theirs."""
        if req.path.startswith(("/v1/files", "/v1/batches")):
            await self._batch_api(req, writer)
        elif req.path.startswith("/_sim/hooks"):
            await self._hooks(req, writer)
        else:
            return False
        return True

    async def _hooks(self, req: Request, writer: asyncio.StreamWriter) -> None:
        """A webhook receiver: ``POST /_sim/hooks/...`` keeps the delivery (its ``webhook-*`` headers
        and body) and answers 204 (503 to the first ``hook_fail_first``); ``GET /_sim/hooks`` lists them."""
        if req.method == "GET":
            await self._json(writer, 200, {"hooks": self.hooks}, counted=False)
            return
        status = 503 if len(self.hooks) < self.config.hook_fail_first else 204
        headers = {k: v for k, v in req.headers.items() if k.startswith("webhook-")}
        self.hooks.append({"path": req.path, "headers": headers, "body": req.body.decode(), "answered": status})
        await self._send(writer, status, b"", "text/plain", counted=False)

    async def _batch_api(self, req: Request, writer: asyncio.StreamWriter) -> None:
        """The Files and Batch API (``sim.batches``)."""
        store = self.batch_store
        if self.config.require_api_key and not req.authorized(self.config.require_api_key):
            await self._error(writer, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return
        parts = req.path.strip("/").split("/")  # v1, files|batches, id?, action?
        kind, item, action = parts[1], (parts[2] if len(parts) > 2 else None), (parts[3] if len(parts) > 3 else None)
        try:
            if kind == "files" and req.method == "POST" and item is None:
                form = multipart(req.body, req.headers.get("content-type", ""))
                filename, content = form.get("file", (None, b""))
                purpose = form.get("purpose", (None, b""))[1].decode()
                if purpose != "batch" or not content:
                    raise ValueError("a file needs purpose batch and content")
                self.stats.files += 1
                upload = store.upload(filename or "upload.jsonl", purpose, content)
                await self._hang("upload")
                await self._json(writer, 200, upload.to_doc())
            elif kind == "files" and req.method == "GET" and item in store.files:
                upload = store.files[item]
                if action == "content" and self.config.batch_hang == "content":
                    size = len(upload.content)
                    head = (
                        f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
                    )
                    writer.write(head.encode() + upload.content[: size // 2])
                    await writer.drain()
                    await self._hang("content")
                elif action == "content":
                    await self._send(writer, 200, upload.content, "application/octet-stream")
                else:
                    await self._json(writer, 200, upload.to_doc())
            elif kind == "batches" and req.method == "POST" and item is None:
                batch = store.create(json.loads(req.body or b"{}"))
                self.stats.batches += 1
                await self._hang("create")
                await self._json(writer, 200, batch)
            elif kind == "batches" and req.method == "GET" and item is None:
                params = dict(p.split("=", 1) for p in req.query.split("&") if "=" in p)
                await self._json(writer, 200, store.listing(int(params.get("limit", "20")), params.get("after")))
            elif (
                kind == "batches"
                and item in store.batches
                and (req.method, action) in (("GET", None), ("POST", "cancel"))
            ):
                await self._json(writer, 200, store.cancel(item) if action == "cancel" else store.batches[item])
            else:
                await self._error(writer, 404, f"no {kind} {item!r}", "invalid_request_error")
        except (ValueError, TypeError) as e:
            await self._error(writer, 400, str(e), "invalid_request_error")

    async def _hang(self, step: str) -> None:
        """``batch_hang``: this step is done, its answer never comes (an hour, or until the client goes)."""
        if self.config.batch_hang == step:
            await asyncio.sleep(3600)

    async def _api_call(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request to an API endpoint: its limits and faults, then its answer."""
        cfg = self.config
        answer: Answer | BadRequest
        try:
            answer = endpoints.parse(req.path, req.body, cfg.reply)  # once: the TPM limit prices it, the reply sends it
        except BadRequest as e:
            answer = e
        self._log_call(answer.prompt if isinstance(answer, Answer) else "")
        if isinstance(answer, Answer):
            self.stats.count(self.stats.models, str(answer.body["model"]))
            self.stats.count(self.stats.service_tiers, str(answer.body.get("service_tier") or "default"))
        if await self._refused(req, answer, writer) or isinstance(answer, BadRequest):
            return True
        costs = {"requests": 1, "tokens": answer.token_cost if cfg.tpm else 0}
        if (limited := self._rate_limited(costs)) is not None:
            kind, wait_s = limited
            self.stats.count(self.stats.faults, f"{kind}_limited")
            await self._error(
                writer,
                429,
                f"Rate limit reached for {kind}",
                kind,
                "rate_limit_exceeded",
                self._limit_headers() | _retry_headers(kind, wait_s),
            )
            return True
        if chance(self.rng, cfg.reset_rate):
            self.stats.count(self.stats.faults, "reset")
            return False
        if chance(self.rng, cfg.hang_rate):
            self.stats.count(self.stats.faults, "hang")
            with contextlib.suppress(ConnectionError):
                await reader.read()  # until the client gives up and closes
            return False
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000)
        if chance(self.rng, cfg.error_rate):
            status = self.rng.choice(cfg.error_statuses)
            self.stats.count(self.stats.faults, f"error_{status}")
            headers = {}
            if cfg.retry_after_ms is not None:
                headers = {
                    "retry-after-ms": str(cfg.retry_after_ms),
                    "retry-after": str(math.ceil(cfg.retry_after_ms / 1000)),
                }
            type_, code = _error_kind(status, cfg.error_code)
            await self._error(writer, status, f"simulated error {status}", type_, code, headers)
            return True
        if chance(self.rng, cfg.malformed_rate):
            self.stats.count(self.stats.faults, "malformed")
            await self._send(writer, 200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
            return True
        self.stats.completions += 1
        if answer.streamed:
            return await self._stream(writer, answer)
        await self._json(writer, 200, endpoints.plain_body(answer, next(self._ids)), self._limit_headers())
        return True

    async def _refused(self, req: Request, answer: Answer | BadRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer an API request the server refuses before any work (an outage, a wrong key, a bad
        body); False when it goes on."""
        cfg = self.config
        if cfg.outage in ("503", "529"):
            self.stats.count(self.stats.faults, f"outage_{cfg.outage}")
            await self._error(writer, int(cfg.outage), "the service is unavailable (simulated outage)", "server_error")
        elif cfg.require_api_key and not req.authorized(cfg.require_api_key):
            await self._error(writer, 401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        elif isinstance(answer, BadRequest):
            await self._error(writer, 400, str(answer), "invalid_request_error")
        else:
            return False
        return True

    async def _stream(self, writer: asyncio.StreamWriter, answer: Answer) -> bool:
        self.stats.count(self.stats.by_status, "200")
        _answered(200)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece, payload in endpoints.stream(answer, next(self._ids)):
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            if not piece:
                continue
            await writer.drain()
            if self.config.break_streams > 0:
                self.config.break_streams -= 1
                self.stats.count(self.stats.faults, "stream_broken")
                return False
            if self.config.chunk_delay_ms > 0:
                await asyncio.sleep(self.config.chunk_delay_ms / 1000)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _rate_limited(self, costs: dict[str, int]) -> tuple[str, float] | None:
        """Take the request's costs from the configured limits; or, if one has not enough left,
        take nothing and say which and how long until it would."""
        window_s = self.config.limit_window_s
        for kind, per_minute, burst in (
            ("requests", self.config.rpm, self.config.rpm_burst),
            ("tokens", self.config.tpm, self.config.tpm_burst),
        ):
            current = self._buckets.get(kind)
            if not per_minute:
                self._buckets.pop(kind, None)
            elif window_s > 0 and not (
                isinstance(current, Window) and (current.per_minute, current.window_s) == (per_minute, window_s)
            ):
                self._buckets[kind] = Window(per_minute, window_s)
            elif window_s <= 0 and not (isinstance(current, Bucket) and current.per_minute == per_minute):
                self._buckets[kind] = Bucket(per_minute, burst)
        for kind, bucket in self._buckets.items():
            if (wait_s := bucket.wait_s(costs[kind])) > 0:
                return kind, wait_s
        for kind, bucket in self._buckets.items():
            bucket.take(costs[kind])
        return None

    def _limit_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind, bucket in self._buckets.items():
            headers |= {
                f"x-ratelimit-limit-{kind}": str(bucket.per_minute),
                f"x-ratelimit-remaining-{kind}": str(bucket.remaining()),
                f"x-ratelimit-reset-{kind}": f"{math.ceil(bucket.full_in_s() * 1000)}ms",
            }
        return headers

    async def _error(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        message: str,
        type_: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        await self._json(writer, status, body, headers)

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        counted: bool = True,
    ) -> None:
        await self._send(writer, status, json.dumps(body).encode(), "application/json", headers, counted=counted)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        *,
        counted: bool = True,
    ) -> None:
        if counted:
            self.stats.count(self.stats.by_status, str(status))
            _answered(status)
        lines = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
            f"content-type: {content_type}",
            f"content-length: {len(body)}",
            f"x-request-id: req-sim-{next(self._ids)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()


def _retry_headers(kind: str, wait_s: float) -> dict[str, str]:
    ms = math.ceil(wait_s * 1000)
    return {f"x-ratelimit-reset-{kind}": f"{ms}ms", "retry-after-ms": str(ms), "retry-after": str(math.ceil(wait_s))}


def _error_kind(status: int, code: str | None) -> tuple[str, str | None]:
    """The error body's ``type`` and ``code`` for an injected status, as the OpenAI API sends them."""
    if status == 429:
        code = code or "rate_limit_exceeded"
        return ("insufficient_quota" if code == "insufficient_quota" else "requests"), code
    if status == 401:
        return "invalid_request_error", code or "invalid_api_key"
    if status >= 500:
        return "server_error", code
    return "invalid_request_error", code


MAX_LOGGED_CALLS = 200_000
_current_call: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("current_call", default=None)


def _answered(status: int) -> None:
    """Note the status of the completion request this connection is answering (if any)."""
    call = _current_call.get()
    if call is not None and call[2] == 0:
        call[2] = status
