"""The worker in-process (arq burst mode) against the simulator over HTTP, through the openai client."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
import redis

from devtools.stack import Simulator
from producer import Producer
from promptq_core.contract import ARQ_JOB_KEY_PREFIX, LEGACY_QUEUE, JobResult, encode_job, queue_keys
from tests.conftest import make_worker, run_burst
from worker.config import WorkerConfig


async def test_a_job_runs_end_to_end(producer: Producer, worker_config: WorkerConfig, sim: Simulator) -> None:
    job_id = await producer.submit("What is the capital of Vietnam?", metadata={"user": 7}, max_tokens=64)
    await run_burst(worker_config)
    r = await producer.wait(job_id, timeout=1)
    assert r.status == "succeeded" and r.ok and r.done
    assert r.content == "What is the capital of Vietnam?"  # the simulator echoes
    assert r.finish_reason == "stop" and r.model == "gpt-4o-mini" and r.attempts == 1 and r.error is None
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.metadata == {"user": 7}
    assert r.enqueued_at is not None and r.started_at is not None and r.finished_at is not None
    assert r.enqueued_at <= r.started_at <= r.finished_at
    assert r.latency_ms is not None and r.latency_ms >= 0
    assert sim.stats()["completions"] == 1


async def test_parameters_reach_the_api(producer: Producer, worker_config: WorkerConfig) -> None:
    job_id = await producer.submit("a long answer please " * 10, model="gpt-4o", max_tokens=3)
    await run_burst(worker_config)
    r = await producer.wait(job_id, timeout=1)
    assert r.finish_reason == "length" and r.model == "gpt-4o"
    assert r.usage is not None and r.usage.completion_tokens == 3


async def test_the_result_is_kept_for_the_result_ttl(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("hi")
    await run_burst(dataclasses.replace(worker_config, result_ttl_s=50))
    assert 45 <= int(sync_redis.ttl(queue_keys().result(job_id))) <= 50  # type: ignore[arg-type]
    assert not sync_redis.exists(queue_keys().record(job_id))


async def test_status_is_running_while_the_call_is_in_flight(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(latency_ms=400)
    job_id = await producer.submit("slow")
    burst = asyncio.create_task(run_burst(worker_config))
    seen = set()
    while not burst.done():
        r = await producer.get(job_id)
        assert r is not None
        seen.add(r.status)
        await asyncio.sleep(0.01)
    await burst
    final = await producer.get(job_id)
    assert final is not None and final.status == "succeeded"
    assert "running" in seen


async def test_concurrency_stays_within_max_jobs(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(latency_ms=150)
    ids = await producer.submit_many([f"p{i}" for i in range(24)])
    await run_burst(dataclasses.replace(worker_config, max_jobs=4))
    stats = sim.stats()
    assert stats["peak_in_flight"] == 4
    assert stats["completions"] == 24
    results = [await producer.get(i) for i in ids]
    assert all(r is not None and r.ok for r in results)


async def test_a_transient_error_is_retried_after_the_advised_wait(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[503], retry_after_ms=50)
    job_id = await producer.submit("flaky")
    await run_burst(worker_config)  # max_tries=3
    r = await producer.wait(job_id, timeout=1)
    assert r.status == "failed" and r.attempts == 3
    assert r.error is not None and r.error.type == "server_error" and r.error.retryable
    assert r.error.status_code == 503
    assert sim.stats()["requests"] == 3


async def test_a_retry_that_then_succeeds_clears_the_error(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[500], retry_after_ms=300)
    job_id = await producer.submit("flaky once")
    worker = make_worker(worker_config)
    burst = asyncio.create_task(worker.main())
    while (r := await producer.get(job_id)) is not None and r.error is None:
        await asyncio.sleep(0.01)
    assert r is not None and r.status == "queued" and r.error is not None and r.error.retryable
    sim.configure(error_rate=0.0)
    await asyncio.wait_for(burst, 10)
    await worker.close()
    r = await producer.wait(job_id, timeout=1)
    assert r.ok and r.attempts == 2 and r.error is None


@pytest.mark.parametrize(
    ("knobs", "error_type", "status_code"),
    [
        ({"error_statuses": [400]}, "bad_request", 400),
        ({"error_statuses": [401]}, "authentication", 401),
        ({"error_statuses": [429], "error_code": "insufficient_quota"}, "insufficient_quota", 429),
    ],
)
async def test_a_permanent_error_fails_after_one_call(
    producer: Producer,
    worker_config: WorkerConfig,
    sim: Simulator,
    knobs: dict[str, object],
    error_type: str,
    status_code: int,
) -> None:
    sim.configure(error_rate=1.0, **knobs)
    job_id = await producer.submit("doomed")
    await run_burst(worker_config)
    r = await producer.wait(job_id, timeout=1)
    assert r.status == "failed" and r.attempts == 1
    assert r.error is not None and (r.error.type, r.error.status_code) == (error_type, status_code)
    assert not r.error.retryable
    assert sim.stats()["requests"] == 1


async def test_a_stored_result_is_never_paid_for_twice(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("once", job_id="once-1")
    record = sync_redis.get(queue_keys().record(job_id))
    await run_burst(worker_config)
    first = await producer.get(job_id)
    # a redelivery after a crash between the result write and arq's clean-up
    sync_redis.set(queue_keys().record(job_id), record)  # type: ignore[arg-type]
    sync_redis.zadd(LEGACY_QUEUE, {job_id: 1})  # as promptq 0.1 left it
    await run_burst(worker_config)
    assert await producer.get(job_id) == first
    assert sim.stats()["requests"] == 1
    # and submitting the id again enqueues nothing
    assert await producer.submit("once", job_id="once-1") == "once-1"
    assert (await producer.depths()).waiting == 0


async def test_undecodable_jobs_fail_clearly_and_the_worker_goes_on(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    # written by another client, in promptq 0.1's layout (a worker moves such jobs into the default queue)
    sync_redis.set(ARQ_JOB_KEY_PREFIX + "garbage", b"\x80\x04not json")
    sync_redis.set(ARQ_JOB_KEY_PREFIX + "wrong-shape", encode_job('{"prompt_text":"hi"}', 1))
    sync_redis.zadd(LEGACY_QUEUE, {"garbage": 1, "wrong-shape": 1})
    good = await producer.submit("still works")
    await run_burst(worker_config)
    for job_id, message in [("garbage", "not JSON"), ("wrong-shape", "unknown fields: prompt_text")]:
        raw: bytes | None = sync_redis.get(queue_keys().result(job_id))  # type: ignore[assignment]
        assert raw is not None
        r = JobResult.from_json(raw)
        assert r.status == "failed" and r.error is not None and r.error.type == "invalid_payload"
        assert message in r.error.message
    assert (await producer.wait(good, timeout=1)).ok


async def test_worker_side_validation_catches_what_another_client_wrote(
    worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    payload = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": None, "params": {"n": 3}})
    sync_redis.set(ARQ_JOB_KEY_PREFIX + "j", encode_job(payload, 1))
    sync_redis.zadd(LEGACY_QUEUE, {"j": 1})
    await run_burst(worker_config)
    r = JobResult.from_json(sync_redis.get(queue_keys().result("j")))  # type: ignore[arg-type]
    assert r.status == "failed" and r.error is not None and "unknown parameter 'n'" in r.error.message


async def test_an_unreadable_body_is_retried_then_fails_as_a_bad_response(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(malformed_rate=1.0)  # 200 with a body cut off mid-JSON
    job_id = await producer.submit("cut off")
    await run_burst(dataclasses.replace(worker_config, max_tries=2))
    r = await producer.wait(job_id, timeout=1)
    assert r.status == "failed" and r.attempts == 2 and sim.stats()["requests"] == 2
    assert r.error is not None and r.error.type == "bad_response" and r.error.retryable
    assert "unreadable body" in r.error.message
