"""The Batch tier end to end (real Redis, the simulator's Files and Batch API through the real openai
client, real workers): batch-tier jobs collected into provider batches, their answers read back as a
live call's, failed lines retried, expired batches' jobs finished later, cancels, and workers killed
at each step with no job lost and no provider batch started twice."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from typing import Any

import pytest

from devtools.stack import Simulator, Worker, wait_until
from producer import Producer, SyncProducer
from promptq_core.contract import LEASES, JobResult, queue_keys
from tests.conftest import start_worker, stop_worker, worker_env
from worker.config import BatchRules, WorkerConfig
from worker.provider_batches import ANSWERS_CHUNK
from worker.settle import LeaseLostError, Settle

QUICK = BatchRules(window_s=0.3, poll_s=0.1)
"""Collections sent 0.3 s after their first job, provider batches looked at every 0.1 s at first."""


def batch_config(config: WorkerConfig, **rules: Any) -> WorkerConfig:
    return dataclasses.replace(config, batch_api=True, batch=dataclasses.replace(QUICK, **rules))


async def wait_all(producer: Producer, ids: list[str], timeout_s: float = 30.0) -> list[JobResult]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await producer.get_many(ids)
        if all(r is not None and r.done for r in found):
            return [r for r in found if r is not None]
        if time.monotonic() > deadline:
            states = sorted({r.status if r else "none" for r in found})
            pytest.fail(f"jobs not done in {timeout_s} s: states {states}")
        await asyncio.sleep(0.1)


async def run_until_done(
    config: WorkerConfig, producer: Producer, ids: list[str], timeout_s: float = 30.0
) -> list[JobResult]:
    worker, main = start_worker(config)
    try:
        return await wait_all(producer, ids, timeout_s)
    finally:
        await stop_worker(worker, main)


async def test_batch_tier_jobs_go_in_one_provider_batch_and_answer_as_live_calls_do(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    prompts = [f"enrich row {i}" for i in range(300)]
    batched = await producer.submit_many([{"prompt": p, "tier": "batch", "max_tokens": 20} for p in prompts])
    live = await producer.submit_many([{"prompt": p, "max_tokens": 20} for p in prompts])
    config = batch_config(worker_config, max_lines=300, window_s=30)  # sent when full, whatever the timing
    done = await run_until_done(config, producer, batched + live)
    stats = sim.stats()
    assert stats["batches"] == 1 and stats["files"] == 1  # one file, one provider batch for the 300
    assert stats["batch_lines"] == 300
    assert stats["completions"] == 300  # the live jobs only
    by_tier = {r.job_id: r for r in done}
    for batch_id, live_id in zip(batched, live, strict=True):
        got, want = by_tier[batch_id], by_tier[live_id]
        assert got.status == want.status == "succeeded"
        assert (got.content, got.usage, got.finish_reason) == (want.content, want.usage, want.finish_reason)
        assert got.tier == "batch" and want.tier == "live"
        assert got.provider_batch is not None and got.provider_batch.startswith("batch_")
        assert want.provider_batch is None


async def test_failed_lines_go_into_a_later_provider_batch_until_their_tries_run_out(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(batch_line_error_rate=0.3, seed=7)
    ids = await producer.submit_many([{"prompt": f"row {i}", "tier": "batch"} for i in range(60)])
    done = await run_until_done(batch_config(worker_config, window_s=0.1), producer, ids)
    stats = sim.stats()
    assert stats["batches"] >= 2 and stats["completions"] == 0  # the failed lines went again, in batches
    retried = [r for r in done if r.attempts > 1]
    assert retried, "with 30 % of the lines failing, some jobs took more than one provider batch"
    for r in done:
        if r.ok:
            assert r.error is None
        else:  # three provider batches failed its line: the provider's error
            assert r.attempts == 3 and r.error is not None
            assert (r.error.type, r.error.status_code) == ("server_error", 500)
    assert stats["batch_lines"] == sum(r.attempts for r in done)


async def test_a_line_the_provider_refuses_fails_with_its_message_and_the_rest_succeed(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    embed = {"endpoint": "/v1/embeddings", "model": "text-embedding-3-small", "tier": "batch"}
    good = await producer.submit_many([{**embed, "input": [f"fine {i}", "too"], "dimensions": 8} for i in range(5)])
    bad = await producer.submit(**embed, input="refused", dimensions=5000)  # (the simulator allows 3072 at most)
    done = await run_until_done(batch_config(worker_config, max_lines=6, window_s=30), producer, [*good, bad])
    by_id = {r.job_id: r for r in done}
    assert all(by_id[i].ok and len(by_id[i].vectors or []) == 2 for i in good)
    assert all(len(v) == 8 for i in good for v in by_id[i].vectors or [])
    refused = by_id[bad]
    assert refused.status == "failed" and refused.attempts == 1
    assert refused.error is not None and refused.error.retryable is False
    assert "dimensions must be an integer from 1 to 3072" in refused.error.message
    assert sim.stats()["batches"] == 1 and sim.stats()["requests"] == 0  # no live call


@pytest.mark.parametrize("where", ["batch", "live"])
async def test_an_expired_provider_batch_puts_its_jobs_in_a_later_one_or_runs_them_live(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, where: str
) -> None:
    sim.configure(batch_expire=True, batch_delay_ms=1000)
    ids = await producer.submit_many([{"prompt": f"late {i}", "tier": "batch"} for i in range(20)])
    worker, main = start_worker(batch_config(worker_config, expired=where))
    try:
        deadline = time.monotonic() + 20
        while sim.stats()["batches"] < 1 or sim.stats()["batch_lines"] < 20:
            assert time.monotonic() < deadline, "no provider batch was sent"
            await asyncio.sleep(0.05)
        if where == "batch":
            await asyncio.sleep(0.5)  # it expires, and its jobs wait for the next
            assert all(r is not None and r.status == "batched" for r in await producer.get_many(ids))
        sim.configure(batch_expire=False)
        done = await wait_all(producer, ids)
    finally:
        await stop_worker(worker, main)
    # a later provider batch counts as an attempt (expiries are bounded by PROMPTQ_MAX_TRIES); run live,
    # the job's try is given back
    attempts = 2 if where == "batch" else 1
    assert all(r.ok and r.attempts == attempts for r in done), [(r.status, r.attempts) for r in done]
    stats = sim.stats()
    if where == "live":
        assert stats["completions"] == 20 and stats["batches"] == 1
        assert all(r.provider_batch is None for r in done)
    else:
        assert stats["completions"] == 0 and stats["batches"] >= 2


async def test_a_job_cancelled_in_a_provider_batch_stays_cancelled_and_its_answer_is_dropped(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(batch_delay_ms=1500)
    ids = await producer.submit_many([{"prompt": f"maybe {i}", "tier": "batch"} for i in range(10)])
    worker, main = start_worker(batch_config(worker_config, max_lines=10, window_s=30))
    try:
        deadline = time.monotonic() + 20
        while sim.stats()["batches"] < 1:
            assert time.monotonic() < deadline, "no provider batch was sent"
            await asyncio.sleep(0.05)
        for job_id in ids[:3]:
            assert (await producer.cancel(job_id)).cancelled
        done = await wait_all(producer, ids)
    finally:
        await stop_worker(worker, main)
    assert [r.status for r in done] == ["cancelled"] * 3 + ["succeeded"] * 7
    assert sim.stats()["batch_lines"] == 10  # they were sent; their answers were not kept


async def test_without_a_batch_capable_backend_batch_jobs_run_live_or_fail_when_strict(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    first = await producer.submit("no batch api here", tier="batch")
    (live,) = await run_until_done(worker_config, producer, [first])
    assert live.ok and live.tier == "batch" and live.provider_batch is None
    assert sim.stats()["completions"] == 1
    second = await producer.submit("strict", tier="batch")
    strict = dataclasses.replace(worker_config, batch=BatchRules(strict=True))
    (failed,) = await run_until_done(strict, producer, [second])
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.type == "no_batch_backend" and "gpt-4o-mini" in failed.error.message
    assert sim.stats()["completions"] == 1


REACHED = {
    "upload": lambda stats, done: stats["files"] >= 1,
    "create": lambda stats, done: stats["batches"] >= 1,
    "content": lambda stats, done: done >= ANSWERS_CHUNK,
}
"""When the first worker is at the step it is killed in: the file stored (its upload unanswered), the
provider batch created (its creation unanswered), a first run of answers settled (the output file
half sent)."""


@pytest.mark.process
@pytest.mark.parametrize("step", list(REACHED))
def test_a_worker_killed_at_any_step_loses_no_job_and_starts_no_provider_batch_twice(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, step: str
) -> None:
    jobs = 3 * ANSWERS_CHUNK if step == "content" else 50
    sim.configure(batch_hang=step)
    ids = sync_producer.submit_many([{"prompt": f"crash {i}", "tier": "batch"} for i in range(jobs)])
    env = worker_env(
        redis_url,
        sim,
        PROMPTQ_BATCH_API="1",
        PROMPTQ_BATCH_MAX_LINES=str(jobs),  # one provider batch, sent once every job is in
        PROMPTQ_BATCH_WINDOW_S="30",
        PROMPTQ_BATCH_POLL_S="0.1",
        PROMPTQ_LEASE_S="2",
        PROMPTQ_REQUEST_TIMEOUT_S="3",
        PROMPTQ_JOB_TIMEOUT_S="5",
    )

    def succeeded() -> int:
        return sum(1 for r in sync_producer.get_many(ids) if r is not None and r.ok)

    with Worker(env) as first:
        wait_until(lambda: REACHED[step](sim.stats(), succeeded()), 20, f"the worker at the {step} step")
        first.signal(signal.SIGKILL)
        first.popen.wait()  # type: ignore[union-attr]
    answered_before = succeeded()
    sim.configure(batch_hang="")
    with Worker(env):
        wait_until(lambda: succeeded() == jobs, 40, "every job's answer, read by the next worker")
    stats = sim.stats()
    assert stats["batches"] == 1  # the provider batch the first worker started, found again, not a second
    assert stats["files"] == (2 if step == "upload" else 1)  # an upload not recorded is made again
    assert stats["batch_lines"] == jobs and stats["requests"] == 0
    assert all(r is not None and r.attempts == 1 and r.provider_batch for r in sync_producer.get_many(ids))
    if step == "content":
        assert ANSWERS_CHUNK <= answered_before < jobs


async def test_a_provider_that_times_out_creating_a_batch_it_made_gets_no_second_one(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(batch_hang="create")  # the batch is made; the answer never comes
    ids = await producer.submit_many([{"prompt": f"unsure {i}", "tier": "batch"} for i in range(5)])
    config = dataclasses.replace(
        batch_config(worker_config, max_lines=5, window_s=30), request_timeout_s=1, job_timeout_s=2, lease_s=1
    )
    done = await run_until_done(config, producer, ids)
    assert all(r.ok for r in done)
    stats = sim.stats()
    assert stats["batches"] == 1 and stats["batch_lines"] == 5  # found again by its metadata, not made twice


async def test_an_attempt_that_lost_its_lease_collects_nothing(
    producer: Producer, worker_config: WorkerConfig, sync_redis: Any
) -> None:
    keys = queue_keys()
    job_id = await producer.submit("late collect", tier="batch")
    doc = await producer.get(job_id)
    assert doc is not None
    settle = Settle(producer.redis, worker_config.result_ttl_s)
    batched = dataclasses.replace(doc, status="batched", attempts=1)
    with pytest.raises(LeaseLostError):  # not leased: back in line (or never claimed)
        await settle.collect(batched, "default /v1/chat/completions gpt-4o-mini", 60)
    sync_redis.zadd(keys.key(LEASES), {job_id: 10**13})
    sync_redis.set(keys.tries(job_id), 2)  # leased, but by a later claim
    with pytest.raises(LeaseLostError):
        await settle.collect(batched, "default /v1/chat/completions gpt-4o-mini", 60)
    assert (await producer.get(job_id)).status == "queued"  # type: ignore[union-attr]
    assert sync_redis.zcard(keys.collect("default /v1/chat/completions gpt-4o-mini")) == 0
    sync_redis.set(keys.tries(job_id), 1)  # its own lease: collected
    assert await settle.collect(batched, "default /v1/chat/completions gpt-4o-mini", 60) is None
    assert (await producer.get(job_id)).status == "batched"  # type: ignore[union-attr]
    assert sync_redis.zcard(keys.collect("default /v1/chat/completions gpt-4o-mini")) == 1
