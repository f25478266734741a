"""The worker's metrics endpoint, scraped over HTTP from a real worker process."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.stack import Simulator, Worker, free_port
from producer import SyncProducer
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
    assert got[("promptq_queue_oldest_age_seconds", queue)] == 0  # nothing ready
    assert got[("promptq_redis_memory_used_bytes", queue)] > 0 and ("promptq_redis_memory_max_bytes", queue) in got


@pytest.mark.process
def test_the_metrics_have_a_series_per_backend_and_show_the_down_one_down(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer
) -> None:
    port = free_port()
    with Simulator() as west_sim:
        listing = [
            {"name": "east", "base_url": sim.base_url, "models": ["gpt-4o-mini"]},
            {"name": "west", "base_url": west_sim.base_url, "models": ["gpt-4o-mini"]},
        ]
        env = {
            "REDIS_URL": redis_url,
            "PROMPTQ_BACKENDS": json.dumps(listing),
            "PROMPTQ_POLL_DELAY_S": "0.02",
            "PROMPTQ_METRICS_PORT": str(port),
            "PROMPTQ_CIRCUIT_FAILURES": "2",
            "PROMPTQ_CIRCUIT_COOL_DOWN_S": "60",  # no probe while the test looks
            "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S": "60",
        }
        with Worker(env):
            ids = sync_producer.submit_many([f"both {i}" for i in range(20)])
            assert all(sync_producer.wait(i, timeout=20).ok for i in ids)
            before = samples(scrape(port)[1])
            west_sim.configure(outage="503")
            ids = sync_producer.submit_many([f"west down {i}" for i in range(20)])
            after_outage = [sync_producer.wait(i, timeout=30) for i in ids]
            after = samples(scrape(port)[1])
        west_calls = west_sim.stats()
    assert all(r.ok and r.backend == "east" for r in after_outage)
    ok = ("outcome", "ok")
    for name in ("east", "west"):  # each served some of the first twenty (1 in 2**19 it is not so)
        assert before[("promptq_backend_calls_total", (("backend", name), ok))] > 0
        assert before[("promptq_backend_up", (("backend", name),))] == 1
    assert sum(before[("promptq_backend_calls_total", (("backend", n), ok))] for n in ("east", "west")) == 20
    west_failed = after[("promptq_backend_calls_total", (("backend", "west"), ("outcome", "server_error")))]
    assert 2 <= west_failed == west_calls["by_status"]["503"]
    assert after[("promptq_backend_up", (("backend", "west"),))] == 0
    assert after[("promptq_backend_up", (("backend", "east"),))] == 1
