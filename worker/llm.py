"""The only module that imports openai: the clients, the request to each endpoint (chat
completions, embeddings, responses), and what its errors mean.

Errors are turned into :class:`LLMError`, which says whether another attempt could succeed
(``retryable``) and how long the server asked us to wait (``retry_after_s``).

Five choices here are for speed, each measured (see docs/benchmarks.md):

- promptq's own HTTP/1.1 transport under each client (``PROMPTQ_HTTP_CLIENT=http1``, the default;
  ``worker.http1``): about 150 µs less CPU a call than the openai package's aiohttp transport
  (``aiohttp``), itself about a third less than its default httpx one (``httpx``). The aiohttp
  transport reports a refused or dropped connection as a connect timeout; :func:`complete` tells
  them apart (a ``connection_error``, not a ``timeout`` the API may have processed).
- Under any transport, a ``build_request`` that does not parse each request's URL and copy its
  headers twice more (``worker.wire``): about 40 µs less CPU a call.
- The options of a plain request (``post``'s pydantic model) made once a path, its URL joined to
  the client's once, and copied with each call's body (:func:`_post`): about 65 µs less CPU a call.
  The model's type is reached in ``openai._models``; an openai without it as this module knows it
  gets ``post``.
- One ``AsyncOpenAI`` client per ``SLOTS_PER_CLIENT`` job slots (:class:`Clients`), not one for the
  process. The httpx connection pool under each client looks at every one of its connections, and
  probes the socket of every idle one, on each request and each response; with one pool for 100
  slots that bookkeeping was a fifth of the worker's CPU.
- A plain request is sent as the client's ``post`` sends it and its JSON read here, rather than through
  ``chat.completions.create``: the typed method walks its parameter annotations over every message
  to build the body and builds pydantic models of the reply, about 1.3 ms a call on the development
  machine. The body is already plain JSON, checked by ``promptq_core.validation``, and the result keeps
  three fields. ``post`` is the same request path (authentication, headers, timeouts, the same
  ``APIStatusError`` for an error status). Streamed requests use the typed method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import ssl
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from promptq_core.contract import (
    EMBEDDINGS_ENDPOINT,
    RESPONSES_ENDPOINT,
    JobError,
    JobResult,
    Usage,
    decode_vector,
    encode_vector,
)
from promptq_core.validation import FLEX_TIER, PromptJob, embedding_inputs
from worker.backends import Backend
from worker.config import WorkerConfig
from worker.http1 import Http1Transport
from worker.retry import retry_after_s
from worker.wire import ShortBuild

__all__ = ["Clients", "Completion", "LLMError", "answer", "classify", "complete", "error_of", "make_client", "request"]

SLOTS_PER_CLIENT = 10
"""Job slots that share one client (and so one HTTP connection pool)."""


def make_client(config: WorkerConfig, backend: Backend, tls: ssl.SSLContext | None = None) -> openai.AsyncOpenAI:
    """A client for one backend; the worker owns retries, so the client makes none. ``tls``: a TLS
    context to share (each client otherwise loads the CA certificates anew, about 40 ms). An Azure
    backend gets the package's Azure client: the ``api-key`` header, ``api-version`` on every
    request, and the deployment (the backend's name for the model) in the path."""
    verify: ssl.SSLContext | bool = True if tls is None else tls
    kind = {"http1": _Http1Client, "aiohttp": _AioHttpClient}.get(config.http_client, _HttpxClient)
    http_client = kind(verify=verify, timeout=config.request_timeout_s)
    if backend.kind == "azure":
        return openai.AsyncAzureOpenAI(
            api_key=backend.api_key,
            api_version=backend.api_version,
            azure_endpoint=backend.base_url or "",
            max_retries=0,
            timeout=config.request_timeout_s,
            default_headers=backend.headers or None,
            http_client=http_client,
        )
    return openai.AsyncOpenAI(
        api_key=backend.api_key,
        base_url=backend.base_url,
        max_retries=0,
        timeout=config.request_timeout_s,
        default_headers=backend.headers or None,
        http_client=http_client,
    )


class _AioHttpClient(ShortBuild, openai.DefaultAioHttpClient):
    """The package's aiohttp client, its requests built the short way (``worker.wire``)."""


class _Http1Client(ShortBuild, openai.DefaultAioHttpClient):
    """promptq's HTTP/1.1 transport (``worker.http1``) under the client, its requests built the short
    way; the URLs the environment sends through a proxy keep the package's aiohttp transport."""

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx2.Limits = httpx2.Limits(),  # noqa: B008  (httpx2's own default argument)
        transport: httpx2.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> httpx2.AsyncBaseTransport:
        if transport is not None:
            return transport
        return Http1Transport(httpx2.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env), limits)


