"""Tenants and their API keys in Redis, as ``producer.core`` methods (steps yielded, replies sent
back): made and changed by ``promptq keys``, looked up by the HTTP API on each request (so a revoked
key is refused at once)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from producer.core import Command, Op
from promptq_core.contract import API_KEYS_KEY, TENANTS_KEY
from promptq_core.tenants import (
    KEY_PREFIX,
    PERIODS,
    KeyEntry,
    Policy,
    check_tenant,
    key_digest,
    new_key,
    spend_keys,
)

__all__ = ["create_key", "revoke_key", "spent", "tenant_of", "tenants", "update_tenant"]


def create_key(tenant: str, changes: Mapping[str, Any]) -> Op[tuple[str, str]]:
    """A new key for ``tenant`` (made with ``changes`` to the default policy if it is new, else
    with them applied to its policy): ``(key id, key)``; the key is not kept, only its digest."""
    check_tenant(tenant)
    raw = yield Command.of("hget", TENANTS_KEY, tenant)
    policy = (Policy(tenant) if raw is None else Policy.from_json(raw)).changed(**changes)
    key_id, key = new_key()
    yield Command.of("hset", TENANTS_KEY, tenant, policy.to_json())
    yield Command.of("hset", API_KEYS_KEY, key_digest(key), KeyEntry(key_id, tenant, round(time.time(), 3)).to_json())
    return key_id, key


def update_tenant(tenant: str, changes: Mapping[str, Any]) -> Op[Policy]:
    """``tenant``'s policy with ``changes``; ``LookupError`` for a tenant never given a key."""
    check_tenant(tenant)
    raw = yield Command.of("hget", TENANTS_KEY, tenant)
    if raw is None:
        raise LookupError(f"no tenant {tenant!r} (promptq keys create --tenant {tenant} makes one)")
    policy = Policy.from_json(raw).changed(**changes)
    yield Command.of("hset", TENANTS_KEY, tenant, policy.to_json())
    return policy


def tenants() -> Op[tuple[dict[str, Policy], list[KeyEntry]]]:
    """Every tenant's policy, and every key's entry (oldest first)."""
    policies = yield Command.of("hgetall", TENANTS_KEY)
    entries = yield Command.of("hgetall", API_KEYS_KEY)
    by_name = {Policy.from_json(raw).tenant: Policy.from_json(raw) for raw in policies.values()}
    keys = sorted((KeyEntry.from_json(raw) for raw in entries.values()), key=lambda e: e.created_at)
    return by_name, keys


def revoke_key(key_id: str) -> Op[bool]:
    """Forget the key with this id (the HTTP API refuses it from the next request on); False when
    there is none."""
    entries = yield Command.of("hgetall", API_KEYS_KEY)
    digests = [digest for digest, raw in entries.items() if KeyEntry.from_json(raw).id == key_id]
    if digests:
        yield Command.of("hdel", API_KEYS_KEY, *digests)
    return bool(digests)


def spent(tenant: str) -> Op[dict[str, float]]:
    """What ``tenant``'s finished jobs cost (USD, ``PROMPTQ_PRICES``) in this day and this month (UTC)."""
    check_tenant(tenant)
    keys = spend_keys(tenant, time.time())
    values = yield Command.of("mget", [keys[period] for period in PERIODS])
    return {period: float(v or 0) for period, v in zip(PERIODS, values, strict=True)}


def tenant_of(key: str) -> Op[Policy | None]:
    """The policy of the tenant whose key this is; None for no key of any tenant."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    entry = yield Command.of("hget", API_KEYS_KEY, key_digest(key))
    if entry is None:
        return None
    tenant = KeyEntry.from_json(entry).tenant
    raw = yield Command.of("hget", TENANTS_KEY, tenant)
    return Policy(tenant) if raw is None else Policy.from_json(raw)
