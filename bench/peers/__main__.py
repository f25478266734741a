"""``make bench-peers``: promptq beside other job queues on one workload, in one run.

    python -m bench.peers [--repeats 3] [--jobs 3000] [--probes 100] [--only promptq,bullmq] [--out bench/peers.md]

Every system gets a fresh Redis and a fresh simulator (answering at once) for each repeat, and the
repeats are interleaved (system A, B, C, then A, B, C again), so a machine that slows down for a while
slows every system alike. One repeat of a system:

1. its worker, one process with 50 concurrent jobs, each job one chat completion against the simulator;
2. its producer (another process) submits ``--jobs`` jobs at once, then waits for every result:
   jobs/s is jobs over that wall time; the worker's CPU (``/proc``) and the producer's own CPU over it,
   per job; Redis's commands (``INFO commandstats``, script-internal ones included) and Redis's CPU
   (``INFO cpu``, user + system: what the commands cost plus the network I/O around them), per job;
3. then ``--probes`` sequential round trips (submit one job, wait for its result) on the now idle
   worker: p50 and p99.

The baseline is no queue at all: ``asyncio.gather`` over ``AsyncOpenAI`` with a semaphore of 50.
Peers come from their registries at pinned versions (``bench/peers/requirements*.txt``, each in a venv
of its own under ``.peers-venv``, ``bench/peers/bullmq/package.json`` through npm); without Node and
npm, BullMQ is left out and the table says so. Writes ``bench/peers.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.run import cpu_s, pct
from devtools.stack import ROOT, Proc, RedisServer, Simulator, wait_until

HERE = Path(__file__).resolve().parent
PEERS_VENV = ROOT / ".peers-venv"
PY_PEERS = {"arq": "requirements.txt", "saq": "requirements.txt", "celery": "requirements-celery.txt"}
"""Each Python peer's pins, a venv per file: arq 0.28 wants redis-py < 6, Celery 5.7's Redis transport >= 6.1."""
NODE_DIR = HERE / "bullmq"
SLOTS = 50


@dataclass
class System:
    name: str
    label: str
    worker: Callable[[str, str], tuple[list[str], dict[str, str]]] | None
    """(redis URL, simulator base URL) → the worker's argv and environment; None: no worker (baseline)."""
    producer: Callable[[str, str], list[str]]
    """(redis URL, simulator base URL) → the producer's argv (``batch``/``rtt`` and counts added)."""
    ready: str
    """What the worker prints once it takes jobs."""
    runs: list[dict[str, float]] = field(default_factory=list)


def peers_python(name: str) -> str:
    return str(PEERS_VENV / PY_PEERS[name].removesuffix(".txt") / "bin" / "python")


