"""Refusing a Redis that could lose jobs without an error: one that evicts keys under memory pressure.

With ``maxmemory`` set and a ``maxmemory-policy`` other than ``noeviction``, Redis deletes keys to make
room: ``allkeys-*`` takes queued jobs and their documents, ``volatile-*`` the documents and records
(they carry a TTL) while the ids stay queued. Either way jobs vanish with no error anywhere. So the
worker refuses to start, and a producer refuses its first write, on such a Redis, with a message
naming the policy and the fix; ``PROMPTQ_ALLOW_EVICTION=1`` turns the refusal into a warning, for
those who know why. The policy is read with ``CONFIG GET``, or from ``INFO memory`` where a managed
Redis forbids ``CONFIG``. promptq also needs Redis 7.0 or newer (its scripts declare flags).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ALLOW_EVICTION_ENV",
    "MIN_REDIS_VERSION",
    "SAFE_POLICY",
    "RedisFacts",
    "eviction_problem",
    "mode_problem",
    "read_facts",
    "read_facts_sync",
    "version_problem",
]

ALLOW_EVICTION_ENV: Final = "PROMPTQ_ALLOW_EVICTION"
SAFE_POLICY: Final = "noeviction"
MIN_REDIS_VERSION: Final = (7, 0)


@dataclass(frozen=True, slots=True)
class RedisFacts:
    """What the checks need to know about a Redis: its eviction policy and version (None: unknown)."""

    policy: str | None
    version: tuple[int, ...] | None
    cluster: bool | None = None
    """The Redis is a node of a Redis Cluster (``INFO``'s ``cluster_enabled``)."""

    @classmethod
    def of(cls, config: Any, info: Mapping[str, Any]) -> RedisFacts:
        """From ``CONFIG GET maxmemory-policy`` (None if refused) and ``INFO`` (server and memory)."""
        policy = (config or {}).get("maxmemory-policy") or info.get("maxmemory_policy")
        raw = str(info.get("redis_version") or "")
        try:
            version = tuple(int(part) for part in raw.split(".")[:2]) if raw else None
        except ValueError:
            version = None
        enabled = info.get("cluster_enabled")
        cluster = None if enabled is None else str(enabled) == "1"
        return cls(_text(policy) if policy is not None else None, version, cluster)


def eviction_problem(facts: RedisFacts, where: str) -> str | None:
    """The refusal's message when the policy lets Redis evict promptq's keys; None when it is safe
    (or unknown: a Redis that hides it is not refused)."""
    if facts.policy is None or facts.policy == SAFE_POLICY:
        return None
    return (
        f"Redis at {where} evicts keys when it is full (maxmemory-policy {facts.policy}): queued jobs and results "
        f"could vanish without an error. Set maxmemory-policy to {SAFE_POLICY} (CONFIG SET maxmemory-policy "
        f"{SAFE_POLICY}, or your provider's parameter for it), or set {ALLOW_EVICTION_ENV}=1 to run anyway"
    )


def version_problem(facts: RedisFacts, where: str) -> str | None:
    if facts.version is None or facts.version >= MIN_REDIS_VERSION:
        return None
    found = ".".join(map(str, facts.version))
    wanted = ".".join(map(str, MIN_REDIS_VERSION))
    return f"Redis at {where} is version {found}; promptq needs Redis {wanted} or newer"


def mode_problem(facts: RedisFacts, url: str, where: str) -> str | None:
    """The refusal's message when a plain or Sentinel URL leads to a node of a Redis Cluster (whose
    other slots it would not reach), or a cluster URL to a Redis that is not one."""
    from promptq_core.connect import is_cluster

    if facts.cluster and not is_cluster(url):
        return (
            f"Redis at {where} is a node of a Redis Cluster: use REDIS_URL=redis+cluster://host:port[,host:port...] "
            "(the cluster client finds each queue's node)"
        )
    if facts.cluster is False and is_cluster(url):
        return f"Redis at {where} is not in cluster mode: use REDIS_URL=redis://host:port"
    return None


def read_facts_sync(client: Any) -> RedisFacts:
    """The facts, from a ``redis.Redis``."""
    import redis

    try:
        config = client.config_get("maxmemory-policy")
    except redis.ResponseError:  # CONFIG disabled or renamed (managed services)
        config = None
    return RedisFacts.of(config, client.info())


async def read_facts(client: Any) -> RedisFacts:
    """The facts, from a ``redis.asyncio.Redis``."""
    import redis

    try:
        config = await client.config_get("maxmemory-policy")
    except redis.ResponseError:
        config = None
    return RedisFacts.of(config, await client.info())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
