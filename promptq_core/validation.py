"""What a prompt job may contain, checked before anything is written (standard library only).

The producer validates at submit; the worker validates again what it reads from the queue, since
another client or an older version may have written it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from promptq_core.contract import (
    BATCH_NAME_RE,
    CHAT_ENDPOINT,
    DEFAULT_FAIRNESS_KEY,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_PRIORITY,
    DEFAULT_QUEUE,
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    FAIRNESS_KEY_MAX_BYTES,
    PRIORITIES,
    QUEUE_NAME_RE,
    RESERVED_QUEUE_NAMES,
    RESPONSES_ENDPOINT,
    QueueKeys,
    dumps,
    dumps_sorted,
    queue_keys,
)
from promptq_core.tracing import check_trace
from promptq_core.webhooks import WebhookHosts, check_url

__all__ = [
    "CALLER_JOB_ID_RE",
    "EMBEDDINGS_PARAMS",
    "JOB_ID_RE",
    "MAX_EMBEDDING_INPUTS",
    "MODEL_RE",
    "PASS_THROUGH_PARAMS",
    "RESPONSES_PARAMS",
    "TENANT_RE",
    "TIERS",
    "InvalidJobError",
    "PromptJob",
    "check_fairness_key",
    "check_model",
    "check_priority",
    "check_queue",
    "embedding_inputs",
    "escaped",
    "new_job_id",
    "printable",
    "valid_batch_name",
]


class InvalidJobError(ValueError):
    """A job was refused before anything was written; the message names the problem."""


ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
TENANT_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""A tenant's name: 1 to 32 of a-z 0-9 _ -, starting with a letter or digit."""
CALLER_JOB_ID_RE: Final = re.compile(r"[A-Za-z0-9_.@+=~-]{1,200}")
"""The ids an HTTP caller may choose: no ``:`` (a batch's jobs are ``{batch}:{custom_id}``) and no
``/`` (a tenant's jobs are ``{tenant}/{id}``), so neither namespace can be entered from outside."""
JOB_ID_RE: Final = re.compile(r"(?:[a-z0-9][a-z0-9_-]{0,31}/)?[A-Za-z0-9_.:@+=~-]{1,200}")
"""Every id a job may have: an optional ``{tenant}/``, then 1 to 200 of A-Z a-z 0-9 _ . : @ + = ~ -
(characters that every route, URL and Redis key carries as they are)."""
MODEL_MAX_CHARS: Final = 200
"""A model name's length at most (a job's, a fallback's, a backend's)."""
MODEL_RE: Final = re.compile(r"[A-Za-z0-9._:/@+-]{1,200}")
"""A model name: 1 to 200 of A-Z a-z 0-9 . _ : / @ + - (``gpt-4o-mini``, ``meta-llama/Llama-3.1-8B``,
``ft:gpt-4o-mini:org::id``, ``llama3.1:8b``, Azure deployment names)."""
MAX_DEPTH: Final = 64
"""JSON nesting a job's request may have at most (a JSON schema in ``response_format`` needs a few
levels per level of the schema)."""
LIVE_TIER: Final = "live"
FLEX_TIER: Final = "flex"
BATCH_TIER: Final = "batch"
TIERS: Final = (LIVE_TIER, FLEX_TIER, BATCH_TIER)
DELIVERY_FIELDS: Final = ("trace", "deadline")
"""Payload fields about a submit rather than the request (not in ``PromptJob.request``)."""
EXTRA_BODY_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_EXTRA_BODY_KEYS: Final = 64
OWNED_FIELDS: Final = frozenset(
    {"model", "messages", "input", "prompt", "stream", "stream_options", "n", "endpoint", "metadata", "background"}
)
"""Request fields promptq sets itself: ``extra_body`` may not carry them (nor any parameter the
endpoint takes by name, which is checked where it is passed by name)."""
MAX_FALLBACKS: Final = 5
"""Fallback models a job may list at most."""
MAX_DEADLINE_S: Final = 30 * 86_400
"""A deadline is at most this far ahead (a job's result is kept for a day by default anyway)."""


