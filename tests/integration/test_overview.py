"""The dashboard's figures (``Producer.overview``): the roll-ups the finish step writes, the batches'
tallies, the workers' beats, read back through the producer, against a real Redis, a real worker
and the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import cast

import pytest
import redis
import redis.asyncio

from devtools.stack import Simulator, free_port
from producer import Producer
from producer.overview import quantile_ms
from promptq_core.contract import STATS, WORKERS_KEY, JobResult, Usage, dumps, latency_bucket, queue_keys
from promptq_core.prices import Price
from tests.conftest import run_burst, start_worker, stop_worker
from worker.backends import Limit
from worker.config import WorkerConfig
from worker.queue import JobQueue
from worker.settle import Settle
from worker.state import WorkerState
from worker.tally import Tally

PRICES = {"priced-model": Price(input_per_million_usd=1.0, output_per_million_usd=2.0)}


async def submit_batch(producer: Producer, name: str, prompts: list[str], **options: object) -> list[str]:
    """As ``promptq submit`` does it: the tally opened, the jobs submitted, the manifest saved."""
    ids = [f"{name}:{i}" for i in range(len(prompts))]
    await producer.open_batch(name, len(ids))
    await producer.submit_many([{"prompt": p, "job_id": j, **options} for p, j in zip(prompts, ids, strict=True)])
    await producer.save_manifest(name, dumps({"name": name, "items": [[str(i), j] for i, j in enumerate(ids)]}))
    return ids


def ended(overview_minutes: list[dict[str, object]], status: str) -> int:
    return sum(int(m[status]) for m in overview_minutes)  # type: ignore[call-overload]


async def test_an_empty_fleet_reads_as_zeros(producer: Producer) -> None:
    overview = await producer.overview()
    totals = {"ready": 0, "running": 0, "deferred": 0, "failed": 0, "waiting_for_backend": 0}
    assert overview.queue["totals"] == totals and overview.backends == []
    assert overview.queue["rows"] == [] and overview.workers == [] and overview.batches == []
    assert len(overview.minutes) == 15 and overview.minutes[-1]["t"] <= overview.now < overview.minutes[-1]["t"] + 60
    assert all(m["succeeded"] == 0 and m["p50_ms"] is None for m in overview.minutes)


async def test_jobs_that_end_are_counted_per_minute_per_model_and_per_batch(
    producer: Producer, worker_config: WorkerConfig
) -> None:
    ids = await submit_batch(producer, "nightly", ["one", "two", "three"], model="priced-model")
    ids.append(await producer.submit("alone", model="other-model"))
    waiting = await producer.overview()
    assert waiting.queue["totals"]["ready"] == 4
    assert {(r["priority"], r["key"], r["ready"]) for r in waiting.queue["rows"]} == {(5, "default", 4)}
    assert waiting.batches[0]["name"] == "nightly" and waiting.batches[0]["waiting"] == 3

    await run_burst(dataclasses.replace(worker_config, prices=PRICES))
    results = [r for r in await producer.get_many(ids) if r is not None and r.usage is not None]
    assert len(results) == 4
    overview = await producer.overview()
    assert ended(overview.minutes, "succeeded") == 4 and ended(overview.minutes, "failed") == 0
    models = {m["model"]: m for m in overview.models}
    priced = [r.usage for r in results if r.model == "priced-model" and r.usage]
    assert models["priced-model"]["jobs"] == 3
    assert models["priced-model"]["input_tokens"] == sum(u.prompt_tokens for u in priced)
    assert models["priced-model"]["output_tokens"] == sum(u.completion_tokens for u in priced)
    expected = sum(u.prompt_tokens * 1.0 + u.completion_tokens * 2.0 for u in priced) / 1e6
    assert abs(models["priced-model"]["cost_usd"] - expected) < 1e-9
    assert models["other-model"]["cost_usd"] is None  # no price known
    minute = next(m for m in overview.minutes if m["succeeded"])
    assert minute["p50_ms"] is not None and minute["p95_ms"] >= minute["p50_ms"]
    batch = overview.batches[0]
    assert (batch["total"], batch["succeeded"], batch["waiting"], batch["running"]) == (3, 3, 0, 0)
    assert batch["tokens"] == sum(u.total_tokens for u in priced) and batch["eta_s"] == 0.0
    assert abs(batch["cost_usd"] - expected) < 1e-9


async def test_a_failure_shows_and_a_retry_takes_it_off_its_batch(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[400])
    [job_id] = await submit_batch(producer, "flaky", ["doomed"])
    await run_burst(worker_config)
    overview = await producer.overview()
    assert [f["job_id"] for f in overview.failures] == [job_id]
    assert overview.failures[0]["error"]["type"] == "bad_request"
    assert ended(overview.minutes, "failed") == 1 and overview.queue["totals"]["failed"] == 1
    assert overview.batches[0]["failed"] == 1

    sim.configure(error_rate=0.0)
    await producer.retry(job_id)
    assert (await producer.overview()).batches[0]["failed"] == 0  # counted again when it ends
    await run_burst(worker_config)
    overview = await producer.overview()
    assert (overview.batches[0]["succeeded"], overview.batches[0]["failed"]) == (1, 0)
    assert ended(overview.minutes, "failed") == 1 and ended(overview.minutes, "succeeded") == 1


async def test_a_cancel_counts_and_running_jobs_show_where_they_belong(producer: Producer, redis_url: str) -> None:
    ids = await submit_batch(producer, "mixed", ["a", "b"], priority=2, fairness_key="team-a")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert (await JobQueue(client, lease_s=60).claim(1)).job_ids == [queue_keys().arq_id(ids[0])]
        overview = await producer.overview()
        assert overview.queue["rows"] == [{"priority": 2, "key": "team-a", "ready": 1, "running": 1, "deferred": 0}]
        assert overview.batches[0]["running"] == 1 and overview.batches[0]["waiting"] == 1
        assert (await producer.cancel(ids[1])).cancelled
        overview = await producer.overview()
        assert ended(overview.minutes, "cancelled") == 1 and overview.batches[0]["cancelled"] == 1
    finally:
        await client.aclose()


async def test_a_job_finished_twice_is_counted_once(producer: Producer, redis_url: str) -> None:
    """A second delivery's finish (its lease ran out while the first was storing) says the job did
    not end there, and the worker counts it once."""
    job_id = await producer.submit("twice", model="m")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        settle, tally = Settle(client, result_ttl_s=60), Tally(client)
        final = JobResult(job_id, "succeeded", attempts=1, model="m", usage=Usage(3, 4, 7), latency_ms=250)
        first, second = await settle.finish(final), await settle.finish(final)
        assert (first.ended_here, second.ended_here) == (True, False)
        for finished in (first, second):
            if finished.ended_here:
                tally.count(final, 0.5)
        await tally.roll_up()
        await tally.roll_up()  # nothing new: nothing added
    finally:
        await client.aclose()
    [model] = (await producer.overview()).models
    assert model == {"model": "m", "jobs": 1, "input_tokens": 3, "output_tokens": 4, "cost_usd": 0.5}


async def test_counts_redis_refused_are_kept_for_the_next_roll_up() -> None:
    away = redis.asyncio.Redis(port=free_port())  # nothing listens there
    tally = Tally(away)
    try:
        for n in (1, 2):
            tally.count(JobResult(f"nightly:{n}", "succeeded", model="m", usage=Usage(1, 2, 3), latency_ms=5), 0.25)
            with pytest.raises(redis.exceptions.ConnectionError):
                await tally.roll_up()
    finally:
        await away.aclose()
    [kept] = tally._queues.values()
    [counts] = kept.minutes.values()
    assert counts["s"] == {"succeeded": 2} and counts["m"] == {"m": [2, 2, 4, 0.5]}
    assert kept.batches == {"nightly": [2, 0, 0, 6, 0.5]}


async def test_a_running_worker_is_listed_with_its_slots_until_it_stops(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    config = dataclasses.replace(worker_config, max_jobs=7)
    worker, main = start_worker(config)
    try:
        for _ in range(100):
            if (workers := (await producer.overview()).workers) and workers[0]["alive"]:
                break
            await asyncio.sleep(0.05)
        [entry] = workers
        assert entry["slots"] >= 7 and entry["busy"] == 0 and entry["pid"] is not None
    finally:
        await stop_worker(worker, main)
    assert (await producer.overview()).workers == [] and not sync_redis.hlen(WORKERS_KEY)


async def test_the_roll_up_is_bounded_and_expires(producer: Producer, redis_url: str, sync_redis: redis.Redis) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        tally = Tally(client)
        for i in range(1100):  # a new model a job: past the field cap, they count as "(other)"
            tally.count(JobResult(f"j{i}", "succeeded", model=f"model-{i}", latency_ms=5), None)
            if i % 100 == 99:
                await tally.roll_up()
    finally:
        await client.aclose()
    [key] = [k.decode() for k in cast("list[bytes]", sync_redis.keys(queue_keys().key(STATS) + "*"))]
    assert cast(int, sync_redis.hlen(key)) <= 1000 + 4 and 0 < cast(int, sync_redis.ttl(key)) <= 3600
    models = {m["model"]: m["jobs"] for m in (await producer.overview()).models}
    assert sum(models.values()) == 1100 and models["(other)"] > 0


def test_quantiles_fall_in_their_bucket() -> None:
    times = [20.0] * 50 + [100.0] * 45 + [5000.0] * 5
    counts: dict[int, int] = {}
    for t in times:
        counts[latency_bucket(t)] = counts.get(latency_bucket(t), 0) + 1
    p50, p95, p99 = (quantile_ms(counts, q) for q in (0.5, 0.95, 0.99))
    assert p50 is not None and 16 <= p50 <= 25
    assert p95 is not None and 80 <= p95 <= 125
    assert p99 is not None and 4000 <= p99 <= 6250
    assert quantile_ms({}, 0.5) is None


async def test_a_backends_budget_in_use_is_the_last_minutes_calls_beside_its_limit(
    producer: Producer, worker_config: WorkerConfig
) -> None:
    config = dataclasses.replace(worker_config, limit=Limit(rpm=600, tpm=1_000_000))
    worker, main = start_worker(config)
    try:
        ids = await producer.submit_many([f"row {i}" for i in range(20)])
        results = [await producer.wait(i, timeout=20) for i in ids]
        assert all(r.ok for r in results)
        tokens = sum(r.usage.total_tokens for r in results if r.usage is not None)
        budget: list[dict[str, object]] = []
        for _ in range(100):  # the worker's next beat carries its last minute (every 5 s)
            backend = (await producer.overview()).backends[0]
            budget = backend["budget"]
            if budget and budget[0]["requests"] == 20:
                break
            await asyncio.sleep(0.1)
        assert budget == [{"model": results[0].model, "requests": 20, "rpm": 600, "tokens": tokens, "tpm": 1_000_000}]
        assert backend["budget_in_use"] == round(max(20 / 600, tokens / 1_000_000), 4)
        metrics = cast(WorkerState, worker.state).metrics
        assert metrics.budget_in_use() == {"default": backend["budget_in_use"]}  # /metrics' gauge
    finally:
        await stop_worker(worker, main)
