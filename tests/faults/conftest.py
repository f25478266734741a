"""The fault-injection suite: real worker processes, the simulator's faults, Redis restarts.

Each scenario records its figures; with ``PROMPTQ_FAULTS_REPORT=path`` set (``make faults``) they are
written there as a markdown table at the end of the run.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.stack import Simulator, Worker
from producer import JobResult, QueueUnavailableError, SyncProducer
from tests.conftest import worker_env as base_worker_env

FIGURES: list[dict[str, Any]] = []
COLUMNS = ["scenario", "jobs", "faults", "succeeded", "failed", "lost", "duplicate calls", "other figures"]


def worker_env(redis_url: str, sim: Simulator, **extra: str) -> dict[str, str]:
    """A worker tuned for short tests: fast polling, a 2 s lease, a 5 s request timeout."""
    tuned = {"PROMPTQ_LEASE_S": "2", "PROMPTQ_REQUEST_TIMEOUT_S": "5", "PROMPTQ_MAX_TRIES": "8"}
    return base_worker_env(redis_url, sim, **{"PROMPTQ_LOG_FORMAT": "json", **tuned, **extra})


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Worker processes a test starts; whatever is still running at the end is stopped."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def wait_all(producer: SyncProducer, ids: list[str], timeout_s: float) -> dict[str, JobResult | None]:
    """Every job's document once all are terminal, or as they stand when ``timeout_s`` runs out."""
    deadline = time.monotonic() + timeout_s
    pending = set(ids)
    results: dict[str, JobResult | None] = {}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                r = producer.get(job_id)
            except QueueUnavailableError:  # the Redis failing over: ask again shortly
                time.sleep(0.2)
                break
            results[job_id] = r
            if r is not None and r.done:
                pending.discard(job_id)
        if pending:
            time.sleep(0.1)
    return results


def record(scenario: str, results: dict[str, JobResult | None], calls: list[dict[str, Any]], **figures: Any) -> None:
    """Count outcomes and paid calls (answered 200) per job, and keep the figures for the report."""
    paid: dict[str, int] = {}
    for call in calls:
        if call["status"] == 200:
            paid[call["prompt"]] = paid.get(call["prompt"], 0) + 1
    done = [r for r in results.values() if r is not None and r.done]
    row = {
        "scenario": scenario,
        "jobs": len(results),
        "succeeded": sum(r.status == "succeeded" for r in done),
        "failed": sum(r.status == "failed" for r in done),
        "lost": len(results) - len(done),
        "duplicate calls": sum(n - 1 for n in paid.values() if n > 1),
        **figures,
    }
    FIGURES.append(row)
    print(row)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("PROMPTQ_FAULTS_REPORT")
    if not path or not FIGURES:
        return
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}) by `make faults`.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in FIGURES:
        other = ", ".join(f"{k} {v}" for k, v in row.items() if k not in COLUMNS)
        cells = [str(row.get(c, "")) for c in COLUMNS[:-1]] + [other]
        lines.append("| " + " | ".join(cells) + " |")
    Path(path).write_text("\n".join(lines) + "\n")
