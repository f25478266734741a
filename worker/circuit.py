"""Each backend's health: a circuit breaker kept in Redis, the same for every worker.

closed --(``PROMPTQ_CIRCUIT_FAILURES`` retryable failures in a row)--> open
open --(its cool-down ends)--> half-open: one call, the probe, may go (``worker/lua/route.lua``)
half-open --(the probe succeeds)--> closed: every job waiting for a backend is due at once
half-open --(the probe fails)--> open again, for twice the last cool-down (at most
``PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S``)

What counts as a failure: a retryable error of the call (5xx and 529, a connection refused or
reset, a timeout, an unreadable answer), never a 429, which is the rate limiter's business (its
cool-down), nor an error of the job's own (400, 401...). While a circuit is open no worker sends the
backend anything but the probe, so an outage costs the fleet a probe per cool-down, not a call per
job. The script is ``worker/lua/circuit.lua``; the key ``promptq_core.contract.circuit_key``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from promptq_core.contract import Reply, circuit_failures_key, circuit_key
from worker.scripts import WorkerScript

__all__ = ["PARK_S", "PROCESSED_MAYBE", "CircuitRules", "Circuits", "Health"]

PROCESSED_MAYBE = frozenset({"timeout", "bad_response"})
"""Failures after which the request may have been processed (and billed): a probe that fails so
spends its job's try like any call; other failed probes (a 5xx or 529 answer, a connection refused)
give it back."""

PARK_S = 60.0
"""A job waiting for a backend is due again when a circuit closes, or after this long at the latest
(should the job sent back to carry the probe be lost: cancelled, or its worker gone)."""


@dataclass(frozen=True, slots=True)
class CircuitRules:
    failures: int = 5
    """Retryable failures in a row that open a backend's circuit (``PROMPTQ_CIRCUIT_FAILURES``)."""
    cool_down_s: float = 1.0
    """The first cool-down before a probe (``PROMPTQ_CIRCUIT_COOL_DOWN_S``); doubled after each failed probe."""
    max_cool_down_s: float = 8.0
    """The longest cool-down (``PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S``): a recovered backend is found within it
    (plus the probe's own time: a backend that hangs holds its probe up to ``PROMPTQ_JOB_TIMEOUT_S``)."""


@dataclass(frozen=True, slots=True)
class Health:
    """A backend's circuit after a call was recorded."""

    open: bool
    wait_s: float = 0.0
    """Open: how long until a probe may go."""
    recovered: bool = False
    """This success closed an open circuit."""
    recoveries: int = 0
    """Recovered: the backends' recoveries count it made (each queue's waiting jobs are then due:
    ``JobQueue.wait_over``)."""


class Circuits:
    """Record how calls to backends ended."""

    def __init__(self, redis: Redis, rules: CircuitRules) -> None:
        self.rules = rules
        self._record = WorkerScript(redis, "circuit", rides_out=True)
        self._failing: dict[str, tuple[int, float]] = {}
        """Backends this worker saw fail since its last success there: failures in a row, and when
        the last came (monotonic s). The next success is written (it ends the run of failures), even
        for a call routed while the circuit was clean."""

    def failing_here(self, backend: str) -> bool:
        return backend in self._failing

    def down_here(self, backend: str) -> bool:
        """This worker has just seen ``failures`` failures in a row there (within the first cool-down):
        a call routed before the shared circuit learnt of them is held back. Jobs a busy worker
        started together (their calls all routed while the circuit was closed) so send one burst of
        calls into an outage, not one each."""
        run = self._failing.get(backend)
        return run is not None and run[0] >= self.rules.failures and time.monotonic() - run[1] < self.rules.cool_down_s

    async def succeeded(self, backend: str, *, probe: bool, routed_at_ms: int) -> Health:
        health = await self._call(backend, ok=True, probe=probe, routed_at_ms=routed_at_ms)
        self._failing.pop(backend, None)
        return health

    async def failed(self, backend: str, *, probe: bool, routed_at_ms: int) -> Health:
        run = self._failing.get(backend, (0, 0.0))
        self._failing[backend] = (run[0] + 1, time.monotonic())  # before the script: the next call sees it
        return await self._call(backend, ok=False, probe=probe, routed_at_ms=routed_at_ms)

    async def _call(self, backend: str, *, ok: bool, probe: bool, routed_at_ms: int) -> Health:
        reply: Any = await self._record(
            circuit=circuit_key(backend),
            failures=circuit_failures_key(backend),
            ok="1" if ok else "0",
            probe="1" if probe else "0",
            failures_to_open=self.rules.failures,
            cool_down_ms=max(1, round(self.rules.cool_down_s * 1000)),
            max_cool_down_ms=max(1, round(self.rules.max_cool_down_s * 1000)),
            routed_at=routed_at_ms,
            call=secrets.token_hex(8),
        )
        code = int(reply[0])
        if code == Reply.CIRCUIT_OPEN:
            return Health(open=True, wait_s=int(reply[1]) / 1000)
        return Health(open=False, recovered=code == Reply.CIRCUIT_RECOVERED, recoveries=int(reply[2]))
