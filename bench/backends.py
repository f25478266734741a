"""``make bench-backends``: several backends and provider outages, measured with real processes.

Each case has its own Redis, its own simulators (``python -m sim``) and one ``arq worker.Settings``
process, with the worker's defaults for the circuit breaker. Writes ``bench/backends.md`` (or
``--out``).

- **Outage.** ``JOBS`` jobs, ``SLOTS`` slots, calls of ``LATENCY_MS``, one backend. First a healthy run
  (the baseline: its run time). Then the same batch with an outage of ``OUTAGE_S`` starting
  ``OUTAGE_AT_S`` into it: every request answered 503, or the port closed (connection refused). Counted:
  jobs failed, calls during the outage (the worker's ``promptq_backend_calls_total`` that did not
  succeed), and the run time over the baseline's plus the outage's (the recovery's cost).
- **Spread.** Three backends of one model at 300, 600 and 900 RPM, each enforced per calendar second
  by its simulator (``--limit-window-s 1``), one worker told the same limits, more jobs than they can
  take: requests per minute together over ``WINDOW_S`` after ``WARM_UP_S``, each backend's share
  against its proportion, 429s.
- **Failover.** The same, and the 900 RPM backend starts answering 503 ``FAILOVER_AT_S`` in: jobs failed
  or lost, calls it got once down, and how fast the two others are back at their own limits.

    python -m bench.backends [--runs 1] [--out bench/backends.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from devtools.stack import ROOT, RedisServer, Simulator, Worker, free_port
from producer import SyncProducer
from promptq_core.contract import TERMINAL_STATUSES

JOBS = 1000
SLOTS = 50
LATENCY_MS = 500
OUTAGE_AT_S = 3.0
OUTAGE_S = 120.0
RPMS = (300, 600, 900)
SPREAD_LATENCY_MS = 100
WARM_UP_S = 10.0
WINDOW_S = 60.0
FAILOVER_AT_S = 25.0


@dataclass(frozen=True)
class Outage:
    kind: str
    failed: int
    calls_during: int
    """Calls that failed while the backend was down."""
    in_flight: int
    """Of them, the calls in flight when it went down (a closed port breaks them)."""
    run_s: float
    over_s: float
    """The run time less the healthy run's and the outage's."""


@dataclass(frozen=True)
class Spread:
    rpm: float
    shares: tuple[float, ...]
    rejected: int


@dataclass(frozen=True)
class Failover:
    failed: int
    lost: int
    dead_calls: int
    back_in_s: float
    others_rpm: float


def _metrics(port: int) -> dict[str, float]:
    """The worker's backend call counters: ``outcome`` -> calls (and ``in_flight``: calls running)."""
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    calls: dict[str, float] = {}
    for m in re.finditer(r'promptq_backend_calls_total\{backend="[^"]+",outcome="([^"]+)"\} ([0-9.e+]+)', text):
        calls[m.group(1)] = calls.get(m.group(1), 0) + float(m.group(2))
    if found := re.search(r"^promptq_in_flight ([0-9.e+]+)$", text, re.M):
        calls["in_flight"] = float(found.group(1))
    return calls


def _finished(producer: SyncProducer, ids: list[str]) -> list[Any]:
    return [r for r in producer.get_many(ids) if r is not None and r.status in TERMINAL_STATUSES]


def run_batch(outage: str | None) -> tuple[float, int, int, int]:
    """One batch; returns (run time, jobs failed, calls that failed during the outage, calls in flight
    when it began)."""
    port = free_port()
    with RedisServer() as server, Simulator("--latency-ms", str(LATENCY_MS)) as sim:
        env = {
            "REDIS_URL": server.url,
            "OPENAI_BASE_URL": sim.base_url,
            "PROMPTQ_MAX_JOBS": str(SLOTS),
            "PROMPTQ_METRICS_PORT": str(port),
        }
        with Worker(env), SyncProducer(server.url) as producer:
            started = time.monotonic()
            ids = producer.submit_many([f"outage job {i}" for i in range(JOBS)])
            before: dict[str, float] = {}
            if outage is not None:
                time.sleep(OUTAGE_AT_S)
                before = _metrics(port)
                sim.configure(outage=outage, outage_s=OUTAGE_S)
            while len(done := _finished(producer, ids)) < JOBS:
                time.sleep(0.5)
            run_s = time.monotonic() - started
            after = _metrics(port)
    failed_calls = sum(n for k, n in after.items() if k not in ("ok", "in_flight")) - sum(
        n for k, n in before.items() if k not in ("ok", "in_flight")
    )
    return run_s, sum(r.status != "succeeded" for r in done), round(failed_calls), round(before.get("in_flight", 0))


