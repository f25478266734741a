"""Named queues on one Redis and on a Redis Cluster, in the same run (``make bench-cluster``).

The workload: 3,000 jobs spread over four named queues (``q1`` to ``q4``), two worker processes
serving all four (``PROMPTQ_QUEUES=q1,q2,q3,q4``, 50 slots each), a simulated API answering at once;
the producer submits them all and waits for every result. Once against one ``redis-server``, once
against a local Redis Cluster of three primaries with a replica each (``devtools.stack.ClusterSet``),
runs interleaved, medians of three. Redis CPU is ``INFO cpu`` (user + system) over the run, summed
over the primaries, and the busiest primary's alone. Writes ``bench/cluster.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from devtools.stack import ROOT, ClusterSet, RedisServer, Simulator, Worker
from producer import Producer
from promptq_core.contract import queue_keys

QUEUES = ("q1", "q2", "q3", "q4")
JOBS = 3_000
SLOTS = 50
WORKERS = 2


def cpu_s(port: int) -> float:
    client = redis.Redis(port=port)
    try:
        info: Any = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    finally:
        client.close()


async def batch(url: str, jobs: int) -> float:
    async with Producer(url) as p:
        t0 = time.perf_counter()
        ids = await p.submit_many([{"prompt": f"bench {i}", "queue": QUEUES[i % 4]} for i in range(jobs)])
        results = await asyncio.gather(*(p.wait(j, queue=QUEUES[i % 4], timeout=600) for i, j in enumerate(ids)))
        seconds = time.perf_counter() - t0
    assert all(r.ok for r in results)
    return seconds


def one_run(url: str, ports: list[int], sim: Simulator, jobs: int) -> dict[str, Any]:
    env = {
        "REDIS_URL": url,
        "OPENAI_BASE_URL": sim.base_url,
        "PROMPTQ_QUEUES": ",".join(QUEUES),
        "PROMPTQ_MAX_JOBS": str(SLOTS),
    }
    workers = [Worker(env).start() for _ in range(WORKERS)]
    try:
        before = {port: cpu_s(port) for port in ports}
        seconds = asyncio.run(batch(url, jobs))
        used = {port: cpu_s(port) - before[port] for port in ports}
    finally:
        for w in workers:
            w.stop()
    for port in ports:
        client = redis.Redis(port=port)
        client.flushall()
        client.close()
    return {
        "jobs_per_s": jobs / seconds,
        "redis_us": sum(used.values()) / jobs * 1e6,
        "busiest_us": max(used.values()) / jobs * 1e6,
        **{f"node_{n}_us": used[port] / jobs * 1e6 for n, port in enumerate(ports)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "cluster.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=JOBS)
    args = parser.parse_args()
    started = time.monotonic()
    one: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []
    with RedisServer() as server, ClusterSet() as cluster, Simulator() as sim:
        primaries = [s.port for s in cluster.primaries_now()]
        shards = {q: cluster.node_of(queue_keys(q).key("levels")).port for q in QUEUES}
        for _ in range(args.runs):
            one.append(one_run(server.url, [server.port], sim, args.jobs))
            many.append(one_run(cluster.url, primaries, sim, args.jobs))
    spread = len(set(shards.values()))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(float(r[key]) for r in rows))

    per_node = " · ".join(
        f"{med(many, f'node_{n}_us'):.0f} ({', '.join(q for q, p in shards.items() if p == port) or 'none'})"
        for n, port in enumerate(primaries)
    )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"# promptq on one Redis and on a Redis Cluster ({datetime.now(UTC):%Y-%m-%d}, {machine}; "
        f"`make bench-cluster`, {(time.monotonic() - started) / 60:.1f} min)",
        "",
        f"{args.jobs:,} jobs over four named queues, {WORKERS} worker processes of {SLOTS} slots serving all four,",
        "an instant simulated API; medians of "
        f"{args.runs} interleaved runs. The four queues landed on {spread} of the cluster's 3 primaries.",
        "",
        "| Redis | jobs/s | Redis CPU µs/job (all primaries) | busiest primary µs/job "
        "| each primary µs/job (its queues) |",
        "|---|---:|---:|---:|---|",
        f"| one redis-server | {med(one, 'jobs_per_s'):.0f} | {med(one, 'redis_us'):.0f} "
        f"| {med(one, 'busiest_us'):.0f} | {med(one, 'node_0_us'):.0f} (all four) |",
        f"| Cluster, 3 primaries + 3 replicas | {med(many, 'jobs_per_s'):.0f} | {med(many, 'redis_us'):.0f} "
        f"| {med(many, 'busiest_us'):.0f} | {per_node} |",
        "",
        "All processes share this machine's cores (the cluster's six servers too), so the cluster's jobs/s",
        "here says what it costs, not what it scales to: on a Cluster each primary carries only its queues'",
        "share of the work (the busiest primary's CPU per job against one Redis's).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
