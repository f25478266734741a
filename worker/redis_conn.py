"""The worker's Redis connection: settings from ``REDIS_URL``, and riding out a Redis outage.

arq gives up on a Redis error: a command that fails in its poll loop ends the worker, and one that
fails while a job finishes can lose the job's bookkeeping. promptq's connections retry instead, with
a capped exponential backoff and a warning per failure, for up to ``REDIS_OUTAGE_S``; a refused
password is not an outage and fails at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.connections import RedisSettings
from redis.asyncio.connection import AbstractConnection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import AbstractBackoff, ExponentialBackoff, NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TimeoutError,
    TryAgainError,
)

from promptq_core.connect import async_sentinel, parse_cluster, parse_sentinel, sync_client
from promptq_core.env import ConfigError, redact_url
from promptq_core.guard import (
    ALLOW_EVICTION_ENV,
    RedisFacts,
    eviction_problem,
    mode_problem,
    read_facts_sync,
    version_problem,
)
from promptq_core.pool import QuickCheck
from worker.logs import get_logger

__all__ = [
    "REDIS_OUTAGE_S",
    "WORKER_CONNECTIONS",
    "OutageRetry",
    "check_access",
    "check_facts",
    "cluster_settings",
    "give_up_at",
    "redis_settings",
    "ride_out",
    "worker_pool",
]

log = get_logger("promptq.redis")
T = TypeVar("T")

REDIS_OUTAGE_S = 300.0
"""How long a worker waits for Redis to come back before it gives up and exits."""
WORKER_CONNECTIONS = 256
"""Connections one worker process opens to Redis at most, whatever ``PROMPTQ_MAX_JOBS`` (a job needing
one while all are busy waits its turn): a fleet of workers with thousands of slots each stays below
Redis's ``maxclients`` (10,000 by default)."""
CONNECT_TIMEOUT_S = 5.0
"""A connection attempt to a Redis that does not answer (a host gone, not a refused port) gives up after this."""
BACKOFF_CAP_S = 2.0
BACKOFF_BASE_S = 0.05


class OutageRetry(Retry):
    """redis-py's retry, bounded by time rather than count, logging each failure."""

    __slots__ = ("outage_s",)

    def __init__(self, outage_s: float = REDIS_OUTAGE_S) -> None:
        backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
        # OSError: a refused or reset connection, before redis-py wraps it in its ConnectionError
        super().__init__(backoff, -1, (ConnectionError, TimeoutError))
        self._supported_errors = (ConnectionError, TimeoutError, OSError, asyncio.TimeoutError)  # type: ignore[assignment]
        self.outage_s = outage_s

    async def call_with_retry(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        return await _ride_out(do, self._supported_errors, self._backoff, self.outage_s, fail)


async def ride_out(call: Callable[[], Awaitable[T]], outage_s: float = REDIS_OUTAGE_S) -> T:
    """Run a Redis call until Redis takes it, for up to ``outage_s``. For the writes a job cannot do
    without (its result above all): redis-py retries a command, but not the handshake of a new
    connection, which fails when Redis goes away just then. The calls given are safe to repeat.
    (NoScriptError: Redis restarted again between loading a script and running it; ClusterError and
    TryAgainError: a Cluster whose slot has no primary for a moment, during a failover.)"""
    backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    errors = (ConnectionError, TimeoutError, OSError, NoScriptError, ClusterError, TryAgainError)
    return await _ride_out(call, errors, backoff, outage_s)


_give_up_at: float | None = None
"""A loop time after which no call rides out an outage any more (a shutdown is under way)."""


def give_up_at(loop_time: float | None) -> None:
    """From ``loop_time`` on, a call Redis fails raises at once instead of waiting for Redis: set by
    the SIGTERM drain, so a worker whose Redis is away still stops within its grace (None: ride out
    outages again, as a worker starting does)."""
    global _give_up_at
    _give_up_at = loop_time


async def _ride_out(
    do: Callable[[], Awaitable[T]],
    errors: tuple[type[BaseException], ...],
    backoff: AbstractBackoff,
    outage_s: float,
    fail: Callable[[RedisError], Any] | None = None,
) -> T:
    """Call ``do`` until it succeeds, backing off after each of ``errors`` (logged), for up to
    ``outage_s``; a refused password is not an outage and is raised at once."""
    loop = asyncio.get_running_loop()
    started_s, failures = loop.time(), 0
    while True:
        try:
            return await do()
        except (AuthenticationError, AuthorizationError):
            raise
        except errors as error:
            failures += 1
            if fail is not None:
                await fail(error)  # type: ignore[arg-type]
            waited_s = loop.time() - started_s
            stopping = _give_up_at is not None and loop.time() >= _give_up_at
            if waited_s >= outage_s or stopping:
                log.error("redis.gave_up", error=str(error), failures=failures, waited_s=round(waited_s, 1))
                raise
            wait_s = backoff.compute(failures)
            if _give_up_at is not None:
                wait_s = min(wait_s, max(0.0, _give_up_at - loop.time()))
            log.warning("redis.unavailable", error=str(error), failures=failures, retry_in_s=round(wait_s, 2))
            await asyncio.sleep(wait_s)


def redis_settings(url: str, outage_s: float = REDIS_OUTAGE_S) -> RedisSettings:
    """arq's connection settings from a URL (credentials, TLS and database included), for what arq
    does with them itself (``arq worker.Settings --check``); the worker's pool is promptq's own."""
    if (target := parse_sentinel(url)) is not None:
        return RedisSettings(
            host=list(target.sentinels),
            sentinel=True,
            sentinel_master=target.service,
            database=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            conn_retries=0,
        )
    if (cluster := parse_cluster(url)) is not None:  # (arq knows no Cluster: its first seed node)
        host, port = cluster.nodes[0]
        return RedisSettings(
            host=host, port=port, username=cluster.username, password=cluster.password, ssl=cluster.ssl, conn_retries=0
        )
    kw: dict[str, Any] = dict(parse_url(url))
    return RedisSettings(
        host=kw.get("host", "localhost"),
        port=int(kw.get("port", 6379)),
        unix_socket_path=kw.get("path"),
        database=int(kw.get("db", 0)),
        username=kw.get("username"),
        password=kw.get("password"),
        ssl=kw.get("connection_class") is SSLConnection,
        retry=OutageRetry(outage_s),
        retry_on_error=[ConnectionError, TimeoutError],
        retry_on_timeout=True,
        conn_retries=0,  # the retry above covers start-up as well
    )


class _Bounded(QuickCheck):
    """redis-py's pool, with a task waiting for a connection while ``max_connections`` are in use
    (a semaphore: redis-py's ``BlockingConnectionPool`` takes a lock and a timeout on every get and
    release, which cost about 15 % of a worker's jobs/s at 100 slots and 100 ms calls)."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "max_connections": max_connections})
        self._free = asyncio.Semaphore(max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        await self._free.acquire()
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)
        except BaseException:
            self._free.release()
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._free.release()


class BoundedPool(_Bounded):
    """A bounded pool to one Redis."""


class BoundedSentinelPool(_Bounded, SentinelConnectionPool):
    """A bounded pool to the primary the Sentinels name (asked again for every new connection)."""


class SentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, connecting to the address the Sentinels gave once: the
    retry that rides out an outage (:class:`OutageRetry`) then asks the Sentinels again. (redis-py
    runs the same retry around both, so a worker kept knocking at a dead primary for the whole
    outage allowance instead of finding the new one.)"""

    async def connect_to(self, address: Any) -> None:
        patient, self.retry = self.retry, _ONCE
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = patient


_ONCE = Retry(NoBackoff(), 0)


class SentinelSSLConnection(SentinelConnection, SSLConnection):
    pass


def worker_pool(url: str, max_connections: int = WORKER_CONNECTIONS, outage_s: float = REDIS_OUTAGE_S) -> Any:
    """The worker's connection pool: at most ``max_connections``, riding out outages like
    :class:`OutageRetry` (a failover too: a new connection finds the new primary)."""
    kwargs: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": OutageRetry(outage_s),
        "retry_on_error": [ConnectionError, TimeoutError],
        "retry_on_timeout": True,
    }
    target = parse_sentinel(url)
    if target is None:
        return BoundedPool.from_url(url, **kwargs)
    sentinel = async_sentinel(target, socket_connect_timeout=CONNECT_TIMEOUT_S)
    connection_class = SentinelSSLConnection if target.ssl else SentinelConnection
    settings = {**sentinel.connection_kwargs, **kwargs, "connection_class": connection_class}
    return BoundedSentinelPool(target.service, sentinel, is_master=True, **settings)


