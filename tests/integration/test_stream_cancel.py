"""Streaming (deltas in a Redis stream, replay, resume, restart after a broken attempt) and
cancellation (queued, running, finished, unknown, and an id used again afterwards)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import redis

from devtools.stack import Simulator
from producer import Producer, StreamEvent, SyncProducer
from promptq_core.contract import ROUTES, queue_keys
from tests.conftest import run_burst, start_worker, stop_worker
from worker.config import WorkerConfig

PROMPT = "Tell me something long enough to arrive in several pieces, please."


async def collect(producer: Producer, job_id: str, after: str = "0") -> list[StreamEvent]:
    return [e async for e in producer.stream(job_id, after)]


def text_of(events: list[StreamEvent]) -> str:
    """What a consumer shows: the deltas, with those of an abandoned attempt dropped."""
    text = ""
    for e in events:
        if e.type == "restart":
            text = ""
        elif e.type == "delta":
            text += e.text or ""
    return text


async def test_a_streamed_job_yields_its_deltas_live_then_done(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(chunk_delay_ms=20)
    job_id = await producer.submit(PROMPT, stream=True)
    worker, main = start_worker(worker_config)
    try:
        arrivals: list[tuple[float, StreamEvent]] = []
        async for event in producer.stream(job_id):
            arrivals.append((time.monotonic(), event))
    finally:
        await stop_worker(worker, main)
    events = [e for _, e in arrivals]
    assert [e.type for e in events].count("delta") >= 4 and events[-1].type == "done"
    result = events[-1].result
    assert result is not None and result.ok and result.usage is not None
    assert text_of(events) == result.content == PROMPT
    # live: the first delta came well before the last (20 ms between the simulator's chunks)
    assert arrivals[-1][0] - arrivals[0][0] >= 0.05


async def test_a_late_reader_replays_everything_and_can_resume(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit(PROMPT, stream=True)
    await run_burst(worker_config)
    events = await collect(producer, job_id)
    assert text_of(events) == PROMPT and events[-1].type == "done"
    rest = await collect(producer, job_id, after=events[1].id)
    assert [e.id for e in rest] == [e.id for e in events[2:]]
    assert int(sync_redis.pttl(queue_keys().stream(job_id))) > 0  # type: ignore[arg-type]  # it expires with the result


async def test_a_retry_after_a_broken_stream_is_marked_so_no_text_is_doubled(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(break_streams=1)
    job_id = await producer.submit(PROMPT, stream=True)
    await run_burst(worker_config)
    events = await collect(producer, job_id)
    kinds = [e.type for e in events]
    assert kinds[0] == "delta" and kinds[1] == "restart" and events[1].attempt == 2
    naive = "".join(e.text or "" for e in events)
    assert naive != PROMPT  # without the marker, the first attempt's piece would be shown twice
    assert text_of(events) == PROMPT
    assert events[-1].result is not None and events[-1].result.attempts == 2


async def test_a_job_without_stream_yields_only_done(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("plain")
    await run_burst(worker_config)
    events = await collect(producer, job_id)
    assert [e.type for e in events] == ["done"] and events[0].result is not None and events[0].result.ok
    assert not sync_redis.exists(queue_keys().stream(job_id))


def test_sync_stream(sync_producer: SyncProducer, worker_config: WorkerConfig, sim: Simulator) -> None:
    job_id = sync_producer.submit(PROMPT, stream=True)
    asyncio.run(run_burst(worker_config))
    events = list(sync_producer.stream(job_id))
    assert text_of(events) == PROMPT and events[-1].result is not None and events[-1].result.ok


async def test_cancelling_a_queued_job_keeps_it_from_the_api(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("never sent", stream=True)
    outcome = await producer.cancel(job_id)
    assert outcome.cancelled and outcome.result is not None and outcome.result.status == "cancelled"
    assert (await producer.depths()).waiting == 0 and not sync_redis.exists(queue_keys().key(ROUTES))  # out of line
    await run_burst(worker_config)
    assert sim.stats()["requests"] == 0
    result = await producer.wait(job_id, timeout=1)
    assert result.status == "cancelled" and result.finished_at is not None
    assert [e.type for e in await collect(producer, job_id)] == ["done"]


async def test_cancelling_a_running_job_stops_its_request(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(hang_rate=1.0)  # never answered: only a cancelled request frees the slot
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=1, request_timeout_s=30, job_timeout_s=40))
    try:
        job_id = await producer.submit("hangs")
        while sim.stats()["in_flight"] == 0:  # the request is out (running alone says only: claimed)
            await asyncio.sleep(0.01)
        assert (await producer.cancel(job_id)).cancelled
        assert (await producer.wait(job_id, timeout=1)).status == "cancelled"
        sim.configure(hang_rate=0.0)
        second = await producer.submit("next")
        # the only slot is free again at once, not after the 30 s request timeout
        assert (await producer.wait(second, timeout=5)).ok
    finally:
        await stop_worker(worker, main)
    assert sim.stats()["requests"] == 2  # the cancelled job was not retried
    assert (await producer.get(job_id)) is not None and (await producer.get(job_id)).status == "cancelled"  # type: ignore[union-attr]


async def test_an_id_used_again_after_a_cancel_is_not_cancelled(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(hang_rate=1.0)
    worker, main = start_worker(dataclasses.replace(worker_config, request_timeout_s=30, job_timeout_s=40))
    try:
        await producer.submit("first", job_id="reused-id")
        while (r := await producer.get("reused-id")) is not None and r.status != "running":
            await asyncio.sleep(0.01)
        assert (await producer.cancel("reused-id")).cancelled
        while sync_redis.exists(queue_keys().record("reused-id")):  # the worker lets go of it
            await asyncio.sleep(0.01)
        sync_redis.delete(queue_keys().result("reused-id"))  # the cancelled result expires
        sim.configure(hang_rate=0.0)
        await producer.submit("second", job_id="reused-id")
        result = await producer.wait("reused-id", timeout=5)
    finally:
        await stop_worker(worker, main)
    assert result.ok and result.content == "second"


async def test_cancelling_a_finished_or_unknown_job_changes_nothing(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    job_id = await producer.submit("done soon")
    await run_burst(worker_config)
    outcome = await producer.cancel(job_id)
    assert not outcome.cancelled and outcome.result is not None and outcome.result.ok
    assert "already succeeded" in outcome.message
    unknown = await producer.cancel("no-such-job")
    assert not unknown.cancelled and unknown.result is None and "nothing to cancel" in unknown.message
    assert (await producer.get(job_id)).ok  # type: ignore[union-attr]


async def test_many_open_streams_share_one_connection(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    def clients() -> int:
        return int(sync_redis.info("clients")["connected_clients"])  # type: ignore[index]

    ids = await producer.submit_many([{"prompt": f"watched {i}", "stream": True} for i in range(300)])
    before = clients()
    readers = [asyncio.create_task(collect(producer, job_id)) for job_id in ids]
    await asyncio.sleep(1.5)  # every stream open on a queued job, its reader waiting
    assert not any(r.done() for r in readers)
    # One blocking read serves them all: the connections are those their first reads, all at once,
    # opened (pooled; a dozen with redis-py 5.3, some fifty with 5.0), not one held per stream (300).
    assert clients() - before <= 100
    commands = int(sync_redis.info("stats")["total_commands_processed"])  # type: ignore[index]
    await asyncio.sleep(2)  # idle streams poll nothing: the hub's reads, and the done channels
    assert int(sync_redis.info("stats")["total_commands_processed"]) - commands < 60  # type: ignore[index]
    await run_burst(worker_config)
    streams = await asyncio.wait_for(asyncio.gather(*readers), 30)
    assert all(text_of(events) == f"watched {i}" for i, events in enumerate(streams))
    assert all(events[-1].type == "done" and events[-1].result.ok for events in streams)  # type: ignore[union-attr]
