"""The worker's liveness rule (``/healthz`` on the metrics port), without Redis."""

from __future__ import annotations

import time

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
