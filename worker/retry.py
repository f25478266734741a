"""The retry policy, as small pure functions: how long to wait before the next attempt.

The worker is the only retry owner (the OpenAI client runs with ``max_retries=0``); a retry is
deferred in the queue, so it does not hold a concurrency slot while it waits.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "MAX_RETRY_AFTER_S", "backoff_s", "retry_after_s"]

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0
MAX_RETRY_AFTER_S = 600.0
"""A server's advice beyond this is capped (a misconfigured proxy must not park a job for a day)."""

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def backoff_s(attempt: int, advised_s: float | None = None, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The server's advice (``Retry-After``...) wins when given, plus up to 10 % jitter so that workers
    advised alike do not return in step; otherwise capped exponential backoff with equal jitter: a
    wait between half and all of the step (1 s, 2 s, 4 s... up to 60 s), so that failing jobs spread
    out but none comes back at once (full jitter could draw 0 ms, a retry the instant after a 5xx).
    """
    rng = rng or random.Random()
    if advised_s is not None:
        advised_s = min(max(advised_s, 0.0), MAX_RETRY_AFTER_S)
        return advised_s + rng.uniform(0, 0.1 * advised_s)
    step_s = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return rng.uniform(step_s / 2, step_s)


def parse_duration_s(text: str) -> float | None:
    """``x-ratelimit-reset-*`` durations as OpenAI writes them: ``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    text = text.strip()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def retry_after_s(headers: Mapping[str, str], *, now_s: float | None = None) -> float | None:
    """The wait a response advises, in seconds, or None.

    In order: ``retry-after-ms``; ``retry-after`` as seconds or an HTTP date; else the longest of the
    ``x-ratelimit-reset-requests`` / ``-tokens`` whose ``x-ratelimit-remaining-*`` is exhausted.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if (ms := _float(lower.get("retry-after-ms"))) is not None:
        return ms / 1000
    if (raw := lower.get("retry-after")) is not None:
        if (seconds := _float(raw)) is not None:
            return seconds
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))
    waits = [
        reset
        for kind in ("requests", "tokens")
        if _float(lower.get(f"x-ratelimit-remaining-{kind}")) == 0
        and (reset := parse_duration_s(lower.get(f"x-ratelimit-reset-{kind}", ""))) is not None
    ]
    return max(waits) if waits else None


def _float(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None
