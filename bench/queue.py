"""The queue's benchmarks (part of ``make bench``): priorities and fair shares, and what a claim
costs Redis while the fleet holds thousands of calls.

    python -m bench.queue [--quick] [--only fairness|fleet]

- **Fairness.** One worker (100 slots) against a 500 ms API. Tenant A queues 3,000 jobs, then tenant
  B 300, then 20 interactive jobs arrive 100 ms apart at priority 0. Measured: the interactive jobs'
  queue wait (``started_at - enqueued_at``), each batch's span (from its submit to its last job's
  end) and B's span over A's; every job must succeed. Run twice: with priorities and fairness keys,
  and without (every job at the default priority under the default key: one FIFO line, as promptq
  0.1 ran everything).
- **Fleet.** Fresh jobs (``submit_many``, then ``wait`` on each) through a 50-slot worker against an
  instant API, while another worker holds 0, 3,000 or 10,000 calls against an API that answers in an
  hour. Measured: Redis's CPU (``INFO cpu``, user + system) per fresh job over the fresh run, which
  includes the holding worker's lease renewals, and the fresh jobs' rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis

from bench.run import Row, pct, worker_env
from devtools.stack import RedisServer, Simulator, Worker
from producer import Producer, QueueDepths

# -- fairness -----------------------------------------------------------------------------------------


async def _fairness(url: str, fair: bool, a_jobs: int, b_jobs: int, interactive: int) -> dict[str, float]:
    def tagged(key: str, priority: int | None = None) -> dict[str, Any]:
        if not fair:
            return {}
        return {"fairness_key": key, **({} if priority is None else {"priority": priority})}

    async with Producer(url) as p:
        a_at = time.time()
        a_ids = await p.submit_many([{"prompt": f"A row {i}", **tagged("tenant-a")} for i in range(a_jobs)])
        b_at = time.time()
        b_ids = await p.submit_many([{"prompt": f"B row {i}", **tagged("tenant-b")} for i in range(b_jobs)])
        web_ids = []
        for i in range(interactive):
            web_ids.append(await p.submit(f"a user waits {i}", **tagged("web", 0)))
            await asyncio.sleep(0.1)
        results = {
            r.job_id: r for r in await asyncio.gather(*(p.wait(i, timeout=600) for i in a_ids + b_ids + web_ids))
        }
    assert all(r.ok for r in results.values()), "every job succeeds"
    waits_ms = [(results[i].started_at or 0) - (results[i].enqueued_at or 0) for i in web_ids]
    a_span = max(results[i].finished_at or 0 for i in a_ids) - a_at
    b_span = max(results[i].finished_at or 0 for i in b_ids) - b_at
    return {
        "wait_p50_ms": pct(waits_ms, 0.5) * 1000,
        "wait_p95_ms": pct(waits_ms, 0.95) * 1000,
        "a_span_s": a_span,
        "b_span_s": b_span,
        "b_over_a": b_span / a_span,
    }


def fairness(rows: list[Row], runs: int, scale: float = 1.0) -> None:
    a_jobs, b_jobs = round(3000 * scale), round(300 * scale)
    measured: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(runs):
        for fair in (True, False):
            with (
                RedisServer() as server,
                Simulator("--latency-ms", "500") as sim,
                Worker(worker_env(server.url, sim, PROMPTQ_MAX_JOBS="100")),
            ):
                measured[fair].append(asyncio.run(_fairness(server.url, fair, a_jobs, b_jobs, 20)))

    def median(fair: bool, name: str) -> float:
        return statistics.median(m[name] for m in measured[fair])

    label = f"A {a_jobs:,} jobs, then B {b_jobs:,}, then 20 interactive; 100 slots, 500 ms calls"
    rows.append(
        Row(
            f"fairness: interactive queue wait p95 ({label})",
            "≤ 250 ms",
            f"{median(True, 'wait_p95_ms'):,.0f} ms (p50 {median(True, 'wait_p50_ms'):,.0f} ms)",
            f"FIFO: {median(False, 'wait_p95_ms'):,.0f} ms",
        )
    )
    rows.append(
        Row(
            "fairness: B's span ÷ A's span",
            "≤ 0.35",
            f"{median(True, 'b_over_a'):.2f} (B {median(True, 'b_span_s'):.1f} s, A {median(True, 'a_span_s'):.1f} s)",
            f"FIFO: {median(False, 'b_over_a'):.2f} (B {median(False, 'b_span_s'):.1f} s)",
        )
    )


# -- fleet --------------------------------------------------------------------------------------------


def _redis_cpu_s(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _fresh(url: str, n: int) -> float:
    async with Producer(url) as p:
        started = time.perf_counter()
        ids = await p.submit_many([{"prompt": f"fresh {i}", "fairness_key": "fresh"} for i in range(n)])
        results = await asyncio.gather(*(p.wait(i, timeout=600) for i in ids))
        seconds = time.perf_counter() - started
    assert all(r.ok for r in results)
    return n / seconds


async def _hold(url: str, n: int) -> None:
    async with Producer(url) as p:
        await p.submit_many([{"prompt": f"held {i}", "fairness_key": "held"} for i in range(n)])


def _depths(url: str) -> QueueDepths:
    from producer import SyncProducer

    with SyncProducer(url) as p:
        return p.depths()


def fleet_run(held: int, fresh: int) -> dict[str, float]:
    hour_ms = str(3_600_000)
    with (
        RedisServer() as server,
        Simulator() as instant,
        Simulator("--latency-ms", hour_ms) as slow,
    ):
        holder = None
        if held:
            env = worker_env(
                server.url,
                slow,
                PROMPTQ_MAX_JOBS=str(held),
                PROMPTQ_REQUEST_TIMEOUT_S="7200",
            )
            holder = Worker(env).start()
            asyncio.run(_hold(server.url, held))
            deadline = time.monotonic() + 300
            while slow.stats()["in_flight"] < held:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {slow.stats()['in_flight']} of {held} calls held")
                time.sleep(0.5)
        try:
            env = worker_env(server.url, instant, PROMPTQ_MAX_JOBS="50")
            with Worker(env):
                asyncio.run(_fresh(server.url, 500))  # warm-up: connections, scripts
                client = redis.Redis.from_url(server.url)
                cpu0 = _redis_cpu_s(client)
                rate = asyncio.run(_fresh(server.url, fresh))
                cpu_us = (_redis_cpu_s(client) - cpu0) / fresh * 1e6
                running = _depths(server.url).running
                client.close()
            assert running == held, f"{running} held at the end, not {held}"
        finally:
            if holder is not None:
                holder.stop(timeout_s=60)
    return {"cpu_us": cpu_us, "jobs_per_s": rate}


def fleet(rows: list[Row], runs: int, fresh: int = 10_000, helds: tuple[int, ...] = (0, 3_000, 10_000)) -> None:
    measured: dict[int, list[dict[str, float]]] = {h: [] for h in helds}
    for _ in range(runs):
        for held in helds:
            measured[held].append(fleet_run(held, fresh))
    base_cpu = statistics.median(m["cpu_us"] for m in measured[helds[0]])
    base_rate = statistics.median(m["jobs_per_s"] for m in measured[helds[0]])
    for held in helds:
        cpu = statistics.median(m["cpu_us"] for m in measured[held])
        rate = statistics.median(m["jobs_per_s"] for m in measured[held])
        goal = "≤ 100 µs" if held == 0 else "≤ 1.2 x 0 held"
        rows.append(
            Row(
                f"fleet: Redis CPU per fresh job, {held:,} calls held (50 slots, instant API, {fresh:,} jobs)",
                goal,
                f"{cpu:.0f} µs; {rate:,.0f} jobs/s",
                "" if held == 0 else f"0 held: {base_cpu:.0f} µs; {base_rate:,.0f} jobs/s",
                "" if held == 0 else f"{cpu / base_cpu:.2f} CPU, {rate / base_rate:.2f} rate",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue")
    parser.add_argument("--quick", action="store_true", help="one run each, smaller workloads")
    parser.add_argument("--only", choices=("fairness", "fleet"))
    args = parser.parse_args()
    rows: list[Row] = []
    runs = 1 if args.quick else 3
    if args.only in (None, "fairness"):
        fairness(rows, runs, 0.3 if args.quick else 1.0)
    if args.only in (None, "fleet"):
        fleet(rows, runs, 3_000 if args.quick else 10_000, (0, 1_000) if args.quick else (0, 3_000, 10_000))
    for r in rows:
        print(f"| {r.figure} | {r.goal} | {r.measured} | {r.baseline} | {r.ratio} |")


if __name__ == "__main__":
    main()
