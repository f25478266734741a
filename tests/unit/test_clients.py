"""The worker's OpenAI clients: one per SLOTS_PER_CLIENT slots, handed out in turn, closed together."""

from __future__ import annotations

import dataclasses

import pytest

from worker.config import WorkerConfig
from worker.llm import SLOTS_PER_CLIENT, Clients


@pytest.mark.parametrize(
    ("max_jobs", "expected"), [(1, 1), (SLOTS_PER_CLIENT, 1), (SLOTS_PER_CLIENT + 1, 2), (1000, 100)]
)
async def test_one_client_per_slots_per_client_slots(max_jobs: int, expected: int) -> None:
    config = dataclasses.replace(WorkerConfig(openai_api_key="sk-test"), max_jobs=max_jobs)
    clients = Clients(config)
    try:
        assert len(clients.all) == expected
        taken = [clients.take("default") for _ in range(2 * expected)]
        assert taken == list(clients.all) * 2  # in turn, each as often as the others
    finally:
        await clients.aclose()
    assert all(c.is_closed() for c in clients.all)
