"""``make bench``: promptq's speed, measured against the plain-asyncio baseline on this machine.

Every figure is the median of several runs; ratios compare runs made side by side against the same
simulator. Writes ``bench/results.md`` (or ``--out``). See docs/benchmarks.md for what each figure means.

    python -m bench.run [--quick] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from devtools.stack import ROOT, RedisServer, Simulator, Worker
from producer import Producer
from promptq_core.contract import DELAYED, LEASES, LEVELS, queue_keys

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = client.info(section)  # type: ignore[assignment]
    return info


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    figure: str
    goal: str
    measured: str
    baseline: str = ""
    ratio: str = ""


def worker_env(redis_url: str, sim: Simulator, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "OPENAI_BASE_URL": sim.base_url, "PROMPTQ_LOG_FORMAT": "json", **extra}


# -- latency and idle cost --------------------------------------------------------------------------


WARM_UP_PROBES = 5
"""Round trips made first and not counted: a fresh process opens its connections on the first ones."""


async def round_trips(redis_url: str, n: int) -> list[float]:
    times_ms = []
    async with Producer(redis_url) as p:
        for i in range(-WARM_UP_PROBES, n):
            t0 = time.perf_counter()
            r = await p.wait(await p.submit(f"latency probe {i}"), timeout=10)
            if i >= 0:
                times_ms.append((time.perf_counter() - t0) * 1000)
            assert r.ok
            await asyncio.sleep(0.01)  # the worker is idle again before the next probe
    return times_ms


def latency(rows: list[Row], runs: int, probes: int) -> None:
    p50s, p99s, idle_cpu, idle_cmds = [], [], [], []
    for _ in range(runs):
        with RedisServer() as server, Simulator() as sim, Worker(worker_env(server.url, sim)) as worker:
            assert worker.popen is not None
            times = asyncio.run(round_trips(server.url, probes))
            p50s.append(pct(times, 0.5))
            p99s.append(pct(times, 0.99))
            client = redis.Redis.from_url(server.url)
            time.sleep(1)
            c0, cmd0 = cpu_s(worker.popen.pid), int(_info(client, "stats")["total_commands_processed"])
            time.sleep(10)
            c1, cmd1 = cpu_s(worker.popen.pid), int(_info(client, "stats")["total_commands_processed"])
            client.close()
            idle_cpu.append((c1 - c0) / 10 * 100)
            idle_cmds.append((cmd1 - cmd0 - 1) / 10)
    rows.append(
        Row("submit → wait round trip, p50 (idle worker, instant API)", "≤ 10 ms", f"{statistics.median(p50s):.1f} ms")
    )
    rows.append(Row("submit → wait round trip, p99", "≤ 50 ms", f"{statistics.median(p99s):.1f} ms"))
    rows.append(Row("idle worker CPU", "cheap", f"{statistics.median(idle_cpu):.2f} % of a core"))
    rows.append(Row("idle worker Redis commands", "cheap", f"{statistics.median(idle_cmds):.1f} /s"))


# -- batch submit and footprint -----------------------------------------------------------------------


async def submit_batch(redis_url: str, n: int) -> tuple[float, list[str]]:
    async with Producer(redis_url) as p:
        prompts = [f"batch prompt {i}: summarise row {i} of the table" for i in range(n)]
        t0 = time.perf_counter()
        ids = await p.submit_many(prompts)
        return n / (time.perf_counter() - t0), ids


def batch_submit(rows: list[Row], runs: int, n: int) -> None:
    rates, per_job, per_result = [], [], []
    for _ in range(runs):
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            before = int(_info(client, "memory")["used_memory"])
            rate, _ = asyncio.run(submit_batch(server.url, n))
            rates.append(rate)
            per_job.append((int(_info(client, "memory")["used_memory"]) - before) / n)
            with Simulator() as sim, Worker(worker_env(server.url, sim, PROMPTQ_MAX_JOBS="200")):
                deadline = time.monotonic() + 120
                while (
                    client.exists(queue_keys().key(LEVELS), queue_keys().key(LEASES), queue_keys().key(DELAYED))
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.2)
                time.sleep(1)
            per_result.append((int(_info(client, "memory")["used_memory"]) - before) / n)
            client.close()
    rows.append(Row(f"submit_many of {n:,} prompts", "≥ 20,000 jobs/s", f"{statistics.median(rates):,.0f} jobs/s"))
    rows.append(Row("Redis memory per queued job", "report", f"{statistics.median(per_job):,.0f} B"))
    rows.append(Row("Redis memory per stored result", "report", f"{statistics.median(per_result):,.0f} B"))


# -- throughput against the baseline ----------------------------------------------------------------


def baseline_run(sim: Simulator, jobs: int, slots: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.baseline",
            "--base-url",
            sim.base_url,
            "--jobs",
            str(jobs),
            "--concurrency",
            str(slots),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


async def promptq_batch(redis_url: str, jobs: int) -> tuple[float, float]:
    async with Producer(redis_url) as p:
        cpu0, t0 = time.process_time(), time.perf_counter()
        ids = await p.submit_many([f"bench prompt {i}" for i in range(jobs)])
        results = await asyncio.gather(*(p.wait(i, timeout=600) for i in ids))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    assert all(r.ok for r in results)
    return seconds, cpu


def promptq_run(server: RedisServer, sim: Simulator, jobs: int, slots: int, workers: int = 1) -> dict[str, float]:
    env = worker_env(server.url, sim, PROMPTQ_MAX_JOBS=str(slots))
    procs = [Worker(env).start() for _ in range(workers)]
    try:
        pids = [w.popen.pid for w in procs if w.popen]
        w0 = sum(cpu_s(pid) for pid in pids)
        seconds, producer_cpu = asyncio.run(promptq_batch(server.url, jobs))
        worker_cpu = sum(cpu_s(pid) for pid in pids) - w0
    finally:
        for w in procs:
            w.stop()
    redis.Redis.from_url(server.url).flushdb()
    return {"jobs_per_s": jobs / seconds, "cpu_s": worker_cpu + producer_cpu, "seconds": seconds}


def throughput(rows: list[Row], runs: int, jobs: int, slots: int, latency_ms: int, label: str) -> None:
    ours, base = [], []
    with RedisServer() as server, Simulator("--latency-ms", str(latency_ms)) as sim:
        for _ in range(runs):
            base.append(baseline_run(sim, jobs, slots))
            ours.append(promptq_run(server, sim, jobs, slots))
    rate = statistics.median(r["jobs_per_s"] for r in ours)
    base_rate = statistics.median(r["jobs_per_s"] for r in base)
    cpu = statistics.median(r["cpu_s"] / jobs * 1000 for r in ours)
    base_cpu = statistics.median(r["cpu_s"] / jobs * 1000 for r in base)
    headline = slots == 100 and latency_ms == 500  # the configuration the goals are set for
    rows.append(
        Row(
            f"throughput, {label}",
            "≥ 0.95 x baseline" if headline else "report",
            f"{rate:.0f} jobs/s",
            f"{base_rate:.0f} jobs/s",
            f"{rate / base_rate:.2f}",
        )
    )
    rows.append(
        Row(
            f"CPU per job, {label}",
            "≤ 1.3 x baseline" if headline else "report",
            f"{cpu:.2f} ms",
            f"{base_cpu:.2f} ms",
            f"{cpu / base_cpu:.2f}",
        )
    )


def worker_rss(rows: list[Row]) -> None:
    with (
        RedisServer() as server,
        Simulator("--latency-ms", "5000") as sim,
        Worker(worker_env(server.url, sim, PROMPTQ_MAX_JOBS="1000")) as worker,
    ):
        assert worker.popen is not None
        idle = rss_mib(worker.popen.pid)
        asyncio.run(submit_batch(server.url, 1000))
        time.sleep(3)
        busy = rss_mib(worker.popen.pid)
        in_flight = sim.stats()["in_flight"]
    rows.append(
        Row(
            "worker RSS, idle → 1,000 calls in flight", "report", f"{idle:.0f} → {busy:.0f} MiB ({in_flight} in flight)"
        )
    )


def scale_out(rows: list[Row], jobs: int, latency_ms: int, slots: int) -> None:
    with RedisServer() as server, Simulator("--latency-ms", str(latency_ms)) as sim:
        for n in (1, 2, 4):
            r = promptq_run(server, sim, jobs, slots, workers=n)
            limit = slots * n / (latency_ms / 1000)
            rows.append(
                Row(
                    f"scale out: {n} worker(s) x {slots} slots, {latency_ms} ms calls",
                    "report",
                    f"{r['jobs_per_s']:.0f} jobs/s",
                    f"limit {limit:.0f} jobs/s",
                    f"{r['jobs_per_s'] / limit:.2f}",
                )
            )


def write(rows: list[Row], out: Path, seconds: float) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"# promptq benchmark ({datetime.now(UTC):%Y-%m-%d}, {machine}; `make bench`, {seconds / 60:.1f} min)",
        "",
        "| figure | goal | measured | baseline | ratio |",
        "|---|---|---|---|---|",
        *(f"| {r.figure} | {r.goal} | {r.measured} | {r.baseline} | {r.ratio} |" for r in rows),
        "",
        "Medians of several runs (round trips: p50 and p99 of 200 probes a run, after 5 warm-up probes);",
        "the baseline is `bench/baseline.py` (asyncio.gather over AsyncOpenAI with a",
        "semaphore, no queue) against the same simulator in the same session. CPU counts the worker processes",
        "and the producer (or the baseline process), not the simulator or Redis. The fairness and fleet rows",
        "are `bench/queue.py` (see its docstring): FIFO is the same workload with every job at the default",
        "priority and fairness key; Redis CPU is `INFO cpu` (user + system) over the fresh jobs' run.",
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--quick", action="store_true", help="one run each, smaller batches (a smoke test)")
    args = parser.parse_args()
    runs = 1 if args.quick else 3
    started = time.monotonic()
    rows: list[Row] = []
    latency(rows, runs, 50 if args.quick else 200)
    batch_submit(rows, runs, 2_000 if args.quick else 10_000)
    throughput(rows, runs, 600 if args.quick else 3_000, 100, 500, "100 slots, 500 ms calls")
    throughput(rows, runs, 1_000 if args.quick else 3_000, 1_000, 1_000, "1,000 slots, 1 s calls")
    throughput(rows, runs, 600 if args.quick else 3_000, 100, 100, "100 slots, 100 ms calls")
    worker_rss(rows)
    scale_out(rows, 600 if args.quick else 3_000, 500, 100)
    from bench import queue  # (it imports this module)

    queue.fairness(rows, runs, 0.3 if args.quick else 1.0)
    queue.fleet(rows, runs, 3_000 if args.quick else 10_000, (0, 1_000) if args.quick else (0, 3_000, 10_000))
    write(rows, args.out, time.monotonic() - started)


if __name__ == "__main__":
    main()