def _number(lo: float, hi: float) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return _is_number(v) and lo <= v <= hi

    return check


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _stop(v: Any) -> bool:
    if isinstance(v, str):
        return bool(v)
    return isinstance(v, list) and 0 < len(v) <= 4 and all(isinstance(s, str) and s for s in v)


# Chat Completions parameters passed through to the API, each with what it accepts.
# ``extra_body`` carries anything else a server understands (vLLM's ``top_k``, for example).
PASS_THROUGH_PARAMS: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "temperature": ("a number from 0 to 2", _number(0, 2)),
    "top_p": ("a number from 0 to 1", _number(0, 1)),
    "max_tokens": ("a positive integer", _positive_int),
    "max_completion_tokens": ("a positive integer", _positive_int),
    "stop": ("a non-empty string or a list of 1 to 4 of them", _stop),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "presence_penalty": ("a number from -2 to 2", _number(-2, 2)),
    "frequency_penalty": ("a number from -2 to 2", _number(-2, 2)),
    "logit_bias": ("an object", lambda v: isinstance(v, dict)),
    "logprobs": ("a boolean", lambda v: isinstance(v, bool)),
    "top_logprobs": ("an integer from 0 to 20", lambda v: isinstance(v, int) and 0 <= v <= 20),
    "response_format": ("an object", lambda v: isinstance(v, dict) and "type" in v),
    "tools": ("a list of objects", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v)),
    "tool_choice": ("a string or an object", lambda v: isinstance(v, str | dict)),
    "parallel_tool_calls": ("a boolean", lambda v: isinstance(v, bool)),
    "user": ("a string", lambda v: isinstance(v, str)),
    "reasoning_effort": ("a string", lambda v: isinstance(v, str)),
    "service_tier": ("a string", lambda v: isinstance(v, str)),
    "extra_body": ("an object", lambda v: isinstance(v, dict)),
}


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


# Embeddings parameters. The worker asks the API for base64 whatever ``encoding_format`` says, and
# stores vectors that way; ``encoding_format`` is accepted for files written for the Batch API.
EMBEDDINGS_PARAMS: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "dimensions": ("a positive integer", _positive_int),
    "encoding_format": ("float or base64", lambda v: v in ("float", "base64")),
    "user": ("a string", lambda v: isinstance(v, str)),
    "extra_body": ("an object", lambda v: isinstance(v, dict)),
}

# Responses API parameters passed through (``metadata`` is promptq's own: echoed, not sent).
RESPONSES_PARAMS: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "instructions": ("a string", lambda v: isinstance(v, str)),
    "max_output_tokens": ("a positive integer", _positive_int),
    "temperature": ("a number from 0 to 2", _number(0, 2)),
    "top_p": ("a number from 0 to 1", _number(0, 1)),
    "tools": ("a list of objects", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v)),
    "tool_choice": ("a string or an object", lambda v: isinstance(v, str | dict)),
    "parallel_tool_calls": ("a boolean", lambda v: isinstance(v, bool)),
    "max_tool_calls": ("a positive integer", _positive_int),
    "reasoning": ("an object", lambda v: isinstance(v, dict)),
    "text": ("an object", lambda v: isinstance(v, dict)),
    "previous_response_id": ("a string", lambda v: isinstance(v, str) and bool(v)),
    "store": ("a boolean", lambda v: isinstance(v, bool)),
    "truncation": ("auto or disabled", lambda v: v in ("auto", "disabled")),
    "include": ("a list of strings", _strings),
    "top_logprobs": ("an integer from 0 to 20", lambda v: isinstance(v, int) and 0 <= v <= 20),
    "user": ("a string", lambda v: isinstance(v, str)),
    "service_tier": ("a string", lambda v: isinstance(v, str)),
    "extra_body": ("an object", lambda v: isinstance(v, dict)),
}

