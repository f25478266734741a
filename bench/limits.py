"""``make bench-limits``: how close shared rate limits come to the server's limit, and how many 429s.

For 1, 2 and 4 worker processes, six cases run side by side, each with its own Redis and its own
simulator enforcing the limit. Four against a token bucket (the simulator's default): an RPM limit
and a TPM limit, each with promptq's shared budget (``PROMPTQ_LIMIT_SCOPE=shared``) and with a
budget per worker process (``process``: what a per-process bucket or semaphore does), each measured
over a window of whole limit windows after a warm-up. Two against a server that counts per calendar
second (``--limit-window-s 1``: 10 requests in each second for 600 RPM), shared budget, in three
busy spells of ``SPELL_S`` separated by idle spells (each spell starts as a run does, and after
an idle spell): each spell's jobs are submitted at once, and its rate is the requests the server
answered over the time from the first to the last (the server's own count of arrivals). The
workers are told the same limit the simulator enforces. The figures are medians over several
runs. Writes ``bench/limits.md`` (or ``--out``).

    python -m bench.limits [--runs 3] [--window-s 180] [--out bench/limits.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from devtools.stack import ROOT, RedisServer, Simulator, Worker
from producer import SyncProducer

RPM = 600
"""The RPM case: 10 requests a second."""
TPM = 60_000
PROMPT = "x" * 400
"""The TPM case's prompt: 100 tokens (+3 for the message) by the simulator's count."""
MAX_TOKENS = 100
TOKENS_PER_REQUEST = 100 + 3 + MAX_TOKENS
"""What the simulator charges a TPM-case request (prompt + max_tokens): about 295 requests a minute."""
LATENCY_MS = 200
SLOTS = 8
WARM_UP_S = 10.0
SMALL_PROMPT = "x" * 80
"""The per-second TPM case's prompt: 20 tokens (+3): with max_tokens 27, 50 tokens a request, so a
second's 1,000 tokens hold a whole number of requests (203-token requests would leave 188 unusable)."""
SMALL_MAX_TOKENS = 27
SMALL_TOKENS = 20 + 3 + SMALL_MAX_TOKENS
SPELLS = 3
SPELL_S = 20.0
IDLE_S = 10.0


@dataclass(frozen=True)
class Case:
    kind: str  # "rpm" or "tpm"
    scope: str  # "shared" or "process"
    workers: int
    enforced: str = "bucket"  # or "second": fixed windows of one second


@dataclass(frozen=True)
class Outcome:
    achieved_per_limit: float
    rejected_share: float
    requests: int


def run_case(case: Case, window_s: float) -> Outcome:
    if case.enforced == "second":
        return run_spells(case)
    limit = RPM if case.kind == "rpm" else TPM
    sim_args = ["--latency-ms", str(LATENCY_MS)]
    if case.kind == "rpm":
        sim_args += ["--rpm", str(RPM)]
        per_s = RPM / 60
    else:
        sim_args += ["--tpm", str(TPM), "--reply", "y" * (MAX_TOKENS * 4)]
        per_s = TPM / TOKENS_PER_REQUEST / 60
    jobs = round(per_s * (WARM_UP_S + window_s) * 1.3) + 50
    with RedisServer() as server, Simulator(*sim_args) as sim:
        env = {
            "REDIS_URL": server.url,
            "OPENAI_BASE_URL": sim.base_url,
            "PROMPTQ_MAX_JOBS": str(SLOTS),
            "PROMPTQ_LIMIT_SCOPE": case.scope,
            f"PROMPTQ_{case.kind.upper()}": str(limit),
            "PROMPTQ_MAX_TRIES": "50",  # the per-process runs retry 429s: keep their jobs in play
        }
        workers = [Worker(env).start() for _ in range(case.workers)]
        try:
            with SyncProducer(server.url) as producer:
                if case.kind == "rpm":
                    producer.submit_many([f"limited {i}" for i in range(jobs)])
                else:
                    producer.submit_many([{"prompt": PROMPT, "max_tokens": MAX_TOKENS}] * jobs)
            time.sleep(WARM_UP_S)
            before = sim.stats()
            time.sleep(window_s)
            after = sim.stats()
        finally:
            for w in workers:
                w.stop()
    done = after["completions"] - before["completions"]
    requests = after["requests"] - before["requests"]
    rejected = after["by_status"].get("429", 0) - before["by_status"].get("429", 0)
    achieved_per_min = done / window_s * 60 * (1 if case.kind == "rpm" else TOKENS_PER_REQUEST)
    return Outcome(achieved_per_min / limit, rejected / max(1, requests), requests)