def peer_env(redis_url: str, base_url: str) -> dict[str, str]:
    """A peer's worker environment: where its Redis and the simulator are, its slots."""
    return {"PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "BASE_URL": base_url, "SLOTS": str(SLOTS)}


def systems() -> list[System]:
    py = sys.executable
    return [
        System(
            "baseline",
            "plain asyncio.gather + semaphore (no queue)",
            None,
            lambda r, s: [py, "-m", "bench.peers.baseline_side", "--base-url", s],
            "",
        ),
        System(
            "promptq",
            "**promptq**",
            lambda r, s: (
                [str(Path(py).with_name("arq")), "worker.Settings"],
                {
                    "REDIS_URL": r,
                    "OPENAI_BASE_URL": s,
                    "OPENAI_API_KEY": "sk-bench",
                    "PROMPTQ_MAX_JOBS": str(SLOTS),
                    "PROMPTQ_LOG_FORMAT": "json",
                },
            ),
            lambda r, s: [py, "-m", "bench.peers.promptq_side"],
            "worker.started",
        ),
        System(
            "bullmq",
            "BullMQ {bullmq} (Node {node}, ioredis; the job is a `fetch`)",
            lambda r, s: (["node", str(NODE_DIR / "worker.mjs")], peer_env(r, s)),
            lambda r, s: ["node", str(NODE_DIR / "producer.mjs")],
            "ready",
        ),
        System(
            "arq",
            "arq {arq} (defaults)",
            lambda r, s: (
                [peers_python("arq"), "-m", "arq", "bench.peers.arq_side.Settings"],
                peer_env(r, s),
            ),
            lambda r, s: [peers_python("arq"), "-m", "bench.peers.arq_side"],
            "Starting worker",
        ),
        System(
            "saq",
            "SAQ {saq}",
            lambda r, s: (
                [peers_python("saq"), "-m", "bench.peers.saq_side", "work"],
                peer_env(r, s),
            ),
            lambda r, s: [peers_python("saq"), "-m", "bench.peers.saq_side"],
            "ready",
        ),
        System(
            "celery",
            "Celery {celery} (threads)",
            lambda r, s: (
                [
                    peers_python("celery"),
                    "-m",
                    "celery",
                    "-A",
                    "bench.peers.celery_side",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(SLOTS),
                    "--loglevel",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                peer_env(r, s),
            ),
            lambda r, s: [peers_python("celery"), "-m", "bench.peers.celery_side"],
            "ready",
        ),
    ]


# -- set-up --------------------------------------------------------------------------------------------


def pinned(requirement_file: Path) -> dict[str, str]:
    pins = {}
    for line in requirement_file.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.split("[")[0].strip().lower()] = version.strip()  # (celery[redis]: celery)
    return pins


def set_up(wanted: list[System]) -> tuple[list[System], list[str], dict[str, str]]:
    """Install the peers (once); the systems that can run, what was left out and why, the versions."""
    notes: list[str] = []
    versions = {k: v for f in sorted(set(PY_PEERS.values())) for k, v in pinned(HERE / f).items()}
    for s in wanted:
        venv = Path(peers_python(s.name)).parent.parent if s.name in PY_PEERS else None
        if venv is not None and not (venv / ".installed").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "-r", str(HERE / PY_PEERS[s.name])], check=True)
            (venv / ".installed").touch()
    kept = []
    for s in wanted:
        if s.name == "bullmq":
            if not (shutil.which("node") and shutil.which("npm")):
                notes.append("BullMQ was left out: Node.js and npm are not on this machine.")
                continue
            if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
                subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR, check=True)
            lock = json.loads((NODE_DIR / "package-lock.json").read_text())
            versions["bullmq"] = lock["packages"]["node_modules/bullmq"]["version"]
            versions["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()[1:]
        kept.append(s)
    return kept, notes, versions


# -- one repeat ------------------------------------------------------------------------------------------


def redis_totals(client: redis.Redis) -> tuple[int, float, dict[str, int]]:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return sum(calls.values()), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls


def run_producer(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The producer's JSON line (its last line on stdout)."""
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, timeout=1800)
    if done.returncode != 0:
        seconds = time.monotonic() - started
        raise RuntimeError(f"{' '.join(argv)} failed after {seconds:.1f} s:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def one_repeat(system: System, jobs: int, probes: int) -> dict[str, float]:
    with RedisServer() as server, Simulator() as sim:
        env = {"PYTHONPATH": str(ROOT), "REDIS_URL": server.url, "BASE_URL": sim.base_url}
        worker = None
        if system.worker is not None:
            argv, wenv = system.worker(server.url, sim.base_url)
            worker = Proc(argv, env=wenv).start()
            try:
                wait_until(lambda: system.ready in worker.output() or not worker.alive(), 60, system.name)
            except TimeoutError:
                worker.stop()
                raise RuntimeError(f"{system.name}'s worker did not start:\n{worker.output()[-3000:]}") from None
            if not worker.alive():
                raise RuntimeError(f"{system.name}'s worker exited:\n{worker.output()[-3000:]}")
            time.sleep(1)  # (its first poll done)
        try:
            client = redis.Redis.from_url(server.url)
            pid = worker.popen.pid if worker and worker.popen else None
            base = system.producer(server.url, sim.base_url)
            cmds0, rcpu0, calls0 = redis_totals(client)
            w0 = cpu_s(pid) if pid else 0.0
            out = run_producer([*base, "batch", "--redis", server.url, "--jobs", str(jobs)], env)
            w1 = cpu_s(pid) if pid else 0.0
            cmds1, rcpu1, calls1 = redis_totals(client)
            time.sleep(1)
            rtt = run_producer([*base, "rtt", "--redis", server.url, "--probes", str(probes)], env)
            client.close()
        finally:
            if worker is not None:
                worker.stop()
    times = sorted(rtt["rtt_ms"])
    worker_cpu_us = (w1 - w0) / jobs * 1e6
    by_command = {k: (calls1.get(k, 0) - calls0.get(k, 0)) / jobs for k in calls1}
    return {
        "jobs_per_s": jobs / out["seconds"],
        "redis_us": (rcpu1 - rcpu0) / jobs * 1e6 if system.worker else float("nan"),
        "redis_cmds": (cmds1 - cmds0 - 2) / jobs if system.worker else float("nan"),
        "worker_cpu_us": worker_cpu_us if system.worker else float("nan"),
        "total_cpu_us": worker_cpu_us + out["cpu_s"] / jobs * 1e6,
        "rtt_p50": pct(times, 0.5),
        "rtt_p99": pct(times, 0.99),
        "by_command": by_command,
    }


# -- the table ----------------------------------------------------------------------------------------------

COLUMNS = (
    ("jobs_per_s", "jobs/s", "{:,.0f}"),
    ("redis_us", "Redis CPU µs/job", "{:,.0f}"),
    ("redis_cmds", "Redis commands/job", "{:.1f}"),
    ("worker_cpu_us", "worker CPU µs/job", "{:,.0f}"),
    ("total_cpu_us", "total CPU µs/job", "{:,.0f}"),
    ("rtt_p50", "round trip p50", "{:.1f} ms"),
    ("rtt_p99", "round trip p99", "{:.1f} ms"),
)


def median(system: System, key: str) -> float:
    values = [r[key] for r in system.runs]
    return statistics.median(values) if values else float("nan")


def cell(value: float, fmt: str) -> str:
    return "—" if value != value else fmt.format(value)


def table(ran: list[System], versions: dict[str, str]) -> list[str]:
    lines = [
        "| system | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for s in ran:
        cells = [cell(median(s, key), fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {s.label.format(**versions)} | " + " | ".join(cells) + " |")
    return lines


def commands_of(system: System) -> str:
    if not system.runs or "by_command" not in system.runs[0]:
        return ""
    merged: dict[str, list[float]] = {}
    for r in system.runs:
        for k, v in r["by_command"].items():  # type: ignore[attr-defined]
            merged.setdefault(k, []).append(v)
    shown = sorted(((statistics.median(v), k) for k, v in merged.items()), reverse=True)
    return ", ".join(f"{k} {v:.2f}" for v, k in shown if v >= 0.05 and k not in {"info"})


def write(
    out: Path, ran: list[System], notes: list[str], versions: dict[str, str], args: argparse.Namespace, seconds: float
) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    took = f"`make bench-peers`, {seconds / 60:.1f} min"
    lines = [
        f"# promptq and its peers ({datetime.now(UTC):%Y-%m-%d}, {machine}; {took})",
        "",
        f"{args.jobs:,} jobs, one worker process with {SLOTS} concurrent jobs, a simulated API answering at once, each",
        "job one chat completion; the producer submits them all, then waits for every result. Then",
        f"{args.probes} sequential round trips on the idle worker. Medians of {args.repeats} repeats, interleaved,",
        "each on a fresh Redis and simulator.",
        "",
        *table(ran, versions),
        "",
        *(f"- {n}" for n in notes),
        "Redis commands per job, by command (medians; script-internal commands included):",
        "",
        *(f"- {s.name}: {commands_of(s)}" for s in ran if s.worker is not None),
        "",
        "How each figure is taken: `bench/peers/__main__.py`'s docstring. Worker CPU is the worker process",
        "(all its threads) over the batch; total CPU adds the producer process's own CPU over the same",
        "span; Redis CPU is `INFO cpu` (commands and network I/O). Versions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated system names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "peers.md")
    args = parser.parse_args()
    started = time.monotonic()
    wanted = [s for s in systems() if not args.only or s.name in args.only.split(",")]
    ran, notes, versions = set_up(wanted)
    for n in range(args.repeats):
        for s in ran:
            try:
                r = one_repeat(s, args.jobs, args.probes)
            except RuntimeError as e:  # a system's one-off failure (BullMQ once lost a probe's finish event)
                print(f"[{n + 1}/{args.repeats}] {s.name} failed, run again: {str(e)[:300]}", flush=True)
                notes.append(f"{s.name}: one repeat failed and was run again ({str(e).splitlines()[-1][:200]}).")
                r = one_repeat(s, args.jobs, args.probes)
            s.runs.append(r)
            print(
                f"[{n + 1}/{args.repeats}] {s.name}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k != "by_command"),
                flush=True,
            )
    write(args.out, ran, notes, versions, args, time.monotonic() - started)


if __name__ == "__main__":
    main()
