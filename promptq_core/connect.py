"""Connecting to Redis from ``REDIS_URL``: one Redis, the primary that Redis Sentinel names, or a
Redis Cluster.

- ``redis://[user:password@]host:port[/db]`` (``rediss://`` for TLS, ``unix:///path.sock``): one Redis.
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster://`` for TLS): a
  Redis Cluster, from these seed nodes (any of its nodes will do; the client reads the cluster's
  own map from them, follows ``MOVED`` and ``ASK``, and reads the map again after a failover). A
  Cluster has one database: no ``/db``. redis-py's asyncio cluster client has no pub/sub: promptq
  subscribes through a plain connection to one of the cluster's nodes (``pubsub_client``), where
  ``PUBLISH`` reaches every node.
- ``redis+sentinel://[user:password@]host1:port1,host2:port2,.../service_name[/db]``: ask these
  Sentinels for the primary of ``service_name`` (``rediss+sentinel://``: TLS to the Redis servers).
  The user and password are the Redis servers'; ``PROMPTQ_SENTINEL_PASSWORD`` is the Sentinels' own,
  when they have one. After a failover, a new connection asks the Sentinels again, and one still
  open to the demoted primary is closed at its first refused write: every part of promptq finds
  the new primary and carries on.

Every client promptq makes goes through here (the producers, the HTTP API, the CLI, the worker).
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # (the URL's parsing is standard library only: promptq_core.env checks REDIS_URL with it)
    import redis
    import redis.asyncio

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_PASSWORD_ENV",
    "SENTINEL_SCHEMES",
    "ClusterTarget",
    "SentinelTarget",
    "async_client",
    "async_sentinel",
    "is_cluster",
    "load_everywhere",
    "load_everywhere_sync",
    "parse_cluster",
    "parse_sentinel",
    "pubsub_client",
    "sync_client",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
SENTINEL_PASSWORD_ENV = "PROMPTQ_SENTINEL_PASSWORD"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the Sentinels are, and what to ask them for."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_password: str | None = None

    def master_kwargs(self) -> dict[str, Any]:
        """Connection settings for the primary (and the replicas)."""
        kwargs: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        return {"password": self.sentinel_password} if self.sentinel_password else {}


def parse_sentinel(url: str, env: Mapping[str, str] | None = None) -> SentinelTarget | None:
    """The Sentinel target a ``redis+sentinel://`` URL names; None for any other URL. Raises
    ``ValueError`` with what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        return None
    env = os.environ if env is None else env
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
        if not name or (port and not port.isdigit()):
            raise ValueError(f"sentinel {host!r} is not host or host:port")
        sentinels.append((name, int(port) if port else DEFAULT_SENTINEL_PORT))
    path = [p for p in parts.path.split("/") if p]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /service_name or /service_name/db")
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss+sentinel",
        sentinel_password=env.get(SENTINEL_PASSWORD_ENV) or None,
    )


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A Redis Cluster's seed nodes and credentials."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def parse_cluster(url: str) -> ClusterTarget | None:
    """The Redis Cluster a ``redis+cluster://`` URL names; None for any other URL. Raises
    ``ValueError`` with what is wrong (no host, a bad port, a database)."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return None
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError("no node: redis+cluster://host:port[,host:port...]")
    nodes = []
    for host in hosts.split(","):
        name, colon, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
        if not name or (colon and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"node {host.strip()[:60]!r} is not host or host:port (a port from 1 to 65535)")
        nodes.append((name, int(port) if port else DEFAULT_PORT))
    if parts.path.strip("/") not in ("", "0") or parts.query:
        raise ValueError("a Redis Cluster has one database and takes no options: nothing after the nodes")
    return ClusterTarget(
        nodes=tuple(nodes),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        ssl=parts.scheme == "rediss+cluster",
    )


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` (the primary, for a Sentinel URL; a ``redis.RedisCluster``,
    which answers the same commands, for a cluster URL)."""
    import redis
    import redis.sentinel

    if (cluster := parse_cluster(url)) is not None:
        from redis.cluster import ClusterNode

        node: Any = ClusterNode  # (untyped in redis-py)
        nodes = [node(host, port) for host, port in cluster.nodes]
        return cast("redis.Redis", redis.RedisCluster(startup_nodes=nodes, **cluster.client_kwargs(), **kwargs))
    target = parse_sentinel(url)
    if target is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel_class: Any = redis.sentinel.Sentinel  # (untyped in redis-py)
    sentinel = sentinel_class(
        list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(), **target.master_kwargs(), **kwargs
    )
    client: redis.Redis = sentinel.master_for(target.service)
    return client