def run_spells(case: Case) -> Outcome:
    """Busy spells of ``SPELL_S`` and idle ones of ``IDLE_S`` against a per-second server."""
    limit = RPM if case.kind == "rpm" else TPM
    sim_args = ["--latency-ms", str(LATENCY_MS), "--limit-window-s", "1"]
    if case.kind == "rpm":
        sim_args += ["--rpm", str(RPM)]
        per_s = RPM / 60
        job: dict[str, object] = {"prompt": "limited"}
    else:
        sim_args += ["--tpm", str(TPM), "--reply", "y" * (SMALL_MAX_TOKENS * 4)]
        per_s = TPM / SMALL_TOKENS / 60
        job = {"prompt": SMALL_PROMPT, "max_tokens": SMALL_MAX_TOKENS}
    jobs = round(per_s * SPELL_S)
    rates = []
    with RedisServer() as server, Simulator(*sim_args) as sim:
        env = {
            "REDIS_URL": server.url,
            "OPENAI_BASE_URL": sim.base_url,
            "PROMPTQ_MAX_JOBS": str(SLOTS),
            f"PROMPTQ_{case.kind.upper()}": str(limit),
            "PROMPTQ_MAX_TRIES": "50",
        }
        workers = [Worker(env).start() for _ in range(case.workers)]
        try:
            with SyncProducer(server.url) as producer:
                for spell in range(SPELLS):
                    if spell:
                        time.sleep(IDLE_S)
                    seen = len(sim.calls())
                    done_before = sim.stats()["completions"]
                    producer.submit_many([job] * jobs)
                    while sim.stats()["completions"] - done_before < jobs:
                        time.sleep(0.05)
                    answered = [c["t"] for c in sim.calls()[seen:] if c["status"] == 200]
                    rates.append((len(answered) - 1) / (max(answered) - min(answered)) / per_s)
            stats = sim.stats()
        finally:
            for w in workers:
                w.stop()
    rejected = stats["by_status"].get("429", 0)
    return Outcome(statistics.median(rates), rejected / max(1, stats["requests"]), stats["requests"])


def write(results: dict[Case, list[Outcome]], out: Path, runs: int, window_s: float, seconds: float) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"# promptq rate limits ({datetime.now(UTC):%Y-%m-%d}, {machine}; `make bench-limits`, {seconds / 60:.0f} min)",
        "",
        f"Simulator limits: {RPM} RPM (burst 1 s), or {TPM:,} TPM (burst 1 s; {TOKENS_PER_REQUEST} tokens a",
        f"request, prompt + max_tokens); calls take {LATENCY_MS} ms; {SLOTS} slots a worker; the workers are",
        f"told the same limit. Each figure: median of {runs} runs, each over {window_s:.0f} s after {WARM_UP_S:.0f} s",
        "of warm-up. Goals: achieved ÷ limit ≥ 0.95, 429s ÷ requests ≤ 0.5 %.",
        "",
        "| limit | workers | shared: achieved ÷ limit | shared: 429s "
        "| per process: achieved ÷ limit | per process: 429s |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("rpm", "tpm"):
        for n in (1, 2, 4):
            cells = []
            for scope in ("shared", "process"):
                outcomes = results[Case(kind, scope, n)]
                ratio = statistics.median(o.achieved_per_limit for o in outcomes)
                share = statistics.median(o.rejected_share for o in outcomes)
                cells += [f"{ratio:.3f}", f"{share * 100:.2f} %"]
            label = f"{RPM} RPM" if kind == "rpm" else f"{TPM:,} TPM"
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per process, each worker spends the whole budget alone: with more than one worker the server",
        "refuses the excess (429) and the retries wait, so more requests bring no more answers.",
        "",
        f"Against a server counting per calendar second ({RPM // 60} requests, or {TPM // 60:,} tokens, in each",
        f"second), shared budget, {SPELLS} busy spells of {SPELL_S:.0f} s a run with {IDLE_S:.0f} s idle between them",
        f"({SMALL_TOKENS} tokens a TPM request); rate: requests the server answered in a spell over the time from",
        "its first to its last, as the server counts them, median of the spells, then of the runs; 429s: every",
        "429 of every run, of every request of every run.",
        "Goals: rate ÷ limit ≥ 0.97, no 429.",
        "",
        "| limit | workers | rate ÷ limit | lowest run | 429s | requests, all runs |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("rpm", "tpm"):
        for n in (1, 2, 4):
            outcomes = results[Case(kind, "shared", n, "second")]
            ratio = statistics.median(o.achieved_per_limit for o in outcomes)
            lowest = min(o.achieved_per_limit for o in outcomes)
            rejected = sum(round(o.rejected_share * o.requests) for o in outcomes)
            requests = sum(o.requests for o in outcomes)
            label = f"{RPM} RPM" if kind == "rpm" else f"{TPM:,} TPM"
            lines.append(f"| {label} | {n} | {ratio:.3f} | {lowest:.3f} | {rejected} | {requests:,} |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.limits")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "limits.md")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=180.0, help="measured time a run (3 limit windows)")
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[Case, list[Outcome]] = {}
    for run in range(args.runs):
        for n in (1, 2, 4):
            cases = [Case(kind, scope, n) for kind in ("rpm", "tpm") for scope in ("shared", "process")]
            cases += [Case(kind, "shared", n, "second") for kind in ("rpm", "tpm")]
            with ThreadPoolExecutor(len(cases)) as pool:
                outcomes = list(pool.map(lambda c: run_case(c, args.window_s), cases))
            for case, outcome in zip(cases, outcomes, strict=True):
                results.setdefault(case, []).append(outcome)
                print(f"run {run + 1}: {case} -> {outcome}", flush=True)
    write(results, args.out, args.runs, args.window_s, time.monotonic() - started)


if __name__ == "__main__":
    main()
