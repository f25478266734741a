"""Which backend a call goes to, and the budgets it takes there: shared by every worker through Redis.

A job's model is served by the backends that list it (:mod:`worker.backends`). Before each call,
one Lua script (``worker/lua/route.lua``) looks at those backends together: it skips the ones whose
circuit is open (:mod:`worker.circuit`; after its cool-down, one call goes as the probe), and among
the rest takes the one whose budget lets the call go soonest. Backends with budget now are picked at
random in proportion to their limits times their weights, so calls spread over them, and a backend
whose budget is spent (or that is cooling down after a 429) is passed over for another that has
budget: calls spill over instead of waiting.

Each budget (requests and tokens per minute of one model on one backend) is a GCRA (generic cell
rate algorithm) over Redis time: spread evenly over the minute with no burst, at ``LIMIT_USE`` of the
limit, since a server may enforce a per-minute limit over shorter periods (OpenAI says it may: 10
requests in each second for 600 RPM). Requests at most 60 / (rpm * 0.98) s apart never put more than
the limit's share in any one second, at the start of a run or after an idle spell alike, with 2 %
left for timing jitter. The script *reserves* one request and an estimate of its tokens (prompt +
the completion it may produce) and returns the moment the reservation falls due; the worker sleeps
until then. Reservations are handed out in the order they are asked for, so waiting jobs go in
roughly submit order, and a waiting job costs no further Redis calls (no polling herd). After the
call, the estimate is settled against the real ``usage``. A 429 from the API, or a response saying
the server's budget is spent, sets a cool-down on that backend and model, so every worker pauses
its calls there instead of each finding out alone.

The quick path: a model none of whose backends has a limit (and a job of no tenant budget) needs no
reservation, only a backend that is up. Each worker reads every backend's circuit and the model's
cool-downs together (``worker/lua/health.lua``) at most every ``HEALTH_FRESH_S``, and while every
backend of the model is clean in that reading (no failure on record, not open, not cooling down, and
none failing here since), it picks one by share and weight without a call to Redis. Anything else (a
limit, a failure on record, an open circuit and its probe) takes ``route.lua``: a backend that begins
failing is seen by every worker within ``HEALTH_FRESH_S``, as the calls already in flight are.

Keys: ``promptq_core.contract.limit_keys`` and ``circuit_key``. With ``PROMPTQ_LIMIT_SCOPE=process``
each worker process keeps its own budgets (for workers that each have an API key of their own); the
circuits are always shared.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from promptq_core.contract import Reply, circuit_key, limit_keys, tenant_limit_keys
from worker.backends import Backend, Limit
from worker.limiter import LIMIT_USE, BudgetWaitTooLongError, LimitTooSmallError
from worker.scripts import WorkerScript
from worker.tenants import TenantBudget

__all__ = ["AllDownError", "NoBackendError", "Route", "Router"]

_NO_MAX_WAIT_MS = 10**12
HEALTH_FRESH_S = 0.1
"""How old a reading of the backends' health the quick path trusts (:meth:`Router.route`)."""
HEALTH_KEYS_MAX = 256
"""Cool-down keys (backend and model) one reading covers at most; the models beyond take route.lua."""


class NoBackendError(LookupError):
    """No backend serves the job's model."""


class AllDownError(Exception):
    """Every backend serving the model is down: a probe may go in ``wait_s``; ``scout``: this job
    is the one to carry it; ``down_s``: every one of them has been down at least this long;
    ``recoveries``: how many circuits had recovered by then (a job waits only if none has since)."""

    def __init__(self, model: str, wait_s: float, scout: bool, down_s: float, recoveries: int) -> None:
        super().__init__(f"every backend serving {model} is down")
        self.model, self.wait_s, self.scout, self.down_s = model, wait_s, scout, down_s
        self.recoveries = recoveries