def cluster_settings(url: str, max_connections: int = WORKER_CONNECTIONS) -> dict[str, Any]:
    """The worker's cluster client settings (``ArqCluster``): the seed nodes and credentials, at
    most ``max_connections`` to each node. A command to a node that fails is retried by the cluster
    client, which reads the cluster's map again (a replica promoted); what must not be lost rides
    out a longer failover (:func:`ride_out`)."""
    from redis.asyncio.cluster import ClusterNode

    target = parse_cluster(url)
    assert target is not None
    return {
        "startup_nodes": [ClusterNode(host, port) for host, port in target.nodes],
        "max_connections": max_connections,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        **target.client_kwargs(),
    }


def check_access(url: str, allow_eviction: bool = False, timeout_s: float = 2.0) -> bool:
    """Refuse to start with credentials Redis rejects (a clear error naming REDIS_URL), or on a Redis
    that could lose jobs (``check_facts``). A Redis that does not answer is not refused: the worker
    starts and waits for it, as during an outage (and checks it then). True when it was checked."""
    client = None
    try:
        client = sync_client(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)  # (a cluster's: connects)
        client.ping()
        check_facts(read_facts_sync(client), url, allow_eviction)
        return True
    except (AuthenticationError, AuthorizationError, NoPermissionError) as e:
        raise ConfigError(f"REDIS_URL: Redis at {redact_url(url)} refused access: {e}") from None
    except (ConnectionError, TimeoutError, OSError) as e:
        log.warning("redis.unavailable", error=str(e), note="the worker starts and waits for Redis")
        return False
    except RedisClusterException as e:  # a cluster URL to a Redis that is not one, or no node answered
        if "not enabled" in str(e):
            raise ConfigError(f"REDIS_URL: Redis at {redact_url(url)} is not in cluster mode: use redis://") from None
        log.warning("redis.unavailable", error=str(e), note="the worker starts and waits for the cluster")
        return False
    finally:
        if client is not None:
            client.close()


def check_facts(facts: RedisFacts, url: str, allow_eviction: bool) -> None:
    """:class:`ConfigError` on a Redis older than 7.0 or one that evicts keys (a warning instead
    with ``PROMPTQ_ALLOW_EVICTION``)."""
    where = redact_url(url)
    if problem := version_problem(facts, where) or mode_problem(facts, url, where):
        raise ConfigError(f"REDIS_URL: {problem}")
    if problem := eviction_problem(facts, where):
        if not allow_eviction:
            raise ConfigError(f"REDIS_URL: {problem}")
        log.warning("redis.evicts_keys", problem=problem, allowed_by=ALLOW_EVICTION_ENV)
