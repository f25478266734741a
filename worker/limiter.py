"""Rate limits: what a call may cost (its token estimate), what a server's own headers say about its
budget, and the errors of a budget that cannot be had. The budgets themselves (a GCRA per backend and
model, shared through Redis) are taken by :mod:`worker.routing`, which chooses the backend too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from promptq_core.contract import EMBEDDINGS_ENDPOINT, RESPONSES_ENDPOINT
from promptq_core.validation import PromptJob, embedding_inputs
from worker.retry import parse_duration_s

__all__ = ["LIMIT_USE", "BudgetWaitTooLongError", "LimitTooSmallError", "estimate_tokens", "server_budget_wait_s"]

LIMIT_USE = 0.98
"""Requests and tokens are spaced for this share of each limit: a request that leaves a little late
and the next one on time still fall in different seconds of a server counting per second."""


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