@dataclass(frozen=True, slots=True)
class Route:
    """Where one call goes: the backend, the model by the backend's name for it, and what it cost to get there."""

    backend: Backend
    model: str
    """The job's model as this backend names it."""
    waited_s: float
    probe: bool
    """The call is the probe of an open circuit: how it ends closes or opens it again."""
    clean: bool
    """The backend's circuit had no failure on record (a success need not be written)."""
    routed_at_ms: int
    """When it was routed (ms, Redis time): the circuit orders calls by it."""


@dataclass(frozen=True, slots=True)
class Health:
    """One reading of the backends' health (``worker/lua/health.lua``)."""

    read_at: float
    """When it was read (the event loop's clock, s)."""
    now_ms: int
    """Redis time then (ms)."""
    clean: frozenset[str]
    """The backends whose circuit had no failure on record and was not open."""
    cooling: frozenset[str]
    """The cool-down keys that were running."""
    covers: frozenset[str]
    """The cool-down keys read."""
    generation: int
    """The router's count of health changes when the reading began (:meth:`Router.stale`): a
    reading begun before a change it may not have seen is not trusted."""


class Router:
    """Route a call, settle its tokens after it, cool a backend's model down on a 429."""

    def __init__(
        self,
        redis: Redis,
        backends: tuple[Backend, ...],
        *,
        probe_s: float,
        shared: bool = True,
        failing_here: Callable[[str], bool] = lambda backend: False,
    ) -> None:
        self.backends = backends
        self.scope = "" if shared else _process_scope()
        self.probe_ms = max(1, round(probe_s * 1000))
        self.failing_here = failing_here
        """Whether this worker saw a backend fail since its last success there (``Circuits.failing_here``)."""
        self._route = WorkerScript(redis, "route", rides_out=True)
        self._settle = WorkerScript(redis, "limit_settle", rides_out=True)
        self._cool_down = WorkerScript(redis, "limit_cool_down", rides_out=True)
        self._health = WorkerScript(redis, "health", rides_out=True)
        self._served: dict[str, tuple[tuple[Backend, str], ...]] = {}
        self._limited: dict[str, bool] = {}
        self._quick_of: dict[str, tuple[tuple[str, ...], list[float]]] = {}
        """Per model routed by the quick path: its backends' cool-down keys and shares."""
        self._read: Health | None = None
        self._generation = 0
        """Health changes seen here (a failure, a cool-down): each makes every earlier reading stale."""
        self._reading: asyncio.Task[Health] | None = None
        self._cool_downs: dict[str, None] = {}
        """The cool-down keys each reading covers (the models routed so far, in order)."""

    def stale(self) -> None:
        """Something changed a backend's health (a failure, a cool-down): read it again before the
        next quick route (a reading on its way now may predate the change: it is not used)."""
        self._read = None
        self._generation += 1

    async def _health_now(self, cool_downs: tuple[str, ...]) -> Health | None:
        """A reading at most ``HEALTH_FRESH_S`` old that covers ``cool_downs``; None: too many keys."""
        read = self._read
        loop = asyncio.get_running_loop()
        if (
            read is not None
            and loop.time() - read.read_at <= HEALTH_FRESH_S
            and read.covers.issuperset(cool_downs)
            and read.generation == self._generation
        ):
            return read
        for key in cool_downs:
            if key not in self._cool_downs:
                if len(self._cool_downs) >= HEALTH_KEYS_MAX:
                    return None
                self._cool_downs[key] = None
        if self._reading is None or self._reading.done():  # one reading at a time, shared by every job
            self._reading = loop.create_task(self._read_health(tuple(self._cool_downs)))
        read = await asyncio.shield(self._reading)
        if read.generation != self._generation:  # a change came while it was read: route.lua decides
            return None
        return read if read.covers.issuperset(cool_downs) else None

    async def _read_health(self, cool_downs: tuple[str, ...]) -> Health:
        circuits = [circuit_key(b.name) for b in self.backends]
        generation = self._generation
        reply: Any = await self._health(keys=[*circuits, *cool_downs], circuits=len(circuits))
        read_at = asyncio.get_running_loop().time()
        flags = [int(v) for v in reply[1 : 1 + len(circuits)]]
        left = [int(v) for v in reply[1 + len(circuits) :]]
        read = Health(
            read_at,
            int(reply[0]),
            frozenset(b.name for b, clean in zip(self.backends, flags, strict=True) if clean),
            frozenset(key for key, ms in zip(cool_downs, left, strict=True) if ms > 0),
            frozenset(cool_downs),
            generation,
        )
        if generation == self._generation:
            self._read = read
        return read

    async def _quick(self, model: str, serving: tuple[tuple[Backend, str], ...]) -> Route | None:
        """The route of a call to an unlimited model whose backends are all clean; None: route.lua's."""
        quick = self._quick_of.get(model)
        if quick is None:
            cool_downs = tuple(self.keys(b, model)[2] for b, _ in serving)
            quick = cool_downs, [_share(b.limit_for(model)) * b.weight for b, _ in serving]
            if len(self._quick_of) < HEALTH_KEYS_MAX:
                self._quick_of[model] = quick
        cool_downs, shares = quick
        health = await self._health_now(cool_downs)
        if health is None:
            return None
        for (backend, _), cool_down in zip(serving, cool_downs, strict=True):
            if backend.name not in health.clean or cool_down in health.cooling or self.failing_here(backend.name):
                return None
        backend, own = serving[0] if len(serving) == 1 else random.choices(serving, weights=shares)[0]
        elapsed_ms = round((asyncio.get_running_loop().time() - health.read_at) * 1000)
        return Route(backend, own, 0.0, probe=False, clean=True, routed_at_ms=health.now_ms + elapsed_ms)

    def serving(self, model: str) -> tuple[tuple[Backend, str], ...]:
        """The backends that serve ``model``, each with its name for it."""
        found = self._served.get(model)
        if found is None:
            found = tuple((b, own) for b in self.backends if (own := b.serves(model)) is not None)
            if len(self._served) < 10_000:
                self._served[model] = found
        return found

    def keys(self, backend: Backend, model: str) -> tuple[str, str, str]:
        """The budget's keys of ``model`` on ``backend``: requests' TAT, tokens' TAT, cool-down."""
        return limit_keys(backend.name, model, self.scope)

    def limited(self, model: str) -> bool:
        """Some backend of ``model`` has a limit (a call's tokens must be estimated)."""
        found = self._limited.get(model)
        if found is None:
            found = any(b.limit_for(model).any for b, _ in self.serving(model))
            if len(self._limited) < 10_000:
                self._limited[model] = found
        return found

    async def route(
        self,
        model: str,
        tokens: int,
        max_wait_s: float = math.inf,
        falls_back_s: float = math.inf,
        tenant: TenantBudget | None = None,
    ) -> Route:
        """Choose the backend for one call of about ``tokens``, reserve its budget and wait until it
        falls due. Raises :class:`NoBackendError`, :class:`AllDownError`,
        :class:`LimitTooSmallError` (no backend's TPM limit could ever take the call) or
        :class:`BudgetWaitTooLongError` (every budget is further than ``max_wait_s``; nothing reserved).
        ``falls_back_s``: the job moves to another model once every backend has been down this long
        (it is then never the scout of this model's probe). ``tenant``: the job's tenant's budgets,
        reserved in too."""
        serving = self.serving(model)
        if not serving:
            names = ", ".join(b.name for b in self.backends)
            raise NoBackendError(f"no backend serves the model {model!r} (backends: {names})")
        if (tenant is None or not tenant.limited) and not self.limited(model):
            quick = await self._quick(model, serving)
            if quick is not None:
                return quick
        fits = [(b, own) for b, own in serving if not (tpm := b.limit_for(model).tpm) or tokens <= tpm]
        if not fits:
            tpm = max(b.limit_for(model).tpm or 0 for b, _ in serving)
            raise LimitTooSmallError(
                f"the request may use {tokens} tokens, more than the {tpm} tokens per minute allowed for {model}"
            )
        keys: list[str] = []
        budgets: list[float | int] = []
        for backend, _ in fits:
            limit = backend.limit_for(model)
            keys += [circuit_key(backend.name), *self.keys(backend, model)]
            budgets += [(limit.rpm or 0) * LIMIT_USE, (limit.tpm or 0) * LIMIT_USE, tokens if limit.tpm else 0]
            budgets.append(_share(limit) * backend.weight)
        t = tenant or NO_TENANT
        reply: Any = await self._route(
            tenant_requests=t.keys[0],
            tenant_tokens=t.keys[1],
            tenant_running=t.keys[2],
            tenant_rpm=t.rpm * LIMIT_USE,
            tenant_tpm=t.tpm * LIMIT_USE,
            tenant_cost=tokens if t.tpm else 0,
            tenant_in_flight=t.in_flight,
            hold_ms=t.hold_ms,
            member=t.member,
            backend_keys=keys,
            max_wait_ms=_ms(max_wait_s),
            probe_ms=self.probe_ms,
            pick=random.random(),
            falls_back_ms=_ms(falls_back_s),
            budgets=budgets,
        )
        code, wait_s = int(reply[0]), int(reply[1]) / 1000
        if code == Reply.ALL_DOWN:
            raise AllDownError(model, wait_s, int(reply[3]) == 1, int(reply[4]) / 1000, int(reply[5]))
        if code == Reply.NOT_RESERVED:
            raise BudgetWaitTooLongError(wait_s)
        backend, own = fits[int(reply[2]) - 1]
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        return Route(
            backend, own, wait_s, probe=int(reply[3]) == 1, clean=int(reply[4]) == 1, routed_at_ms=int(reply[5])
        )

    async def settle(self, backend: Backend, model: str, estimated: int, used: int) -> None:
        """Move the backend's token budget for ``model`` by what the call used beyond its estimate."""
        tpm = backend.limit_for(model).tpm
        if tpm and used != estimated:
            await self._settle(tpm_tat=self.keys(backend, model)[1], tpm=tpm * LIMIT_USE, tokens=used - estimated)

    async def settle_tenant(self, tenant: TenantBudget, estimated: int, used: int) -> None:
        """Move the tenant's token budget by what the call used beyond its estimate."""
        if used != estimated:
            await self._settle(tpm_tat=tenant.keys[1], tpm=tenant.tpm * LIMIT_USE, tokens=used - estimated)

    async def cool_down(self, backend: Backend, model: str, seconds: float) -> None:
        """Pause every worker's calls to ``model`` on ``backend`` for ``seconds`` (a 429 or the server's
        headers said so); a longer cool-down already running is kept."""
        self.stale()
        try:
            await self._cool_down(cooldown=self.keys(backend, model)[2], ms=max(1, round(seconds * 1000)))
        finally:
            self.stale()  # a reading begun while it was written may not show it


NO_TENANT = TenantBudget(keys=tenant_limit_keys(""), rpm=0, tpm=0, in_flight=0, member="", hold_ms=0)
"""The route's tenant arguments for a job of no tenant (keys in the slot, never read)."""


def _ms(seconds: float) -> int:
    """A bound in seconds as the scripts take it: ms, or ``_NO_MAX_WAIT_MS`` for none."""
    return _NO_MAX_WAIT_MS if math.isinf(seconds) else max(0, round(seconds * 1000))


def _share(limit: Limit) -> float:
    """A backend's share of the calls it competes for: its request limit, else its token limit in
    thousands, else 1."""
    if limit.rpm:
        return float(limit.rpm)
    if limit.tpm:
        return limit.tpm / 1000
    return 1.0


def _process_scope() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:"
