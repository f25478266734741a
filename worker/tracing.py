"""The worker's spans (traces on: see ``promptq_core.tracing``; off, every call here is a no-op that
imports nothing).

Each attempt at a job is a ``promptq.process`` span (kind CONSUMER, per the messaging conventions),
a child of the context the job was submitted in and linked to it, so the caller's trace runs on
through the queue; its attributes say the job, the attempt, its priority and fairness key and how
long it waited in the queue; events mark a wait for rate-limit budget and a retry; its status and
``error.type`` say how the attempt ended. The API call is its child, named and attributed per the
GenAI conventions (``chat gpt-4o-mini``, kind CLIENT: ``gen_ai.operation.name``,
``gen_ai.provider.name``, request and response model, token usage, finish reasons,
``error.type``). Prompts and answers are recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for them (``WorkerConfig.trace_content``).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final
from urllib.parse import urlsplit

from promptq_core.contract import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT, JobResult, dumps
from promptq_core.validation import PromptJob
from worker.backends import Backend
from worker.llm import Completion, LLMError

__all__ = ["Tracing", "ended", "event"]

_REQUEST_PARAMS: Final = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
    "dimensions": "gen_ai.embeddings.dimension.count",
}
_NOTHING: Final = nullcontext()
_attempt: contextvars.ContextVar[Any] = contextvars.ContextVar("promptq_attempt_span", default=None)


class Tracing:
    """Spans for one worker's jobs; with traces off, :meth:`attempt` and :meth:`call` hand out a
    context that does nothing."""

    def __init__(self, on: bool = False, capture: bool = False) -> None:
        self.on, self.capture = on, on and capture
        self._servers: dict[str, dict[str, Any]] = {}
        """Per backend: the ``server.address`` and ``server.port`` of its calls."""
        self._tracer: Any = None
        self._w3c: Any = None
        """The W3C trace-context propagator (the jobs carry ``traceparent`` and ``tracestate``)."""
        if self.on:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            self._tracer = trace.get_tracer("promptq.worker")
            self._w3c = TraceContextTextMapPropagator()

    def attempt(self, job: PromptJob, base: JobResult) -> AbstractContextManager[Any]:
        """A ``promptq.process`` span around one attempt at ``job``, current while it runs."""
        return self._attempt(job, base) if self.on else _NOTHING

    def call(self, job: PromptJob, model: str, backend: Backend) -> AbstractContextManager[Any]:
        """The GenAI span around the API call to ``backend``; ``answered(span, completion)`` records the answer."""
        return self._call(job, model, backend) if self.on else _NOTHING

    def _server(self, backend: Backend) -> dict[str, Any]:
        server = self._servers.get(backend.name)
        if server is None:
            where = urlsplit(backend.base_url or "https://api.openai.com/v1")
            server = {"server.address": where.hostname or "", "promptq.backend": backend.name}
            if where.port:
                server["server.port"] = where.port
            self._servers[backend.name] = server
        return server

    @contextmanager
    def _attempt(self, job: PromptJob, base: JobResult) -> Iterator[Any]:
        from opentelemetry import trace

        parent = self._w3c.extract(job.trace) if job.trace else None
        submitted = trace.get_current_span(parent).get_span_context() if parent is not None else None
        attributes: dict[str, Any] = {
            "messaging.system": "promptq",
            "messaging.operation.type": "process",
            "messaging.message.id": job.job_id,
            "promptq.attempt": base.attempts,
            "promptq.priority": job.priority,
            "promptq.fairness_key": job.fairness_key,
        }
        if base.enqueued_at is not None and base.started_at is not None:
            attributes["promptq.queue_wait_ms"] = max(0, round((base.started_at - base.enqueued_at) * 1000))
        with self._tracer.start_as_current_span(
            "promptq.process",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=[trace.Link(submitted)] if submitted is not None and submitted.is_valid else None,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _attempt.set(span)
            try:
                yield span
            finally:
                _attempt.reset(token)

    @contextmanager
    def _call(self, job: PromptJob, model: str, backend: Backend) -> Iterator[Any]:
        from opentelemetry import trace

        operation = _operation(job.endpoint)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            **self._server(backend),
        }
        for name, value in job.params.items():
            attribute = _REQUEST_PARAMS.get(name)
            if attribute is not None and isinstance(value, int | float) and not isinstance(value, bool):
                attributes[attribute] = value
        stop = job.params.get("stop")
        if isinstance(stop, str | list):
            attributes["gen_ai.request.stop_sequences"] = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        if self.capture and job.endpoint != EMBEDDINGS_ENDPOINT:
            attributes["gen_ai.input.messages"] = dumps(_input_messages(job))
        span = self._tracer.start_span(f"{operation} {model}", kind=trace.SpanKind.CLIENT, attributes=attributes)
        try:
            yield span
        except (LLMError, TimeoutError) as e:
            error_type = e.type if isinstance(e, LLMError) else "timeout"
            failed: dict[str, Any] = {"error.type": error_type}
            if isinstance(e, LLMError) and e.status_code is not None:
                failed["http.response.status_code"] = e.status_code
            span.set_attributes(failed)
            span.set_status(trace.StatusCode.ERROR, error_type)
            raise
        finally:
            span.end()

    def answered(self, span: Any, completion: Completion) -> None:
        """Record what the API answered on the call's span (nothing when traces are off)."""
        if span is None:
            return
        got: dict[str, Any] = {}
        if completion.response_model:
            got["gen_ai.response.model"] = completion.response_model
        if completion.response_id:
            got["gen_ai.response.id"] = completion.response_id
        if completion.finish_reason:
            got["gen_ai.response.finish_reasons"] = [completion.finish_reason]
        if completion.usage is not None:
            got["gen_ai.usage.input_tokens"] = completion.usage.prompt_tokens
            got["gen_ai.usage.output_tokens"] = completion.usage.completion_tokens
        if self.capture and completion.content is not None:
            message = {
                "role": "assistant",
                "parts": [{"type": "text", "content": completion.content}],
                "finish_reason": completion.finish_reason or "stop",
            }
            got["gen_ai.output.messages"] = dumps([message])
        span.set_attributes(got)


def event(name: str, **attributes: Any) -> None:
    """An event on the current attempt's span (nothing without one)."""
    span = _attempt.get()
    if span is not None:
        span.add_event(name, {k: v for k, v in attributes.items() if v is not None})


def ended(status: str, error_type: str | None = None) -> None:
    """How the current attempt ended: ``succeeded``, ``failed``, ``retrying``, ``deferred``,
    ``cancelled``, ``released`` or ``batched`` (an error status with ``error.type`` when it failed)."""
    span = _attempt.get()
    if span is None:
        return
    if error_type is None:
        span.set_attribute("promptq.outcome", status)
        return
    from opentelemetry.trace import StatusCode

    span.set_attributes({"promptq.outcome": status, "error.type": error_type})
    span.set_status(StatusCode.ERROR, error_type)


def _operation(endpoint: str) -> str:
    if endpoint == EMBEDDINGS_ENDPOINT:
        return "embeddings"
    return "chat" if endpoint == CHAT_ENDPOINT else "generate_content"


def _input_messages(job: PromptJob) -> list[dict[str, Any]]:
    if job.endpoint == CHAT_ENDPOINT:
        return [
            {"role": str(m.get("role", "user")), "parts": [{"type": "text", "content": m.get("content")}]}
            for m in job.messages
        ]
    return [{"role": "user", "parts": [{"type": "text", "content": job.input}]}]
