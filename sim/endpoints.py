"""What each endpoint of the simulator takes and answers, without the I/O: Chat Completions,
Embeddings and the Responses API.

:func:`parse` reads a request body into an :class:`Answer`, computed once (the TPM limit prices it,
the reply sends it); :func:`plain_body` is the JSON answer and :func:`stream` the Server-Sent
Events of a streamed one. Embedding vectors are deterministic: the same input, model and
dimensions give the same unit vector, as floats or as base64 little-endian float32 (the API's
``encoding_format``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sim.behaviour import count_tokens, message_text, reply_text

__all__ = ["CHAT", "EMBEDDINGS", "ENDPOINTS", "RESPONSES", "Answer", "BadRequest", "parse", "plain_body", "stream"]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
ENDPOINTS = (CHAT, EMBEDDINGS, RESPONSES)
MAX_EMBEDDING_INPUTS = 2048
DIMENSIONS = {"text-embedding-3-large": 3072}
DEFAULT_DIMENSIONS = 1536
"""text-embedding-3-small's and ada-002's."""


class BadRequest(ValueError):
    """The body is not a request this endpoint takes: 400 with this message."""


@dataclass
class Answer:
    endpoint: str
    body: dict[str, Any]
    prompt: str
    """What the call log shows (the last user message, or the first input)."""
    text: str = ""
    finish: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)
    token_cost: int = 0
    """What the TPM limit charges: the input, plus the output it may produce (its cap when set)."""
    vectors: list[list[float]] = field(default_factory=list)

    @property
    def streamed(self) -> bool:
        return self.endpoint != EMBEDDINGS and bool(self.body.get("stream"))


def parse(endpoint: str, raw: bytes, reply_mode: str) -> Answer:
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequest("the body must be a JSON object with a model")
    if endpoint == EMBEDDINGS:
        return _embeddings(body)
    if endpoint == RESPONSES:
        return _responses(body, reply_mode)
    return _chat(body, reply_mode)


def _capped(text: str, cap: Any) -> tuple[str, bool]:
    if isinstance(cap, int) and count_tokens(text) > cap:
        return text[: cap * 4], True
    return text, False


def _chat(body: dict[str, Any], reply_mode: str) -> Answer:
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("body must be JSON with messages and model")
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    text, cut = _capped(reply_text(reply_mode, messages), cap)
    prompt_tokens = sum(count_tokens(message_text(m)) + 3 for m in messages)
    completion_tokens = count_tokens(text)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    users = [m for m in messages if m.get("role") == "user"]
    return Answer(
        CHAT,
        body,
        prompt=str(users[-1].get("content")) if users else "",
        text=text,
        finish="length" if cut else "stop",
        usage=usage,
        token_cost=prompt_tokens + (cap if isinstance(cap, int) else completion_tokens),
    )


def _inputs(value: Any) -> list[str | list[int]]:
    """An embeddings ``input``: a string, a list of strings, a token array or a list of token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [value]
    if isinstance(value, list) and value:
        ok = all(
            isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(t, int) for t in v)) for v in value
        )
        if ok:
            return list(value)
    raise BadRequest("input must be a string, a list of strings, a token array or a list of token arrays")


def _embeddings(body: dict[str, Any]) -> Answer:
    inputs = _inputs(body.get("input"))
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs a request, got {len(inputs)}")
    if any(i == "" for i in inputs):
        raise BadRequest("an input may not be empty")
    dimensions = body.get("dimensions", DIMENSIONS.get(body["model"], DEFAULT_DIMENSIONS))
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 3072:
        raise BadRequest("dimensions must be an integer from 1 to 3072")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise BadRequest("encoding_format must be float or base64")
    tokens = sum(count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)
    return Answer(
        EMBEDDINGS,
        body,
        prompt=inputs[0] if isinstance(inputs[0], str) else json.dumps(inputs[0]),
        usage={"prompt_tokens": tokens, "total_tokens": tokens},
        token_cost=tokens,
        vectors=[vector(body["model"], i, dimensions) for i in inputs],
    )


def vector(model: str, value: str | list[int], dimensions: int) -> list[float]:
    """A unit vector that depends only on the model, the input and the dimensions (float32 values)."""
    seed = hashlib.sha256(json.dumps([model, value, dimensions]).encode()).digest()
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(x / norm for x in raw))))


def _response_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if isinstance(value, str) and value:
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        messages = [item for item in value if item.get("type", "message") == "message" and "role" in item]
        if messages:
            return messages
    raise BadRequest("input must be a non-empty string or a list of input items with messages")


