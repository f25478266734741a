"""The queue from a worker's side: claim ready jobs, renew their leases, and let go of them.

Ready jobs wait in one sorted set per (priority, fairness key); a claim serves the lowest priority
level with ready jobs and, within it, the fairness keys in turn (``PROMPTQ_FAIRNESS_WEIGHTS`` gives a
key more turns). A claimed job moves to the lease set, scored by when its lease runs out; the worker
running it renews the lease every third of ``PROMPTQ_LEASE_S`` (``worker.lease``), and a claim puts
a job whose lease ran out back in line, and a deferred job (a retry) whose time has come. Running
and waiting jobs are never in a claim's way: each claim costs O(log n) per job it takes, however
many run. The scripts are ``worker/lua/claim.lua``, ``renew.lua`` and ``pending.lua``; how a job
leaves the lease set when its attempt ends is ``worker.settle``'s.

A claim that leaves the worker idle (no job ready, ordinary slots free) parks it for ``park_ms``:
the next submit to the queue then hands its job to the worker directly, leased, counted and marked
running as a claim would, and published on the worker's handoff channel (``producer/lua/submit.lua``;
``worker.wake`` hears it, ``worker.arq_seam`` runs it), which saves the job the claim's round trip.
Each claim of the worker's renews or ends its parking.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from promptq_core.contract import DEFAULT_QUEUE, PARKED, as_text, dumps, queue_keys
from worker.config import DEFAULT_MODEL
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["RETURN_STEP", "Claimed", "JobQueue"]

log = get_logger("promptq.queue")

RETURN_STEP = 500
"""Jobs one claim brings back in line at most of each kind (leases run out, retries due): bounds the
time one claim holds Redis after a worker with many jobs died."""
RENEW_CHUNK = 1_000
"""Leases renewed in one script call (a worker with 10,000 running jobs sends ten)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claim did: the jobs it took, in the order served, and what it brought back in line."""

    job_ids: list[str]
    """arq's ids of the jobs (``QueueKeys.arq_id``: the queue's tag, then the job id)."""
    at_ms: int = 0
    """When the claim was made (Redis time, Unix ms): the jobs' ``started_at``."""
    urgent: int = 0
    """How many of ``job_ids`` (the first ones) are at priority 0."""
    more: bool = False
    """Ready jobs are left (at any priority)."""
    recovered: int = 0
    """Jobs whose lease had run out (their worker died, or lost Redis for longer than a lease)."""
    promoted: int = 0
    """Deferred retries that were due."""
    skipped: int = 0
    """Jobs let go of instead of handed out: their result was stored already, or they were cancelled."""
    started: dict[str, tuple[bytes | None, int]] = field(default_factory=dict)
    """Per arq id: the job's record (None: gone) and its try, counted by the claim (what arq's start
    of a job would read and count itself: ``arq_seam.StartTransaction``)."""


class JobQueue:
    """One worker's claims and leases in one named queue, with its fairness weights."""

    def __init__(
        self,
        redis: Redis,
        lease_s: float,
        weights: Mapping[str, float] | None = None,
        default_model: str = DEFAULT_MODEL,
        name: str = DEFAULT_QUEUE,
        handoff_id: str = "",
        park_s: float = 0.0,
    ) -> None:
        self.redis = redis
        self.keys = queue_keys(name)
        self.lease_ms = max(1, round(lease_s * 1000))
        self.handoff_id = handoff_id or secrets.token_hex(8)
        """The worker's name among the queue's parked ones (``handoff_id``: the same in each queue)."""
        self.park_ms = max(0, round(park_s * 1000))
        """How long an idle claim parks the worker (0: never)."""
        self.parked_free = 0
        """The slots the worker's last claim parked it with (0: it did not)."""
        self.heard = 0
        """Handoffs the worker has taken since that claim's answer (``worker.arq_seam``)."""
        self.model_json = dumps(default_model)
        self.weights = [str(v) for key, weight in (weights or {}).items() for v in (key, weight)]
        self._claim = WorkerScript(redis, "claim")
        self._renew = WorkerScript(redis, "renew")
        self._pending = WorkerScript(redis, "pending")
        self._wait_over = WorkerScript(redis, "wait_over", rides_out=True)

    async def claim(self, want: int, want_ordinary: int | None = None, *, park: bool = False) -> Claimed:
        """Take up to ``want`` ready jobs, leased for ``lease_ms``; at most ``want_ordinary`` of them
        at priorities 1 to 9 (the others are urgent: priority 0). ``park``: left idle, the worker is
        parked (for ``park_ms``); else any parking of its ends."""
        reply: list[bytes | int] = await self._claim(
            self.keys,
            lease_ms=self.lease_ms,
            want=want,
            want_ordinary=want if want_ordinary is None else want_ordinary,
            step=RETURN_STEP,
            model_json=self.model_json,
            handoff_id=self.handoff_id,
            park_ms=self.park_ms if park else 0,
            parked_free=self.parked_free,
            heard=self.heard,
            weights=self.weights,
        )
        at_ms, recovered, promoted, skipped, more, urgent, self.parked_free = (int(n) for n in reply[:7])
        tag = self.keys.tag
        job_ids: list[str] = []
        started: dict[str, tuple[bytes | None, int]] = {}
        for n in range(7, len(reply), 3):
            job_id = tag + as_text(reply[n])
            job_ids.append(job_id)
            record = reply[n + 1]
            started[job_id] = (record if isinstance(record, bytes) else None, int(reply[n + 2]))
        if recovered or skipped:
            log.info("queue.returned", queue=self.keys.name, recovered=recovered, promoted=promoted, skipped=skipped)
        return Claimed(job_ids, at_ms, urgent, bool(more), recovered, promoted, skipped, started)

    async def renew(self, job_ids: Iterable[str]) -> int:
        """Extend the leases of these running jobs of the queue (their ids, not arq's) to ``lease_ms``
        from now; how many were still leased."""
        ids = list(job_ids)
        renewed = 0
        for start in range(0, len(ids), RENEW_CHUNK):
            renewed += int(
                await self._renew(self.keys, lease_ms=self.lease_ms, job_ids=ids[start : start + RENEW_CHUNK])
            )
        return renewed

    async def unpark(self) -> None:
        """End the worker's parking: no submit hands it a job from now on (a shutdown)."""
        await self.redis.hdel(self.keys.key(PARKED), self.handoff_id)  # type: ignore[misc]

    async def pending(self) -> bool:
        """Whether any job of the queue is ready, running or deferred."""
        return bool(await self._pending(self.keys))

    async def wait_over(self, recoveries: int) -> int:
        """A backend recovered (the backends' recoveries count is now ``recoveries``): the jobs of
        the queue waiting for a backend are due now; how many there were."""
        return int(await self._wait_over(self.keys, recoveries=recoveries))
