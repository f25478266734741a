"""How many jobs wait where in one queue: the answer of ``lua/depths.lua``, which the client's
``depths`` and the worker's metrics both run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptq_core.contract import DEFAULT_QUEUE, as_text

__all__ = ["DEPTHS_KEYS_MAX", "QueueDepths"]

DEPTHS_KEYS_MAX = 1_000
"""Fairness keys ``depths`` looks at per priority, at most (``QueueDepths.truncated`` says when more)."""


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """How many jobs wait where in one queue (``Producer.depths``)."""

    ready: dict[int, dict[str, int]]
    """Jobs ready to run, per priority, per fairness key."""
    running: int
    """Jobs claimed by a worker (leased)."""
    deferred: int
    """Jobs waiting for a retry."""
    failed: int
    """Failed jobs indexed for ``failed()`` and ``retry()``."""
    queue: str = DEFAULT_QUEUE
    truncated: bool = False
    """A priority had more than ``DEPTHS_KEYS_MAX`` fairness keys: ``ready`` lists that many only."""
    oldest_enqueued_at: float | None = None
    """When the ready job first in line was submitted (Unix s; None: nothing ready). Places in line
    are counted per queue, so it is the longest-waiting ready job (among the keys looked at)."""
    memory_used: int = 0
    """Bytes the Redis node holding the queue uses (``INFO memory``'s ``used_memory``)."""
    memory_max: int = 0
    """That node's ``maxmemory`` (0: none set). Submits are refused at 90 % of it."""
    read_at: float | None = None
    """Redis time when it was read (Unix s)."""

    def oldest_age_s(self, now_s: float | None = None) -> float:
        """How long the oldest ready job has waited by ``now_s`` (default: when this was read, in
        Redis time), in seconds; 0 when nothing is ready."""
        now = now_s if now_s is not None else self.read_at
        if self.oldest_enqueued_at is None or now is None:
            return 0.0
        return max(0.0, now - self.oldest_enqueued_at)

    @property
    def waiting(self) -> int:
        """Jobs ready to run, all priorities."""
        return sum(self.by_priority.values())

    @property
    def by_priority(self) -> dict[int, int]:
        return {priority: sum(keys.values()) for priority, keys in self.ready.items()}

    @classmethod
    def from_reply(cls, reply: Any, queue: str = DEFAULT_QUEUE) -> QueueDepths:
        """From the ``depths`` script's reply for ``queue``."""
        running, deferred, failed, (oldest, used, most, now_ms), *levels = reply
        ready: dict[int, dict[str, int]] = {}
        truncated = False
        for level in levels:
            priority, _, cut, *pairs = level
            truncated = truncated or bool(int(cut))
            ready[int(priority)] = {as_text(k): int(n) for k, n in zip(pairs[::2], pairs[1::2], strict=True)}
        oldest_at = float(oldest) if as_text(oldest) else None
        return cls(
            ready,
            int(running),
            int(deferred),
            int(failed),
            queue,
            truncated,
            oldest_at,
            int(used),
            int(most),
            int(now_ms) / 1000,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "waiting": self.waiting,
            "running": self.running,
            "deferred": self.deferred,
            "failed": self.failed,
            "ready": {str(p): keys for p, keys in sorted(self.ready.items())},
            "truncated": self.truncated,
            "oldest_enqueued_at": self.oldest_enqueued_at,
            "memory_used": self.memory_used,
            "memory_max": self.memory_max,
        }
