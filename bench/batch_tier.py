"""The Batch tier against the live tier, for the same 10,000 jobs (``make bench-batch``).

Each run: a fresh ``redis-server`` and simulator, 10,000 chat jobs submitted at once (``max_tokens``
20), one ``arq worker.Settings`` process (50 slots; the default backend with ``PROMPTQ_BATCH_API=1``,
the default 60 s collection window, polls from 1 s), waited for until every job has its result. The simulator's
provider batches take 5 s to answer, so that the Redis memory of the jobs waiting for their answer
can be read. Reported per tier: the live API calls made, the files uploaded and provider batches
created, Redis's ``used_memory`` above the empty server once the jobs are submitted and while they
wait for the provider, the estimated cost at ``PRICES`` (the batch tier at its 0.5 share), and the
time from the first submit to the last result. Runs alternate between the tiers; medians of
``REPEATS``. Writes ``bench/batch_tier.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from devtools.stack import RedisServer, Simulator, Worker, wait_until
from producer import SyncProducer
from producer.types import ProducerConfig
from promptq_core.prices import cost_usd, prices_from_env

JOBS = 10_000
REPEATS = 3
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}}
BATCH_DELAY_MS = 5000


def used_memory(client: redis.Redis) -> int:
    info: Any = client.info("memory")
    return int(info["used_memory"])


def run(tier: str) -> dict[str, float]:
    with RedisServer() as server, Simulator() as sim:
        sim.configure(batch_delay_ms=BATCH_DELAY_MS)
        client = redis.Redis.from_url(server.url)
        empty = used_memory(client)
        env = {
            "REDIS_URL": server.url,
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sk-bench",
            "PROMPTQ_MAX_JOBS": "50",
            "PROMPTQ_BATCH_API": "1",
            "PROMPTQ_BATCH_POLL_S": "1",
            "PROMPTQ_PRICES": json.dumps(PRICES),
        }
        with SyncProducer(config=ProducerConfig(redis_url=server.url)) as producer:
            started = time.monotonic()
            items = [{"prompt": f"enrich row {i} of the table", "max_tokens": 20, "tier": tier} for i in range(JOBS)]
            ids = producer.submit_many(items)
            queued = used_memory(client) - empty
            waiting = 0
            with Worker(env):
                if tier == "batch":  # every job sent, none answered yet
                    sent = lambda: sim.stats()["batches"] >= 1 and _all(producer, ids, "batched")  # noqa: E731
                    wait_until(sent, 120, "sent", interval_s=0.25)
                    waiting = used_memory(client) - empty
                wait_until(lambda: _all(producer, ids, "succeeded"), 300, "every result", interval_s=0.25)
                elapsed = time.monotonic() - started
            results = producer.get_many(ids)
        client.close()
        stats = sim.stats()
    prices = prices_from_env({"PROMPTQ_PRICES": json.dumps(PRICES)})
    cost = sum(cost_usd(prices, r.model, r.usage, r.tier) or 0.0 for r in results if r is not None)
    return {
        "calls": stats["requests"],
        "files": stats["files"],
        "batches": stats["batches"],
        "lines": stats["batch_lines"],
        "queued_bytes_a_job": queued / JOBS,
        "waiting_bytes_a_job": waiting / JOBS,
        "cost_usd": cost,
        "seconds": elapsed,
    }


def _all(producer: SyncProducer, ids: list[str], status: str) -> bool:
    return all(r is not None and r.status == status for r in producer.get_many(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/batch_tier.md")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"live": [], "batch": []}
    for _ in range(args.repeats):
        for tier in runs:
            runs[tier].append(run(tier))
            print(tier, runs[tier][-1], flush=True)
    median = {tier: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for tier, rs in runs.items()}
    live, batch = median["live"], median["batch"]
    rows = [
        "| tier | live API calls | files uploaded | provider batches | lines answered in batches "
        "| Redis bytes a job, queued | Redis bytes a job, waiting for the provider | cost (USD) "
        "| first submit to last result (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tier, m in median.items():
        waiting = f"{m['waiting_bytes_a_job']:,.0f}" if tier == "batch" else "—"
        rows.append(
            f"| {tier} | {m['calls']:,.0f} | {m['files']:,.0f} | {m['batches']:,.0f} | {m['lines']:,.0f} "
            f"| {m['queued_bytes_a_job']:,.0f} | {waiting} | {m['cost_usd']:.4f} | {m['seconds']:.1f} |"
        )
    text = f"""# The Batch tier against the live tier

`make bench-batch` (bench/batch_tier.py), {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} CPUs,
Python {platform.python_version()}: {JOBS:,} chat jobs (`max_tokens` 20) submitted at once, one worker
process with 50 slots, the bundled simulator (its provider batches answer after {BATCH_DELAY_MS / 1000:g} s),
prices {json.dumps(PRICES)} (the batch tier at its default 0.5 share). Medians of {args.repeats} runs each,
the tiers alternating; each run on a fresh Redis and simulator.

{chr(10).join(rows)}

The batch tier's cost is {batch["cost_usd"] / live["cost_usd"]:.2f}x the live tier's for the same answers
(the same tokens: the simulator answers a batch line as it answers the live call). Its time here is
the collection window (60 s, the default), the simulated provider's {BATCH_DELAY_MS / 1000:g} s and the
polls; a real provider takes minutes to hours (24 hours at most). "Waiting for the provider" is
every job `batched`, its request kept in Redis until its answer is read.
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
