"""arq's side of ``make bench-peers``, with arq's defaults: the worker's settings and the producer.

    arq bench.peers.arq_side.Settings              (the worker: REDIS_URL, BASE_URL, SLOTS)
    python -m bench.peers.arq_side batch --redis URL --jobs 3000
    python -m bench.peers.arq_side rtt --redis URL --probes 100

The producer waits with ``Job.result()``, which polls Redis (every 0.5 s by default): that is how arq
waits. Prints one JSON line (see ``bench.peers.__main__``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import openai
from arq import create_pool
from arq.connections import RedisSettings

from bench.peers.side import Side, run_side


async def startup(ctx: dict[str, Any]) -> None:
    ctx["client"] = openai.AsyncOpenAI(api_key="sk-bench", base_url=os.environ["BASE_URL"], max_retries=0)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["client"].close()


async def chat(ctx: dict[str, Any], prompt: str) -> str | None:
    """The job: one chat completion."""
    client: openai.AsyncOpenAI = ctx["client"]
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content


class Settings:
    """``arq bench.peers.arq_side.Settings``: arq's defaults but for the job, Redis and the concurrency."""

    functions = (chat,)
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://localhost:6379"))
    max_jobs = int(os.environ.get("SLOTS", "50"))
    on_startup = startup
    on_shutdown = shutdown


class ArqSide(Side):
    async def batch(self, redis_url: str, jobs: int) -> None:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        self.start()
        submitted = await asyncio.gather(*(pool.enqueue_job("chat", f"bench prompt {i}") for i in range(jobs)))
        results = [await job.result(timeout=600) for job in submitted if job is not None]
        self.stop()
        await pool.aclose()
        assert len(results) == jobs and all(results), "a job failed"

    async def rtt(self, redis_url: str, probes: int) -> None:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        for i in range(-self.WARM_UP, probes):
            t0 = time.perf_counter()
            job = await pool.enqueue_job("chat", f"latency probe {i}")
            assert job is not None and await job.result(timeout=10)
            self.probe(i, t0)
            await asyncio.sleep(0.01)
        await pool.aclose()


if __name__ == "__main__":
    run_side(ArqSide())
