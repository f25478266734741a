"""The worker's metrics endpoint, scraped over HTTP from a real worker process."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack import Simulator, Worker, free_port
from tests.conftest import worker_env


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    with urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.process
def test_the_metrics_endpoint(redis_url: str, sim: Simulator, sync_producer: Any) -> None:
    port = free_port()
    prices = json.dumps({"gpt-4o-mini": {"input": 1.0, "output": 2.0}})
    env = worker_env(redis_url, sim, PROMPTQ_METRICS_PORT=str(port), PROMPTQ_PRICES=prices)
    with Worker(env):
        assert scrape(port, "/healthz") == (200, '{"ok": true}\n')
        ids = sync_producer.submit_many([f"metric {i}" for i in range(10)])
        results = [sync_producer.wait(i, timeout=10) for i in ids]
        time.sleep(5.5)  # the queue depth is read every 5 s
        status, text = scrape(port)
    assert status == 200
    got = samples(text)
    model = (("model", "gpt-4o-mini"),)
    chat = (("endpoint", "/v1/chat/completions"),)
    assert got[("promptq_jobs_total", (*chat, *model, ("status", "succeeded")))] == 10
    assert got[("promptq_attempts_total", model)] == 10
    assert got[("promptq_attempt_seconds_count", model)] == 10
    prompt = sum(r.usage.prompt_tokens for r in results)
    completion = sum(r.usage.completion_tokens for r in results)
    assert got[("promptq_tokens_total", (("kind", "prompt"), *model))] == prompt
    assert got[("promptq_cost_usd_total", model)] == pytest.approx((prompt * 1.0 + completion * 2.0) / 1e6)
    queue = (("queue", "default"),)
    assert got[("promptq_in_flight", ())] == 0 and got[("promptq_queue_running", queue)] == 0
    assert all(got[("promptq_queue_depth", (("priority", str(p)), *queue))] == 0 for p in range(10))
