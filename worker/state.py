"""What every job of one worker process shares (``ctx["promptq"]``), built by ``on_startup``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from promptq_core.background import REDIS_TROUBLE
from worker import llm, tracing
from worker.circuit import Circuits
from worker.config import WorkerConfig
from worker.lease import Leases
from worker.metrics import Metrics
from worker.presence import Presence
from worker.queue import JobQueue
from worker.routing import Router
from worker.settle import Settle
from worker.streams import Streams
from worker.tally import Tally
from worker.tenants import Tenants
from worker.upgrade import Upgrade
from worker.wake import WakeListener

__all__ = ["WorkerState"]


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker's settings, clients and helpers, shared by its jobs and its loop."""

    config: WorkerConfig
    clients: llm.Clients
    queues: tuple[JobQueue, ...]
    """The named queues the worker serves (``PROMPTQ_QUEUES``), claimed from in turn."""
    settle: Settle
    leases: Leases
    wake: WakeListener
    router: Router
    circuits: Circuits
    tenants: Tenants
    streams: Streams
    metrics: Metrics
    presence: Presence
    tally: Tally
    upgrade: Upgrade
    tracing: tracing.Tracing

    @property
    def wake_event(self) -> asyncio.Event:
        """Set by a submit (``worker.wake``) or a freed slot: the poll loop looks at the queue at once."""
        return self.wake.event

    @property
    def listening(self) -> bool:
        """The worker hears its pub/sub channels (its handoffs among them): it may park."""
        return self.wake.listening.is_set()

    @property
    def shutdown_grace_s(self) -> float:
        return self.config.shutdown_grace_s

    async def backends_recovered(self, recoveries: int) -> None:
        """A backend recovered: the jobs waiting for one in every queue served here are due now
        (each worker hears of it; the script is the same whoever runs it first)."""
        woken, failed = 0, None
        for queue in self.queues:  # a queue whose shard fails holds up no other's
            try:
                woken += await queue.wait_over(recoveries)
            except REDIS_TROUBLE as e:
                failed = failed or e
        if woken:
            self.wake.event.set()
        if failed is not None:
            raise failed