def _responses(body: dict[str, Any], reply_mode: str) -> Answer:
    messages = _response_messages(body)
    cap = body.get("max_output_tokens")
    text, cut = _capped(reply_text(reply_mode, messages), cap)
    instructions = body.get("instructions")
    input_tokens = sum(count_tokens(message_text(m)) + 3 for m in messages)
    input_tokens += count_tokens(instructions) if isinstance(instructions, str) else 0
    output_tokens = count_tokens(text)
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }
    users = [m for m in messages if m.get("role") == "user"]
    return Answer(
        RESPONSES,
        body,
        prompt=message_text(users[-1]) if users else "",
        text=text,
        finish="length" if cut else "stop",
        usage=usage,
        token_cost=input_tokens + (cap if isinstance(cap, int) else output_tokens),
    )


# -- answers --------------------------------------------------------------------------------------
def plain_body(answer: Answer, serial: int) -> dict[str, Any]:
    if answer.endpoint == EMBEDDINGS:
        return _embedding_body(answer)
    if answer.endpoint == RESPONSES:
        return _response_body(answer, serial, done=True)
    return {
        "id": f"chatcmpl-sim-{serial}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.body["model"],
        "system_fingerprint": "promptq-sim",
        "usage": answer.usage,
        "choices": [
            {
                "index": 0,
                "finish_reason": answer.finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
            }
        ],
    }


def _embedding_body(answer: Answer) -> dict[str, Any]:
    as_base64 = answer.body.get("encoding_format") == "base64"
    data = []
    for i, vec in enumerate(answer.vectors):
        value: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": answer.body["model"], "usage": answer.usage}


def _message_item(answer: Answer, serial: int, done: bool) -> dict[str, Any]:
    content = [{"type": "output_text", "text": answer.text, "annotations": []}] if done else []
    return {
        "id": f"msg_sim_{serial}",
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": content,
    }


def _response_body(answer: Answer, serial: int, done: bool) -> dict[str, Any]:
    cut = answer.finish == "length"
    return {
        "id": f"resp_sim_{serial}",
        "object": "response",
        "created_at": int(time.time()),
        "status": ("incomplete" if cut else "completed") if done else "in_progress",
        "incomplete_details": {"reason": "max_output_tokens"} if done and cut else None,
        "error": None,
        "model": answer.body["model"],
        "instructions": answer.body.get("instructions"),
        "max_output_tokens": answer.body.get("max_output_tokens"),
        "output": [_message_item(answer, serial, True)] if done else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "usage": answer.usage if done else None,
    }


def stream(answer: Answer, serial: int) -> Iterator[tuple[bool, bytes]]:
    """The streamed answer's events, each as its SSE bytes; True marks a piece of the text (after
    which the server applies its stream faults and delays)."""
    pieces = [answer.text[i : i + 16] for i in range(0, len(answer.text), 16)] or [""]
    if answer.endpoint == RESPONSES:
        yield from _response_events(answer, serial, pieces)
        return
    base = {
        "id": f"chatcmpl-sim-{serial}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": answer.body["model"],
        "system_fingerprint": "promptq-sim",
    }
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield True, _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield False, _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish}]})
    if (answer.body.get("stream_options") or {}).get("include_usage"):
        yield False, _sse({**base, "choices": [], "usage": answer.usage})
    yield False, b"data: [DONE]\n\n"


def _response_events(answer: Answer, serial: int, pieces: list[str]) -> Iterator[tuple[bool, bytes]]:
    item_id = f"msg_sim_{serial}"
    numbers = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, "sequence_number": next(numbers), **fields}, kind)

    part = {"type": "output_text", "text": "", "annotations": []}
    yield False, event("response.created", response=_response_body(answer, serial, done=False))
    yield False, event("response.in_progress", response=_response_body(answer, serial, done=False))
    yield False, event("response.output_item.added", output_index=0, item=_message_item(answer, serial, False))
    yield False, event("response.content_part.added", item_id=item_id, output_index=0, content_index=0, part=part)
    for piece in pieces:
        yield (
            True,
            event(
                "response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=piece, logprobs=[]
            ),
        )
    place = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield False, event("response.output_text.done", **place, text=answer.text, logprobs=[])
    yield False, event("response.content_part.done", **place, part={**part, "text": answer.text})
    yield False, event("response.output_item.done", output_index=0, item=_message_item(answer, serial, True))
    final = _response_body(answer, serial, done=True)
    kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    yield False, event(kind, response=final)


def _sse(data: dict[str, Any], kind: str | None = None) -> bytes:
    head = f"event: {kind}\n" if kind else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()
