"""``make demo``: four prompts through the whole pipeline, on embedded defaults.

Redis at REDIS_URL (default redis://localhost:6379/0), or a local redis-server started for the run;
the bundled simulator unless OPENAI_API_KEY is set (then the real API, model PROMPTQ_MODEL); one
``arq worker.Settings`` process. Whatever the demo started, it stops.

``--submit-only`` starts nothing: it submits to the Redis at REDIS_URL and waits for workers that
already run there (the compose ``demo`` service).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import textwrap
from collections.abc import Iterator

from devtools.stack import Simulator, Worker, redis_url_for
from producer import JobResult, Producer
from promptq_core.contract import DEFAULT_REDIS_URL

PROMPTS = [
    "What is the capital of Vietnam?",
    "Tell me a joke about AI.",
    "Explain the theory of relativity in simple terms.",
    "How do you make an HTTP request in Python?",
]
WAIT_TIMEOUT_S = 120.0


@contextlib.contextmanager
def api_env() -> Iterator[dict[str, str]]:
    """The worker's API settings: the real API when OPENAI_API_KEY is set, else a simulator."""
    if os.environ.get("OPENAI_API_KEY"):
        print("API: OpenAI (OPENAI_API_KEY is set)")
        yield {}
        return
    with Simulator("--reply", "demo", "--latency-ms", "400") as sim:
        print(f"API: the bundled simulator at {sim.base_url} (set OPENAI_API_KEY to use OpenAI)")
        yield {"OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": "sk-simulator"}


def show(n: int, prompt: str, r: JobResult) -> None:
    usage = r.usage
    tokens = f"{usage.prompt_tokens}+{usage.completion_tokens}={usage.total_tokens}" if usage else "-"
    print(f"\n[{n}/{len(PROMPTS)}] {prompt}")
    print(f"      job {r.job_id}  {r.status}  tokens {tokens}  latency {r.latency_ms} ms  attempts {r.attempts}")
    text = r.content if r.ok else f"error: {r.error}"
    print(textwrap.indent(textwrap.fill(text or "", 96), "      "))


async def submit_and_wait(redis_url: str) -> bool:
    async with Producer(redis_url) as producer:
        ids = await producer.submit_many(PROMPTS)
        print(f"submitted {len(ids)} jobs; waiting for results...")
        results = await asyncio.gather(*(producer.wait(i, timeout=WAIT_TIMEOUT_S) for i in ids))
    for n, (prompt, result) in enumerate(zip(PROMPTS, results, strict=True), 1):
        show(n, prompt, result)
    return all(r.ok for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--submit-only", action="store_true", help="use running workers at REDIS_URL")
    if parser.parse_args(argv).submit_only:
        return 0 if asyncio.run(submit_and_wait(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))) else 1
    with redis_url_for(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)) as redis_url, api_env() as env:
        print(f"Redis: {redis_url}")
        with Worker({**env, "REDIS_URL": redis_url}) as worker:
            print(f"worker: arq worker.Settings (logs: {worker.log_path})")
            ok = asyncio.run(submit_and_wait(redis_url))
    print("\nall four succeeded" if ok else "\nsome jobs failed; see the worker's log above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
