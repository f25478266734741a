"""What every Python producer of ``make bench-peers`` shares: the two measurements and their JSON line.

``batch``: submit ``jobs`` jobs, then wait for every result; the CPU and wall time of that, in this
process. ``rtt``: ``probes`` sequential round trips (submit one job, wait for its result) after
``WARM_UP`` uncounted ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, ClassVar


class Side:
    WARM_UP: ClassVar[int] = 5

    def __init__(self) -> None:
        self.out: dict[str, Any] = {"rtt_ms": []}
        self._t0 = self._cpu0 = 0.0

    def start(self) -> None:
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.out["seconds"] = time.perf_counter() - self._t0
        self.out["cpu_s"] = time.process_time() - self._cpu0

    def probe(self, i: int, t0: float) -> None:
        if i >= 0:
            self.out["rtt_ms"].append((time.perf_counter() - t0) * 1000)

    async def batch(self, redis_url: str, jobs: int) -> None:
        raise NotImplementedError

    async def rtt(self, redis_url: str, probes: int) -> None:
        raise NotImplementedError


def run_side(side: Side) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("batch", "rtt"))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--probes", type=int, default=100)
    args = parser.parse_args()
    if args.what == "batch":
        asyncio.run(side.batch(args.redis, args.jobs))
    else:
        asyncio.run(side.rtt(args.redis, args.probes))
    print(json.dumps(side.out), flush=True)
