"""Rate limits shared by every worker: requests and tokens per minute, per model, kept in Redis.

Each limit is a GCRA (generic cell rate algorithm) over Redis time: the budget is spread evenly
over the minute, with a small burst, as OpenAI enforces a per-minute limit over shorter periods.
Before a call the worker asks for one request and an estimate of its tokens (prompt + the
completion it may produce); after it, the estimate is settled against the real ``usage``. A 429
from the API sets a shared cool-down, so every worker pauses instead of each finding out alone.
One Lua script does each step atomically; a worker that must wait sleeps the time the script
returns (no busy loop).

Keys: ``promptq:limit:{model}:rpm``, ``...:tpm`` (theoretical arrival times, ms) and
``...:cooldown``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from redis.asyncio import Redis

from producer.validation import PromptJob
from worker.config import Limit
from worker.redis_conn import persist

__all__ = ["BudgetWaitTooLongError", "LimitTooSmallError", "Limiter", "estimate_tokens"]

LIMIT_KEY_PREFIX = "promptq:limit:"
BURST_S = 1.0
"""Each limit lets through at most about one second's worth of its budget at once."""

# KEYS: rpm TAT, tpm TAT, cool-down. ARGV: rpm, tpm (0: none), tokens asked, burst (s).
# Returns 0 when admitted (and records it), else the wait in ms before asking again.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cooldown = redis.call('PTTL', KEYS[3])
if cooldown > 0 then return cooldown end
local rpm, tpm, tokens, burst_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]) * 1000
local wait, new_r, new_t = 0, nil, nil
if rpm > 0 then
  local step = 60000 / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  local allowance = math.max(burst_ms, step)
  if tat + step - now > allowance then wait = math.max(wait, tat + step - now - allowance) else new_r = tat + step end
end
if tpm > 0 and tokens > 0 then
  local cost = tokens * 60000 / tpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  local allowance = math.max(burst_ms, cost)
  if tat + cost - now > allowance then wait = math.max(wait, tat + cost - now - allowance) else new_t = tat + cost end
end
if wait > 0 then return math.ceil(wait) end
if new_r then redis.call('SET', KEYS[1], tostring(new_r), 'PX', 120000) end
if new_t then redis.call('SET', KEYS[2], tostring(new_t), 'PX', 120000) end
return 0
"""

# KEYS: tpm TAT. ARGV: tpm, tokens to add (negative: a refund). Never moves the TAT before now.
_SETTLE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local moved = math.max(tat + tonumber(ARGV[2]) * 60000 / tonumber(ARGV[1]), now)
redis.call('SET', KEYS[1], tostring(moved), 'PX', 120000)
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


class Limiter:
    """Acquire before a call, settle after it, cool down on a 429: for every worker at once."""

    def __init__(self, redis: Redis, default: Limit, per_model: dict[str, Limit]) -> None:
        self.default, self.per_model = default, per_model
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        self.redis = redis

    def limit_for(self, model: str) -> Limit:
        return self.per_model.get(model, self.default)

    @property
    def enabled(self) -> bool:
        return any((self.default.rpm, self.default.tpm)) or bool(self.per_model)

    async def acquire(self, model: str, tokens: int, max_wait_s: float = math.inf) -> float:
        """Wait until the model's budget admits one request of ``tokens``; return the seconds waited.

        Raises :class:`BudgetWaitTooLongError` instead of waiting past ``max_wait_s`` in all."""
        limit = self.limit_for(model)
        if not (limit.rpm or limit.tpm):
            return 0.0
        if limit.tpm and tokens > limit.tpm:
            raise LimitTooSmallError(
                f"the request may use {tokens} tokens, more than the {limit.tpm} tokens per minute allowed for {model}"
            )
        waited_s = 0.0
        keys = _keys(model)
        args = [limit.rpm or 0, limit.tpm or 0, tokens if limit.tpm else 0, BURST_S]
        while True:
            wait_ms: Any = await persist(lambda: self._acquire(keys=keys, args=args))
            if not wait_ms:
                return waited_s
            wait_s = int(wait_ms) / 1000
            if waited_s + wait_s > max_wait_s:
                raise BudgetWaitTooLongError(wait_s)
            await asyncio.sleep(wait_s)
            waited_s += wait_s

    async def settle(self, model: str, estimated: int, used: int) -> None:
        limit = self.limit_for(model)
        tpm = limit.tpm
        if tpm and used != estimated:
            await persist(lambda: self._settle(keys=[_keys(model)[1]], args=[tpm, used - estimated]))

    async def cool_down(self, model: str, seconds: float) -> None:
        """Pause every worker's calls to ``model`` for ``seconds`` (a 429 said so)."""
        ms = max(1, round(seconds * 1000))
        await self.redis.set(_keys(model)[2], "1", px=ms)


def _keys(model: str) -> list[str]:
    base = LIMIT_KEY_PREFIX + model
    return [base + ":rpm", base + ":tpm", base + ":cooldown"]
