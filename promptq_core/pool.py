"""redis-py's asyncio connection pool, its check of a connection it hands out made without a turn
of the event loop when nothing is pending on the connection.

Before every command, redis-py's pool makes sure the connection it hands out has nothing left
unread on it: it tries to read with a timeout of zero, which costs a turn of the event loop and a
cancelled read, about 20 µs of CPU and more of latency on an idle machine (a tenth of a submit's
CPU, and a turn on each Redis call of a job's round trip). Redis sends nothing unasked on a plain
connection, and redis-py drops a connection whose reply it stopped reading; so when the connection's
stream holds no bytes and no end, and its reply parser nothing either, the read would find nothing,
and :class:`QuickCheck` skips it. Anything else (bytes or an end already received, a parser other than
hiredis's, a connection not yet made) takes redis-py's own check, which reconnects as before.

The stream's buffer and the parser's reader are redis-py's and asyncio's own attributes (redis-py
is pinned below 6 by arq); ``tests/integration/test_pool.py`` checks they are where this module looks.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

__all__ = ["Pool", "QuickCheck", "SentinelPool", "quiet"]


def quiet(connection: AbstractConnection) -> bool:
    """Connected, with nothing received and not read: no reply left over, no end of the stream."""
    stream: Any = getattr(connection, "_reader", None)
    parsed: Any = getattr(getattr(connection, "_parser", None), "_reader", None)
    has_data = getattr(parsed, "has_data", None)
    return (
        stream is not None
        and getattr(connection, "_writer", None) is not None
        and has_data is not None
        and not stream._buffer
        and not stream.at_eof()
        and stream.exception() is None
        and not has_data()
    )


class QuickCheck(ConnectionPool):
    """A pool whose check of a quiet connection (:func:`quiet`) costs no turn of the event loop."""

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if quiet(connection):
            return
        await super().ensure_connection(connection)


class Pool(QuickCheck):
    """redis-py's pool to one Redis, with the quick check."""


class SentinelPool(QuickCheck, SentinelConnectionPool):
    """redis-py's pool to the primary the Sentinels name, with the quick check."""
