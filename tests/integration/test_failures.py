"""Failure handling in one process: failed jobs and their retry, leases, shutdown, Redis away."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import pytest
import redis

from devtools.stack import Simulator, free_port
from producer import Producer, QueueUnavailableError, RetryRefusedError, SyncProducer
from promptq_core.contract import FAILED_JOB, LEASES, queue_keys
from tests.conftest import run_burst, start_worker, stop_worker
from worker.config import WorkerConfig


async def test_failed_jobs_are_listed_newest_first_and_can_be_retried(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[400])
    first = await producer.submit("one", job_id="f-1", metadata={"row": 1})
    await run_burst(worker_config)
    second = await producer.submit("two", job_id="f-2")
    await run_burst(worker_config)
    ok = await producer.submit("fine", job_id="f-ok")
    sim.configure(error_rate=0.0)
    await run_burst(worker_config)

    failed = await producer.failed()
    assert [r.job_id for r in failed] == [second, first]
    assert all(r.status == "failed" and r.error is not None for r in failed)
    assert [r.job_id for r in await producer.failed(limit=1)] == [second]
    assert sync_redis.exists(queue_keys().key(FAILED_JOB) + first)

    assert await producer.retry(first) == first
    queued = await producer.get(first)
    assert queued is not None and queued.status == "queued" and queued.error is None and queued.metadata == {"row": 1}
    with pytest.raises(RetryRefusedError, match="queued, not failed"):
        await producer.retry(first)  # a second retry queues nothing more
    await run_burst(worker_config)
    r = await producer.wait(first, timeout=1)
    assert r.ok and r.attempts == 1 and r.content == "one" and r.metadata == {"row": 1}
    assert [j.job_id for j in await producer.failed()] == [second]
    assert not sync_redis.exists(queue_keys().key(FAILED_JOB) + first)
    assert sim.stats()["completions"] == 2  # f-ok and the retried f-1

    with pytest.raises(RetryRefusedError, match="succeeded, not failed"):
        await producer.retry(ok)
    with pytest.raises(RetryRefusedError, match="unknown"):
        await producer.retry("never-submitted")
    with pytest.raises(ValueError, match="limit"):
        await producer.failed(limit=0)


def test_the_sync_producer_retries_too(
    sync_producer: SyncProducer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[401])
    job_id = sync_producer.submit("hi")
    asyncio.run(run_burst(worker_config))
    assert [r.job_id for r in sync_producer.failed()] == [job_id]
    sim.configure(error_rate=0.0)
    sync_producer.retry(job_id)
    asyncio.run(run_burst(worker_config))
    assert sync_producer.wait(job_id, timeout=1).ok
    assert sync_producer.failed() == []


async def test_a_running_job_holds_a_short_renewed_lease(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(latency_ms=1500)
    job_id = await producer.submit("slow")
    burst = asyncio.create_task(run_burst(dataclasses.replace(worker_config, lease_s=1.0)))
    while sync_redis.zscore(queue_keys().key(LEASES), job_id) is None:
        await asyncio.sleep(0.01)
    left_ms = []
    for _ in range(12):  # 1.2 s: longer than one lease, so it must have been renewed
        await asyncio.sleep(0.1)
        seconds, micros = cast("tuple[int, int]", sync_redis.time())
        deadline_ms = cast("float | None", sync_redis.zscore(queue_keys().key(LEASES), job_id))
        if deadline_ms is not None:
            left_ms.append(deadline_ms - (seconds * 1000 + micros // 1000))
    await burst
    assert len(left_ms) >= 10 and all(0 < left <= 1000 for left in left_ms), left_ms
    assert (await producer.wait(job_id, timeout=1)).ok


async def _shut_down_once_running(producer: Producer, config: WorkerConfig, job_id: str, grace_s: float) -> None:
    worker, main = start_worker(config)
    while (r := await producer.get(job_id)) is not None and r.status != "running":
        await asyncio.sleep(0.01)
    await stop_worker(worker, main, grace_s)


async def test_a_shutdown_past_its_grace_puts_the_job_back_without_spending_a_try(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(latency_ms=3000)
    job_id = await producer.submit("interrupted")
    await _shut_down_once_running(producer, worker_config, job_id, grace_s=0.2)
    back = await producer.get(job_id)
    assert back is not None and back.status == "queued" and back.attempts == 0
    assert int(sync_redis.get(queue_keys().tries(job_id)) or 0) == 0  # type: ignore[arg-type]
    sim.configure(latency_ms=0)
    await run_burst(worker_config)
    r = await producer.wait(job_id, timeout=1)
    assert r.ok and r.attempts == 1


async def test_a_shutdown_lets_calls_within_the_grace_finish(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(latency_ms=300)
    job_id = await producer.submit("nearly done")
    await _shut_down_once_running(producer, worker_config, job_id, grace_s=5.0)
    r = await producer.wait(job_id, timeout=1)
    assert r.ok and r.attempts == 1
    assert sim.stats()["completions"] == 1


async def test_submit_says_clearly_when_redis_is_away() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with Producer(url) as p:
        with pytest.raises(QueueUnavailableError, match=f"Redis at {url} is unavailable"):
            await p.submit("lost?")
        with pytest.raises(ConnectionError):  # QueueUnavailableError is a ConnectionError
            await p.submit_many(["a", "b"])
        with pytest.raises(QueueUnavailableError):
            await p.get("x")
    with SyncProducer(url) as s, pytest.raises(QueueUnavailableError):
        s.submit("lost?")


async def test_credentials_are_not_shown_in_the_unavailable_message() -> None:
    url = f"redis://app:hunter2@127.0.0.1:{free_port()}/0"
    async with Producer(url) as p:
        with pytest.raises(QueueUnavailableError) as caught:
            await p.submit("x")
    assert "hunter2" not in str(caught.value)


async def test_a_waiting_retry_holds_no_slot(producer: Producer, worker_config: WorkerConfig, sim: Simulator) -> None:
    sim.configure(error_rate=1.0, error_statuses=[503], retry_after_ms=1500)
    flaky = await producer.submit("flaky", job_id="flaky")
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=1))
    while (r := await producer.get(flaky)) is not None and r.error is None:
        await asyncio.sleep(0.01)  # until the first attempt has failed and its retry waits 1.5 s
    sim.configure(error_rate=0.0)
    other = await producer.submit("next in line")  # the only slot must be free for it at once
    done = await producer.wait(other, timeout=1)
    assert done.ok
    retried = await producer.get(flaky)
    assert retried is not None and retried.status == "queued" and retried.attempts == 1
    await stop_worker(worker, main)