class _HttpxClient(ShortBuild, openai.DefaultAsyncHttpxClient):
    """The package's httpx client, its requests built the short way (``worker.wire``)."""


class Clients:
    """A worker's clients: per backend, one per ``SLOTS_PER_CLIENT`` of its ``PROMPTQ_MAX_JOBS``
    slots, handed out in turn (made at start-up, closed at shutdown)."""

    def __init__(self, config: WorkerConfig) -> None:
        count = max(1, math.ceil(config.max_jobs / SLOTS_PER_CLIENT))
        tls = httpx2.create_ssl_context()  # the CA certificates loaded once for every client
        self.of: dict[str, tuple[openai.AsyncOpenAI, ...]] = {
            b.name: tuple(make_client(config, b, tls) for _ in range(count)) for b in config.all_backends()
        }
        self._turns = {name: itertools.cycle(clients) for name, clients in self.of.items()}

    @property
    def all(self) -> tuple[openai.AsyncOpenAI, ...]:
        return tuple(c for clients in self.of.values() for c in clients)

    def take(self, backend: str) -> openai.AsyncOpenAI:
        return next(self._turns[backend])

    async def aclose(self) -> None:
        for client in self.all:
            await client.close()
        await asyncio.sleep(0)  # (aiohttp's transports close their sockets on the loop's next turn)


@dataclass(frozen=True, slots=True)
class Completion:
    """What the result keeps of an answer, whichever the endpoint."""

    content: str | None
    finish_reason: str | None
    usage: Usage | None
    rate_headers: dict[str, str] = field(default_factory=dict)
    """The response's ``x-ratelimit-*`` headers (names in lower case): the server's own budget."""
    output: list[Any] | None = None
    """A response's output items."""
    embeddings: list[Any] | None = None
    """An embeddings answer's vectors, base64 float32 (``promptq_core.contract.encode_vector``)."""
    response_model: str | None = None
    """The model that answered, as the API names it (for traces)."""
    response_id: str | None = None

    def succeeded(self, base: JobResult, *, finished_at: float, latency_ms: int | None) -> JobResult:
        """The job's document once this answer is its result (a live call's, or a provider batch's line)."""
        return dataclasses.replace(
            base,
            status="succeeded",
            content=self.content,
            output=self.output,
            embeddings=self.embeddings,
            finish_reason=self.finish_reason,
            usage=self.usage,
            error=None,
            finished_at=finished_at,
            latency_ms=latency_ms,
        )