PARAMS_OF: Final = {
    CHAT_ENDPOINT: PASS_THROUGH_PARAMS,
    EMBEDDINGS_ENDPOINT: EMBEDDINGS_PARAMS,
    RESPONSES_ENDPOINT: RESPONSES_PARAMS,
}
MAX_EMBEDDING_INPUTS: Final = 2048
"""Inputs one embeddings request may carry, as the API allows."""


def new_job_id() -> str:
    """128 random bits as 32 hex digits (the form of ``uuid4().hex``, at a fraction of its cost)."""
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class PromptJob:
    """One validated API request (Chat Completions, Embeddings or Responses), as it travels
    through the queue."""

    job_id: str
    messages: list[dict[str, Any]]
    """A chat job's messages (empty for the other endpoints)."""
    model: str | None
    params: dict[str, Any]
    metadata: dict[str, Any] | None
    payload_json: str
    """The payload as it is stored (and as its size was checked)."""
    stream: bool = False
    """Run with the API's streaming mode, writing deltas to ``promptq:{queue}:stream:{job_id}`` as they come."""
    priority: int = DEFAULT_PRIORITY
    """0 runs first, 9 last; strict between levels."""
    fairness_key: str = DEFAULT_FAIRNESS_KEY
    """Keys with ready jobs at one priority take turns for the workers."""
    endpoint: str = CHAT_ENDPOINT
    input: Any = None
    """An embeddings or responses job's ``input``, as the API takes it."""
    trace: dict[str, str] | None = None
    """The W3C trace context (``traceparent``, ``tracestate``) the job was submitted in."""
    deadline: float | None = None
    """Unix time (s) after which the job is not started any more: it fails ``expired``."""
    fallbacks: tuple[str, ...] = ()
    """Models the job moves to, in order, when its model's backends stay down or its input is too
    long for the model (``context_length_exceeded``)."""
    queue: str = DEFAULT_QUEUE
    """The named queue the job waits in (not in the payload: the job's keys say it)."""
    tier: str = LIVE_TIER
    """``live`` (called at once), ``flex`` (live, at the provider's cheaper ``service_tier=flex``,
    with its longer timeout) or ``batch`` (the provider's Batch API, where a backend offers it)."""
    webhook_url: str | None = None
    """Where the job's final result document is POSTed, signed, when it ends (``promptq_core.webhooks``)."""
    request: str = ""
    """A digest of what the job asks (its payload but for the trace context and the deadline, which
    differ from one submit to the next): its id submitted again with another request is refused."""

    @property
    def keys(self) -> QueueKeys:
        """The keys of the job's queue."""
        return queue_keys(self.queue)

    @classmethod
    def build(
        cls,
        prompt: str | None = None,
        *,
        messages: Any = None,
        model: str | None = None,
        job_id: str | None = None,
        metadata: Any = None,
        stream: Any = False,
        priority: Any = None,
        fairness_key: Any = None,
        endpoint: Any = None,
        input: Any = None,
        trace: Any = None,
        deadline_s: Any = None,
        deadline: Any = None,
        fallbacks: Any = None,
        queue: Any = None,
        tenant: Any = None,
        tier: Any = None,
        webhook_url: Any = None,
        webhook_hosts: WebhookHosts | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        **params: Any,
    ) -> PromptJob:
        """Validate a submit call; raise :class:`InvalidJobError` naming the first problem. With
        ``tenant``, the job is that tenant's: its id ``{tenant}/{job_id}``, its fairness key the
        tenant's name unless given one (its quotas and budget count it). ``webhook_url``: told when
        the job ends (its host checked against ``webhook_hosts``, the operator's; None: its form only)."""
        queue = DEFAULT_QUEUE if queue is None else check_queue(queue)
        endpoint = _endpoint(endpoint)
        checked_params = _params(params, endpoint)  # first: a misspelt ``promt=`` is named as such
        payload = _request(endpoint, prompt, messages, input, stream)
        payload["model"] = _model(model)
        if endpoint == EMBEDDINGS_ENDPOINT and model is None:
            raise InvalidJobError(f"a {EMBEDDINGS_ENDPOINT} job needs a model (the worker's PROMPTQ_MODEL is for chat)")
        if tenant is not None:
            job_id = _tenant_job_id(tenant, job_id)
            fairness_key = tenant if fairness_key is None else fairness_key
        job_id = _job_id(job_id)
        if checked_params:
            payload["params"] = checked_params
        if metadata is not None:
            payload["metadata"] = _metadata(metadata)
        if not isinstance(stream, bool):
            raise InvalidJobError(f"stream must be true or false, got {_shown(stream)}")
        if stream:
            payload["stream"] = True
        if (tier := _tier(tier, stream, checked_params)) != LIVE_TIER:
            payload["tier"] = tier
        if webhook_url is not None:
            try:
                payload["webhook_url"] = check_url(webhook_url, webhook_hosts)
            except ValueError as e:
                raise InvalidJobError(str(e)) from None
        if priority is not None and check_priority(priority) != DEFAULT_PRIORITY:
            payload["priority"] = priority
        if fairness_key is not None and check_fairness_key(fairness_key) != DEFAULT_FAIRNESS_KEY:
            payload["fairness_key"] = fairness_key
        payload.update(_delivery(trace, deadline_s, deadline, fallbacks, model))
        return cls._checked(job_id, payload, max_payload_bytes, queue)

    @classmethod
    def from_payload(cls, job_id: str, payload: Any, max_payload_bytes: int, queue: str = DEFAULT_QUEUE) -> PromptJob:
        """Validate a payload read from ``queue`` (the worker's side of :meth:`build`)."""
        if not isinstance(payload, dict):
            raise InvalidJobError("job payload is not a JSON object")
        known = {
            *("messages", "model", "params", "metadata", "stream", "priority", "fairness_key", "endpoint", "input"),
            *("trace", "deadline", "fallbacks", "tier", "webhook_url"),
        }
        unknown = set(payload) - known
        if unknown:
            raise InvalidJobError(f"job payload has unknown fields: {', '.join(sorted(unknown))}")
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidJobError("params must be an object")
        return cls.build(
            messages=payload.get("messages"),
            model=payload.get("model"),
            job_id=job_id,
            metadata=payload.get("metadata"),
            stream=payload.get("stream", False),
            priority=payload.get("priority"),
            fairness_key=payload.get("fairness_key"),
            endpoint=payload.get("endpoint"),
            input=payload.get("input"),
            trace=payload.get("trace"),
            deadline=payload.get("deadline"),
            fallbacks=payload.get("fallbacks"),
            tier=payload.get("tier"),
            webhook_url=payload.get("webhook_url"),
            queue=queue,
            max_payload_bytes=max_payload_bytes,
            **params,
        )

    @classmethod
    def _checked(cls, job_id: str, payload: dict[str, Any], max_payload_bytes: int, queue: str) -> PromptJob:
        for name, value in payload.items():
            if isinstance(value, dict | list) and not _shallow(value, MAX_DEPTH):
                raise InvalidJobError(f"{_part(name)} is nested more than {MAX_DEPTH} levels deep")
        asked = {k: v for k, v in payload.items() if k not in DELIVERY_FIELDS}
        delivery = {k: payload[k] for k in DELIVERY_FIELDS if k in payload}
        try:
            asked_json = dumps_sorted(asked)  # (never empty: a model and a request are always there)
            raw = asked_json.encode()
            delivery_json = dumps(delivery) if delivery else ""
            payload_json = asked_json[:-1] + "," + delivery_json[1:] if delivery else asked_json
            size = len(raw) + (len(delivery_json.encode()) - 1 if delivery else 0)
        except UnicodeEncodeError:  # a lone surrogate ("\ud83d"): not text any API or Redis client takes
            part = next((n for n, v in payload.items() if not _encodable(v)), "the request")
            raise InvalidJobError(f"{_part(part)} holds a lone surrogate (text that is not valid Unicode)") from None
        except (TypeError, ValueError) as e:
            part = "metadata" if "metadata" in payload and not _serialisable(payload["metadata"]) else "params"
            raise InvalidJobError(f"{part} must be JSON-serialisable: {_bounded(str(e))}") from None
        if size > max_payload_bytes:
            raise InvalidJobError(
                f"payload is {size} bytes, over the limit of {max_payload_bytes} (PROMPTQ_MAX_PAYLOAD_BYTES)"
            )
        return cls(
            job_id=job_id,
            messages=payload.get("messages", []),
            model=payload["model"],
            params=payload.get("params", {}),
            metadata=payload.get("metadata"),
            payload_json=payload_json,
            stream=payload.get("stream", False),
            priority=payload.get("priority", DEFAULT_PRIORITY),
            fairness_key=payload.get("fairness_key", DEFAULT_FAIRNESS_KEY),
            endpoint=payload.get("endpoint", CHAT_ENDPOINT),
            input=payload.get("input"),
            trace=payload.get("trace"),
            deadline=payload.get("deadline"),
            fallbacks=tuple(payload.get("fallbacks", ())),
            queue=queue,
            tier=payload.get("tier", LIVE_TIER),
            webhook_url=payload.get("webhook_url"),
            request=hashlib.blake2b(raw, digest_size=8).hexdigest(),
        )


