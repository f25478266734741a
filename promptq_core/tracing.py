"""OpenTelemetry traces, when asked for (``pip install 'promptq[otel]'``).

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set or
``PROMPTQ_OTEL=1``; ``PROMPTQ_OTEL=0`` keeps it off whatever else is set. Off, nothing of
OpenTelemetry is imported and a submit pays one look at a cached flag.

On, a submit stores the caller's current trace context (W3C ``traceparent`` and ``tracestate``) in
the job, where the worker's span for each attempt finds it (``worker.tracing``). The processes
promptq runs itself (the worker, the HTTP API, the CLI) set up the SDK with :func:`setup`: spans go
out through the standard OTLP/HTTP exporter, configured by the standard ``OTEL_*`` variables
(endpoint, headers, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``...). A web app that set up
its own tracer provider keeps it: promptq then only reads the current context.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from promptq_core.env import ConfigError, env_flag

__all__ = [
    "CAPTURE_ENV",
    "ENV",
    "TRACE_FIELDS",
    "capture_content",
    "check_trace",
    "current_trace",
    "enabled",
    "setup",
    "span",
    "wanted",
]

ENV: Final = "PROMPTQ_OTEL"
ENDPOINT_ENVS: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACE_FIELDS: Final = ("traceparent", "tracestate")
TRACEPARENT_RE: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
TRACESTATE_MAX: Final = 512
CAPTURE_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CAPTURE: Final = {"true", "1", "yes", "on", "span_only", "span_and_event", "event_only"}
_NO_CAPTURE: Final = {"", "false", "0", "no", "off", "no_content"}
_on: bool | None = None


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces; ``ConfigError`` for a bad ``PROMPTQ_OTEL``, or when
    traces are asked for and OpenTelemetry is not installed."""
    if (env.get(ENV) or "").strip():
        on = env_flag(env, ENV)
    else:
        on = any((env.get(name) or "").strip() for name in ENDPOINT_ENVS)
    if on:
        try:
            import opentelemetry.propagate  # noqa: F401
        except ImportError:
            raise ConfigError(f"{ENV} or {ENDPOINT_ENVS[0]} asks for traces: pip install 'promptq[otel]'") from None
    return on


def capture_content(env: Mapping[str, str]) -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for prompts and answers
    in the spans (``ConfigError`` for a value it cannot mean)."""
    raw = (env.get(CAPTURE_ENV) or "").strip().lower()
    if raw not in _CAPTURE | _NO_CAPTURE:
        raise ConfigError(f"{CAPTURE_ENV} must be true or false, got {raw!r}")
    return raw in _CAPTURE


def enabled() -> bool:
    """Traces are on (the environment read once, :func:`wanted`)."""
    global _on
    if _on is None:
        _on = wanted(os.environ)
    return _on


def current_trace() -> dict[str, str] | None:
    """The caller's current trace context as W3C fields, or None (traces off, or no span)."""
    if not enabled():
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {k: v for k, v in carrier.items() if k in TRACE_FIELDS}
    return found if "traceparent" in found else None


def check_trace(trace: Any) -> dict[str, str]:
    """A job's ``trace`` as given, if it is ``{"traceparent": ..., "tracestate"?: ...}`` in W3C form;
    else ``ValueError`` saying what is wrong."""
    if not isinstance(trace, dict) or not set(trace) <= set(TRACE_FIELDS) or "traceparent" not in trace:
        raise ValueError('trace must be {"traceparent": "00-<trace id>-<span id>-<flags>", "tracestate"?: "..."}')
    parent, state = trace["traceparent"], trace.get("tracestate", "")
    if not isinstance(parent, str) or not TRACEPARENT_RE.fullmatch(parent):
        shown = ascii(parent[:60]) if isinstance(parent, str) else type(parent).__name__
        raise ValueError(f"trace.traceparent {shown} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
    if not isinstance(state, str) or len(state) > TRACESTATE_MAX:
        raise ValueError(f"trace.tracestate must be a string of at most {TRACESTATE_MAX} characters")
    return {k: str(v) for k, v in trace.items()}


_provider: Any = None


def setup(service_name: str, on: bool | None = None) -> None:
    """Set up the SDK for a process promptq runs (once; nothing when traces are off, ``on`` or
    :func:`enabled`, or the process has a tracer provider already): batched export over OTLP/HTTP
    as the ``OTEL_*`` variables say."""
    global _provider
    if not (enabled() if on is None else on) or _provider is not None:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if type(trace.get_tracer_provider()).__name__ != "ProxyTracerProvider":  # the process set up its own
        _provider = trace.get_tracer_provider()
        return
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    _provider = TracerProvider(resource=Resource.create(attributes))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)


def shutdown() -> None:
    """Flush and stop the SDK :func:`setup` made (nothing for a provider the process brought)."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


@contextmanager
def span(
    name: str, kind: str = "INTERNAL", carrier: Mapping[str, str] | None = None, **attributes: Any
) -> Iterator[Any]:
    """A span around a piece of work (None when traces are off), child of the context in
    ``carrier`` (W3C headers) when given, else of the current one."""
    if not enabled():
        yield None
        return
    from opentelemetry import propagate, trace

    parent = propagate.extract(dict(carrier)) if carrier is not None else None
    tracer = trace.get_tracer("promptq")
    with tracer.start_as_current_span(
        name, context=parent, kind=getattr(trace.SpanKind, kind), attributes=attributes or None
    ) as current:
        yield current