class LLMError(Exception):
    """One failed attempt, classified."""

    def __init__(
        self,
        type_: str,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.type, self.message, self.retryable = type_, message, retryable
        self.status_code, self.retry_after_s = status_code, retry_after_s

    def to_error(self) -> JobError:
        return JobError(type=self.type, message=self.message, status_code=self.status_code, retryable=self.retryable)


RATE_HEADER_PREFIX = "x-ratelimit-"

# status code -> (error type, retryable). 429 depends on the body's code: see classify().
STATUS_CLASSES: dict[int, tuple[str, bool]] = {
    400: ("bad_request", False),
    529: ("overloaded", True),
    401: ("authentication", False),
    403: ("permission_denied", False),
    404: ("not_found", False),
    408: ("request_timeout", True),
    409: ("conflict", True),
    422: ("unprocessable_entity", False),
    429: ("rate_limited", True),
}


def classify(status_code: int, code: str | None = None) -> tuple[str, bool]:
    """The error type and whether to retry, for an HTTP error status (and the body's ``code``)."""
    if status_code == 429 and code == "insufficient_quota":
        return "insufficient_quota", False
    if status_code == 400 and code == "context_length_exceeded":
        return "context_length_exceeded", False
    if status_code in STATUS_CLASSES:
        return STATUS_CLASSES[status_code]
    if status_code >= 500:
        return "server_error", True
    return "client_error", False


DeltaSink = Callable[[str], Awaitable[None]]


async def complete(
    client: openai.AsyncOpenAI,
    job: PromptJob,
    model: str,
    on_delta: DeltaSink | None = None,
    timeout_s: float | None = None,
) -> Completion:
    """Run one request to the job's endpoint; raise :class:`LLMError` for any failure.

    With ``on_delta`` the request is streamed and each piece of the answer is handed to it as it
    arrives (for chat, usage is asked for with ``stream_options.include_usage``). A flex-tier job is
    sent with ``service_tier="flex"``; ``timeout_s`` overrides the client's timeout for this call."""
    timeout: Any = {} if timeout_s is None else {"timeout": timeout_s}  # (openai's RequestOptions)
    try:
        if on_delta is not None and job.endpoint != EMBEDDINGS_ENDPOINT:
            params = _params(job)
            if job.endpoint == RESPONSES_ENDPOINT:
                return await _streamed_response(client, job, model, {**params, **timeout}, on_delta)
            return await _streamed(client, job, model, {**params, **timeout}, on_delta)
        path, body = request(job, model)
        response = await _post(client, path, body, timeout)
        return answer(job, response.json(), response.headers)
    except openai.APIStatusError as e:
        type_, retryable = classify(e.status_code, e.code)
        raise LLMError(
            type_,
            e.message,
            retryable=retryable,
            status_code=e.status_code,
            retry_after_s=retry_after_s(e.response.headers),
        ) from e
    except openai.APITimeoutError as e:
        if not _timed_out(e):
            raise LLMError("connection_error", f"could not reach the API: {_cause(e)}", retryable=True) from e
        raise LLMError("timeout", "the API did not answer within PROMPTQ_REQUEST_TIMEOUT_S", retryable=True) from e
    except openai.APIConnectionError as e:
        raise LLMError("connection_error", f"could not reach the API: {e.message}", retryable=True) from e
    except httpx2.TransportError as e:  # a stream broken after its headers arrived
        raise LLMError("connection_error", f"the stream broke off: {e!r}", retryable=True) from e
    except (openai.APIError, ValueError) as e:  # a body that is not JSON (or, streamed, not chunks)
        raise LLMError("bad_response", f"the API answered with an unreadable body: {e}", retryable=True) from e


def _options_type() -> Any:
    """openai's ``FinalRequestOptions``, if it is as this module knows it; None: ``post`` makes them."""
    try:
        from openai._models import FinalRequestOptions
    except ImportError:  # pragma: no cover  (every openai 3 has it)
        return None
    fields = getattr(FinalRequestOptions, "model_fields", {})
    if not {"method", "url", "json_data", "timeout"} <= set(fields) or not hasattr(FinalRequestOptions, "model_copy"):
        return None  # pragma: no cover
    return FinalRequestOptions


_OPTIONS = _options_type()
_SECURED = _OPTIONS is not None and "security" in _OPTIONS.model_fields
"""Whether the options carry the client's ``security`` choices (a dict, fresh each call as ``post``'s)."""
_FORMS: weakref.WeakKeyDictionary[openai.AsyncOpenAI, dict[str, Any]] = weakref.WeakKeyDictionary()
"""Per client (kept while the client lives), each path's request options with no body (``post``'s,
made once), copied with each call's body."""


async def _post(client: openai.AsyncOpenAI, path: str, body: dict[str, Any], options: Any) -> httpx2.Response:
    """``client.post(path, cast_to=httpx2.Response, body=body, options=options)``, the same request.

    ``post`` makes its request options anew each call (a pydantic model whose every default is
    deep-copied: about 50 µs of CPU a call, a tenth of the client's part, and 15 more to join the
    URL); here they are made once a path and copied with the call's body and options (its timeout),
    and handed to the client's ``request``, as ``post`` hands its own. Their URL is the client's own
    joined to the path once (the client would join them again each call), except an Azure
    client's, which puts the deployment into the path it is given. ``tests/unit/test_wire.py``
    holds the requests equal."""
    if _OPTIONS is None:  # pragma: no cover
        return await client.post(path, cast_to=httpx2.Response, body=body, options=options)
    forms = _FORMS.get(client)
    if forms is None:
        forms = _FORMS[client] = {}
    form = forms.get(path)
    if form is None:
        base = client.base_url  # (the client keeps it ending in "/")
        joined = not isinstance(client, openai.AsyncAzureOpenAI) and not base.query
        url = f"{base}{path.lstrip('/')}" if joined else path
        form = forms[path] = _OPTIONS.construct(method="post", url=url)
    # (its mutable defaults fresh each call, as post's are: a client that changed them in place
    # would not carry one call's into the next)
    update = {"json_data": body, "params": {}, **options}
    if _SECURED:
        update["security"] = dict(form.security)
    response: httpx2.Response = await client.request(httpx2.Response, form.model_copy(update=update))
    return response


def _chain(e: BaseException) -> list[BaseException]:
    chain = [e]
    while (cause := chain[-1].__cause__) is not None and len(chain) < 10:
        chain.append(cause)
    return chain


def _timed_out(e: openai.APITimeoutError) -> bool:
    """Whether a timeout the client reports was one the API may have processed the request in
    (``worker.circuit.PROCESSED_MAYBE``): not one to connect, to get a connection from the pool or to
    send the request, which never reached it whole; and not what the aiohttp transport reports
    every failure to connect or to keep the connection as (refused, reset, closed by the server)."""
    chain = _chain(e)
    if any(isinstance(c, httpx2.ConnectTimeout | httpx2.PoolTimeout | httpx2.WriteTimeout) for c in chain):
        return False
    if not any(type(c).__module__.startswith("aiohttp") for c in chain):
        return True
    return any(isinstance(c, TimeoutError) for c in chain)


def _cause(e: BaseException) -> str:
    """The innermost error's name and message (no request content is in them)."""
    inner = _chain(e)[-1]
    return f"{type(inner).__name__}: {inner}"[:300]


def _params(job: PromptJob) -> dict[str, Any]:
    params: dict[str, Any] = dict(job.params)
    if job.tier == FLEX_TIER:
        params["service_tier"] = FLEX_TIER
    return params


def request(job: PromptJob, model: str) -> tuple[str, dict[str, Any]]:
    """The path (under the API's base URL) and the body of the job's request, unstreamed: what a
    live call posts, and what a provider batch's line holds (``worker.provider_batches``)."""
    params = _params(job)
    if job.endpoint == EMBEDDINGS_ENDPOINT:
        params.pop("encoding_format", None)  # always base64: the compact form the result keeps
        return "/embeddings", _body({"model": model, "input": job.input, "encoding_format": "base64"}, params)
    if job.endpoint == RESPONSES_ENDPOINT:
        return "/responses", _body({"model": model, "input": job.input}, params)
    return "/chat/completions", _body({"model": model, "messages": job.messages}, params)


def answer(job: PromptJob, body: Any, headers: Mapping[str, str] | None = None) -> Completion:
    """What the result keeps of the body the API answered the job's request with (live, or in a
    provider batch's output file); :class:`LLMError` for a body that is not such an answer."""
    headers = headers or {}
    if job.endpoint == EMBEDDINGS_ENDPOINT:
        return _embeddings(body, headers, job.input)
    if job.endpoint == RESPONSES_ENDPOINT:
        return _response(body, headers)
    return _completion(body, headers)


def error_of(status_code: int, body: Any) -> LLMError:
    """The error an API's answer with an error status means (a provider batch's failed line)."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code, message = error.get("code"), error.get("message")
    type_, retryable = classify(status_code, code if isinstance(code, str) else None)
    text = message if isinstance(message, str) and message else f"HTTP {status_code}"
    return LLMError(type_, text[:1000], retryable=retryable, status_code=status_code)


def _body(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The request body: the job's parameters, and ``extra_body``'s fields at the top level (as the
    typed methods send it); the fields promptq sets (``base``) win over both, whatever a payload
    written by another client holds."""
    extra = params.pop("extra_body", None) or {}
    return {**extra, **params, **base}


def _bad(message: str) -> LLMError:
    return LLMError("bad_response", message, retryable=True)


def _vector(value: Any) -> str | list[str]:
    """One input's embedding as the result keeps it: base64 float32 (kept as sent when the server
    sent base64), or a list of them when the server answered one vector a token."""
    if isinstance(value, str):
        decode_vector(value)  # ValueError: not base64 of float32 values
        return value
    if isinstance(value, list) and value and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return encode_vector(value)
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        per_token = [_vector(v) for v in value]
        if all(isinstance(t, str) for t in per_token):
            return [str(t) for t in per_token]
    raise _bad("the API answered with an embedding that is not a list of numbers or base64 float32")


def _embeddings(body: Any, headers: Mapping[str, str], given: Any) -> Completion:
    """What the result keeps of an embeddings body: one vector an input, in input order."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise _bad("the API answered without a list of embeddings")
    wanted = len(embedding_inputs(given))
    if len(data) != wanted:
        raise _bad(f"the API answered {len(data)} embeddings for {wanted} inputs")
    ordered = sorted(data, key=lambda d: d.get("index") if isinstance(d.get("index"), int) else 0)
    try:
        vectors = [_vector(d.get("embedding")) for d in ordered]
    except ValueError as e:
        raise _bad(f"the API answered with an unreadable embedding: {e}") from None
    return Completion(
        content=None,
        finish_reason=None,
        usage=_usage(body.get("usage"), made=None),
        rate_headers=_rate_headers(headers),
        embeddings=vectors,
        response_model=_text(body, "model"),
    )


def _response(body: Any, headers: Mapping[str, str]) -> Completion:
    """What the result keeps of a Responses API body: the output items, their text, the usage."""
    output = body.get("output") if isinstance(body, dict) else None
    if not isinstance(output, list) or not all(isinstance(item, dict) for item in output):
        raise _bad("the API answered without a list of output items")
    status = body.get("status")
    if status == "failed":
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        raise LLMError(
            "server_error", f"the response failed: {error.get('message', 'no reason given')}", retryable=True
        )
    texts = [
        str(part["text"])
        for item in output
        if item.get("type") == "message" and isinstance(item.get("content"), list)
        for part in item["content"]
        if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str)
    ]
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        finish = "length" if reason == "max_output_tokens" else str(reason or "incomplete")
    elif any(item.get("type") == "function_call" for item in output):
        finish = "tool_calls"
    else:
        finish = "stop"
    usage = body.get("usage")
    return Completion(
        content="".join(texts) if texts else None,
        finish_reason=finish,
        usage=_usage(usage, "input_tokens", "output_tokens"),
        rate_headers=_rate_headers(headers),
        output=output,
        response_model=_text(body, "model"),
        response_id=_text(body, "id"),
    )


async def _streamed_response(
    client: openai.AsyncOpenAI, job: PromptJob, model: str, params: dict[str, Any], on_delta: DeltaSink
) -> Completion:
    raw = await client.responses.with_raw_response.create(model=model, input=job.input, stream=True, **params)
    final: Any = None
    async with raw.parse() as events:
        async for event in events:
            kind = getattr(event, "type", None)
            if kind == "response.output_text.delta" and event.delta:
                await on_delta(event.delta)
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                final = event.response.model_dump(mode="json")
            elif kind == "error":
                raise LLMError("server_error", f"the stream reported an error: {event.message}", retryable=True)
    if final is None:
        raise _bad("the stream ended without the whole response")
    return _response(final, raw.headers)


def _completion(body: Any, headers: Mapping[str, str]) -> Completion:
    """What the result keeps of a Chat Completion body (the JSON as the API sent it)."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices, list):
        raise LLMError("bad_response", "the API answered without choices", retryable=True)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    readable = isinstance(message, dict) and isinstance(content, str | None) and isinstance(finish_reason, str | None)
    if not readable:
        raise LLMError("bad_response", "the API answered with a choice that is not a chat message", retryable=True)
    return Completion(
        content=content,
        finish_reason=finish_reason,
        usage=_usage(body.get("usage")),
        rate_headers=_rate_headers(headers),
        response_model=_text(body, "model"),
        response_id=_text(body, "id"),
    )


async def _streamed(
    client: openai.AsyncOpenAI, job: PromptJob, model: str, params: dict[str, Any], on_delta: DeltaSink
) -> Completion:
    raw = await client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        model=model,
        messages=job.messages,
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    parts: list[str] = []
    finish_reason: str | None = None
    usage: Usage | None = None
    answered_by: str | None = None
    response_id: str | None = None
    async with raw.parse() as chunks:
        async for chunk in chunks:
            answered_by, response_id = chunk.model or answered_by, chunk.id or response_id
            if chunk.usage is not None:
                usage = _usage(chunk.usage.model_dump())
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta.content:
                parts.append(choice.delta.content)
                await on_delta(choice.delta.content)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    if finish_reason is None:
        raise LLMError("bad_response", "the stream ended without a finish_reason", retryable=True)
    return Completion(
        content="".join(parts),
        finish_reason=finish_reason,
        usage=usage,
        rate_headers=_rate_headers(raw.headers),
        response_model=answered_by,
        response_id=response_id,
    )


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return value if isinstance(value, str) else None


def _usage(u: Any, given: str = "prompt_tokens", made: str | None = "completion_tokens") -> Usage | None:
    """The token counts of an answer, as each endpoint writes them (chat: prompt and completion;
    responses: input and output; embeddings: the input alone, ``made`` None), the total their sum
    when not given; None when they are missing or not whole numbers."""
    if not isinstance(u, dict):
        return None
    prompt, completion, total = u.get(given), u.get(made) if made else 0, u.get("total_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int) or not isinstance(total, int | None):
        return None
    return Usage(prompt, completion, prompt + completion if total is None else total)


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith(RATE_HEADER_PREFIX)}
