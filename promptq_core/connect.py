"""Connecting to Redis from ``REDIS_URL``: one Redis, or the primary that Redis Sentinel names.

- ``redis://[user:password@]host:port[/db]`` (``rediss://`` for TLS, ``unix:///path.sock``): one Redis.
- ``redis+sentinel://[user:password@]host1:port1,host2:port2,.../service_name[/db]``: ask these
  Sentinels for the primary of ``service_name`` (``rediss+sentinel://``: TLS to the Redis servers).
  The user and password are the Redis servers'; ``PROMPTQ_SENTINEL_PASSWORD`` is the Sentinels' own,
  when they have one. After a failover, a new connection asks the Sentinels again, and one still
  open to the demoted primary is closed at its first refused write: every part of promptq finds
  the new primary and carries on.

Every client promptq makes goes through here (the producers, the HTTP API, the CLI, the worker).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:  # (the URL's parsing is standard library only: promptq_core.env checks REDIS_URL with it)
    import redis
    import redis.asyncio

__all__ = [
    "SENTINEL_PASSWORD_ENV",
    "SENTINEL_SCHEMES",
    "SentinelTarget",
    "async_client",
    "async_sentinel",
    "parse_sentinel",
    "sync_client",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
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


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` (the primary, for a Sentinel URL)."""
    import redis
    import redis.sentinel

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
    """A ``redis.asyncio.Redis`` for ``url`` (the primary, for a Sentinel URL)."""
    import redis.asyncio

    target = parse_sentinel(url)
    client: redis.asyncio.Redis
    if target is None:
        client = redis.asyncio.Redis.from_url(url, **kwargs)
    else:
        client = async_sentinel(target, **kwargs).master_for(target.service)
    return client


def async_sentinel(target: SentinelTarget, **kwargs: Any) -> Any:
    """redis-py's asyncio ``Sentinel`` for ``target``; ``kwargs`` go to the connections to Redis."""
    import redis.asyncio.sentinel

    sentinel: Any = redis.asyncio.sentinel.Sentinel  # (untyped in redis-py)
    return sentinel(
        list(target.sentinels), sentinel_kwargs=target.sentinel_kwargs(), **target.master_kwargs(), **kwargs
    )
