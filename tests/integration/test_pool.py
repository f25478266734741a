"""The pools' quick check (``promptq_core.pool``): a quiet connection is handed out without redis-py's
read, any other still gets it, and the clients promptq makes use it."""

from __future__ import annotations

import asyncio

import redis.asyncio
from redis.asyncio.connection import AbstractConnection

from producer import Producer
from promptq_core.pool import Pool, QuickCheck, quiet
from worker.redis_conn import worker_pool


def _only_connection(client: redis.asyncio.Redis) -> AbstractConnection:
    (connection,) = client.connection_pool._available_connections
    return connection


async def test_a_connection_with_nothing_pending_is_quiet(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_pool(Pool.from_url(redis_url))
    try:
        await client.set("quiet:a", "1")
        connection = _only_connection(client)
        assert quiet(connection)  # (redis-py's and asyncio's attributes are where promptq_core.pool looks)
        assert await client.get("quiet:a") == b"1"
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_is_not_quiet_and_is_made_again(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_pool(Pool.from_url(redis_url))
    other = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.client_setname("to-kill")
        connection = _only_connection(client)
        await other.client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.05)  # (the loop sees the connection's end)
        assert not quiet(connection)
        assert await client.ping()  # redis-py's own check found the end and connected again
    finally:
        await client.aclose()
        await other.aclose()


async def test_a_reply_left_unread_is_not_taken_for_the_next_commands(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_pool(Pool.from_url(redis_url))
    try:
        await client.set("quiet:b", "mine")
        connection = _only_connection(client)
        await connection.send_command("ECHO", "left over")  # a reply nobody reads
        await asyncio.sleep(0.05)
        assert not quiet(connection)
        assert await client.get("quiet:b") == b"mine"  # (not "left over": the connection was made again)
    finally:
        await client.aclose()


async def test_the_clients_promptq_makes_use_it(redis_url: str) -> None:
    async with Producer(redis_url) as producer:
        assert isinstance(producer.redis.connection_pool, QuickCheck)
    pool = worker_pool(redis_url)
    try:
        assert isinstance(pool, QuickCheck)
    finally:
        await pool.disconnect()