def async_client(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio.Redis`` for ``url`` (the primary, for a Sentinel URL; a
    ``redis.asyncio.RedisCluster``, which answers the same commands but has no pub/sub, for a
    cluster URL: see ``pubsub_client``)."""
    import redis.asyncio

    if (cluster := parse_cluster(url)) is not None:
        from redis.asyncio.cluster import ClusterNode

        nodes = [ClusterNode(host, port) for host, port in cluster.nodes]
        return cast(
            "redis.asyncio.Redis",
            redis.asyncio.RedisCluster(startup_nodes=nodes, **cluster.client_kwargs(), **kwargs),
        )
    from promptq_core.pool import Pool, SentinelPool

    target = parse_sentinel(url)
    client: redis.asyncio.Redis
    if target is None:
        client = redis.asyncio.Redis.from_pool(Pool.from_url(url, **kwargs))
    else:
        client = async_sentinel(target, **kwargs).master_for(target.service, connection_pool_class=SentinelPool)
    return client


def async_sentinel(target: SentinelTarget, **kwargs: Any) -> Any:
    """redis-py's asyncio ``Sentinel`` for ``target``; ``kwargs`` go to the connections to Redis."""
    import redis.asyncio.sentinel

    sentinel: Any = redis.asyncio.sentinel.Sentinel  # (untyped in redis-py)
    return sentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(), **target.master_kwargs(), **kwargs
    )


_MAP_READS: weakref.WeakKeyDictionary[Any, tuple[asyncio.Task[None], float]] = weakref.WeakKeyDictionary()
"""Per Cluster client, its latest reading of the map and when it began (:func:`load_everywhere`)."""
MAP_FRESH_S = 1.0
"""A map read this recently is read again by no one (the calls a failover's NOSCRIPT wave makes)."""


async def load_everywhere(client: Any, source: str) -> None:
    """Load a script on the Redis ``client`` talks to: on a Cluster, on every primary of a map read
    afresh. (A replica promoted by a failover lacks the scripts its primary had; redis-py loads a
    script it finds missing on the primaries its own map names, which can still be the old ones.)
    The calls that find a script missing together (each slot's, after a failover) share one reading
    of the map, and one at most every ``MAP_FRESH_S``: each reading replaces every node the client
    holds, so readings made side by side would each drop nodes the others' calls are using."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        loop = asyncio.get_running_loop()
        reading, began = _MAP_READS.get(client) or (None, -math.inf)
        if reading is None or (reading.done() and loop.time() - began > MAP_FRESH_S):
            reading, began = loop.create_task(client.nodes_manager.initialize()), loop.time()
            _MAP_READS[client] = reading, began
        await asyncio.shield(reading)
        await client.execute_command("SCRIPT LOAD", source, target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.script_load(source)


def load_everywhere_sync(client: Any, source: str) -> None:
    """:func:`load_everywhere` for a blocking client."""
    import redis

    if isinstance(client, redis.RedisCluster):
        client.nodes_manager.initialize()
        client.execute_command("SCRIPT LOAD", source, target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.script_load(source)


async def pubsub_client(client: Any) -> redis.asyncio.Redis:
    """A client whose ``pubsub()`` to subscribe with: ``client`` itself, or for a Redis Cluster a
    plain connection to one of its nodes, chosen afresh each call (a node that failed is left out
    once the cluster's map says so). A ``PUBLISH`` on any node of a Cluster reaches every node."""
    import redis.asyncio
    from redis.asyncio.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        return cast("redis.asyncio.Redis", client)
    from redis.asyncio.connection import SSLConnection

    await client.initialize()
    node = client.get_random_node()
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k in _NODE_SETTINGS}
    if node.connection_class is SSLConnection or node.connection_kwargs.get("connection_class") is SSLConnection:
        kwargs["ssl"] = True
    return redis.asyncio.Redis(host=node.host, port=node.port, **kwargs)


_NODE_SETTINGS = frozenset(
    (
        "username",
        "password",
        "ssl",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
        "socket_connect_timeout",
        "socket_timeout",
        "retry",
        "retry_on_error",
        "credential_provider",
    )
)
