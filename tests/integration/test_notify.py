"""Push-based paths: a finished job wakes its waiters, a submitted job wakes an idle worker.

The fallback poll of ``wait`` and the worker's own poll are set far beyond the waits' timeouts
here, so each test passes only if the notification does the work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis
from redis.asyncio.client import PubSub

from devtools.stack import Simulator
from producer import JobResult, Producer, SyncProducer
from promptq_core.contract import WAKE, queue_keys
from tests.conftest import start_worker, stop_worker
from worker.config import WorkerConfig
from worker.settle import Settle

FAR_S = 60.0


@pytest.fixture(autouse=True)
def no_fallback_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("producer.core.FALLBACK_POLL_S", FAR_S)


async def subscribed(redis_url: str, channels: list[str], subscribers: int = 1) -> None:
    """Until each channel has ``subscribers`` (``PUBSUB NUMSUB``): the waits are listening."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for _ in range(500):
            counts = dict(await client.pubsub_numsub(*channels))
            if all(counts.get(c.encode(), 0) >= subscribers for c in channels):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {subscribers} subscriber(s) on {channels[:3]}... within 5 s")
    finally:
        await client.aclose()


def _done(job_ids: list[str]) -> list[str]:
    return [queue_keys().done(i) for i in job_ids]


async def _finish(redis_url: str, job_id: str, content: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await Settle(client, result_ttl_s=60).finish(
            JobResult(job_id=job_id, status="succeeded", attempts=1, content=content)
        )
    finally:
        await client.aclose()


async def test_a_finished_job_wakes_its_waiters(producer: Producer, redis_url: str) -> None:
    ids = await producer.submit_many([f"q{i}" for i in range(50)])
    waits = [asyncio.create_task(producer.wait(i, timeout=5)) for i in ids]
    await subscribed(redis_url, _done(ids))
    for i in ids:
        await _finish(redis_url, i, f"answer {i}")
    results = await asyncio.gather(*waits)
    assert [r.content for r in results] == [f"answer {i}" for i in ids]


async def test_a_result_written_before_the_wait_starts_is_seen(producer: Producer, redis_url: str) -> None:
    job_id = await producer.submit("early")
    await _finish(redis_url, job_id, "already there")
    assert (await producer.wait(job_id, timeout=1)).content == "already there"


async def test_two_waits_on_one_job_both_return(producer: Producer, redis_url: str) -> None:
    job_id = await producer.submit("popular")
    waits = [asyncio.create_task(producer.wait(job_id, timeout=5)) for _ in range(2)]
    await subscribed(redis_url, _done([job_id]))
    await _finish(redis_url, job_id, "for both")
    assert [r.content for r in await asyncio.gather(*waits)] == ["for both", "for both"]


def test_the_sync_wait_is_woken_too(sync_producer: SyncProducer, redis_url: str) -> None:
    job_id = sync_producer.submit("sync")

    async def finish_later() -> None:
        await subscribed(redis_url, _done([job_id]))
        await _finish(redis_url, job_id, "pushed")

    loop = asyncio.new_event_loop()
    try:
        finishing = loop.create_task(finish_later())
        waiter = loop.run_in_executor(None, lambda: sync_producer.wait(job_id, timeout=5))
        assert loop.run_until_complete(waiter).content == "pushed"
        loop.run_until_complete(finishing)  # the waiter may return before the finishing client has closed
    finally:
        loop.close()


async def test_a_timeout_still_applies(producer: Producer, sync_redis: redis.Redis) -> None:
    job_id = await producer.submit("never run")
    with pytest.raises(TimeoutError):
        await producer.wait(job_id, timeout=0.3)
    assert sync_redis.exists(queue_keys().result(job_id))


async def test_a_submit_wakes_an_idle_worker(producer: Producer, worker_config: WorkerConfig, sim: Simulator) -> None:
    worker, main = start_worker(dataclasses.replace(worker_config, poll_delay_s=FAR_S))
    await subscribed(worker_config.redis_url, [queue_keys().key(WAKE)])
    await asyncio.sleep(0.1)  # and asleep in its poll (which says nothing outside)
    try:
        one = await producer.submit("wake up")
        assert (await producer.wait(one, timeout=5)).ok
        many = await producer.submit_many([f"batch {i}" for i in range(20)])
        assert all(r.ok for r in await asyncio.gather(*(producer.wait(i, timeout=5) for i in many)))
    finally:
        await stop_worker(worker, main)  # lets the last jobs finish


async def test_a_message_lost_to_a_dropped_connection_does_not_hang_the_wait(
    producer: Producer, redis_url: str, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("dropped")
    waiting = asyncio.create_task(producer.wait(job_id, timeout=10))
    await subscribed(redis_url, _done([job_id]))
    sync_redis.client_kill_filter(_type="pubsub")  # the watcher's connection goes away...
    await _finish(redis_url, job_id, "found anyway")  # ...so this message reaches nobody
    assert (await waiting).content == "found anyway"


async def test_a_waiter_gets_the_document_from_the_message_without_reading_again(
    producer: Producer, sync_producer: SyncProducer, redis_url: str, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("carried")
    sync_redis.config_resetstat()
    waits = [
        asyncio.create_task(producer.wait(job_id, timeout=5)),
        asyncio.create_task(asyncio.to_thread(sync_producer.wait, job_id, 5)),
    ]
    await subscribed(redis_url, _done([job_id]), subscribers=2)
    for _ in range(500):  # and each has read the queued document once: MGET (asyncio), GET (sync)
        if _calls(sync_redis, "mget") and _calls(sync_redis, "get"):
            break
        await asyncio.sleep(0.01)
    sync_redis.config_resetstat()
    await _finish(redis_url, job_id, "from the message")
    results = await asyncio.gather(*waits)
    stats: dict[str, Any] = sync_redis.info("commandstats")  # type: ignore[assignment]
    gets = stats.get("cmdstat_get", {}).get("calls", 0)
    assert [r.content for r in results] == ["from the message"] * 2
    assert gets == 0  # neither waiter read the key again


def _calls(client: redis.Redis, command: str) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_waits_started_together_subscribe_and_unsubscribe_in_a_few_commands(
    producer: Producer, redis_url: str, sync_redis: redis.Redis
) -> None:
    ids = await producer.submit_many([f"q{i}" for i in range(200)])
    sync_redis.config_resetstat()
    waits = [asyncio.create_task(producer.wait(i, timeout=5)) for i in ids]
    await subscribed(redis_url, _done(ids))
    assert _calls(sync_redis, "subscribe") <= 3  # not one per wait
    assert _calls(sync_redis, "mget") <= 3 and _calls(sync_redis, "get") == 0  # the first reads together
    channels: Any = sync_redis.pubsub_channels(queue_keys().done("*"))
    assert len(channels) == 200
    for i in ids:
        await _finish(redis_url, i, f"answer {i}")
    results = await asyncio.gather(*waits)
    assert [r.content for r in results] == [f"answer {i}" for i in ids]
    for _ in range(100):  # the unsubscriptions go out shortly after the waits end, batched
        if not sync_redis.pubsub_channels(queue_keys().done("*")):
            break
        await asyncio.sleep(0.02)
    assert sync_redis.pubsub_channels(queue_keys().done("*")) == []
    assert _calls(sync_redis, "unsubscribe") < 50


async def test_a_wait_on_a_job_whose_unsubscription_is_pending_is_still_woken(
    producer: Producer, redis_url: str
) -> None:
    job_id = await producer.submit("twice")
    first = asyncio.create_task(producer.wait(job_id, timeout=5))
    await subscribed(redis_url, _done([job_id]))
    await _finish(redis_url, job_id, "one")
    assert (await first).content == "one"
    # The same id again at once (a retried job), before the first wait's channel is let go.
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set(queue_keys().result(job_id), JobResult(job_id=job_id, status="queued").to_json())
    finally:
        await client.aclose()
    second = asyncio.create_task(producer.wait(job_id, timeout=5))
    await asyncio.sleep(0.2)  # past the delay: an unsubscription sent now would cut the second wait off
    await _finish(redis_url, job_id, "two")
    assert (await second).content == "two"


async def test_a_waiter_reads_the_document_only_once_redis_has_its_subscription(
    producer: Producer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SUBSCRIBE and the read go on two connections, which Redis may serve in either order; a
    job that ends between the read and the subscription would reach nobody. Here the SUBSCRIBE
    reaches Redis 0.3 s late and the job ends meanwhile: the waiter still has it at once."""
    sent = PubSub.execute_command

    async def late(self: PubSub, *args: Any) -> Any:
        if args[0] != "SUBSCRIBE":
            return await sent(self, *args)
        asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(sent(self, *args)))
        return None

    warm = await producer.submit("first")  # (the watcher's connection made, as the patched send needs)
    await _finish(redis_url, warm, "done")
    await producer.wait(warm, timeout=3)
    monkeypatch.setattr(PubSub, "execute_command", late)
    job_id = await producer.submit("raced")
    waiting = asyncio.create_task(producer.wait(job_id, timeout=30))
    await asyncio.sleep(0.1)
    await _finish(redis_url, job_id, "ended before the subscription")
    result = await asyncio.wait_for(waiting, 2)  # (not the fallback read at the deadline)
    assert result.content == "ended before the subscription"
