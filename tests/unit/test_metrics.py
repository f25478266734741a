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
