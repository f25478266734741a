"""SAQ's side of ``make bench-peers``: the worker and the producer.

    python -m bench.peers.saq_side work            (the worker: REDIS_URL, BASE_URL, SLOTS; prints "ready")
    python -m bench.peers.saq_side batch --redis URL --jobs 3000
    python -m bench.peers.saq_side rtt --redis URL --probes 100

The producer waits the way SAQ offers for results: ``Queue.map`` (a batch) and ``Queue.apply`` (one
job), both polling Redis every 0.5 s by default and sleeping once more after the last result comes (so
a round trip takes at least 1 s). (``Job.refresh(until_complete=...)`` listens on pub/sub instead, but
subscribes after reading the job: a job that finishes in between is waited for until the timeout.)
Prints one JSON line (see ``bench.peers.__main__``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import openai
from saq import Queue, Worker

from bench.peers.side import Side, run_side


async def startup(ctx: dict[str, Any]) -> None:
    ctx["client"] = openai.AsyncOpenAI(api_key="sk-bench", base_url=os.environ["BASE_URL"], max_retries=0)
    print("ready", flush=True)  # (the job tasks start right after the start-up hooks)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["client"].close()


async def chat(ctx: dict[str, Any], *, prompt: str) -> str | None:
    """The job: one chat completion."""
    client: openai.AsyncOpenAI = ctx["client"]
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content


async def work() -> None:
    """SAQ's worker with its defaults but for the job, Redis and the concurrency; SIGTERM stops it."""
    queue = Queue.from_url(os.environ["REDIS_URL"])
    worker = Worker(queue, functions=[chat], concurrency=int(os.environ["SLOTS"]), startup=startup, shutdown=shutdown)
    await queue.connect()
    try:
        await worker.start()
    finally:
        await queue.disconnect()


class SaqSide(Side):
    async def batch(self, redis_url: str, jobs: int) -> None:
        queue = Queue.from_url(redis_url)
        await queue.connect()
        self.start()
        results = await queue.map("chat", [{"prompt": f"bench prompt {i}"} for i in range(jobs)], timeout=600)
        self.stop()
        await queue.disconnect()
        assert len(results) == jobs and all(results), "a job failed"

    async def rtt(self, redis_url: str, probes: int) -> None:
        queue = Queue.from_url(redis_url)
        await queue.connect()
        for i in range(-self.WARM_UP, probes):
            t0 = time.perf_counter()
            assert await queue.apply("chat", timeout=10, prompt=f"latency probe {i}")
            self.probe(i, t0)
            await asyncio.sleep(0.01)
        await queue.disconnect()


if __name__ == "__main__":
    if sys.argv[1:] == ["work"]:
        asyncio.run(work())
    else:
        run_side(SaqSide())
