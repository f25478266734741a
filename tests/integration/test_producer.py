"""The producer against a real Redis: what submit writes, idempotency, refusals, get and wait."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import pytest
import redis
import redis.asyncio

from producer import InvalidJobError, JobConflictError, JobNotFoundError, Producer, SyncProducer
from producer.types import ProducerConfig
from producer.writes import SUBMIT_CHUNK
from promptq_core.contract import JOB_FUNCTION, SEQUENCE, queue_keys

DEFAULT_LINE = queue_keys().ready(5, "default")


class CountingConnection(redis.asyncio.Connection):
    """Counts the writes to the socket: one per round trip (a pipeline is one write)."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


async def test_submit_writes_the_queued_document_the_job_record_and_the_queue_entry(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    job_id = await producer.submit("What is the capital of Vietnam?", model="m1", metadata={"u": 7}, temperature=0.2)
    doc = json.loads(sync_redis.get(queue_keys().result(job_id)))  # type: ignore[arg-type]
    assert doc["status"] == "queued" and doc["job_id"] == job_id and doc["model"] == "m1"
    assert doc["metadata"] == {"u": 7} and doc["attempts"] == 0 and doc["enqueued_at"] > 0
    assert doc["priority"] == 5 and doc["fairness_key"] == "default"
    record = json.loads(sync_redis.get(queue_keys().record(job_id)))  # type: ignore[arg-type]
    assert record["f"] == JOB_FUNCTION
    assert record["a"][0]["params"] == {"temperature": 0.2}
    assert sync_redis.zscore(DEFAULT_LINE, job_id) is not None
    assert 86_000 < int(sync_redis.ttl(queue_keys().result(job_id))) <= 86_400  # type: ignore[arg-type]
    result = await producer.get(job_id)
    assert result is not None and result.status == "queued" and not result.done


async def test_submitting_a_known_id_with_the_same_request_enqueues_nothing(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    assert await producer.submit("first", job_id="order-42", deadline_s=60) == "order-42"
    before = sync_redis.get(queue_keys().record("order-42"))
    assert await producer.submit("first", job_id="order-42", deadline_s=30) == "order-42"  # a retried submit
    assert sync_redis.get(queue_keys().record("order-42")) == before
    assert sync_redis.zcard(DEFAULT_LINE) == 1
    # finished: only the result document is left; the id is still taken
    doc = sync_redis.get(queue_keys().result("order-42"))
    sync_redis.flushdb()
    sync_redis.set(queue_keys().result("order-42"), doc)  # type: ignore[arg-type]
    assert await producer.submit_many([{"prompt": "first", "job_id": "order-42"}]) == ["order-42"]
    assert (await producer.depths()).waiting == 0
    assert set(cast("list[bytes]", sync_redis.keys())) == {
        queue_keys().result("order-42").encode(),
        queue_keys().key(SEQUENCE).encode(),
    }


async def test_a_known_id_with_another_request_is_refused_and_nothing_is_written(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    await producer.submit("the victim's prompt", job_id="order-1001", metadata={"customer": 1})
    doc = sync_redis.get(queue_keys().result("order-1001"))
    for other in ({"prompt": "the squatter's prompt"}, {"prompt": "the victim's prompt", "metadata": {"customer": 2}}):
        with pytest.raises(JobConflictError, match="'order-1001' was submitted before with another request"):
            await producer.submit(job_id="order-1001", **other)
    assert sync_redis.get(queue_keys().result("order-1001")) == doc
    keys = set(cast("list[bytes]", sync_redis.keys()))
    fresh = [{"prompt": f"new {i}", "job_id": f"new-{i}"} for i in range(3)]
    with pytest.raises(JobConflictError, match="order-1001"):  # the chunk holding it writes nothing
        await producer.submit_many([*fresh, {"prompt": "another", "job_id": "order-1001"}])
    many = [{"prompt": f"many {i}", "job_id": f"many-{i}"} for i in range(SUBMIT_CHUNK + 5)]
    with pytest.raises(JobConflictError, match="order-1001"):  # in a later chunk: the first writes nothing either
        await producer.submit_many([*many, {"prompt": "another", "job_id": "order-1001"}])
    with pytest.raises(JobConflictError, match="twice"):  # one call naming an id twice, two requests
        await producer.submit_many([{"prompt": "a", "job_id": "twice"}, {"prompt": "b", "job_id": "twice"}])
    assert set(cast("list[bytes]", sync_redis.keys())) == keys
    assert await producer.submit_many([{"prompt": "a", "job_id": "twice"}] * 2) == ["twice", "twice"]
    assert (await producer.depths()).waiting == 2
    # A document written before the digest existed has none: its id is taken, by any request.
    old = json.loads(doc)  # type: ignore[arg-type]
    del old["request"]
    sync_redis.set(queue_keys().result("legacy"), json.dumps({**old, "job_id": "legacy"}))
    assert await producer.submit("anything", job_id="legacy") == "legacy"
    # A record whose document is gone: the job is known, and the document written on the way is undone.
    await producer.submit_many([{"prompt": "orphan", "job_id": f"orphan-{i}"} for i in range(2)])
    sync_redis.delete(*(queue_keys().result(f"orphan-{i}") for i in range(2)))
    waiting = (await producer.depths()).waiting
    assert await producer.submit("orphan", job_id="orphan-0") == "orphan-0"
    assert await producer.submit_many([{"prompt": "orphan", "job_id": "orphan-1"}]) == ["orphan-1"]
    assert not sync_redis.exists(*(queue_keys().result(f"orphan-{i}") for i in range(2)))
    assert (await producer.depths()).waiting == waiting


async def test_bad_input_writes_nothing(producer: Producer, sync_redis: redis.Redis) -> None:
    with pytest.raises(InvalidJobError, match="unknown parameter"):
        await producer.submit("hi", temprature=1)
    with pytest.raises(InvalidJobError, match=r"item 2: messages\[0\].role"):
        await producer.submit_many(["ok", "fine", {"messages": [{"role": "bot", "content": "x"}]}])
    with pytest.raises(InvalidJobError, match="item 1: must be a prompt string"):
        await producer.submit_many(["ok", 42])  # type: ignore[list-item]
    with pytest.raises(InvalidJobError, match="item 0: unknown parameter 'promt'"):
        await producer.submit_many([{"promt": "typo"}])
    assert sync_redis.dbsize() == 0


async def test_payload_limit_is_read_from_the_config(redis_url: str, sync_redis: redis.Redis) -> None:
    async with Producer(config=ProducerConfig(redis_url=redis_url, max_payload_bytes=200)) as p:
        with pytest.raises(InvalidJobError, match="PROMPTQ_MAX_PAYLOAD_BYTES"):
            await p.submit("x" * 300)
    assert sync_redis.dbsize() == 0


async def test_submit_many_sends_a_thousand_jobs_per_round_trip(redis_url: str, sync_redis: redis.Redis) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, connection_class=CountingConnection)
    try:
        producer = Producer(client=client)
        await producer.submit_many(["warm up: loads the script"])
        CountingConnection.writes = 0
        ids = await producer.submit_many([f"prompt {i}" for i in range(2 * SUBMIT_CHUNK + 1)])
        assert CountingConnection.writes == 3  # three chunks
        assert len(set(ids)) == 2 * SUBMIT_CHUNK + 1
        assert sync_redis.zcard(DEFAULT_LINE) == 2 * SUBMIT_CHUNK + 2
        sync_redis.script_flush()  # as after a Redis restart: reloaded once, then the chunk again
        CountingConnection.writes = 0
        assert len(await producer.submit_many(["after flush"])) == 1
        assert CountingConnection.writes == 3
        assert sync_redis.zcard(DEFAULT_LINE) == 2 * SUBMIT_CHUNK + 3
    finally:
        await client.aclose()


async def test_submit_many_keeps_order_and_accepts_every_submit_argument(producer: Producer) -> None:
    ids = await producer.submit_many(
        ["a", {"messages": [{"role": "user", "content": "b"}], "model": "m", "job_id": "b-1", "max_tokens": 5}]
    )
    assert ids[1] == "b-1"
    r = await producer.get("b-1")
    assert r is not None and r.model == "m"


async def test_get_and_wait_on_unknown_ids(producer: Producer) -> None:
    assert await producer.get("nope") is None
    with pytest.raises(JobNotFoundError):
        await producer.wait("nope", timeout=1)


async def test_wait_times_out_while_the_job_is_queued(producer: Producer) -> None:
    job_id = await producer.submit("nobody will run this")
    with pytest.raises(TimeoutError, match=r"still queued after 0\.2 s"):
        await producer.wait(job_id, timeout=0.2)


def test_sync_producer_has_the_same_behaviour(sync_producer: SyncProducer, sync_redis: redis.Redis) -> None:
    job_id = sync_producer.submit("hello", job_id="s-1")
    assert sync_producer.submit("hello", job_id="s-1") == "s-1"
    with pytest.raises(JobConflictError):
        sync_producer.submit("again", job_id="s-1")
    assert sync_producer.submit_many(["x", "y"])[0] != job_id
    assert sync_redis.zcard(DEFAULT_LINE) == 3 and sync_producer.depths().waiting == 3
    r = sync_producer.get(job_id)
    assert r is not None and r.status == "queued"
    assert sync_producer.get("nope") is None
    with pytest.raises(TimeoutError):
        sync_producer.wait(job_id, timeout=0.1)
    with pytest.raises(InvalidJobError):
        sync_producer.submit("")


async def test_depths_say_how_long_the_oldest_ready_job_waited_and_how_full_redis_is(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    assert (await producer.depths()).oldest_enqueued_at is None
    first = await producer.submit("old", priority=7, fairness_key="late")  # first in line, whatever its priority
    await asyncio.sleep(0.02)  # (submit times are kept to the millisecond)
    await producer.submit_many([{"prompt": "new", "priority": 0}, {"prompt": "newer", "fairness_key": "b"}])
    depths = await producer.depths()
    doc = await producer.get(first)
    assert doc is not None and doc.enqueued_at is not None
    assert depths.oldest_enqueued_at == pytest.approx(doc.enqueued_at, abs=0.001)
    assert depths.oldest_age_s(doc.enqueued_at + 2.5) == pytest.approx(2.5, abs=0.01)
    assert 0.02 <= depths.oldest_age_s() < 5  # by Redis time when read
    assert depths.memory_used > 0 and depths.memory_max == 0
    before = cast("dict[str, str]", sync_redis.config_get("maxmemory"))["maxmemory"]
    sync_redis.config_set("maxmemory", str(512 * 2**20))
    try:
        assert (await producer.depths()).memory_max == 512 * 2**20
    finally:
        sync_redis.config_set("maxmemory", before)
    assert (await producer.cancel(first)).cancelled  # out of line: the next one is the oldest now
    assert (await producer.depths()).oldest_enqueued_at != depths.oldest_enqueued_at
