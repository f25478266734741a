"""The baseline promptq is measured against: no queue, ``asyncio.gather`` over ``AsyncOpenAI`` calls
bounded by an ``asyncio.Semaphore``, in one process.

    python -m bench.baseline --base-url http://127.0.0.1:8000/v1 --jobs 3000 --concurrency 100

Prints one JSON line: jobs, seconds, jobs_per_s, cpu_s (this process's CPU time for the run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai


async def run(base_url: str, jobs: int, concurrency: int) -> dict[str, float]:
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base_url, max_retries=0, timeout=120)
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str | None:
        async with limit:
            r = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"bench prompt {i}"}]
            )
            return r.choices[0].message.content

    cpu0, t0 = time.process_time(), time.perf_counter()
    answers = await asyncio.gather(*(one(i) for i in range(jobs)))
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    await client.close()
    assert all(answers)
    return {"jobs": jobs, "seconds": seconds, "jobs_per_s": jobs / seconds, "cpu_s": cpu_s}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.base_url, args.jobs, args.concurrency))))


if __name__ == "__main__":
    main()
