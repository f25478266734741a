"""What the simulator answers: its knobs, its replies, its rate limit and its counters."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Bucket", "SimConfig", "SimStats", "Window", "chance", "count_tokens", "message_text", "reply_text"]


OUTAGES = ("", "503", "529", "refuse")
BATCH_HANGS = ("", "upload", "create", "content")


@dataclass
class SimConfig:
    """Every knob, settable at start (``python -m sim --help``) or at run time (``POST /_sim/config``)."""

    latency_ms: float = 0.0
    """Time before the answer (for a stream: before the first chunk)."""
    chunk_delay_ms: float = 0.0
    """Time between streamed chunks."""
    reply: str = "echo"
    """``echo`` (the last user message), ``demo`` (short canned answers) or any other text, sent as is."""
    require_api_key: str | None = None
    """When set, requests without ``Authorization: Bearer <this>`` get 401."""
    error_rate: float = 0.0
    """Share of completion requests answered with a status from ``error_statuses``."""
    error_statuses: list[int] = field(default_factory=lambda: [500])
    error_code: str | None = None
    """The error body's ``code`` (``insufficient_quota`` with status 429, for example)."""
    retry_after_ms: int | None = None
    """Sent as ``retry-after-ms`` and ``retry-after`` with injected errors."""
    reset_rate: float = 0.0
    """Share of requests whose connection is closed without an answer."""
    hang_rate: float = 0.0
    """Share of requests never answered (until the client gives up)."""
    malformed_rate: float = 0.0
    """Share of requests answered 200 with a body that is not JSON."""
    break_streams: int = 0
    """The next this many streamed answers break off (connection closed) after their first chunk."""
    rpm: int | None = None
    """Requests per minute; above it, 429 with ``retry-after-ms`` and ``x-ratelimit-*`` headers."""
    rpm_burst: int | None = None
    """Requests the limit lets through at once (default: one second's worth), as OpenAI enforces a
    per-minute limit over shorter periods."""
    tpm: int | None = None
    """Tokens per minute; a request costs its prompt tokens plus ``max_tokens`` (or
    ``max_completion_tokens``, or else its answer's tokens), taken when it arrives."""
    tpm_burst: int | None = None
    """Tokens the limit lets through at once (default: one second's worth)."""
    limit_window_s: float = 0.0
    """0: the limits are token buckets (above). Else each is enforced per fixed window of this many
    seconds on the clock (1: per calendar second), each allowing ``rpm`` (or ``tpm``) times
    ``limit_window_s / 60``, as a server enforcing a per-minute limit over shorter periods may."""
    outage: str = ""
    """A provider outage: ``503`` or ``529`` (every API request answered with that status at once),
    ``refuse`` (the port closed and every connection dropped: connection refused), or ``""`` (none)."""
    outage_s: float = 0.0
    """The outage ends by itself after this many seconds (0: when ``outage`` is set back to ``""``;
    ``refuse`` needs it, since the control routes are gone with the port)."""
    batch_delay_ms: float = 100.0
    """How long a batch (``/v1/batches``) stays ``in_progress`` before it ends."""
    batch_line_error_rate: float = 0.0
    """Share of a batch's lines answered with a 500 in its error file."""
    batch_expire: bool = False
    """Batches end ``expired`` (every line in the error file as ``batch_expired``) instead of ``completed``."""
    batch_hang: str = ""
    """A step of the Batch API done but never answered (the client waits until it gives up or dies):
    ``upload`` (the file is stored), ``create`` (the batch is created), ``content`` (half of a file's
    content is sent, then nothing); ``""``: none. For crash tests: a worker killed meanwhile."""
    hook_fail_first: int = 0
    """The webhook receiver (``POST /_sim/hooks/...``) answers the first this many deliveries 503."""
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown simulator settings: {', '.join(sorted(unknown))}")
        if changes.get("batch_hang", self.batch_hang) not in BATCH_HANGS:
            raise ValueError(f"batch_hang must be one of {', '.join(map(repr, BATCH_HANGS))}")
        if changes.get("outage", self.outage) not in OUTAGES:
            raise ValueError(f"outage must be one of {', '.join(map(repr, OUTAGES))}")
        if changes.get("outage", self.outage) == "refuse" and not changes.get("outage_s", self.outage_s):
            raise ValueError("outage 'refuse' needs outage_s (the control routes close with the port)")
        for name, value in changes.items():
            setattr(self, name, value)


