"""``make bench-tracing``: the worker's CPU per job with traces off and on, side by side.

Each run sends the same batch through one worker process with traces off, then through one with
traces on (exporting over OTLP/HTTP to a receiver in this process, which decodes every span), and
reads the worker's own CPU (user + system, /proc) over the batch. Runs alternate, and the figures
are medians. The cost of the code paths traces add, when off, is timed apart (it is too small to
show in a whole run). Writes ``bench/tracing.md`` (or ``--out``).

    python -m bench.tracing [--quick] [--out bench/tracing.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from bench.run import cpu_s, promptq_batch, worker_env
from devtools.otlp import OtlpReceiver
from devtools.stack import ROOT, RedisServer, Simulator, Worker

OFF_PATH = """
import os, timeit
for name in [n for n in os.environ if n.startswith("OTEL_") or n == "PROMPTQ_OTEL"]:
    del os.environ[name]
from promptq_core.contract import JobResult
from promptq_core.validation import PromptJob
from worker import tracing
from worker.backends import Backend
from worker.llm import Completion

t = tracing.Tracing(on=False)
backend = Backend("default", None, "unused", None)
job = PromptJob.build("hello", job_id="j")
base = JobResult("j", "running", attempts=1)
answer = Completion(content="hi", finish_reason="stop", usage=None)

def one_job():
    with t.attempt(job, base):
        with t.call(job, "m", backend) as span:
            t.answered(span, answer)
        tracing.event("promptq.rate_limit_wait", waited_ms=1)
        tracing.ended("succeeded")

n = 200_000
print(min(timeit.repeat(one_job, number=n, repeat=5)) / n * 1e6)
"""


def worker_cpu_per_job(server: RedisServer, sim: Simulator, jobs: int, slots: int, env: dict[str, str]) -> float:
    worker = Worker(worker_env(server.url, sim, PROMPTQ_MAX_JOBS=str(slots), **env)).start()
    try:
        assert worker.popen is not None
        before = cpu_s(worker.popen.pid)
        asyncio.run(promptq_batch(server.url, jobs))
        spent = cpu_s(worker.popen.pid) - before
    finally:
        worker.stop()
    redis.Redis.from_url(server.url).flushdb()
    return spent / jobs * 1000


def per_run(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "tracing.md")
    parser.add_argument("--quick", action="store_true", help="one run, a small batch (a smoke test)")
    args = parser.parse_args()
    runs, jobs, slots, latency_ms = (1, 300, 50, 20) if args.quick else (7, 3_000, 100, 50)
    started = time.monotonic()
    off: list[float] = []
    on: list[float] = []
    with RedisServer() as server, Simulator("--latency-ms", str(latency_ms)) as sim, OtlpReceiver() as receiver:
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        for _ in range(runs):
            off.append(worker_cpu_per_job(server, sim, jobs, slots, {"PROMPTQ_OTEL": "0"}))
            on.append(worker_cpu_per_job(server, sim, jobs, slots, traced))
        spans = len(receiver.spans)
    assert spans >= 2 * jobs * runs, f"only {spans} spans arrived"
    done = subprocess.run([sys.executable, "-c", OFF_PATH], cwd=ROOT, capture_output=True, text=True, check=True)
    off_path_us = float(done.stdout.strip())
    cpu_off, cpu_on = statistics.median(off), statistics.median(on)
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    off_share = off_path_us / 1000 / cpu_off * 100
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    text = f"""# Traces: the worker's CPU per job, off and on

`make bench-tracing`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine}; {time.monotonic() - started:.0f} s.
{runs} runs of {jobs:,} jobs through one worker ({slots} slots; simulator answering in {latency_ms} ms),
traces off then on in each run; medians. "On" exports every span over OTLP/HTTP (batched, protobuf)
to a receiver in the benchmark's process; the worker's CPU alone is counted.

| | worker CPU per job |
|---|---|
| traces off | {cpu_off:.3f} ms |
| traces on (2 spans a job, exported) | {cpu_on:.3f} ms |
| on / off | {statistics.median(ratios):.2f} (runs: {", ".join(f"{r:.2f}" for r in ratios)}) |
| the tracing calls a job makes, traces off | {off_path_us:.2f} µs ({off_share:.3f} % of a job's CPU) |

Spans received: {spans:,}. Per run, off: {per_run(off)} ms; on: {per_run(on)} ms.
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
