"""The batched claim (worker.claim): which jobs one script call takes, and slots refilled without a poll."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import redis

from devtools.stack import Simulator
from producer import Producer
from producer.contract import ARQ_IN_PROGRESS_KEY_PREFIX, QUEUE_NAME
from tests.conftest import run_burst, start_worker, stop_worker
from worker.claim import CLAIM_LUA
from worker.config import WorkerConfig

LEASE_MS = 30_000


def claim_scored(client: redis.Redis, want: int, chunk: int, now_ms: int) -> list[tuple[str, int]]:
    args = (now_ms, LEASE_MS, ARQ_IN_PROGRESS_KEY_PREFIX, want, chunk, 10_000)
    reply: Any = client.eval(CLAIM_LUA, 1, QUEUE_NAME, *(str(a) for a in args))
    return [(job_id.decode(), int(float(score))) for job_id, score in zip(reply[::2], reply[1::2], strict=True)]


def claim(client: redis.Redis, want: int, chunk: int = 500, now_ms: int | None = None) -> list[str]:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    return [job_id for job_id, _ in claim_scored(client, want, chunk, now_ms)]


def test_one_call_claims_due_jobs_in_queue_order_past_those_held_elsewhere(sync_redis: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    sync_redis.zadd(QUEUE_NAME, {"a": now_ms - 5, "b": now_ms - 4, "c": now_ms - 3, "d": now_ms - 2})
    sync_redis.zadd(QUEUE_NAME, {"later": now_ms + 60_000})
    sync_redis.set(ARQ_IN_PROGRESS_KEY_PREFIX + "a", "1")  # another worker runs it

    assert claim_scored(sync_redis, 2, 500, now_ms) == [("b", now_ms - 4), ("c", now_ms - 3)]  # with arq's scores
    ttl_ms: Any = sync_redis.pttl(ARQ_IN_PROGRESS_KEY_PREFIX + "b")
    assert 0 < ttl_ms <= LEASE_MS  # held for the lease, not for ever
    assert claim(sync_redis, 10, now_ms=now_ms) == ["d"]  # not the held ones, not the one due later
    assert claim(sync_redis, 10, now_ms=now_ms) == []
    assert sync_redis.zcard(QUEUE_NAME) == 5  # claiming leaves the queue as it is (arq removes finished jobs)


def test_the_scan_goes_on_past_a_chunk_of_held_jobs(sync_redis: redis.Redis) -> None:
    now_ms = int(time.time() * 1000)
    sync_redis.zadd(QUEUE_NAME, {f"j{i:02}": now_ms - 100 + i for i in range(12)})
    for i in range(7):
        sync_redis.set(f"{ARQ_IN_PROGRESS_KEY_PREFIX}j{i:02}", "1")
    assert claim(sync_redis, 3, chunk=2, now_ms=now_ms) == ["j07", "j08", "j09"]


async def test_a_finished_job_frees_its_slot_for_the_next_without_waiting_for_a_poll(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    # Polls 60 s apart: every job after the first two can only start because a finishing one woke the loop.
    sim.configure(latency_ms=50)
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=2, poll_delay_s=60))
    try:
        await asyncio.sleep(0.2)  # the worker's first poll has found the queue empty
        ids = await producer.submit_many([f"p{i}" for i in range(10)])
        results = await asyncio.gather(*(producer.wait(i, timeout=20) for i in ids))
    finally:
        await stop_worker(worker, main)
    assert all(r.ok for r in results)
    stats = sim.stats()
    assert stats["completions"] == 10 and stats["peak_in_flight"] == 2


async def test_arq_does_not_clean_up_again_after_the_finish_script(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    ids = await producer.submit_many([f"p{i}" for i in range(6)])
    sync_redis.config_resetstat()
    await run_burst(worker_config)
    results = [await producer.get(i) for i in ids]
    assert all(r is not None and r.ok for r in results)
    assert not sync_redis.keys("arq:*")  # the finish script left none of arq's bookkeeping
    stats: Any = sync_redis.info("commandstats")
    # One MULTI/EXEC a job (arq's start: read the record, count the try); its clean-up would be a second.
    assert stats["cmdstat_exec"]["calls"] == len(ids)
