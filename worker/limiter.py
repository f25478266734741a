"""Rate limits shared by every worker: requests and tokens per minute, per model, kept in Redis.

Each limit is a GCRA (generic cell rate algorithm) over Redis time: the budget is spread evenly
over the minute with no burst, at ``LIMIT_USE`` of the limit, since a server may enforce a
per-minute limit over shorter periods (OpenAI says it may: 10 requests in each second for 600 RPM).
Requests at most 60 / (rpm * 0.98) s apart never put more than the limit's share in any one second,
at the start of a run or after an idle spell alike, with 2 % left for timing jitter.
Before a call the worker *reserves* one request and an estimate of its tokens (prompt + the
completion it may produce): one Lua script returns the moment the reservation falls due, and the
worker sleeps until then. Reservations are handed out in the order they are asked for, so waiting
jobs go in roughly submit order, and a waiting job costs no further Redis calls (no polling herd).
After the call, the estimate is settled against the real ``usage``. A 429 from the API, or a
response saying the server's budget is spent, sets a shared cool-down, so every worker pauses
instead of each finding out alone.

Keys: ``promptq_core.contract.limit_keys`` (theoretical arrival times, ms, and the cool-down); the
scripts: ``worker/lua/limit_*.lua``. With ``PROMPTQ_LIMIT_SCOPE=process`` each worker process
keeps its own keys (for workers that each have an API key of their own).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from promptq_core.contract import EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT, Reply, limit_keys
from promptq_core.validation import PromptJob, embedding_inputs
from worker.config import Limit
from worker.retry import parse_duration_s
from worker.scripts import WorkerScript

__all__ = ["BudgetWaitTooLongError", "LimitTooSmallError", "Limiter", "estimate_tokens", "server_budget_wait_s"]

LIMIT_USE = 0.98
"""Requests and tokens are spaced for this share of each limit: a request that leaves a little late
and the next one on time still fall in different seconds of a server counting per second."""
_NO_MAX_WAIT_MS = 10**12


class LimitTooSmallError(ValueError):
    """One request needs more tokens than the model's whole TPM limit: it can never run."""