def _tenant_job_id(tenant: Any, job_id: Any) -> str:
    """A tenant's job's id in Redis: ``{tenant}/{its own id}`` (a new one when none is given)."""
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise InvalidJobError(f"tenant must be 1 to 32 of a-z 0-9 _ -, got {_shown(tenant)}")
    if job_id is not None and (not isinstance(job_id, str) or "/" in job_id):
        raise InvalidJobError("with tenant, job_id is the tenant's own id (without a tenant/)")
    return f"{tenant}/{new_job_id() if job_id is None else job_id}"


def _job_id(job_id: Any) -> str:
    if job_id is None:
        return new_job_id()
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidJobError(
            f"job_id must be 1 to 200 of A-Z a-z 0-9 _ . : @ + = ~ - (after an optional tenant/), got {_shown(job_id)}"
        )
    return job_id


def _tier(tier: Any, stream: Any, params: Mapping[str, Any]) -> str:
    if tier is None:
        return LIVE_TIER
    if tier not in TIERS:
        raise InvalidJobError(f"tier must be one of {', '.join(TIERS)}, got {_shown(tier)}")
    if tier == BATCH_TIER and stream is True:
        raise InvalidJobError("a batch-tier job cannot stream (its answer comes in one piece, hours later)")
    if tier != LIVE_TIER and "service_tier" in params:
        raise InvalidJobError(f"service_tier is set by the tier ({tier}): give one or the other")
    return str(tier)


