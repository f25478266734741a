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

Keys: ``promptq:limit:{model}:rpm``, ``...:tpm`` (theoretical arrival times, ms) and
``...:cooldown``. With ``PROMPTQ_LIMIT_SCOPE=process`` each worker process keeps its own keys
(for workers that each have an API key of their own).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import socket
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from producer.validation import PromptJob
from worker.config import Limit
from worker.redis_conn import persist
from worker.retry import parse_duration_s

__all__ = ["BudgetWaitTooLongError", "LimitTooSmallError", "Limiter", "estimate_tokens", "server_budget_wait_s"]

LIMIT_KEY_PREFIX = "promptq:limit:"
LIMIT_USE = 0.98
"""Requests and tokens are spaced for this share of each limit: a request that leaves a little late
and the next one on time still fall in different seconds of a server counting per second."""
BURST_S = 0.0
"""No burst: the budget is never spent faster than its pace, not even after an idle spell."""
_NO_MAX_WAIT_MS = 10**12

# KEYS: rpm TAT, tpm TAT, cool-down. ARGV: rpm, tpm (0: none), tokens asked, burst (s), max wait (ms).
# Returns {1, wait ms} when a reservation was made (go after wait ms), {0, wait ms} when none was
# (a cool-down runs, or the wait is over the maximum): ask again after that wait, or give up.
_RESERVE_LUA = """#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = redis.call('PTTL', KEYS[3])
if cooldown > 0 then return {0, cooldown} end
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local burst_ms, max_wait_ms = tonumber(ARGV[4]) * 1000, tonumber(ARGV[5])
local at, tat_r, tat_t, step, cost = now, nil, nil, 0, 0
if rpm > 0 then
  step = 60000 / rpm
  tat_r = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  at = math.max(at, tat_r + step - math.max(burst_ms, step))
end
if tpm > 0 and tokens > 0 then
  cost = tokens * 60000 / tpm
  tat_t = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  at = math.max(at, tat_t + cost - math.max(burst_ms, cost))
end
local wait = math.ceil(at - now)
if wait > max_wait_ms then return {0, wait} end
if tat_r then
  local new = math.max(tat_r, at) + step
  redis.call('SET', KEYS[1], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
if tat_t then
  local new = math.max(tat_t, at) + cost
  redis.call('SET', KEYS[2], tostring(new), 'PX', math.ceil(new - now) + 60000)
end
return {1, wait}
"""

# KEYS: tpm TAT. ARGV: tpm, tokens to add (negative: a refund). Never moves the TAT before now.
_SETTLE_LUA = """#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local moved = math.max(tat + tonumber(ARGV[2]) * 60000 / tonumber(ARGV[1]), now)
redis.call('SET', KEYS[1], tostring(moved), 'PX', math.ceil(moved - now) + 60000)
return 1
"""

# KEYS: cool-down. ARGV: ms. Lengthens the cool-down to ms from now; never shortens it.
_COOL_DOWN_LUA = """#!lua flags=allow-oom
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
"""


class LimitTooSmallError(ValueError):
    """One request needs more tokens than the model's whole TPM limit: it can never run."""


class BudgetWaitTooLongError(Exception):
    """The budget frees up only after ``wait_s``: the job should wait in the queue, not in a slot."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"rate limit budget free in {wait_s:.1f} s")
        self.wait_s = wait_s


def estimate_tokens(job: PromptJob, completion_estimate: int) -> int:
    """Tokens a request may use, offline: about 4 characters a token for the prompt, plus the
    completion's ``max_tokens`` / ``max_completion_tokens`` or ``completion_estimate``."""
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
        self.prefix = LIMIT_KEY_PREFIX + ("" if shared else _process_scope())
        self._reserve = redis.register_script(_RESERVE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self._cool_down = redis.register_script(_COOL_DOWN_LUA)
        self.redis = redis

    def _keys(self, model: str) -> list[str]:
        base = self.prefix + model
        return [base + ":rpm", base + ":tpm", base + ":cooldown"]

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
        keys = self._keys(model)
        while True:
            left_ms = _NO_MAX_WAIT_MS if math.isinf(max_wait_s) else max(0, round((max_wait_s - waited_s) * 1000))
            rpm, tpm = (limit.rpm or 0) * LIMIT_USE, (limit.tpm or 0) * LIMIT_USE
            args = [rpm, tpm, tokens if limit.tpm else 0, BURST_S, left_ms]
            reply: Any = await persist(functools.partial(self._reserve, keys=keys, args=args))
            reserved, wait_s = int(reply[0]), int(reply[1]) / 1000
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
            args = [tpm * LIMIT_USE, used - estimated]
            await persist(lambda: self._settle(keys=[self._keys(model)[1]], args=args))

    async def cool_down(self, model: str, seconds: float) -> None:
        """Pause every worker's calls to ``model`` for ``seconds`` (a 429 or the server's headers said
        so); a longer cool-down already running is kept."""
        if self.limit_for(model).rpm or self.limit_for(model).tpm:
            ms = max(1, round(seconds * 1000))
            await persist(lambda: self._cool_down(keys=[self._keys(model)[2]], args=[ms]))


def _process_scope() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:"