class BudgetWaitTooLongError(Exception):
    """The budget frees up only after ``wait_s``: the job should wait in the queue, not in a slot."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"rate limit budget free in {wait_s:.1f} s")
        self.wait_s = wait_s


def estimate_tokens(job: PromptJob, completion_estimate: int) -> int:
    """Tokens a request may use, offline: about 4 characters a token for the prompt (an embeddings
    or responses job's input; a token array counts its length), plus the completion's
    ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` or ``completion_estimate``
    (nothing for embeddings)."""
    if job.endpoint == EMBEDDINGS_ENDPOINT:
        inputs = embedding_inputs(job.input)
        return sum(len(i) if isinstance(i, list) else math.ceil(len(i) / 4) for i in inputs) or 1
    if job.endpoint == RESPONSES_ENDPOINT:
        prompt = math.ceil(len(json.dumps(job.input, ensure_ascii=False)) / 4) + 3
        instructions = job.params.get("instructions")
        prompt += math.ceil(len(instructions) / 4) if isinstance(instructions, str) else 0
        asked = job.params.get("max_output_tokens")
        return prompt + int(asked if isinstance(asked, int) else completion_estimate)
    chars = sum(len(json.dumps(m.get("content"), ensure_ascii=False)) for m in job.messages)
    prompt = math.ceil(chars / 4) + 4 * len(job.messages) + 3
    asked = job.params.get("max_completion_tokens") or job.params.get("max_tokens")
    return prompt + int(asked if isinstance(asked, int) else completion_estimate)


def server_budget_wait_s(headers: Mapping[str, str], tokens: int, elapsed_s: float) -> float:
    """How long to pause before the next call of about ``tokens``, by a successful response's
    ``x-ratelimit-*`` headers (lower-case names): 0 while the server's budget has room for it.

    The server counted its budget when the request arrived, ``elapsed_s`` ago; since then it has
    refilled at ``limit`` a minute. The wait is capped by the server's own ``reset`` time."""
    wait_s = 0.0
    for kind, needed in (("requests", 1), ("tokens", tokens)):
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
        if remaining is None or needed <= 0 or remaining >= needed:
            continue
        reset_s = parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}", ""))
        refill_s = (needed - remaining) * 60 / limit if limit else (reset_s or 0.0)
        if reset_s is not None:
            refill_s = min(refill_s, reset_s)
        wait_s = max(wait_s, refill_s - elapsed_s)
    return wait_s


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


class Limiter:
    """Reserve before a call, settle after it, cool down on a 429: for every worker at once."""

    def __init__(self, redis: Redis, default: Limit, per_model: dict[str, Limit], *, shared: bool = True) -> None:
        self.default, self.per_model = default, per_model
        self.scope = "" if shared else _process_scope()
        self._reserve = WorkerScript(redis, "limit_reserve", rides_out=True)
        self._settle = WorkerScript(redis, "limit_settle", rides_out=True)
        self._cool_down = WorkerScript(redis, "limit_cool_down", rides_out=True)
        self.redis = redis

    def keys(self, model: str) -> tuple[str, str, str]:
        """The model's keys: requests' TAT, tokens' TAT, cool-down."""
        return limit_keys(model, self.scope)

    def limit_for(self, model: str) -> Limit:
        return self.per_model.get(model, self.default)

    @property
    def enabled(self) -> bool:
        return any((self.default.rpm, self.default.tpm)) or bool(self.per_model)

    async def acquire(self, model: str, tokens: int, max_wait_s: float = math.inf) -> float:
        """Reserve one request of ``tokens`` in the model's budget and wait until it falls due;
        return the seconds waited.

        Raises :class:`BudgetWaitTooLongError` instead of waiting past ``max_wait_s`` in all (and
        then reserves nothing)."""
        limit = self.limit_for(model)
        if not (limit.rpm or limit.tpm):
            return 0.0
        if limit.tpm and tokens > limit.tpm:
            raise LimitTooSmallError(
                f"the request may use {tokens} tokens, more than the {limit.tpm} tokens per minute allowed for {model}"
            )
        waited_s = 0.0
        rpm_tat, tpm_tat, cooldown = self.keys(model)
        while True:
            left_ms = _NO_MAX_WAIT_MS if math.isinf(max_wait_s) else max(0, round((max_wait_s - waited_s) * 1000))
            reply: Any = await self._reserve(
                rpm_tat=rpm_tat,
                tpm_tat=tpm_tat,
                cooldown=cooldown,
                rpm=(limit.rpm or 0) * LIMIT_USE,
                tpm=(limit.tpm or 0) * LIMIT_USE,
                tokens=tokens if limit.tpm else 0,
                max_wait_ms=left_ms,
            )
            reserved, wait_s = int(reply[0]) == Reply.RESERVED, int(reply[1]) / 1000
            if not reserved and waited_s + wait_s > max_wait_s:
                raise BudgetWaitTooLongError(wait_s)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                waited_s += wait_s
            if reserved:
                return waited_s

    async def settle(self, model: str, estimated: int, used: int) -> None:
        limit = self.limit_for(model)
        tpm = limit.tpm
        if tpm and used != estimated:
            await self._settle(tpm_tat=self.keys(model)[1], tpm=tpm * LIMIT_USE, tokens=used - estimated)

    async def cool_down(self, model: str, seconds: float) -> None:
        """Pause every worker's calls to ``model`` for ``seconds`` (a 429 or the server's headers said
        so); a longer cool-down already running is kept."""
        if self.limit_for(model).rpm or self.limit_for(model).tpm:
            await self._cool_down(cooldown=self.keys(model)[2], ms=max(1, round(seconds * 1000)))


def _process_scope() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:"