def check_queue(name: Any, what: str = "queue") -> str:
    """``name`` as given, if it is a queue name (``QUEUE_NAME_RE``); else :class:`InvalidJobError`."""
    if not isinstance(name, str) or not QUEUE_NAME_RE.fullmatch(name):
        raise InvalidJobError(f"{what} must be 1 to 64 of A-Z a-z 0-9 _ . - (got {_shown(name)})")
    if name in RESERVED_QUEUE_NAMES:
        raise InvalidJobError(f"{what} {name!r} is reserved (the tag of keys that belong to no queue)")
    return name


def _shown(value: Any) -> str:
    """A bad value as an error shows it: a number as it is, a string's first 40 characters
    (escaped), anything else by its type."""
    if value is None or isinstance(value, bool | int | float):
        return _bounded(repr(value))
    if not isinstance(value, str):
        return type(value).__name__
    return ascii(value[:40]) + (f" and {len(value) - 40} more characters" if len(value) > 40 else "")


def _bounded(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _part(name: str) -> str:
    """A payload field by the name the caller gave it."""
    return "params" if name == "params" else name


def _shallow(value: Any, limit: int) -> bool:
    """``value`` nests lists and objects at most ``limit`` deep (checked without recursion)."""
    level: list[Any] = [value]
    for _ in range(limit):
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                deeper.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                deeper.extend(v for v in item if isinstance(v, dict | list))
        if not deeper:
            return True
        level = deeper
    return False


def _encodable(value: Any) -> bool:
    try:
        dumps(value).encode()
    except (UnicodeEncodeError, TypeError, ValueError):
        return False
    return True


UNPRINTABLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Unicode categories a name promptq prints may not hold: controls (C0 and C1), format characters
(bidi overrides, zero-width), surrogates, private use, unassigned, line and paragraph separators."""


def printable(text: str) -> bool:
    """``text`` holds no character of :data:`UNPRINTABLE_CATEGORIES`."""
    return (text.isascii() and text.isprintable()) or all(
        unicodedata.category(c) not in UNPRINTABLE_CATEGORIES for c in text
    )


def escaped(text: str) -> str:
    """``text`` as a terminal or a log may show it: characters of :data:`UNPRINTABLE_CATEGORIES`
    written as ``\\x..``/``\\u....`` escapes."""
    if printable(text):
        return text
    return "".join(c if unicodedata.category(c) not in UNPRINTABLE_CATEGORIES else ascii(c)[1:-1] for c in text)


def check_priority(priority: Any) -> int:
    """``priority`` as given, if it is an integer from 0 to 9; else :class:`InvalidJobError`."""
    if not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITIES:
        raise InvalidJobError(f"priority must be an integer from 0 (runs first) to 9 (last), got {_shown(priority)}")
    return priority


def valid_batch_name(name: str) -> str:
    """``name`` as given, if it is a batch name (``BATCH_NAME_RE``); else ``ValueError``."""
    if not BATCH_NAME_RE.fullmatch(name):
        raise ValueError(f"batch name {_shown(name)} must be 1 to 100 letters, digits, '_', '.' or '-'")
    return name


def check_fairness_key(key: Any, what: str = "fairness_key") -> str:
    """``key`` as given, if it is a string of 1 to 128 bytes (UTF-8) of printable characters (no
    controls, format or bidi characters: see :func:`printable`)."""
    if not isinstance(key, str):
        raise InvalidJobError(f"{what} must be a string, got {type(key).__name__}")
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate
        size = 0
    if not 0 < size <= FAIRNESS_KEY_MAX_BYTES or not printable(key):
        raise InvalidJobError(
            f"{what} must be 1 to {FAIRNESS_KEY_MAX_BYTES} bytes (UTF-8) of printable characters, got {_shown(key)}"
        )
    return key


def _serialisable(value: Any) -> bool:
    try:
        dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def check_model(model: Any, what: str = "model") -> str:
    """``model`` as given, if it is a model name (:data:`MODEL_RE`); else :class:`InvalidJobError`."""
    if not isinstance(model, str) or not MODEL_RE.fullmatch(model):
        raise InvalidJobError(
            f"{what} must be a model name of 1 to {MODEL_MAX_CHARS} of A-Z a-z 0-9 . _ : / @ + -, got {_shown(model)}"
        )
    return model


def _model(model: Any, what: str = "model") -> str | None:
    return None if model is None else check_model(model, what)


def _delivery(trace: Any, deadline_s: Any, deadline: Any, fallbacks: Any, model: Any) -> dict[str, Any]:
    """The payload's fields about how the job is delivered: its trace context, deadline and fallbacks."""
    fields: dict[str, Any] = {}
    if trace is not None:
        try:
            fields["trace"] = check_trace(trace)
        except ValueError as e:
            raise InvalidJobError(str(e)) from None
    if (at := _deadline(deadline_s, deadline)) is not None:
        fields["deadline"] = at
    if fallbacks is not None and (chain := _fallbacks(fallbacks, model)):
        fields["fallbacks"] = chain
    return fields


def _deadline(deadline_s: Any, deadline: Any) -> float | None:
    """The job's deadline as Unix time: ``deadline_s`` from now, or ``deadline`` as given."""
    if deadline_s is not None and deadline is not None:
        raise InvalidJobError("give deadline_s (seconds from now) or deadline (Unix time), not both")
    value, name = (deadline_s, "deadline_s") if deadline_s is not None else (deadline, "deadline")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidJobError(f"{name} must be a number, got {_shown(value)}")
    at = time.time() + value if name == "deadline_s" else float(value)
    if name == "deadline_s" and not 0 < value <= MAX_DEADLINE_S:
        raise InvalidJobError(
            f"deadline_s must be more than 0 and at most {MAX_DEADLINE_S} seconds, got {_shown(value)}"
        )
    if name == "deadline" and at <= 0:  # (no upper bound: a worker reads it again, by its own clock)
        raise InvalidJobError(f"deadline must be a Unix time (seconds), got {_shown(value)}")
    return round(at, 3)


def _fallbacks(fallbacks: Any, model: Any) -> list[str]:
    if not isinstance(fallbacks, list | tuple) or len(fallbacks) > MAX_FALLBACKS:
        raise InvalidJobError(f"fallbacks must be a list of at most {MAX_FALLBACKS} model names")
    chain = [m for m in fallbacks if _model(m, "each of fallbacks") is not None]
    if len(chain) != len(fallbacks):
        raise InvalidJobError("fallbacks may not hold null")
    if model in chain or len(set(chain)) != len(chain):
        raise InvalidJobError("fallbacks may not name the job's model, or a model twice")
    return chain


def _request(endpoint: str, prompt: Any, messages: Any, value: Any, stream: Any) -> dict[str, Any]:
    """What the job asks: a chat job's messages, another endpoint's input (``prompt`` stands for
    one user message, or for the input)."""
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise InvalidJobError("prompt must be a non-empty string")
    if endpoint == CHAT_ENDPOINT:
        if value is not None:
            raise InvalidJobError(
                f"input is for {EMBEDDINGS_ENDPOINT} and {RESPONSES_ENDPOINT}; a chat job takes prompt or messages"
            )
        if (prompt is None) == (messages is None):
            raise InvalidJobError("give exactly one of prompt or messages")
        return {"messages": _messages(messages if prompt is None else [{"role": "user", "content": prompt}])}
    if messages is not None:
        raise InvalidJobError(f"messages is for {CHAT_ENDPOINT}; a {endpoint} job takes input (or prompt)")
    if (prompt is None) == (value is None):
        raise InvalidJobError("give exactly one of prompt or input")
    value = prompt if value is None else value
    if endpoint == EMBEDDINGS_ENDPOINT:
        if stream is True:
            raise InvalidJobError(f"stream is not possible for {EMBEDDINGS_ENDPOINT}")
        return {"endpoint": endpoint, "input": _embedding_input(value)}
    return {"endpoint": endpoint, "input": _response_input(value)}


def _endpoint(endpoint: Any) -> str:
    if endpoint is None:
        return CHAT_ENDPOINT
    if endpoint not in ENDPOINTS:
        raise InvalidJobError(f"endpoint must be one of {', '.join(ENDPOINTS)}, got {_shown(endpoint)}")
    return str(endpoint)


def _params(params: Mapping[str, Any], endpoint: str = CHAT_ENDPOINT) -> dict[str, Any]:
    out: dict[str, Any] = {}
    table = PARAMS_OF[endpoint]
    for name, value in params.items():
        spec = table.get(name)
        if spec is None:
            hint = "; n is not supported (submit n jobs)" if name == "n" else ""
            where = "" if endpoint == CHAT_ENDPOINT else f" for {endpoint}"
            raise InvalidJobError(
                f"unknown parameter {_shown(name)}{where} (pass server-specific ones in extra_body){hint}"
            )
        if value is None:
            continue
        expected, check = spec
        if not check(value):
            raise InvalidJobError(f"{name} must be {expected}, got {_shown(value)}")
        if name == "extra_body":
            _extra_body(value, table)
        out[name] = value
    return out


def _extra_body(extra: dict[str, Any], table: Mapping[str, Any]) -> None:
    """``extra_body`` adds fields a server understands; it may not replace one promptq sets or checks."""
    if len(extra) > MAX_EXTRA_BODY_KEYS:
        raise InvalidJobError(f"extra_body may hold at most {MAX_EXTRA_BODY_KEYS} fields")
    for key in extra:
        if not isinstance(key, str) or not EXTRA_BODY_KEY_RE.fullmatch(key):
            raise InvalidJobError(f"extra_body: {_shown(key)} is not a field name (A-Z a-z 0-9 _ . -, up to 64)")
        if key in OWNED_FIELDS:
            raise InvalidJobError(f"extra_body may not set {key}: promptq sets it from the job")
        if key in table:
            raise InvalidJobError(f"extra_body may not set {key}: pass it as the parameter {key}, where it is checked")


def _metadata(metadata: Any) -> dict[str, Any]:
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise InvalidJobError("metadata must be a dict with string keys")
    return metadata


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidJobError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise InvalidJobError(f"{where} must be an object with role and content")
        unknown = set(m) - MESSAGE_KEYS
        if unknown:
            raise InvalidJobError(f"{where} has unknown fields: {', '.join(sorted(_shown(k) for k in unknown))[:200]}")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidJobError(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {_shown(role)}")
        content = m.get("content")
        if role == "assistant" and content is None and m.get("tool_calls"):
            continue
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise InvalidJobError(f"{where} (role tool) needs a tool_call_id string")
        if isinstance(content, str):
            if not content.strip():
                raise InvalidJobError(f"{where}.content must not be empty")
        elif isinstance(content, list):
            if not content or not all(isinstance(p, dict) and "type" in p for p in content):
                raise InvalidJobError(f"{where}.content must be a non-empty list of parts with a type")
        else:
            raise InvalidJobError(f"{where}.content must be a string or a list of content parts")
    return messages


def _tokens(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def embedding_inputs(value: Any) -> list[Any]:
    """A valid embeddings ``input`` as its inputs, one an embedding: a string or a token array alone
    is one input, a list of them is that many."""
    return [value] if isinstance(value, str) or _tokens(value) else list(value)


def _embedding_input(value: Any) -> Any:
    """A string, a list of strings, a token array or a list of token arrays (1 to 2,048 inputs)."""
    many = isinstance(value, list) and value and all(isinstance(v, str) or _tokens(v) for v in value)
    if not (isinstance(value, str) or _tokens(value) or many):
        raise InvalidJobError("input must be a string, a list of strings, a token array or a list of token arrays")
    inputs = embedding_inputs(value)
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidJobError(
            f"input holds {len(inputs)} inputs, over the {MAX_EMBEDDING_INPUTS} one request may carry"
        )
    if any(isinstance(i, str) and not i.strip() for i in inputs):
        raise InvalidJobError("input must not hold an empty string")
    return value


def _response_input(value: Any) -> Any:
    """A non-empty string, or a non-empty list of input items (objects with a type or a role)."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidJobError("input must not be empty")
        return value
    if not isinstance(value, list) or not value:
        raise InvalidJobError("input must be a non-empty string or a non-empty list of input items")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not ("type" in item or "role" in item):
            raise InvalidJobError(f"input[{i}] must be an object with a type or a role")
    return value