@dataclass
class SimStats:
    requests: int = 0
    """API requests received (chat completions, embeddings, responses)."""
    completions: int = 0
    """Requests answered 200 with their answer (what a real API would bill)."""
    in_flight: int = 0
    peak_in_flight: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    """API requests by the model their body names."""
    deployments: dict[str, int] = field(default_factory=dict)
    """Azure-style requests (``/openai/deployments/{name}/...``), by ``"{name} {query}"``."""
    service_tiers: dict[str, int] = field(default_factory=dict)
    """API requests by the ``service_tier`` their body names (``default`` when none)."""
    headers: dict[str, int] = field(default_factory=dict)
    """API requests by each ``x-`` header they carried (``"name: value"``; the openai client's own
    ``x-stainless-*`` left out)."""
    files: int = 0
    """Files uploaded (``POST /v1/files``)."""
    batches: int = 0
    """Batches created (``POST /v1/batches``)."""
    batch_lines: int = 0
    """Lines of batches answered (not counted in ``requests`` or ``completions``)."""

    def count(self, bucket: dict[str, int], key: str) -> None:
        bucket[key] = bucket.get(key, 0) + 1


class Bucket:
    """A token bucket: ``per_minute`` refilled continuously, at most ``burst`` at once."""

    def __init__(self, per_minute: int, burst: int | None) -> None:
        self.per_minute = per_minute
        self.rate_per_s = per_minute / 60.0
        self.burst = burst or max(1, math.ceil(self.rate_per_s))
        self.level = float(self.burst)
        self.updated_s = time.monotonic()

    def wait_s(self, cost: float) -> float:
        """0 when ``cost`` may be taken now; else the seconds until it could."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.updated_s) * self.rate_per_s)
        self.updated_s = now
        return 0.0 if self.level >= cost else (cost - self.level) / self.rate_per_s

    def take(self, cost: float) -> None:
        self.level -= cost

    def remaining(self) -> int:
        return max(0, int(self.level))

    def full_in_s(self) -> float:
        return max(0.0, self.burst - self.level) / self.rate_per_s


class Window:
    """Fixed windows of ``window_s`` on the clock, each allowing ``per_minute * window_s / 60``."""

    def __init__(self, per_minute: int, window_s: float) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self.capacity = per_minute * window_s / 60
        self.index = -1
        self.used = 0.0

    def _now(self) -> float:
        now = time.time()
        if (index := int(now // self.window_s)) != self.index:
            self.index, self.used = index, 0.0
        return now

    def wait_s(self, cost: float) -> float:
        now = self._now()
        return 0.0 if self.used + cost <= self.capacity else self.full_in_s(now)

    def take(self, cost: float) -> None:
        self.used += cost

    def remaining(self) -> int:
        self._now()
        return max(0, int(self.capacity - self.used))

    def full_in_s(self, now: float | None = None) -> float:
        now = self._now() if now is None else now
        return (self.index + 1) * self.window_s - now


DEMO_ANSWERS = {
    "capital of vietnam": "The capital of Vietnam is Hanoi.",
    "joke about ai": "Why did the neural network break up with the dataset? It found it too biased.",
    "theory of relativity": (
        "Relativity says the laws of physics are the same for everyone moving steadily, light always travels "
        "at the same speed, and so time and distance stretch or shrink depending on how fast you move; mass "
        "and energy are two forms of the same thing (E = mc²), and gravity is the bending of space-time."
    ),
    "http request in python": (
        "Use the standard library: `urllib.request.urlopen('https://example.com').read()`, or the popular "
        "requests package: `requests.get('https://example.com').text`."
    ),
}


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def reply_text(mode: str, messages: list[dict[str, Any]]) -> str:
    last_user = next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if mode == "echo":
        return last_user
    if mode == "demo":
        lowered = last_user.lower()
        for needle, answer in DEMO_ANSWERS.items():
            if needle in lowered:
                return answer
        return f"(simulated answer to a {len(last_user)}-character prompt)"
    return mode


def count_tokens(text: str) -> int:
    """A rough count (about four characters a token), enough for usage figures."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def chance(rng: random.Random, rate: float) -> bool:
    return rate > 0 and rng.random() < rate
