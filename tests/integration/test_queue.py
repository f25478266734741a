"""The queue (worker/lua, worker.queue): priorities, fairness keys taking turns, leases, deferred
retries, the legacy queue, and a claim whose cost does not grow with the jobs running."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections import Counter
from typing import Any, cast

import pytest
import redis
import redis.asyncio

from devtools.stack import Simulator
from producer import Producer, SyncProducer
from promptq_core.contract import (
    ACTIVE,
    ARQ_IN_PROGRESS_KEY_PREFIX,
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    DELAYED,
    LEASES,
    LEGACY_QUEUE,
    LEVELS,
    OLD_KEY_PREFIX,
    PARKED,
    READY,
    RESULT,
    ROUTES,
    SEQUENCE,
    STATS,
    JobResult,
    encode_job,
    queue_keys,
    queued_doc,
)
from promptq_core.scripts import script
from tests.conftest import run_burst, start_worker, stop_worker
from worker import arq_seam
from worker.config import WorkerConfig
from worker.queue import JobQueue
from worker.redis_conn import WORKER_CONNECTIONS
from worker.settle import Settle
from worker.upgrade import Upgrade


def claim(client: redis.Redis, want: int, weights: dict[str, float] | None = None, lease_ms: int = 60_000) -> list[str]:
    """One claim, as a worker makes it (``worker.queue.JobQueue.claim``), from a plain client."""
    pairs = [str(v) for k, w in (weights or {}).items() for v in (k, w)]
    return claim_reply(client, want, want, pairs, lease_ms)[6:]


def claim_reply(client: redis.Redis, want: int, ordinary: int, weights: list[str], lease_ms: int = 60_000) -> list[Any]:
    keys, args = script("claim").bind(
        queue_keys(),
        lease_ms=lease_ms,
        want=want,
        want_ordinary=ordinary,
        step=500,
        model_json='"the-default"',
        handoff_id="plain-client",
        park_ms=0,
        parked_free=0,
        heard=0,
        weights=weights,
    )
    reply: Any = client.eval(script("claim").source, len(keys), *keys, *(str(a) for a in args))
    return [int(n) for n in reply[:6]] + [job_id.decode() for job_id in reply[7::3]]  # (each id, record, try)


def test_priorities_are_strict_and_each_key_keeps_its_order(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    sync_producer.submit("a1", job_id="a1", fairness_key="A")
    sync_producer.submit("z", job_id="z", priority=9)
    sync_producer.submit_many([{"prompt": p, "job_id": p, "fairness_key": "A"} for p in ("a2", "a3")])
    sync_producer.submit("i1", job_id="i1", priority=0)
    sync_producer.submit("i2", job_id="i2", priority=0, fairness_key="A")
    assert claim(sync_redis, 1) == ["i1"]
    assert claim(sync_redis, 10) == ["i2", "a1", "a2", "a3", "z"]
    assert claim(sync_redis, 10) == []
    assert sync_redis.zcard(queue_keys().key(LEASES)) == 6
    depths = sync_producer.depths()
    assert depths.waiting == 0 and depths.running == 6 and depths.ready == {}


def test_keys_with_ready_jobs_take_turns(sync_producer: SyncProducer, sync_redis: redis.Redis) -> None:
    sync_producer.submit_many([{"prompt": f"A{i}", "job_id": f"A{i}", "fairness_key": "A"} for i in range(1, 7)])
    sync_producer.submit_many([{"prompt": f"B{i}", "job_id": f"B{i}", "fairness_key": "B"} for i in range(1, 3)])
    sync_producer.submit("C1", job_id="C1", fairness_key="C")
    assert sync_producer.depths().ready == {5: {"A": 6, "B": 2, "C": 1}}
    assert claim(sync_redis, 9) == ["A1", "B1", "C1", "A2", "B2", "A3", "A4", "A5", "A6"]
    # one at a time (one slot freeing after another) gives the same turns
    sync_redis.flushdb()
    sync_producer.submit_many([{"prompt": f"A{i}", "job_id": f"A{i}", "fairness_key": "A"} for i in range(1, 4)])
    sync_producer.submit_many([{"prompt": f"B{i}", "job_id": f"B{i}", "fairness_key": "B"} for i in range(1, 4)])
    assert [claim(sync_redis, 1)[0] for _ in range(6)] == ["A1", "B1", "A2", "B2", "A3", "B3"]


def test_a_key_arriving_late_is_served_next_without_credit_for_its_absence(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    sync_producer.submit_many([{"prompt": f"A{i}", "job_id": f"A{i}", "fairness_key": "A"} for i in range(10)])
    assert claim(sync_redis, 5) == [f"A{i}" for i in range(5)]
    sync_producer.submit_many([{"prompt": f"B{i}", "job_id": f"B{i}", "fairness_key": "B"} for i in range(3)])
    assert claim(sync_redis, 6) == ["A5", "B0", "A6", "B1", "A7", "B2"]


def test_a_weighted_key_gets_that_many_turns(sync_producer: SyncProducer, sync_redis: redis.Redis) -> None:
    for key in ("heavy", "light"):
        sync_producer.submit_many([{"prompt": f"{key} {i}", "fairness_key": key} for i in range(60)])
    taken = Counter(
        json.loads(sync_redis.get(queue_keys().result(job_id)) or "{}")["fairness_key"]  # type: ignore[arg-type]
        for job_id in claim(sync_redis, 40, weights={"heavy": 3})
    )
    assert taken == {"heavy": 30, "light": 10}


def test_an_interactive_job_overtakes_a_queued_batch(sync_producer: SyncProducer, sync_redis: redis.Redis) -> None:
    sync_producer.submit_many([{"prompt": f"row {i}", "fairness_key": "batch"} for i in range(3000)])
    assert len(claim(sync_redis, 100)) == 100
    web = sync_producer.submit("a user is waiting", priority=0, fairness_key="web")
    assert claim(sync_redis, 1) == [web]


async def test_urgent_jobs_take_the_slots_kept_for_them_while_a_batch_fills_the_others(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(latency_ms=400)
    batch = await producer.submit_many([{"prompt": f"row {i}", "fairness_key": "batch"} for i in range(6)])
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=2, urgent_slots=1))
    try:
        while sim.stats()["in_flight"] < 2:
            await asyncio.sleep(0.01)
        soon = await producer.submit("not urgent", priority=1)
        urgent = await producer.submit("a user waits", priority=0)
        results = {i: await producer.wait(i, timeout=10) for i in [urgent, *batch, soon]}
    finally:
        await stop_worker(worker, main)
    assert all(r.ok for r in results.values())
    started = {i: r.started_at or 0 for i, r in results.items()}
    first_two_end = min(results[i].finished_at or 0 for i in batch[:2])
    assert started[urgent] < first_two_end  # it did not wait for a batch job to end
    assert started[soon] >= first_two_end  # priority 1 is not urgent: it waited for an ordinary slot
    assert sim.stats()["peak_in_flight"] == 3


def test_the_claim_script_keeps_ordinary_jobs_out_of_urgent_slots(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    sync_producer.submit_many([{"prompt": f"b{i}", "job_id": f"b{i}"} for i in range(3)])
    sync_producer.submit("u", job_id="u", priority=0)
    reply = claim_reply(sync_redis, 3, 1, [])
    more, urgent, ids = reply[4], reply[5], reply[6:]
    assert (ids, urgent, more) == (["u", "b0"], 1, 1)


def test_a_claim_marks_its_jobs_running_and_lets_go_of_those_already_ended(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    sync_producer.submit("hi", job_id="plain", metadata={"started_at": 1, "x": {"attempts": 2}})
    sync_producer.submit("hi", job_id="named", model="m-1")
    sync_producer.submit("hi", job_id="done")
    sync_redis.set(queue_keys().tries("named"), 2)  # two earlier attempts
    done = cast(bytes, sync_redis.get(queue_keys().result("done")))
    sync_redis.set(queue_keys().result("done"), done.replace(b'"queued"', b'"succeeded"'))
    reply = claim_reply(sync_redis, 10, 10, [])
    at_ms, skipped, ids = reply[0], reply[3], reply[6:]
    assert ids == ["plain", "named"] and skipped == 1
    plain = sync_producer.get("plain")
    assert plain is not None and (plain.status, plain.attempts, plain.model) == ("running", 1, "the-default")
    assert plain.started_at == round(at_ms / 1000, 3) and plain.metadata == {"started_at": 1, "x": {"attempts": 2}}
    named = sync_producer.get("named")
    assert named is not None and (named.status, named.attempts, named.model) == ("running", 3, "m-1")
    assert (
        not sync_redis.exists(queue_keys().record("done")) and sync_redis.hget(queue_keys().key(ROUTES), "done") is None
    )
    assert sync_redis.zscore(queue_keys().key(LEASES), "done") is None


def test_a_claim_marks_running_a_document_whose_fields_are_in_another_order(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    """The claim reads promptq's own layout fast, and any other order (another client's document, a
    later promptq's) by its fields: the order of ``JobResult.to_doc`` is not wire format."""
    sync_producer.submit("hi", job_id="shuffled", metadata={"status": "vip", "note": 'a "quoted" [x] {y}'})
    sync_producer.submit("hi", job_id="named", model="m-1")
    for job_id in ("shuffled", "named"):
        doc = json.loads(sync_redis.get(queue_keys().result(job_id)))  # type: ignore[arg-type]
        reordered = dict(reversed(list(doc.items())))  # metadata (with its own "status") before status
        sync_redis.set(queue_keys().result(job_id), json.dumps(reordered, indent=1), keepttl=True)
    sync_redis.set(queue_keys().tries("named"), 2)
    reply = claim_reply(sync_redis, 10, 10, [])
    assert reply[6:] == ["shuffled", "named"]
    shuffled, named = sync_producer.get("shuffled"), sync_producer.get("named")
    assert shuffled is not None and (shuffled.status, shuffled.attempts, shuffled.model) == (
        "running",
        1,
        "the-default",
    )
    assert shuffled.started_at == round(reply[0] / 1000, 3)
    assert shuffled.metadata == {"status": "vip", "note": 'a "quoted" [x] {y}'}
    assert named is not None and (named.status, named.attempts, named.model) == ("running", 3, "m-1")


