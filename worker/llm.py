"""The only module that imports openai: the client, the request, and what its errors mean.

Errors are turned into :class:`LLMError`, which says whether another attempt could succeed
(``retryable``) and how long the server asked us to wait (``retry_after_s``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from producer.contract import JobError, Usage
from producer.validation import PromptJob
from worker.config import WorkerConfig
from worker.retry import retry_after_s

__all__ = ["Completion", "LLMError", "classify", "complete", "make_client"]


def make_client(config: WorkerConfig) -> openai.AsyncOpenAI:
    """One client per worker process; the worker owns retries, so the client makes none."""
    return openai.AsyncOpenAI(
        api_key=config.openai_api_key,
        base_url=config.openai_base_url,
        max_retries=0,
        timeout=config.request_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class Completion:
    content: str | None
    finish_reason: str | None
    usage: Usage | None
    rate_headers: dict[str, str] = field(default_factory=dict)
    """The response's ``x-ratelimit-*`` headers (names in lower case): the server's own budget."""


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
    if status_code in STATUS_CLASSES:
        return STATUS_CLASSES[status_code]
    if status_code >= 500:
        return "server_error", True
    return "client_error", False


DeltaSink = Callable[[str], Awaitable[None]]


async def complete(
    client: openai.AsyncOpenAI, job: PromptJob, model: str, on_delta: DeltaSink | None = None
) -> Completion:
    """Run one Chat Completions request; raise :class:`LLMError` for any failure.

    With ``on_delta`` the request is streamed and each piece of the answer is handed to it as it
    arrives (usage is asked for with ``stream_options.include_usage``)."""
    params: dict[str, Any] = dict(job.params)
    try:
        if on_delta is not None:
            return await _streamed(client, job, model, params, on_delta)
        raw = await client.chat.completions.with_raw_response.create(
            model=model,
            messages=job.messages,  # type: ignore[arg-type]  # validated in producer.validation
            **params,
        )
        response = raw.parse()
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
        raise LLMError("timeout", "the API did not answer within PROMPTQ_REQUEST_TIMEOUT_S", retryable=True) from e
    except openai.APIConnectionError as e:
        raise LLMError("connection_error", f"could not reach the API: {e.message}", retryable=True) from e
    except httpx2.TransportError as e:  # a stream broken after its headers arrived
        raise LLMError("connection_error", f"the stream broke off: {e!r}", retryable=True) from e
    except (openai.APIError, ValueError) as e:  # a body that is not a Chat Completion
        raise LLMError("bad_response", f"the API answered with an unreadable body: {e}", retryable=True) from e
    if not getattr(response, "choices", None):
        raise LLMError("bad_response", "the API answered without choices", retryable=True)
    choice = response.choices[0]
    return Completion(
        content=choice.message.content,
        finish_reason=choice.finish_reason,
        usage=_usage(response.usage),
        rate_headers=_rate_headers(raw.headers),
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
    async with raw.parse() as chunks:
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = _usage(chunk.usage)
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
        content="".join(parts), finish_reason=finish_reason, usage=usage, rate_headers=_rate_headers(raw.headers)
    )


def _usage(u: Any) -> Usage | None:
    return Usage(u.prompt_tokens, u.completion_tokens, u.total_tokens) if u else None


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith(RATE_HEADER_PREFIX)}
