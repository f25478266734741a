"""Celery's side of ``make bench-peers``: the app (Redis as broker and result backend) and the producer.

    celery -A bench.peers.celery_side worker --pool threads --concurrency 50   (REDIS_URL, BASE_URL; prints "ready")
    python -m bench.peers.celery_side batch --redis URL --jobs 3000
    python -m bench.peers.celery_side rtt --redis URL --probes 100

The job uses the sync ``openai.OpenAI`` client (one, shared by the worker's threads). The producer
waits with ``AsyncResult.get()``, which the Redis backend answers through pub/sub. Prints one JSON line
(see ``bench.peers.__main__``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from typing import Any

import openai
from celery import Celery
from celery.signals import worker_ready

from bench.peers.side import Side, run_side

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)


@functools.cache
def client() -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-bench", base_url=os.environ["BASE_URL"], max_retries=0)


@app.task(name="chat")  # (named: the producer runs this module as __main__)
def chat(prompt: str) -> str | None:
    """The job: one chat completion."""
    r = client().chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return r.choices[0].message.content


@worker_ready.connect
def announce(**_: Any) -> None:
    print("ready", file=sys.__stdout__, flush=True)  # (sys.__stdout__: the worker redirects sys.stdout to its log)


class CelerySide(Side):
    """Celery's client is synchronous: these coroutines block the event loop, which nothing else uses."""

    async def batch(self, redis_url: str, jobs: int) -> None:
        app.conf.update(broker_url=redis_url, result_backend=redis_url)
        self.start()
        submitted = [chat.delay(f"bench prompt {i}") for i in range(jobs)]
        results = [r.get(timeout=600) for r in submitted]
        self.stop()
        assert all(results), "a job failed"

    async def rtt(self, redis_url: str, probes: int) -> None:
        app.conf.update(broker_url=redis_url, result_backend=redis_url)
        for i in range(-self.WARM_UP, probes):
            t0 = time.perf_counter()
            assert chat.delay(f"latency probe {i}").get(timeout=10)
            self.probe(i, t0)
            await asyncio.sleep(0.01)


if __name__ == "__main__":
    run_side(CelerySide())