def run_spread(failover: bool) -> Spread | Failover:
    with RedisServer() as server:
        sims = [
            Simulator("--latency-ms", str(SPREAD_LATENCY_MS), "--rpm", str(rpm), "--limit-window-s", "1").start()
            for rpm in RPMS
        ]
        try:
            backends = [
                {"name": f"b{rpm}", "base_url": sim.base_url, "models": ["gpt-4o-mini"], "rpm": rpm}
                for rpm, sim in zip(RPMS, sims, strict=True)
            ]
            env = {
                "REDIS_URL": server.url,
                "PROMPTQ_BACKENDS": json.dumps(backends),
                "PROMPTQ_MAX_JOBS": str(SLOTS),
            }
            jobs = round(sum(RPMS) / 60 * (WARM_UP_S + WINDOW_S) * 1.2)
            with Worker(env), SyncProducer(server.url) as producer:
                ids = producer.submit_many([f"spread {i}" for i in range(jobs)])
                if failover:
                    return _failover(sims, producer, ids)
                time.sleep(WARM_UP_S)
                before = [s.stats() for s in sims]
                time.sleep(WINDOW_S)
                after = [s.stats() for s in sims]
        finally:
            for sim in sims:
                sim.stop()
    done = [a["completions"] - b["completions"] for a, b in zip(after, before, strict=True)]
    total = sum(done)
    rejected = sum(a["by_status"].get("429", 0) for a in after)
    return Spread(total / WINDOW_S * 60, tuple(d / total for d in done), rejected)


def _failover(sims: list[Simulator], producer: SyncProducer, ids: list[str]) -> Failover:
    """Kill the biggest backend mid-run; watch the others and the jobs."""
    time.sleep(FAILOVER_AT_S)
    dead, others = sims[-1], sims[:-1]
    dead.configure(outage="503")
    died = time.monotonic()
    dead_before = dead.stats()["requests"]
    samples: list[tuple[float, int]] = []
    while time.monotonic() - died < 20:
        samples.append((time.monotonic() - died, sum(s.stats()["completions"] for s in others)))
        time.sleep(0.5)
    limit_per_s = sum(RPMS[:-1]) / 60
    back_in_s = next(
        (
            t1
            for (t0, n0), (t1, n1) in zip(samples, samples[2:], strict=False)
            if (n1 - n0) / (t1 - t0) >= 0.9 * limit_per_s
        ),
        float("inf"),
    )
    span = samples[-1][0] - samples[4][0]
    others_rpm = (samples[-1][1] - samples[4][1]) / span * 60
    dead_calls = dead.stats()["requests"] - dead_before
    deadline = time.monotonic() + 300
    while len(done := _finished(producer, ids)) < len(ids) and time.monotonic() < deadline:
        time.sleep(1)
    return Failover(
        failed=sum(r.status != "succeeded" for r in done),
        lost=len(ids) - len(done),
        dead_calls=dead_calls,
        back_in_s=back_in_s,
        others_rpm=others_rpm,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "backends.md")
    parser.add_argument("--outage", choices=("503", "refuse"), help="run this outage once and print it, nothing else")
    args = parser.parse_args()
    if args.outage:
        print(run_batch(args.outage))
        return
    started = time.monotonic()
    outages: list[Outage] = []
    for run in range(args.runs):
        healthy_s, _, _, _ = run_batch(None)
        print(f"run {run + 1}: healthy batch {healthy_s:.1f} s", flush=True)
        for kind in ("503", "refuse"):
            run_s, failed, calls, in_flight = run_batch(kind)
            outages.append(Outage(kind, failed, calls, in_flight, run_s, run_s - healthy_s - OUTAGE_S))
            print(f"run {run + 1}: {outages[-1]}", flush=True)
    spreads = [run_spread(False) for _ in range(args.runs)]
    print(spreads, flush=True)
    failovers = [run_spread(True) for _ in range(args.runs)]
    print(failovers, flush=True)
    write(args.out, args.runs, outages, spreads, failovers, time.monotonic() - started)  # type: ignore[arg-type]


