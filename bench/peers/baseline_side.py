"""The baseline of ``make bench-peers``: no queue, ``asyncio.gather`` over ``AsyncOpenAI`` with a
semaphore of 50; a "round trip" is one call."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

from bench.peers.side import Side


class BaselineSide(Side):
    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url, max_retries=0, timeout=120)

    async def call(self, prompt: str) -> str | None:
        r = await self.client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        return r.choices[0].message.content

    async def batch(self, redis_url: str, jobs: int) -> None:
        limit = asyncio.Semaphore(50)

        async def one(i: int) -> str | None:
            async with limit:
                return await self.call(f"bench prompt {i}")

        self.start()
        answers = await asyncio.gather(*(one(i) for i in range(jobs)))
        self.stop()
        assert all(answers)

    async def rtt(self, redis_url: str, probes: int) -> None:
        for i in range(-self.WARM_UP, probes):
            t0 = time.perf_counter()
            assert await self.call(f"latency probe {i}")
            self.probe(i, t0)
            await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("what", choices=("batch", "rtt"))
    parser.add_argument("--redis", default="")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--probes", type=int, default=100)
    args = parser.parse_args()
    side = BaselineSide(args.base_url)
    asyncio.run(side.batch("", args.jobs) if args.what == "batch" else side.rtt("", args.probes))
    print(json.dumps(side.out), flush=True)


if __name__ == "__main__":
    main()
