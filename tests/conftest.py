"""Shared fixtures: a real Redis, the simulator over real HTTP, workers in-process or as processes.

Redis: ``PROMPTQ_TEST_REDIS_URL`` if set; else a throw-away ``redis-server`` on a free port when the
binary exists; else database 15 of the Redis at ``REDIS_URL``. Each test starts from an empty
database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from arq.worker import Worker

from devtools.stack import RedisServer, Simulator, redis_answers
from producer import Producer, ProducerConfig, SyncProducer
from worker.arq_seam import PromptqWorker
from worker.circuit import CircuitRules
from worker.config import WorkerConfig
from worker.settings import settings_kwargs

TEST_API_KEY = "sk-test-SECRET-KEY-0123456789"


def worker_env(redis_url: str, sim: Simulator, **extra: str) -> dict[str, str]:
    """The environment of an ``arq worker.Settings`` process against ``sim``, polling fast."""
    return {
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": sim.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PROMPTQ_POLL_DELAY_S": "0.02",
        **extra,
    }


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    if url := os.environ.get("PROMPTQ_TEST_REDIS_URL"):
        yield url
    elif shutil.which("redis-server"):
        with RedisServer() as server:
            yield server.url
    else:
        url = os.environ.get("REDIS_URL", "redis://localhost:6379/0").rsplit("/", 1)[0] + "/15"
        if not redis_answers(url):
            pytest.fail(f"no redis-server binary and no Redis at {url}: run `make redis`")
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


_STARTED_SIMULATORS: list[Simulator] = []
"""The session's simulator once started: every test then begins with it reset (``_fresh_simulator``)."""


@pytest.fixture(scope="session")
def sim_process() -> Iterator[Simulator]:
    with Simulator() as sim:
        _STARTED_SIMULATORS.append(sim)
        yield sim
        _STARTED_SIMULATORS.clear()


@pytest.fixture(autouse=True)
def _fresh_simulator() -> None:
    """Every test starts with the shared simulator at its defaults, whether it asks for ``sim`` or only
    uses it through a module's worker: knobs a test before it left set (a hang rate, an error rate)
    must not decide how a later test's jobs end, whatever order the tests run in."""
    for started in _STARTED_SIMULATORS:
        started.reset()


@pytest.fixture
def sim(sim_process: Simulator) -> Simulator:
    """The simulator with default knobs (echo replies, no latency, no faults) and zeroed counters
    (``_fresh_simulator`` reset it; one started for this test is fresh)."""
    return sim_process


@pytest.fixture
def worker_config(redis_url: str, sim: Simulator) -> WorkerConfig:
    """An in-process worker's settings against ``sim``. Its circuit breaker opens only after 100
    failures in a row, so that tests of retries see every try fail; the circuit's own tests lower it."""
    return WorkerConfig(
        redis_url=redis_url,
        openai_api_key=TEST_API_KEY,
        openai_base_url=sim.base_url,
        request_timeout_s=5,
        job_timeout_s=8,
        poll_delay_s=0.02,
        max_tries=3,
        circuit=CircuitRules(failures=100),
    )


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[Producer]:
    async with Producer(config=ProducerConfig(redis_url=redis_url)) as p:
        yield p


@pytest.fixture
def sync_producer(redis_url: str) -> Iterator[SyncProducer]:
    with SyncProducer(config=ProducerConfig(redis_url=redis_url)) as p:
        yield p


def make_worker(config: WorkerConfig, **overrides: Any) -> PromptqWorker:
    """An in-process arq worker with promptq's settings (burst: it stops when the queue is empty).
    Built as arq's CLI builds one, as a plain ``Worker``: promptq's seam makes it a ``PromptqWorker``."""
    kwargs = {**settings_kwargs(config), "burst": True, "handle_signals": False, **overrides}
    worker = Worker(**kwargs)
    assert isinstance(worker, PromptqWorker)
    return worker


def start_worker(config: WorkerConfig) -> tuple[PromptqWorker, asyncio.Task[None]]:
    """An in-process worker that runs until :func:`stop_worker` (not a burst)."""
    worker = make_worker(config, burst=False)
    return worker, asyncio.create_task(worker.async_run())  # async_run sets the main task a drain cancels


async def stop_worker(worker: PromptqWorker, main: asyncio.Task[None], grace_s: float = 5.0) -> None:
    """Stop it as SIGTERM would: no new job, ``grace_s`` for the running ones, then interrupt."""
    drain = asyncio.create_task(worker.drain(grace_s, "test"))
    with pytest.raises(asyncio.CancelledError):
        await main
    await drain
    await worker.close()


async def run_burst(config: WorkerConfig, **overrides: Any) -> PromptqWorker:
    """Run an in-process worker until the queue is empty (deferred retries included)."""
    worker = make_worker(config, **overrides)
    try:
        await asyncio.wait_for(worker.main(), 30)
    finally:
        await worker.close()
    return worker