def write(
    out: Path, runs: int, outages: list[Outage], spreads: list[Spread], failovers: list[Failover], seconds: float
) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    med = statistics.median
    lines = [
        f"# promptq backends ({datetime.now(UTC):%Y-%m-%d}, {machine}; `make bench-backends`, {seconds / 60:.0f} min)",
        "",
        f"Each figure: the median of {runs} run(s). The worker's circuit breaker at its defaults (5 failures in a row",
        "open it; probes after 1, 2, 4, then every 8 s).",
        "",
        f"## Outage: {JOBS:,} jobs, {SLOTS} slots, calls of {LATENCY_MS} ms; the only backend down {OUTAGE_S:.0f} s",
        "",
        f"The outage starts {OUTAGE_AT_S:.0f} s into the batch. Goals: 0 failed, at most 30 calls sent during the "
        "outage,",
        "the batch done within the healthy run's time plus the outage plus 10 s. Calls during the outage: the",
        "calls that failed while the backend was down (the worker's `promptq_backend_calls_total`); sent during",
        "it (the goal's column): less those in flight when it began (answered with a 503 they succeed; a closed",
        "port breaks them, and they are counted in the first column: sent before it, they are no probes).",
        "",
        "| outage | jobs failed | calls during the outage | sent during it | run time | over healthy + outage |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("503", "every request answered 503"), ("refuse", "connection refused")):
        rows = [o for o in outages if o.kind == kind]
        lines.append(
            f"| {label} | {med(o.failed for o in rows):.0f} | {med(o.calls_during for o in rows):.0f} "
            f"| {med(o.calls_during - (o.in_flight if kind == 'refuse' else 0) for o in rows):.0f} "
            f"| {med(o.run_s for o in rows):.1f} s | {med(o.over_s for o in rows):+.1f} s |"
        )
    share_goal = [rpm / sum(RPMS) for rpm in RPMS]
    lines += [
        "",
        f"## Spread: three backends of one model at {', '.join(map(str, RPMS))} RPM, one worker",
        "",
        "Each simulator enforces its limit per calendar second; the worker is told the same limits.",
        f"Over {WINDOW_S:.0f} s after {WARM_UP_S:.0f} s of warm-up. Goals: at least 0.95 of {sum(RPMS):,} RPM",
        "together, each share within 5 % of its proportion, no 429.",
        "",
        "| together | ÷ limits | shares (goal " + ", ".join(f"{g:.3f}" for g in share_goal) + ") | 429s |",
        "|---|---|---|---|",
        f"| {med(s.rpm for s in spreads):.0f} RPM | {med(s.rpm for s in spreads) / sum(RPMS):.3f} | "
        + ", ".join(f"{med(s.shares[i] for s in spreads):.3f}" for i in range(len(RPMS)))
        + f" | {sum(s.rejected for s in spreads)} |",
        "",
        f"## Failover: the {RPMS[-1]} RPM backend answers 503 from {FAILOVER_AT_S:.0f} s into the same run",
        "",
        "| jobs failed | jobs lost | calls the dead backend got | others at 0.9 of their limits after | their RPM |",
        "|---|---|---|---|---|",
        f"| {med(f.failed for f in failovers):.0f} | {med(f.lost for f in failovers):.0f} "
        f"| {med(f.dead_calls for f in failovers):.0f} | {med(f.back_in_s for f in failovers):.1f} s "
        f"| {med(f.others_rpm for f in failovers):.0f} (limits {sum(RPMS[:-1])}) |",
        "",
    ]
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
