"""Rate limits shared through Redis: unit checks of the limiter, and two worker processes against
a simulator that enforces the same limit."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import pytest
import redis.asyncio

from devtools.stack import Simulator, Worker
from producer import Producer, SyncProducer
from promptq_core.contract import DEFAULT_BACKEND, limit_keys
from promptq_core.validation import PromptJob
from tests.conftest import run_burst, worker_env
from worker.backends import Backend
from worker.config import ConfigError, Limit, WorkerConfig, limits_from_env
from worker.limiter import BudgetWaitTooLongError, LimitTooSmallError, estimate_tokens, server_budget_wait_s
from worker.routing import Router

ONE = Backend("default", None, "unused", None)


def limiter(client: redis.asyncio.Redis, limit: Limit, *, shared: bool = True) -> Router:
    """A router of one backend (``default``, every model) with ``limit`` for each model."""
    return Router(client, (dataclasses.replace(ONE, limit=limit),), probe_s=10, shared=shared)


async def acquire(router: Router, model: str, tokens: int, max_wait_s: float = float("inf")) -> float:
    return (await router.route(model, tokens, max_wait_s)).waited_s


def test_limits_come_from_the_environment() -> None:
    default, per_model = limits_from_env(
        {"PROMPTQ_RPM": "100", "PROMPTQ_LIMITS": '{"gpt-4o": {"tpm": 5000}, "m2": {"rpm": 7, "tpm": 9}}'}
    )
    assert default == Limit(100, None)
    assert per_model == {"gpt-4o": Limit(100, 5000), "m2": Limit(7, 9)}
    assert limits_from_env({}) == (Limit(), {})
    for env, message in [
        ({"PROMPTQ_RPM": "0"}, "PROMPTQ_RPM must be at least 1"),
        ({"PROMPTQ_LIMITS": "{nope"}, "PROMPTQ_LIMITS must be JSON"),
        ({"PROMPTQ_LIMITS": '{"m": {"rpd": 5}}'}, "rpm and/or tpm"),
        ({"PROMPTQ_LIMITS": '{"m": {"rpm": -5}}'}, "positive integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            limits_from_env(env)


def test_the_token_estimate_works_offline_and_counts_the_completion() -> None:
    job = PromptJob.build("x" * 400, max_tokens=100)
    assert 100 + 100 <= estimate_tokens(job, 500) <= 100 + 120
    assert estimate_tokens(PromptJob.build("x" * 400), 500) >= 600


async def test_the_budget_is_spread_over_the_minute(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        router = limiter(client, Limit(rpm=600))  # 10 a second, spaced at 98 % of it: 102 ms apart
        started = time.monotonic()
        waits = [await acquire(router, "m", 0) for _ in range(20)]
        elapsed = time.monotonic() - started
        assert waits[0] == 0 and sum(w == 0 for w in waits) <= 2  # no burst, not even the first second's
        assert 19 * 0.1 <= elapsed <= 2.6  # at the limit's pace throughout
        with pytest.raises(BudgetWaitTooLongError):
            for _ in range(30):
                await acquire(router, "m", 0, max_wait_s=0.05)
        with pytest.raises(LimitTooSmallError, match="more than the 1000 tokens per minute"):
            await acquire(limiter(client, Limit(tpm=1000)), "m", 5000)
        await router.cool_down(router.backends[0], "other", 0.3)
        started = time.monotonic()
        await acquire(router, "other", 0)
        assert time.monotonic() - started >= 0.25
    finally:
        await client.aclose()


async def test_waiting_jobs_go_in_the_order_they_asked_with_one_redis_call_each(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        router = limiter(client, Limit(rpm=1200))  # one every 51 ms
        for _ in range(3):  # the budget is in use: the next ones wait
            await acquire(router, "m", 0)
        await client.config_resetstat()
        finished: list[int] = []

        async def one(i: int) -> None:
            await acquire(router, "m", 0)
            finished.append(i)

        tasks = []
        for i in range(12):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(0.003)
        await asyncio.gather(*tasks)
        stats = await client.info("commandstats")
        calls = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
        assert finished == list(range(12))  # first come, first served
        assert calls == 12  # a waiting job sleeps its reservation out without asking again
    finally:
        await client.aclose()


async def test_a_cool_down_is_never_shortened_and_a_too_long_wait_reserves_nothing(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        router = limiter(client, Limit(rpm=60))
        await router.cool_down(router.backends[0], "m", 5)
        await router.cool_down(router.backends[0], "m", 0.1)
        rpm, _, cooldown = limit_keys(DEFAULT_BACKEND, "m")
        assert await client.pttl(cooldown) > 4000
        await client.delete(cooldown)
        for _ in range(2):
            await acquire(router, "m", 0)  # one a second for 60 rpm: the second waits about 1 s
        before = await client.get(rpm)
        with pytest.raises(BudgetWaitTooLongError):
            await acquire(router, "m", 0, max_wait_s=0.5)
        assert await client.get(rpm) == before
    finally:
        await client.aclose()


def test_per_process_scope_keeps_its_own_keys() -> None:
    shared = limiter(redis.asyncio.Redis(), Limit(rpm=5))
    own = limiter(redis.asyncio.Redis(), Limit(rpm=5), shared=False)
    assert shared.keys(ONE, "m")[0] == limit_keys(DEFAULT_BACKEND, "m")[0] == "promptq:{backends}:limit:default/m:rpm"
    assert own.keys(ONE, "m")[0].endswith(f":{os.getpid()}:default/m:rpm")
    assert own.keys(ONE, "m") != shared.keys(ONE, "m")
    assert WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "PROMPTQ_LIMIT_SCOPE": "process"}).limit_scope == (
        "process"
    )
    with pytest.raises(ConfigError, match="PROMPTQ_LIMIT_SCOPE"):
        WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "PROMPTQ_LIMIT_SCOPE": "global"})


def test_a_spent_server_budget_asks_for_a_pause() -> None:
    spent = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "30s",
    }
    assert server_budget_wait_s(spent, 100, elapsed_s=0.25) == pytest.approx(0.75)  # one request a second
    assert server_budget_wait_s(spent | {"x-ratelimit-reset-requests": "200ms"}, 100, 0.0) == pytest.approx(0.2)
    assert server_budget_wait_s(spent | {"x-ratelimit-remaining-requests": "3"}, 100, 0.0) == 0
    tokens = {"x-ratelimit-limit-tokens": "6000", "x-ratelimit-remaining-tokens": "50"}
    assert server_budget_wait_s(tokens, 150, 0.0) == pytest.approx(1.0)  # 100 tokens at 100 a second
    assert server_budget_wait_s(tokens, 40, 0.0) == 0
    assert server_budget_wait_s({}, 150, 0.0) == 0


async def test_a_success_that_spends_the_servers_budget_pauses_every_worker(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, redis_url: str
) -> None:
    sim.configure(rpm=60, rpm_burst=1)  # the server allows far less than promptq was told
    job_id = await producer.submit("hi")
    await run_burst(dataclasses.replace(worker_config, limit=Limit(rpm=6000)))
    assert (await producer.wait(job_id, timeout=1)).ok
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        pause_ms = await client.pttl(limit_keys(DEFAULT_BACKEND, worker_config.model)[2])
    finally:
        await client.aclose()
    assert 0 < pause_ms <= 1000


async def test_a_request_over_the_tpm_limit_fails_at_once(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    job_id = await producer.submit("hi", max_tokens=5000)
    await run_burst(dataclasses.replace(worker_config, limit=Limit(tpm=1000)))
    r = await producer.wait(job_id, timeout=1)
    assert r.status == "failed" and r.error is not None and r.error.type == "limit_exceeded"
    assert sim.stats()["requests"] == 0


@pytest.mark.parametrize("enforced", ["bucket", "per second"])
@pytest.mark.process
def test_two_workers_share_one_budget(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, enforced: str
) -> None:
    rpm = 480  # 8 a second
    sim.configure(rpm=rpm, rpm_burst=8, limit_window_s=1.0 if enforced == "per second" else 0.0)
    env = worker_env(redis_url, sim, PROMPTQ_POLL_DELAY_S="0.05", PROMPTQ_MAX_JOBS="16", PROMPTQ_RPM=str(rpm))
    with Worker(env), Worker(env):
        started = time.monotonic()
        ids = sync_producer.submit_many([f"limited {i}" for i in range(40)])
        results = [sync_producer.wait(i, timeout=60) for i in ids]
        elapsed = time.monotonic() - started
    stats = sim.stats()
    assert all(r.ok for r in results)
    # one budget for both: at 8 a second, 40 calls take about 5 s and the simulator refuses none
    assert stats["by_status"].get("429", 0) == 0, stats
    assert elapsed >= 3.5
