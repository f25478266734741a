"""``make dashboard-shot``: the docs' picture of the dashboard, after some minutes of real work.

Starts a Redis, the simulator (400 ms answers, 1 % refused with a 400), two workers of 4 slots, the
HTTP API and, for ``--minutes``, a web app's trickle of priority-0 jobs beside two batches, the
second submitted half-way; then takes a screenshot of ``/dashboard`` in headless Chromium.

    python -m devtools.dashboard_shot [--minutes 6] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from devtools.stack import ROOT, Api, RedisServer, Simulator, Worker
from producer import Producer, ProducerConfig
from promptq_core.contract import dumps

PRICES = json.dumps({"gpt-4o-mini": {"input": 0.15, "output": 0.6}})


async def batch(producer: Producer, name: str, n: int) -> None:
    ids = [f"{name}:{i}" for i in range(n)]
    await producer.open_batch(name, n)
    await producer.submit_many(
        [{"prompt": f"Summarise row {i} of {name}.", "job_id": j, "fairness_key": name} for i, j in enumerate(ids)]
    )
    await producer.save_manifest(name, dumps({"name": name, "items": [[str(i), j] for i, j in enumerate(ids)]}))


async def load(redis_url: str, seconds: float) -> None:
    async with Producer(config=ProducerConfig(redis_url=redis_url)) as producer:
        await batch(producer, "nightly-eval", 2_000)
        started = time.monotonic()
        second_batch = False
        while (elapsed := time.monotonic() - started) < seconds:
            if not second_batch and elapsed > seconds / 2:
                await batch(producer, "enrich-products", 4_000)
                second_batch = True
            for _ in range(2):
                await producer.submit("Answer the user's question.", priority=0, fairness_key="web")
            await asyncio.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.dashboard_shot")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: run `make browser`")
    sim_args = ("--latency-ms", "400", "--reply", "demo", "--error-rate", "0.01", "--error-statuses", "400")
    with RedisServer() as server, Simulator(*sim_args) as sim:
        env = {
            "REDIS_URL": server.url,
            "OPENAI_BASE_URL": sim.base_url,
            "OPENAI_API_KEY": "sk-unused",
            "PROMPTQ_MAX_JOBS": "4",
            "PROMPTQ_PRICES": PRICES,
        }
        with Worker(env), Worker(env), Api({"REDIS_URL": server.url}) as api:
            asyncio.run(load(server.url, args.minutes * 60))
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
                tab = browser.new_page(viewport={"width": 1280, "height": 1040})
                tab.goto(api.url + "/dashboard")
                tab.wait_for_selector("tr.batch", timeout=10_000)
                tab.wait_for_timeout(500)
                tab.screenshot(path=str(args.out))
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
