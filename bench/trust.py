"""What a hostile caller could cost the fleet before issue 23, and what it costs now (``make bench-trust``).

1. The overview at its bounds: a queue with 10 priorities of 1,000 fairness keys each, 10,000 jobs
   leased and 10,000 deferred. Redis time (``INFO commandstats``) of one overview with the bounds of
   before (1,000 keys a priority, 10,000 leased and deferred looked at) and with today's; and the
   overviews 20 dashboard tabs refreshing at once cost the API before (one each) and now (one a
   second per queue, shared).
2. 2,000 event streams open on queued jobs: Redis connections held before (a blocking read each) and
   now (one blocking read per queue for every stream of the producer).

Both in one run, against one fresh ``redis-server``. Writes ``bench/trust.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from devtools.stack import ROOT, RedisServer
from producer import Producer
from producer.overview import OVERVIEW_KEYS_MAX, SCAN_MAX
from producer.streams import StreamCursor
from promptq_core.contract import ACTIVE, DELAYED, LEASES, ROUTES, queue_keys
from promptq_core.contract import LEVELS as LEVELS_KEY
from promptq_core.scripts import script

LEVELS, KEYS_A_LEVEL, HELD = 10, 1_000, 10_000
STREAMS = 2_000
REPEATS = 5


def fill(url: str) -> None:
    """The queue at the overview's bounds (written directly: the structures the overview reads)."""
    q = queue_keys()
    client = redis.Redis.from_url(url)
    with client.pipeline(transaction=False) as pipe:
        for level in range(LEVELS):
            pipe.zadd(q.key(LEVELS_KEY), {str(level): level})
            for k in range(KEYS_A_LEVEL):
                key = f"tenant-{k}"
                pipe.zadd(q.key(f"{ACTIVE}{level}"), {key: k})
                pipe.zadd(q.ready(level, key), {f"r{level}-{k}": k})
            pipe.execute()
        for i in range(HELD):
            pipe.zadd(q.key(LEASES), {f"l{i}": 10**13})
            pipe.zadd(q.key(DELAYED), {f"d{i}": 10**13})
            pipe.hset(q.key(ROUTES), mapping={f"l{i}": f"5 {i} key-{i % 100}", f"d{i}": f"5 {i} key-{i % 100}"})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
    client.close()


def script_usec(client: redis.Redis) -> tuple[int, int]:
    stats: Any = client.info("commandstats")
    row = stats.get("cmdstat_evalsha", {})
    return int(row.get("calls", 0)), int(row.get("usec", 0))


def overview_ms(url: str, keys_max: int, scan_max: int) -> float:
    """Redis time of the queue's overview script, median of ``REPEATS``."""
    client = redis.Redis.from_url(url)
    run = client.register_script(script("overview").source)
    keys, args = script("overview").bind(queue_keys(), keys_max=keys_max, scan_max=scan_max, minutes=15, batches=20)
    times = []
    for _ in range(REPEATS):
        before = script_usec(client)[1]
        run(keys=keys, args=args)
        times.append((script_usec(client)[1] - before) / 1000)
    client.close()
    return statistics.median(times)


async def tabs(url: str, shared: bool) -> int:
    """Overview scripts 20 tabs refreshing at once make Redis run (the API's way, or one each)."""
    from producer.http.routes import SharedOverview

    client = redis.Redis.from_url(url)
    calls = script_usec(client)[0]
    async with Producer(url) as producer:
        if shared:
            cache = SharedOverview(lambda: producer)
            await asyncio.gather(*(cache.get(None) for _ in range(20)))
        else:
            await asyncio.gather(*(producer.overview() for _ in range(20)))
    ran = script_usec(client)[0] - calls
    client.close()
    return ran


def clients(url: str) -> int:
    client = redis.Redis.from_url(url)
    info: Any = client.info("clients")
    client.close()
    return int(info["connected_clients"])


async def streams_held(url: str, hub: bool) -> int:
    """Connections Redis counts while ``STREAMS`` streams are open on queued jobs."""
    async with Producer(url) as producer:
        ids = await producer.submit_many([f"watched {i}" for i in range(STREAMS)])
        base = clients(url)
        if hub:
            readers = [asyncio.create_task(_drain(producer.stream(job_id))) for job_id in ids]
        else:  # before: a blocking XREAD of its own for each stream
            readers = [asyncio.create_task(_blocking(producer, job_id)) for job_id in ids]
        await asyncio.sleep(3)
        held = clients(url) - base
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return held


async def _drain(events: Any) -> None:
    async for _ in events:
        pass


async def _blocking(producer: Producer, job_id: str) -> None:
    cursor = StreamCursor(queue_keys(), job_id)
    while True:
        await producer.redis.xread(**cursor.read_args(), block=1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "bench" / "trust.md"))
    out = Path(parser.parse_args().out)
    with RedisServer("--maxclients", "10000") as server:
        fill(server.url)
        before_ms = overview_ms(server.url, 1_000, 10_000)
        after_ms = overview_ms(server.url, OVERVIEW_KEYS_MAX, SCAN_MAX)
        each, shared = asyncio.run(tabs(server.url, False)), asyncio.run(tabs(server.url, True))
        redis.Redis.from_url(server.url).flushdb()
        held_before = asyncio.run(streams_held(server.url, hub=False))
        redis.Redis.from_url(server.url).flushdb()
        held_after = asyncio.run(streams_held(server.url, hub=True))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    bounds = f"{LEVELS} priorities x {KEYS_A_LEVEL:,} keys, {HELD:,} leased, {HELD:,} deferred"
    text = f"""# What a hostile caller costs: the overview and open streams (`make bench-trust`)

{when}, {machine}, one fresh `redis-server`. See `bench/trust.py` for the workload.

| | before | now |
|---|---:|---:|
| Redis time of one overview at its bounds ({bounds}), median of {REPEATS} | {before_ms:.1f} ms | {after_ms:.1f} ms |
| overview scripts Redis runs for 20 tabs refreshing at once | {each} | {shared} |
| Redis connections held by {STREAMS:,} open event streams (jobs queued) | {held_before:,} | {held_after:,} |

Before: the overview listed 1,000 keys a priority and looked at 10,000 leased and 10,000 deferred
jobs' routes, once per tab; each open stream held a connection in a blocking `XREAD`. Now: 100 keys
a priority and 500 of each (totals still counted in full), computed once a second per queue by the
HTTP API; one blocking `XREAD` per queue serves every open stream of a producer (`producer/hub.py`).
"""
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
