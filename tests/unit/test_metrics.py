"""The worker's liveness rule (``/healthz`` on the metrics port), without Redis."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from worker import metrics
from worker.metrics import Metrics


def test_liveness_fails_when_the_poll_loop_stalls_with_nothing_running() -> None:
    m = Metrics()
    metrics.heartbeat()
    assert m.healthy()
    metrics._last_poll_s = time.monotonic() - 120
    assert not m.healthy()
    m.running = lambda: 3  # every slot busy: arq does not poll, the worker is still alive
    assert m.healthy()
    metrics.heartbeat()


def test_model_labels_are_capped_so_callers_cannot_grow_a_scrape() -> None:
    m = Metrics()
    for i in range(200):
        m.job_ended(f"model-{i}-" + "x" * 150, "succeeded", None)
    scrape = generate_latest(m.registry).decode()
    assert len(scrape) < 64 * 400 + 20_000  # 64 names, then "other"
    assert 'model="other"' in scrape and 'model="model-63-' in scrape and 'model="model-64-' not in scrape
    assert m.model("model-0-" + "x" * 150).startswith("model-0-")  # a name seen keeps its label


def test_the_queue_s_oldest_ready_job_and_its_redis_memory_are_exported() -> None:
    from promptq_core.depths import QueueDepths

    m = Metrics()
    m.set_depths(QueueDepths({5: {"a": 2}}, 0, 0, 0, "gpu", False, 100.0, 700, 1000, read_at=130.0))
    text = generate_latest(m.registry).decode()
    assert 'promptq_queue_oldest_age_seconds{queue="gpu"} 30.0' in text
    assert 'promptq_redis_memory_used_bytes{queue="gpu"} 700.0' in text
    assert 'promptq_redis_memory_max_bytes{queue="gpu"} 1000.0' in text
    m.set_depths(QueueDepths({5: {"a": 2}}, 0, 0, 0, "gpu", False, 100.0, 700, 1000, read_at=160.0))
    assert 'promptq_queue_oldest_age_seconds{queue="gpu"} 60.0' in generate_latest(m.registry).decode()  # Redis time
    m.set_depths(QueueDepths({}, 0, 0, 0, "gpu", read_at=130.0))  # nothing ready: no age
    assert 'promptq_queue_oldest_age_seconds{queue="gpu"} 0.0' in generate_latest(m.registry).decode()