def test_a_claim_costs_the_same_with_thousands_of_jobs_running(
    sync_producer: SyncProducer, sync_redis: redis.Redis
) -> None:
    def commands_for_one_claim() -> int:
        sync_producer.submit("fresh")
        sync_redis.config_resetstat()
        assert len(claim(sync_redis, 50)) == 1
        stats: Any = sync_redis.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if not k.endswith("evalsha") and "eval" not in k)

    idle = commands_for_one_claim()
    sync_producer.submit_many([f"held {i}" for i in range(5000)])
    assert len(claim(sync_redis, 5000)) == 5000  # 5,001 running now, each with a lease
    assert sync_redis.zcard(queue_keys().key(LEASES)) == 5001
    assert commands_for_one_claim() == idle  # no step past the running jobs


async def test_a_lease_that_runs_out_puts_the_job_back_at_its_place(producer: Producer, redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        ids = await producer.submit_many(["first", "second"])
        short = JobQueue(client, lease_s=0.05)
        assert (await short.claim(1)).job_ids == [queue_keys().arq_id(ids[0])]  # its worker dies: nobody renews
        await asyncio.sleep(0.1)
        again = await JobQueue(client, lease_s=60).claim(2)
        assert (
            again.job_ids == [queue_keys().arq_id(i) for i in ids] and again.recovered == 1
        )  # back ahead of the second, where it was
        assert await short.renew(ids) == 2 and await short.renew(["not-leased"]) == 0
    finally:
        await client.aclose()


async def test_a_deferred_retry_holds_no_place_until_it_is_due(producer: Producer, redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        queue, settle = JobQueue(client, lease_s=60), Settle(client, result_ttl_s=60)
        job_id = await producer.submit("retried")
        queued = JobResult(job_id, "queued", attempts=1)
        assert (await queue.claim(1)).job_ids == [queue_keys().arq_id(job_id)]
        await settle.defer(queued, 0.1, try_spent=True)
        assert (
            await client.zscore(queue_keys().key(DELAYED), job_id) is not None
            and await client.zcard(queue_keys().key(LEASES)) == 0
        )
        assert (await queue.claim(1)).job_ids == []
        depths = await producer.depths()
        assert depths.deferred == 1 and depths.waiting == 0
        while not (claimed := await queue.claim(1)).job_ids:
            await asyncio.sleep(0.02)
        assert claimed.job_ids == [queue_keys().arq_id(job_id)] and claimed.promoted == 1
        await settle.defer(queued, 0, try_spent=False)  # an interrupted call: in line again at once
        assert (await queue.claim(1)).job_ids == [queue_keys().arq_id(job_id)]
        await settle.ack(queue_keys(), job_id)
        assert not await client.exists(queue_keys().key(ROUTES), queue_keys().record(job_id), queue_keys().key(LEASES))
    finally:
        await client.aclose()


async def test_cancelling_takes_a_job_out_of_whichever_structure_holds_it(
    producer: Producer, redis_url: str, sync_redis: redis.Redis
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        queue = JobQueue(client, lease_s=60)
        ready, deferred = await producer.submit("ready"), await producer.submit("deferred", priority=1)
        assert (await queue.claim(1)).job_ids == [queue_keys().arq_id(deferred)]
        await Settle(client, result_ttl_s=60).defer(JobResult(deferred, "queued", attempts=1), 60, try_spent=True)
        for job_id in (ready, deferred):
            assert (await producer.cancel(job_id)).cancelled
        depths = await producer.depths()
        assert (depths.waiting, depths.deferred, depths.running) == (0, 0, 0)
        left = {k.decode() for k in cast("list[bytes]", sync_redis.keys("promptq:*"))}
        left -= {k for k in left if k.startswith(queue_keys().key(STATS))}  # the minute's roll-up counts them
        assert left == {
            queue_keys().key(SEQUENCE),
            *(queue_keys().result(i) for i in (ready, deferred)),
            *(queue_keys().stream(i) for i in (ready, deferred)),
        }
    finally:
        await client.aclose()


def _old(name: str) -> str:
    """A key of the layout before named queues (``promptq:levels``, ``promptq:result:...``)."""
    return OLD_KEY_PREFIX + name


async def test_jobs_left_by_an_older_promptq_run_once_each_in_the_default_queue(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis, redis_url: str
) -> None:
    now_ms = int(time.time() * 1000)

    def old_job(job_id: str, prompt: str, **doc_fields: Any) -> None:
        payload = json.dumps({"messages": [{"role": "user", "content": prompt}], "model": None})
        sync_redis.set(ARQ_JOB_KEY_PREFIX + job_id, encode_job(payload, now_ms))  # arq's record, no tag
        doc = {**json.loads(queued_doc(job_id, None, None, now_ms / 1000)), **doc_fields}
        del doc["queue"]
        sync_redis.set(_old(RESULT) + job_id, json.dumps(doc))

    legacy = [f"legacy-{i}" for i in range(3)]
    for i, job_id in enumerate(legacy):  # as promptq 0.1 wrote them: record, document, one sorted set
        old_job(job_id, f"legacy {i}")
        sync_redis.zadd(LEGACY_QUEUE, {job_id: now_ms - 100 + i})
    sync_redis.set(ARQ_IN_PROGRESS_KEY_PREFIX + "legacy-2", "1")  # an older worker still runs this one
    sync_redis.incr(ARQ_RETRY_KEY_PREFIX + "legacy-2")
    for place, job_id in enumerate(("older-0", "older-1"), start=1):  # as promptq 0.3 wrote them: in line
        old_job(job_id, job_id)
        sync_redis.zadd(_old(READY) + "5:default", {job_id: place})
        sync_redis.hset(_old(ROUTES), job_id, f"5 {place} default")
    sync_redis.zadd(_old(ACTIVE) + "5", {"default": 0})
    sync_redis.zadd(_old(LEVELS), {"5": 5})
    sync_redis.set(_old(SEQUENCE), 2)
    old_job("older-late", "older-late")  # deferred a second
    sync_redis.zadd(_old(DELAYED), {"older-late": now_ms + 1000})
    sync_redis.hset(_old(ROUTES), "older-late", "5 3 default")
    old_job("ended", "never runs", status="succeeded", content="an old answer")  # ended: its document moves
    new = await producer.submit("new")
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=1))
    try:
        for _ in range(100):  # the worker moves them at start-up: until then, the documents are not found
            if await producer.get("older-1") is not None:
                break
            await asyncio.sleep(0.05)
        for job_id in ["older-0", "older-1", *legacy[:2], new, "older-late"]:
            assert (await producer.wait(job_id, timeout=10)).ok
        calls = [c["prompt"] for c in sim.calls()]
        assert calls == ["older-0", "older-1", "legacy 0", "legacy 1", "new", "older-late"]  # the old first, in order
        assert sync_redis.zrange(LEGACY_QUEUE, 0, -1) == [b"legacy-2"]  # not taken from the older worker
        sync_redis.delete(ARQ_IN_PROGRESS_KEY_PREFIX + "legacy-2")  # that worker died; its claim expired
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await Upgrade(client).check()  # as the worker does every minute
        finally:
            await client.aclose()
        assert (await producer.wait("legacy-2", timeout=10)).ok
    finally:
        await stop_worker(worker, main)
    assert len(sim.calls()) == 7 and [c["prompt"] for c in sim.calls()].count("legacy 2") == 1
    for job_id in [*legacy, "older-0", "older-1", "older-late", new]:
        r = await producer.wait(job_id, timeout=1)
        assert r.ok and r.priority == 5 and r.fairness_key == "default" and r.queue == "default"
    assert (await producer.get("legacy-2")).attempts == 2  # type: ignore[union-attr]  # the older worker's try counts
    ended = await producer.get("ended")
    assert ended is not None and ended.content == "an old answer"
    left = [k.decode() for k in cast("list[bytes]", sync_redis.keys("*")) if "{" not in k.decode()]
    assert left == []  # nothing of the older layout is left


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


async def test_a_job_leaves_nothing_behind_and_arq_does_not_clean_up_again(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    ids = await producer.submit_many([f"p{i}" for i in range(6)])
    sync_redis.config_resetstat()
    await run_burst(worker_config)
    results = [await producer.get(i) for i in ids]
    assert all(r is not None and r.ok for r in results)
    assert not sync_redis.keys("arq:*")  # the finish script left none of arq's bookkeeping
    left = {k.decode() for k in cast("list[bytes]", sync_redis.keys("promptq:*"))} - {
        queue_keys().result(i) for i in ids
    }
    left -= {k for k in left if k.startswith(queue_keys().key(STATS))}  # the minute's roll-up counted them
    assert left == {queue_keys().key(SEQUENCE)}  # no lease, route, line or level is left
    stats: Any = sync_redis.info("commandstats")
    # No MULTI/EXEC at all: arq's start of a job (read the record, count the try) is answered from the
    # claim, which did both; arq's own clean-up would be a second transaction a job.
    assert "cmdstat_exec" not in stats and "cmdstat_multi" not in stats
    assert "cmdstat_incrby" not in stats and "cmdstat_incr" not in stats  # (the claim SETs the try)


@pytest.mark.parametrize(
    ("weights", "fails"),
    [
        ('{"tenant": 0}', "positive number"),
        ('{"tenant": "3"}', "positive number"),
        ('{"": 2}', "PROMPTQ_FAIRNESS_WEIGHTS: a key"),
        ("[1, 2]", "JSON object"),
        ("{oops", "must be JSON"),
    ],
)
def test_bad_weights_are_refused_naming_the_variable(weights: str, fails: str) -> None:
    with pytest.raises(ValueError, match="PROMPTQ_FAIRNESS_WEIGHTS") as caught:
        WorkerConfig.from_env({"OPENAI_API_KEY": "k", "PROMPTQ_FAIRNESS_WEIGHTS": weights})
    assert fails in str(caught.value)
    good = WorkerConfig.from_env({"OPENAI_API_KEY": "k", "PROMPTQ_FAIRNESS_WEIGHTS": '{"tenant": 3, "x": 0.5}'})
    assert good.fairness_weights == {"tenant": 3.0, "x": 0.5}


async def test_a_worker_keeps_few_connections_to_redis_however_many_slots_it_has(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    sim.configure(latency_ms=2000)  # long enough for every call to be out at once
    await producer.submit_many([f"p{i}" for i in range(600)])
    burst = asyncio.create_task(run_burst(dataclasses.replace(worker_config, max_jobs=600)))
    most = 0
    while not burst.done():
        info: Any = sync_redis.info("clients")
        most = max(most, int(info["connected_clients"]))
        await asyncio.sleep(0.005)
    worker = await burst
    assert worker.jobs_complete == 600 and sim.stats()["peak_in_flight"] > WORKER_CONNECTIONS
    assert most <= WORKER_CONNECTIONS + 4  # the worker's pool, this test's clients and the producer's


async def test_a_worker_with_many_free_slots_claims_a_few_at_a_time_and_renews_them_from_the_claim(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arq_seam, "START_BACKLOG", 6)
    sim.configure(latency_ms=300)
    ids = await producer.submit_many([f"p{i}" for i in range(60)])
    # polls 60 s apart: the later claims can only come from jobs beginning their calls
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=60, poll_delay_s=60))
    starting: list[int] = []
    try:
        while not all(r is not None and r.done for r in [await producer.get(i) for i in ids[-3:]]):
            if worker._state is not None:
                leases = worker.state.leases
                starting.append(len(leases.starting))  # claimed, attempt not begun (not: finishing)
                assert set(leases.running) <= leases.leased  # every running job is renewed
            await asyncio.sleep(0.002)
        results = [await producer.wait(i, timeout=10) for i in ids]
    finally:
        await stop_worker(worker, main)
    assert all(r.ok for r in results) and max(starting) <= 6
    assert sim.stats()["peak_in_flight"] > 6  # the slots filled all the same


async def test_deferring_keeps_or_gives_back_the_try_and_lets_go_of_a_cancelled_job(
    producer: Producer, redis_url: str, sync_redis: redis.Redis
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        queue, settle = JobQueue(client, lease_s=60), Settle(client, result_ttl_s=60)
        job_id = await producer.submit("deferred")
        tries = queue_keys().tries(job_id)
        queued = JobResult(job_id, "queued", attempts=1)
        for try_spent, left in ((True, b"1"), (False, b"0")):
            claimed = await queue.claim(1)  # (it counts the try: arq's start of the job reads it there)
            assert claimed.job_ids == [queue_keys().arq_id(job_id)] and sync_redis.get(tries) == b"1"
            assert claimed.started[queue_keys().arq_id(job_id)] == (sync_redis.get(queue_keys().record(job_id)), 1)
            assert await settle.defer(queued, 0, try_spent=try_spent) is None
            assert sync_redis.get(tries) == left and sync_redis.zscore(queue_keys().key(LEASES), job_id) is None
            sync_redis.set(tries, 0)
        assert (await queue.claim(1)).job_ids == [queue_keys().arq_id(job_id)]
        assert (await producer.cancel(job_id)).cancelled  # while it runs: the worker is told to let go
        stored = await settle.defer(queued, 5, try_spent=True)
        assert stored is not None and stored.status == "cancelled"
        assert (await producer.get(job_id)).status == "cancelled"  # type: ignore[union-attr]
        assert not sync_redis.exists(
            queue_keys().record(job_id),
            tries,
            queue_keys().key(ROUTES),
            queue_keys().key(LEASES),
            queue_keys().key(DELAYED),
        )
    finally:
        await client.aclose()


async def test_a_claim_that_stops_with_an_error_leaves_the_jobs_it_took_leased(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    client = producer.redis
    ids = await producer.submit_many(["a", "b", "c"])
    sync_redis.set(queue_keys().tries(ids[1]), "not a number")  # the claim's count of it fails mid-way
    with pytest.raises(redis.exceptions.ResponseError):
        await JobQueue(client, lease_s=60).claim(3)
    leased = {m.decode() for m in cast(list[bytes], sync_redis.zrange(queue_keys().key(LEASES), 0, -1))}
    assert leased == set(ids)  # taken from the ready set and leased: back after the lease, not lost


async def test_unclaim_gives_back_the_claims_try_and_puts_the_job_back_in_line(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    client = producer.redis
    queue, settle = JobQueue(client, lease_s=60), Settle(client, result_ttl_s=60)
    job_id = await producer.submit("never began")
    keys, arq_id = queue_keys(), queue_keys().arq_id(job_id)
    assert (await queue.claim(1)).started[arq_id][1] == 1
    await settle.unclaim(keys, job_id, 1, back=False)  # it runs here still: only the try
    assert sync_redis.get(keys.tries(job_id)) is None and sync_redis.zscore(keys.key(LEASES), job_id) is not None
    sync_redis.set(keys.tries(job_id), 3)  # a later claim's count is not the one given back
    await settle.unclaim(keys, job_id, 1, back=True)
    assert sync_redis.get(keys.tries(job_id)) == b"3"
    assert sync_redis.zscore(keys.key(LEASES), job_id) is not None  # that later claim holds it still
    assert (await queue.claim(1)).job_ids == []
    sync_redis.set(keys.tries(job_id), 1)  # the claim's own count: given back, and back in line at once
    await settle.unclaim(keys, job_id, 1, back=True)
    assert sync_redis.get(keys.tries(job_id)) is None and sync_redis.zscore(keys.key(LEASES), job_id) is None
    again = await queue.claim(1)
    assert again.job_ids == [arq_id] and again.started[arq_id][1] == 1


async def test_a_finish_group_the_script_refuses_finishes_every_job_it_can_alone(
    producer: Producer, sync_redis: redis.Redis
) -> None:
    client = producer.redis
    queue, settle = JobQueue(client, lease_s=60), Settle(client, result_ttl_s=60)
    ids = await producer.submit_many(["a", "b", "c"])
    await queue.claim(3)
    sync_redis.delete(queue_keys().record(ids[1]))
    sync_redis.hset(queue_keys().record(ids[1]), "not", "a record")  # failing it reads this: WRONGTYPE
    finals = [
        JobResult(job_id, "failed" if n == 1 else "succeeded", attempts=1, content=None if n == 1 else "ok")
        for n, job_id in enumerate(ids)
    ]
    answers = await asyncio.gather(*(settle.finish(f) for f in finals), return_exceptions=True)
    assert isinstance(answers[1], redis.exceptions.ResponseError)  # that attempt is told; the job stays leased
    for n in (0, 2):
        assert not isinstance(answers[n], BaseException)
        stored = await producer.get(ids[n])
        assert stored is not None and stored.status == "succeeded" and stored.content == "ok"
        assert sync_redis.zscore(queue_keys().key(LEASES), ids[n]) is None
    assert sync_redis.zscore(queue_keys().key(LEASES), ids[1]) is not None


async def test_a_job_let_go_of_before_it_began_gets_its_try_back_and_a_later_claims_run_keeps_its_lease(
    producer: Producer, worker_config: WorkerConfig, sync_redis: redis.Redis
) -> None:
    worker, main = start_worker(dataclasses.replace(worker_config, poll_delay_s=60))
    try:
        await parked(worker, sync_redis)
        await worker._stop_taking()  # this test hands the job to the worker's slots itself
        job_id = await producer.submit("never began")
        keys, arq_id = queue_keys(), queue_keys().arq_id(job_id)
        claimed = await worker.state.queues[0].claim(1)
        assert claimed.job_ids == [arq_id] and sync_redis.get(keys.tries(job_id)) == b"1"

        def occupy() -> asyncio.Task[None]:  # a slot's task as the worker's _start makes it
            task = asyncio.get_running_loop().create_task(asyncio.sleep(60))
            worker.job_counter += 1
            worker._ordinary.add(arq_id)
            worker.state.leases.claimed(arq_id)
            task.add_done_callback(functools.partial(worker._slot_freed, arq_id))
            worker.tasks[arq_id] = task
            return task

        earlier = occupy()
        later = occupy()  # a later claim of the same job runs it now: the earlier's end leaves it be
        earlier.cancel()
        await asyncio.sleep(0.05)
        assert arq_id in worker._ordinary and arq_id in worker.state.leases.leased
        assert worker.job_counter == 1

        worker._started[arq_id] = claimed.started[arq_id]  # claimed, not begun: a shutdown cancels it
        worker.tasks.pop(arq_id)  # (the loop's clean-up would read the bare task's cancellation as an error)
        later.cancel()
        await asyncio.sleep(0.05)
        await asyncio.gather(*worker._unclaiming)
        assert sync_redis.get(keys.tries(job_id)) is None  # the try given back
        assert sync_redis.zscore(keys.key(LEASES), job_id) is None  # and back in line at once
        assert arq_id not in worker._started and arq_id not in worker.state.leases.leased
        worker.allow_pick_jobs = True
        worker.state.wake_event.set()
        result = await producer.wait(job_id, timeout=10)
        assert result.ok and result.attempts == 1
    finally:
        await stop_worker(worker, main)


# -- handoff: a submit hands its job to a parked worker -------------------------------------------


def park(client: Any, handoff_id: str, free: int, lease_ms: int = 60_000, for_ms: int = 60_000) -> None:
    """A worker's parking as its claim writes it (claim.lua), for ``for_ms`` from now (Redis time)."""
    now_ms = int(float(".".join(str(t) for t in client.time())) * 1000)
    entry = f"{now_ms + for_ms} {free} {lease_ms} " + '"the-default"'
    client.hset(queue_keys().key(PARKED), handoff_id, entry)


def next_message(heard: Any) -> dict[str, Any] | None:
    """The next message a subscription hears within a second (its confirmations passed over)."""
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        if (message := heard.get_message(timeout=0.1)) is not None:
            return cast(dict[str, Any], message)
    return None


async def parked(worker: arq_seam.PromptqWorker, sync_redis: Any) -> None:
    """Wait until the worker has started and its first poll has parked it in the default queue."""
    while worker._state is None or not sync_redis.hexists(queue_keys().key(PARKED), worker.state.queues[0].handoff_id):
        await asyncio.sleep(0.01)


async def test_a_submit_hands_its_job_to_a_parked_worker_when_none_is_ready(
    producer: Producer, sync_redis: Any
) -> None:
    keys = queue_keys()
    heard = sync_redis.pubsub(ignore_subscribe_messages=True)
    heard.subscribe(keys.handoff("w1"), keys.key("wake"))
    park(sync_redis, "w1", free=2)
    t0_ms = time.time() * 1000
    first = await producer.submit("a", model=None)
    message = next_message(heard)
    assert message is not None and message["channel"] == keys.handoff("w1").encode()
    head, _, record = message["data"].partition(b"\n")
    at_ms, urgent, job_id = head.decode().split(" ")
    assert job_id == first and urgent == "0" and abs(int(at_ms) - t0_ms) < 5_000
    assert record == sync_redis.get(keys.record(first))  # the record, as a claim would read it
    lease = sync_redis.zscore(keys.key(LEASES), first)
    assert lease is not None and 50_000 < lease - int(at_ms) <= 60_000  # leased for the parked lease
    assert sync_redis.get(keys.tries(first)) == b"1" and sync_redis.exists(keys.key(LEVELS)) == 0
    doc = await producer.get(first)
    assert doc is not None and doc.status == "running" and doc.attempts == 1 and doc.model == "the-default"
    assert sync_redis.hget(keys.key(PARKED), "w1").split()[1] == b"1"  # one slot fewer on offer

    urgent_one = await producer.submit("b", priority=0)
    message = next_message(heard)
    assert message is not None and message["data"].split(b" ")[1] == b"1"  # urgent
    assert sync_redis.hget(keys.key(PARKED), "w1").split()[1] == b"0"  # its last slot on offer taken

    third = await producer.submit("c")  # no worker parked: in line, and the workers woken
    message = next_message(heard)
    assert message is not None and message["channel"] == keys.key("wake").encode()
    assert sync_redis.zscore(keys.key(LEASES), third) is None and sync_redis.exists(keys.key(LEVELS)) == 1
    assert sync_redis.zscore(keys.key(LEASES), urgent_one) is not None

    park(sync_redis, "w2", free=5)
    fourth = await producer.submit("d")  # a job is ready: the new one does not pass it
    assert sync_redis.zscore(keys.key(LEASES), fourth) is None and sync_redis.hexists(keys.key(PARKED), "w2")
    heard.close()


async def test_a_parking_that_ran_out_hands_no_job(producer: Producer, sync_redis: Any) -> None:
    keys = queue_keys()
    park(sync_redis, "gone", free=3, for_ms=-1)  # a worker that died: its parking ran out
    job_id = await producer.submit("a")
    assert sync_redis.zscore(keys.key(LEASES), job_id) is None and sync_redis.exists(keys.key(LEVELS)) == 1
    assert sync_redis.hexists(keys.key(PARKED), "gone") == 0  # dropped by the submit that found it


async def test_an_idle_worker_parks_runs_a_handed_job_and_unparks_when_it_stops(
    producer: Producer, worker_config: WorkerConfig, sync_redis: Any
) -> None:
    keys = queue_keys()
    worker, main = start_worker(dataclasses.replace(worker_config, poll_delay_s=60))
    try:
        await parked(worker, sync_redis)
        handoff_id = worker.state.queues[0].handoff_id
        _, free, lease_ms, model = sync_redis.hget(keys.key(PARKED), handoff_id).decode().split(" ", 3)
        assert int(free) == worker.max_jobs - worker.ctx["promptq.config"].urgent_slots  # its ordinary slots
        assert int(lease_ms) == worker_config.lease_s * 1000 and model == json.dumps(worker_config.model)
        heard = sync_redis.pubsub(ignore_subscribe_messages=True)
        heard.subscribe(keys.handoff(handoff_id))
        results = [await producer.wait(await producer.submit(f"one by one {n}"), timeout=10) for n in range(3)]
        assert all(r.ok and r.attempts == 1 for r in results)  # each run, and ended, once
        handed = [m["data"].split(b"\n")[0].split(b" ")[2].decode() for m in iter(lambda: next_message(heard), None)]
        assert handed == [r.job_id for r in results]  # each handed to it (its next poll is a minute away)
        heard.close()
    finally:
        await stop_worker(worker, main)
    assert sync_redis.hexists(keys.key(PARKED), handoff_id) == 0  # stopped: no job is handed to it


async def test_a_handed_job_a_worker_cannot_take_goes_back_in_line_with_its_try(
    producer: Producer, worker_config: WorkerConfig, sync_redis: Any
) -> None:
    keys = queue_keys()
    worker, main = start_worker(dataclasses.replace(worker_config, poll_delay_s=60))
    try:
        await parked(worker, sync_redis)
        handoff_id = worker.state.queues[0].handoff_id
        heard = sync_redis.pubsub(ignore_subscribe_messages=True)
        heard.subscribe(keys.handoff(handoff_id))
        worker.allow_pick_jobs = False  # as while draining: parked still, but taking nothing
        job_id = await producer.submit("not here")
        assert (message := next_message(heard)) is not None and message["data"].split(b"\n")[0].endswith(
            job_id.encode()
        )
        heard.close()
        while sync_redis.zscore(keys.key(LEASES), job_id) is not None or sync_redis.get(keys.tries(job_id)):
            await asyncio.sleep(0.01)
        assert sync_redis.zcard(keys.ready(5, "default")) == 1  # back in line, its try given back
        assert not sync_redis.hexists(keys.key(PARKED), handoff_id)  # and parked no more
        doc = await producer.get(job_id)
        assert doc is not None and doc.status == "queued" and doc.attempts == 0
        worker.allow_pick_jobs = True
        worker.state.wake_event.set()
        result = await producer.wait(job_id, timeout=10)
        assert result.ok and result.attempts == 1
    finally:
        await stop_worker(worker, main)


async def test_a_job_handed_to_a_worker_that_died_runs_after_its_lease(
    producer: Producer, worker_config: WorkerConfig, sync_redis: Any
) -> None:
    keys = queue_keys()
    park(sync_redis, "gone", free=1)  # parked, then its connection went: nobody hears its channel
    first = await producer.submit("not handed")
    assert sync_redis.zscore(keys.key(LEASES), first) is None and not sync_redis.hexists(keys.key(PARKED), "gone")
    deaf = sync_redis.pubsub()
    deaf.subscribe(keys.handoff("died"))  # one Redis still counts: its worker died past hearing it
    park(sync_redis, "died", free=1, lease_ms=300)
    await producer.cancel(first)  # (a queue with a job ready hands nothing over)
    job_id = await producer.submit("lost on the way")
    assert sync_redis.zscore(keys.key(LEASES), job_id) is not None
    await asyncio.sleep(0.4)
    worker, main = start_worker(worker_config)
    try:
        result = await producer.wait(job_id, timeout=10)
        assert result.ok and result.attempts == 2  # the handoff's try counted, as a claim's would be
    finally:
        await stop_worker(worker, main)
        deaf.close()


@pytest.mark.parametrize("due", [DELAYED, LEASES])
async def test_a_due_job_is_not_passed_by_a_handoff(producer: Producer, sync_redis: Any, due: str) -> None:
    """A retry whose wait is over, or a job whose lease ran out, goes back in line at the next claim:
    a new job does not pass it by a handoff."""
    keys = queue_keys()
    heard = sync_redis.pubsub()
    heard.subscribe(keys.handoff("w1"))
    park(sync_redis, "w1", free=5)
    sync_redis.zadd(keys.key(due), {"due-before": 1})  # due since 1970: the next claim takes it first
    job_id = await producer.submit("after the one due")
    assert sync_redis.zscore(keys.key(LEASES), job_id) is None and sync_redis.exists(keys.key(LEVELS)) == 1
    sync_redis.delete(keys.key(due), keys.key(LEVELS))
    sync_redis.delete(*sync_redis.keys(keys.key("ready:*")), *sync_redis.keys(keys.key("active:*")))
    handed = await producer.submit("nothing due now")
    assert sync_redis.zscore(keys.key(LEASES), handed) is not None  # (the same parking hands this one)
    heard.close()


async def test_a_handoff_heard_during_a_claim_waits_for_it_and_keeps_its_order(
    producer: Producer, worker_config: WorkerConfig, sync_redis: Any
) -> None:
    """A claim sent for every free slot, and handoffs heard before its answer: they wait for the
    claim (it may fill the slots), are taken in the order heard, and the worker claims again at once
    (the claim renewed its parking with the slots it saw before them)."""
    keys = queue_keys()
    worker, main = start_worker(dataclasses.replace(worker_config, poll_delay_s=60))
    try:
        await parked(worker, sync_redis)
        worker._claiming = (worker._free_slots(), worker.ctx["promptq.config"].max_jobs)  # as mid-claim
        await worker.handed(keys, b"1 0 first\n{}")
        worker._claiming = (0, 0)
        await worker.handed(keys, b"1 0 second\n{}")  # the first still waits: this one waits behind it
        assert not worker.tasks and worker.job_counter == 0 and len(worker._held) == 2
        worker.state.wake_event.clear()
        await worker._take_held()  # (the claim's end)
        assert list(worker.tasks) == [keys.arq_id("first"), keys.arq_id("second")]  # (their records gone: let go of)
        assert worker.state.wake_event.is_set()
    finally:
        await stop_worker(worker, main)


async def test_a_job_given_back_is_queued_again_and_wakes_the_workers(producer: Producer, sync_redis: Any) -> None:
    keys = queue_keys()
    heard = sync_redis.pubsub(ignore_subscribe_messages=True)
    heard.subscribe(keys.handoff("w1"), keys.key("wake"))
    park(sync_redis, "w1", free=1)
    job_id = await producer.submit("handed, then given back")
    assert next_message(heard)["channel"] == keys.handoff("w1").encode()  # type: ignore[index]
    await Settle(producer.redis, result_ttl_s=60).unclaim(keys, job_id, 1, back=True)
    doc = await producer.get(job_id)
    assert doc is not None and doc.status == "queued" and doc.attempts == 0 and doc.started_at is None
    assert (
        sync_redis.zscore(keys.ready(5, "default"), job_id) is not None and sync_redis.get(keys.tries(job_id)) is None
    )
    assert next_message(heard)["channel"] == keys.key("wake").encode()  # type: ignore[index]
    heard.close()


async def test_a_claim_leaves_the_slots_of_handoffs_its_worker_has_not_heard(
    producer: Producer, sync_redis: Any
) -> None:
    """Its worker parked with 4 slots; 3 jobs were handed to it since, of which it has heard 1: the
    2 unheard hold their slots, and a claim for 4 takes 2 of the ready jobs."""
    keys = queue_keys()
    queue = JobQueue(producer.redis, lease_s=60, handoff_id="w", park_s=60)
    park(sync_redis, "w", free=1)  # what is left of its parking of 4
    queue.parked_free, queue.heard = 4, 1
    ids = await producer.submit_many(["a", "b", "c", "d"])
    claimed = await queue.claim(4, park=True)
    assert claimed.job_ids == [keys.arq_id(i) for i in ids[:2]] and claimed.more
    assert queue.parked_free == 0 and not sync_redis.hexists(keys.key(PARKED), "w")  # jobs left: not parked
    queue.heard = 0
    rest = await queue.claim(4, park=True)  # nothing unheard now (its last claim did not park it)
    assert rest.job_ids == [keys.arq_id(i) for i in ids[2:]]
    assert queue.parked_free == 2 and sync_redis.hget(keys.key(PARKED), "w").split()[1] == b"2"
