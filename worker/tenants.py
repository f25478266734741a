"""Tenants, as the worker holds their jobs to their policies (``promptq_core.tenants``).

A job is a tenant's when its id is ``{tenant}/{id}``. Before its call, the worker reads the tenant's
policy (kept ``POLICY_TTL_S`` in memory): past its budget for the period, the job waits in the
queue until the next period starts (no try spent); else the route reserves in the tenant's
budgets (RPM, TPM, calls in flight) beside the backend's (``worker/lua/route.lua``). A call's place
among the tenant's calls in flight is given back when the call ends (or when its hold runs out, if
the worker died). A finished job's cost (``PROMPTQ_PRICES``) is added to its tenant's spend before
its slot takes another job, so a budget is overshot by at most the calls in flight when it is reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from promptq_core.contract import TENANTS_KEY, tenant_limit_keys
from promptq_core.tenants import Policy, budget_period, owner_of, spend_keys
from worker.logs import get_logger
from worker.redis_conn import ride_out

__all__ = ["POLICY_TTL_S", "TenantBudget", "Tenants"]

SPEND_KEEP_S: Final = 40 * 86_400
"""A tenant's spend of a day or a month is kept this long."""
POLICY_TTL_S: Final = 5.0
"""A policy read from Redis is used this long (a change reaches every worker within it)."""
log = get_logger("promptq.tenants")


@dataclass(frozen=True, slots=True)
class TenantBudget:
    """What a route reserves in a tenant's budgets for one call."""

    keys: tuple[str, str, str]
    rpm: int
    tpm: int
    in_flight: int
    member: str
    hold_ms: int

    @property
    def limited(self) -> bool:
        """Some budget holds the tenant's calls (requests, tokens or calls in flight)."""
        return bool(self.rpm or self.tpm or self.in_flight)


class Tenants:
    """The tenants' policies, their budgets' keys and their spend, for one worker."""

    def __init__(self, redis: Redis, hold_s: float) -> None:
        self.redis = redis
        self.hold_ms = max(1000, round(hold_s * 1000))
        self._policies: dict[str, tuple[float, Policy | None]] = {}

    async def policy(self, job_id: str) -> Policy | None:
        """The policy of the job's tenant; None for the operator's jobs, or a tenant without one."""
        tenant, _ = owner_of(job_id)
        if tenant is None:
            return None
        now = time.monotonic()
        held = self._policies.get(tenant)
        if held is not None and now - held[0] < POLICY_TTL_S:
            return held[1]
        raw = await ride_out(lambda: self.redis.hget(TENANTS_KEY, tenant))  # type: ignore[arg-type,return-value]
        try:
            policy = None if raw is None else Policy.from_json(raw)
        except ValueError as e:  # a policy another writer broke: the tenant runs unlimited, said once per read
            log.warning("tenant.bad_policy", tenant=tenant, error=str(e))
            policy = None
        if len(self._policies) > 10_000:
            self._policies.clear()
        self._policies[tenant] = (now, policy)
        return policy

    async def over_budget_s(self, policy: Policy) -> float | None:
        """Seconds until the tenant's next budget period, if its spend has reached its budget."""
        if policy.budget_usd is None:
            return None
        now = time.time()
        _, renews_at = budget_period(policy.budget_period, now)
        key = spend_keys(policy.tenant, now)[policy.budget_period]
        raw = await ride_out(lambda: self.redis.get(key))
        if raw is None or float(raw) < policy.budget_usd:
            return None
        return max(1.0, renews_at - time.time())

    def budget(self, policy: Policy | None, member: str) -> TenantBudget | None:
        """What a route of the job's call reserves in its tenant's budgets (None: nothing)."""
        if policy is None or not (policy.rpm or policy.tpm or policy.max_in_flight):
            return None
        return TenantBudget(
            keys=tenant_limit_keys(policy.tenant),
            rpm=policy.rpm or 0,
            tpm=policy.tpm or 0,
            in_flight=policy.max_in_flight or 0,
            member=member,
            hold_ms=self.hold_ms,
        )

    async def spent(self, job_id: str, usd: float, ended_s: float) -> None:
        """Add a finished job's cost to its tenant's spend, of the day and of the month."""
        tenant, _ = owner_of(job_id)
        if tenant is None:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in spend_keys(tenant, ended_s).values():
                pipe.incrbyfloat(key, round(usd, 9))
                pipe.expire(key, SPEND_KEEP_S)
            await pipe.execute()

    async def call_ended(self, budget: TenantBudget | None) -> None:
        """The call's place among its tenant's calls in flight is free again."""
        if budget is not None and budget.in_flight:
            await ride_out(lambda: self.redis.zrem(budget.keys[2], budget.member))
