"""promptq's side of ``make bench-peers``: the producer (the worker is ``arq worker.Settings``).

    python -m bench.peers.promptq_side batch --redis URL --jobs 3000
    python -m bench.peers.promptq_side rtt --redis URL --probes 100

Prints one JSON line (see ``bench.peers.__main__``).
"""

from __future__ import annotations

import asyncio
import time

from bench.peers.side import Side, run_side
from producer import Producer


class PromptqSide(Side):
    async def batch(self, redis_url: str, jobs: int) -> None:
        async with Producer(redis_url) as p:
            self.start()
            ids = await p.submit_many([f"bench prompt {i}" for i in range(jobs)])
            results = await asyncio.gather(*(p.wait(i, timeout=600) for i in ids))
            self.stop()
        assert all(r.ok and r.content for r in results), "a job failed"

    async def rtt(self, redis_url: str, probes: int) -> None:
        async with Producer(redis_url) as p:
            for i in range(-self.WARM_UP, probes):
                t0 = time.perf_counter()
                r = await p.wait(await p.submit(f"latency probe {i}"), timeout=10)
                assert r.ok and r.content
                self.probe(i, t0)
                await asyncio.sleep(0.01)


if __name__ == "__main__":
    run_side(PromptqSide())
