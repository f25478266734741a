"""What promptq does when things break, with real worker processes, measured."""

from __future__ import annotations

import itertools
import signal
import statistics
import time
from collections import defaultdict

import pytest
import redis

from devtools.stack import ClusterSet, RedisServer, SentinelSet, Simulator, Worker, wait_until
from producer import ProducerConfig, QueueUnavailableError, SyncProducer
from promptq_core.contract import JobResult, queue_keys
from tests.faults.conftest import record, wait_all, worker_env

# each scenario waits for its jobs with its own bound; pytest's per-test limit sits above them all
pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]


def _prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} job {i}" for i in range(n)]


def test_server_errors_and_reset_connections_are_ridden_out(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, workers: list[Worker]
) -> None:
    sim.configure(error_rate=0.1, error_statuses=[500, 502, 503], reset_rate=0.1, latency_ms=20, seed=1)
    # Failures at random, not an outage: the circuit breaker stays out of it (five in a row would open
    # it now and then, and the probe a down backend costs gives its try back, which the count below
    # of one try per call does not allow for).
    env = worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="32", PROMPTQ_CIRCUIT_FAILURES="1000")
    workers += [Worker(env).start() for _ in range(2)]
    ids = sync_producer.submit_many(_prompts(200, "flaky"))
    results = wait_all(sync_producer, ids, 60)
    stats = sim.stats()
    resets = stats["faults"].get("reset", 0)
    errors = sum(n for kind, n in stats["faults"].items() if kind.startswith("error_"))
    record("20% of calls answer 5xx or reset", results, sim.calls(), faults=f"{errors} 5xx, {resets} resets")
    assert all(r is not None and r.status == "succeeded" for r in results.values())
    assert stats["completions"] == 200  # each job paid for once
    assert sum(r.attempts for r in results.values() if r) == stats["requests"]


def test_429s_are_retried_after_the_advised_wait(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, workers: list[Worker]
) -> None:
    sim.configure(error_rate=0.3, error_statuses=[429], retry_after_ms=400, seed=2)
    workers.append(Worker(worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="32")).start())
    ids = sync_producer.submit_many(_prompts(100, "limited"))
    results = wait_all(sync_producer, ids, 60)
    by_prompt = defaultdict(list)
    for call in sim.calls():
        by_prompt[call["prompt"]].append(call)
    waits_ms = [
        (later["t"] - earlier["t"]) * 1000
        for calls in by_prompt.values()
        for earlier, later in itertools.pairwise(calls)
        if earlier["status"] == 429
    ]
    record(
        "30% of calls answer 429 with retry-after 400 ms",
        results,
        sim.calls(),
        faults=f"{len(waits_ms)} 429s",
        **{"shortest wait ms": round(min(waits_ms)), "median wait ms": round(statistics.median(waits_ms))},
    )
    assert all(r is not None and r.status == "succeeded" for r in results.values())
    assert waits_ms and min(waits_ms) >= 400


@pytest.mark.parametrize(
    ("knobs", "error_type"),
    [
        ({"error_statuses": [400]}, "bad_request"),
        ({"error_statuses": [401]}, "authentication"),
        ({"error_statuses": [429], "error_code": "insufficient_quota"}, "insufficient_quota"),
    ],
)
def test_permanent_errors_fail_after_one_call(
    redis_url: str,
    sim: Simulator,
    sync_producer: SyncProducer,
    workers: list[Worker],
    knobs: dict[str, object],
    error_type: str,
) -> None:
    sim.configure(error_rate=1.0, **knobs)
    workers.append(Worker(worker_env(redis_url, sim)).start())
    ids = sync_producer.submit_many(_prompts(10, error_type))
    results = wait_all(sync_producer, ids, 20)
    record(f"every call answers {error_type}", results, sim.calls(), faults=f"{sim.stats()['requests']} errors")
    for r in results.values():
        assert r is not None and r.status == "failed" and r.attempts == 1
        assert r.error is not None and r.error.type == error_type and not r.error.retryable
    assert sim.stats()["requests"] == 10


def test_calls_that_hang_are_timed_out_and_retried(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, workers: list[Worker]
) -> None:
    sim.configure(hang_rate=0.3, seed=3)
    env = worker_env(redis_url, sim, PROMPTQ_REQUEST_TIMEOUT_S="1", PROMPTQ_JOB_TIMEOUT_S="2", PROMPTQ_MAX_TRIES="4")
    workers.append(Worker(env).start())
    started = time.monotonic()
    ids = sync_producer.submit_many(_prompts(40, "hang"))
    results = wait_all(sync_producer, ids, 40)
    took_s = time.monotonic() - started
    record(
        "30% of calls hang (request timeout 1 s)",
        results,
        sim.calls(),
        faults=f"{sim.stats()['faults'].get('hang', 0)} hangs",
        **{"all ended within s": round(took_s, 1)},
    )
    assert all(r is not None and r.done for r in results.values())
    for r in results.values():
        assert r is not None
        assert r.ok or (r.error is not None and r.error.type == "timeout" and r.attempts == 4)
    assert sum(r.ok for r in results.values() if r) >= 36  # 0.3**4 of 40 fail on average


def test_killed_workers_lose_nothing(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, workers: list[Worker]
) -> None:
    sim.configure(latency_ms=1000)
    env = worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="16")
    workers += [Worker(env).start() for _ in range(2)]
    ids = sync_producer.submit_many(_prompts(300, "kill"))
    kills: list[float] = []
    for n in range(4):
        time.sleep(1.5)
        victim = workers[n % 2]
        victim.signal(signal.SIGKILL)
        kills.append(time.time())
        victim.stop()  # reaps the killed process
        workers[n % 2] = Worker(env).start()
    results = wait_all(sync_producer, ids, 90)
    # a job cut off by a kill starts again once its lease runs out: how long after the kill?
    recovery_s = [
        r.started_at - max(k for k in kills if k < r.started_at)
        for r in results.values()
        if r is not None and r.attempts > 1 and r.started_at and any(k < r.started_at for k in kills)
    ]
    record(
        "SIGKILL a worker 4 times (2 workers, 16 slots, lease 2 s)",
        results,
        sim.calls(),
        faults="4 kills",
        **{"jobs re-run": len(recovery_s), "longest recovery s": round(max(recovery_s, default=0), 1)},
    )
    assert all(r is not None and r.status == "succeeded" for r in results.values())
    assert recovery_s and max(recovery_s) < 2 + 5  # the lease, a renewal period and a poll, with margin


@pytest.mark.parametrize("grace_s", [10.0, 0.0])
def test_sigterm_puts_unfinished_jobs_back_without_spending_a_try(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer, workers: list[Worker], grace_s: float
) -> None:
    sim.configure(latency_ms=500)
    env = worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="10", PROMPTQ_SHUTDOWN_GRACE_S=str(grace_s))
    first = Worker(env).start()
    workers.append(first)
    ids = sync_producer.submit_many(_prompts(60, f"term{grace_s:g}"))
    time.sleep(1.2)
    first.signal(signal.SIGTERM)
    assert first.popen is not None and first.popen.wait(grace_s + 5) == 0
    workers.append(Worker(env).start())
    results = wait_all(sync_producer, ids, 60)
    released = first.output().count('"job.released"')
    record(
        f"SIGTERM mid-run, grace {grace_s:g} s",
        results,
        sim.calls(),
        faults="1 SIGTERM",
        **{"released": released},
    )
    assert all(r is not None and r.status == "succeeded" and r.attempts == 1 for r in results.values())
    if grace_s:
        assert released == 0 and sim.stats()["completions"] == 60  # in-flight calls finished: no call twice
    else:
        assert released > 0


def test_redis_restarts_lose_no_job(sim: Simulator, workers: list[Worker]) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "everysec")
    server = RedisServer(*aof).start()
    try:
        sim.configure(latency_ms=200)
        workers.append(Worker(worker_env(server.url, sim, PROMPTQ_MAX_JOBS="20")).start())
        with SyncProducer(server.url) as producer:
            ids = producer.submit_many(_prompts(300, "restart"))
            for outage_s in (2.0, 0.5, 1.0):
                time.sleep(1)
                server.stop()
                with pytest.raises(QueueUnavailableError):
                    producer.submit("while Redis is away")
                time.sleep(outage_s)
                server = RedisServer(*aof, port=server.port, data_dir=server.data_dir).start()
            results = wait_all(producer, ids, 60)
            output = workers[0].output()
            assert workers[0].alive(), "the worker rode out the outages"
            record(
                "Redis stopped 3 times (2, 0.5, 1 s) mid-run (AOF everysec)", results, sim.calls(), faults="3 restarts"
            )
            assert all(r is not None and r.status == "succeeded" for r in results.values())
            assert '"redis.unavailable"' in output
            assert "KeyError" not in output, "no job ran twice in one worker"
    finally:
        server.stop()


def test_undecodable_jobs_fail_and_the_worker_lives_on(
    redis_url: str, sim: Simulator, sync_redis: redis.Redis, sync_producer: SyncProducer, workers: list[Worker]
) -> None:
    bad = {
        "pickle": b"\x80\x04\x95not json",
        "list": b"[1, 2]",
        "no-messages": b'{"f":"run_prompt","a":[{}],"k":{},"et":1}',
    }
    for job_id, record_bytes in bad.items():  # in line, their records overwritten by another client
        sync_producer.submit("to be spoilt", job_id=job_id)
        sync_redis.set(queue_keys().record(job_id), record_bytes)
    good = sync_producer.submit("still here")
    worker = Worker(worker_env(redis_url, sim)).start()
    workers.append(worker)
    results = wait_all(sync_producer, [*bad, good], 20)
    wait_until(lambda: all(sync_redis.exists(queue_keys().result(j)) for j in bad), 5, "poison results")
    for job_id in bad:
        raw = sync_redis.get(queue_keys().result(job_id))
        r = JobResult.from_json(raw)  # type: ignore[arg-type]
        assert r.status == "failed" and r.error is not None and r.error.type == "invalid_payload"
    assert results[good] is not None and results[good].ok  # type: ignore[union-attr]
    assert worker.alive()
    record("undecodable records in the queue", results, sim.calls(), faults="3 bad records")


@pytest.mark.parametrize("busy", [True, False])
def test_sigterm_during_a_redis_outage_ends_the_worker_within_its_grace(
    sim: Simulator, workers: list[Worker], busy: bool
) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer(*aof).start()
    grace_s = 2.0
    try:
        sim.configure(latency_ms=4000)  # the calls outlast the grace
        env = worker_env(server.url, sim, PROMPTQ_MAX_JOBS="8", PROMPTQ_SHUTDOWN_GRACE_S=str(grace_s))
        first = Worker(env).start()
        workers.append(first)
        with SyncProducer(server.url) as producer:
            ids = producer.submit_many(_prompts(8 if busy else 0, "outage")) if busy else []
            wait_until(lambda: sim.stats()["in_flight"] == len(ids), 10, "calls in flight")
            server.stop()  # Redis goes away, then the worker is told to stop
            first.signal(signal.SIGTERM)
            started = time.monotonic()
            assert first.popen is not None
            code = first.popen.wait(grace_s + 5)
            took_s = time.monotonic() - started
            assert code == 0 and took_s < grace_s + 3, took_s
            server = RedisServer(*aof, port=server.port, data_dir=server.data_dir).start()
            sim.configure(latency_ms=0)
            workers.append(Worker(env).start())
            results = wait_all(producer, ids, 30)  # the calls cut off come back after their lease
        record(
            f"SIGTERM while Redis is down ({'8 calls in flight' if busy else 'idle'}, grace {grace_s:g} s)",
            results,
            sim.calls(),
            faults="Redis stopped, then SIGTERM",
            **{"exit after s": round(took_s, 1)},
        )
        assert all(r is not None and r.status == "succeeded" for r in results.values())
    finally:
        server.stop()


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_a_sentinel_failover_mid_run(sim: Simulator, workers: list[Worker], min_replicas: int) -> None:
    """A primary, its replicas and three Sentinels; a worker and a producer going through them; the
    primary killed (SIGKILL) mid-run, and brought back a few seconds later (Sentinel makes it a
    replica of the new primary, some 10 s later). With PROMPTQ_MIN_REPLICAS=1 the set has two
    replicas, as it must in production: with one, no write is confirmed from the failover until the
    old primary has come back and synced."""
    sim.configure(latency_ms=100)
    with SentinelSet(replicas=1 + min_replicas) as cluster:
        env = worker_env(cluster.url, sim, PROMPTQ_MAX_JOBS="16", PROMPTQ_MIN_REPLICAS=str(min_replicas))
        workers.append(Worker(env).start())
        config = ProducerConfig(redis_url=cluster.url, min_replicas=min_replicas)
        acked: list[str] = []
        acked_at: list[float] = []
        submit_ms: list[float] = []
        refused = 0
        with SyncProducer(config=config) as producer:
            started = time.monotonic()
            killed_at = back_at = 0.0
            old = cluster.server_on(cluster.primary_port())
            n = 0
            while time.monotonic() - started < 15:
                if not killed_at and time.monotonic() - started > 3:
                    old.signal(signal.SIGKILL)
                    killed_at = time.time()
                if killed_at and not back_at and time.time() - killed_at > 5:
                    old.stop()
                    cluster.servers.append(RedisServer(port=old.port, data_dir=old.data_dir).start())
                    back_at = time.time()
                try:
                    asked = time.perf_counter()
                    acked.append(producer.submit(f"failover {min_replicas} {n}"))
                    acked_at.append(time.time())
                    if not killed_at:
                        submit_ms.append((time.perf_counter() - asked) * 1000)
                except QueueUnavailableError:
                    refused += 1
                n += 1
                time.sleep(0.02)
            results = wait_all(producer, acked, 60)
        again = [t for t in acked_at if t > killed_at]
        flowing = [
            r.started_at for r in results.values() if r is not None and r.started_at and r.started_at > killed_at
        ]
        record(
            f"Sentinel failover: primary SIGKILLed mid-run, PROMPTQ_MIN_REPLICAS={min_replicas}",
            results,
            sim.calls(),
            faults=f"1 failover, {refused} submits refused meanwhile",
            **{
                "submit median ms": round(statistics.median(submit_ms), 2),
                "submits accepted again after s": round(min(again) - killed_at, 1) if again else None,
                "jobs flow again after s": round(min(flowing) - killed_at, 1) if flowing else None,
            },
        )
        lost = [i for i, r in results.items() if r is None or not r.done]
        if min_replicas:
            assert not lost, f"{len(lost)} acknowledged jobs lost"
        assert again and flowing and workers[0].alive()
        assert sum(r is not None and r.ok for r in results.values()) >= len(acked) - len(lost)


def test_a_cluster_primary_killed_mid_run_loses_nothing(sim: Simulator, workers: list[Worker]) -> None:
    """A Redis Cluster of three primaries with a replica each; two worker processes through it; the
    primary holding the queue's slot killed (SIGKILL) mid-run, once the jobs were submitted and
    replicated: its replica takes over (cluster-node-timeout 2 s), and every job ends. (A submit
    acknowledged and not yet replicated when a primary dies is lost: a Cluster's replication is
    asynchronous, and PROMPTQ_MIN_REPLICAS is not offered there.)"""
    sim.configure(latency_ms=100)
    with ClusterSet() as cluster:
        for _ in range(2):
            workers.append(Worker(worker_env(cluster.url, sim, PROMPTQ_MAX_JOBS="16")).start())
        with SyncProducer(config=ProducerConfig(redis_url=cluster.url)) as producer:
            ids = producer.submit_many([f"cluster {i}" for i in range(400)])
            primary = cluster.node_of(queue_keys().key("levels"))
            direct = redis.Redis(port=primary.port)
            try:
                assert int(direct.execute_command("WAIT", 1, 5000)) >= 1  # type: ignore[no-untyped-call]
            finally:
                direct.close()
            wait_until(lambda: len(sim.calls()) >= 50, 30, "the run under way")
            primary.signal(signal.SIGKILL)
            killed_at = time.time()
            results = wait_all(producer, ids, 90)
        flowing = [
            r.started_at for r in results.values() if r is not None and r.started_at and r.started_at > killed_at
        ]
        record(
            "Redis Cluster: the queue's primary SIGKILLed mid-run",
            results,
            sim.calls(),
            faults="1 primary killed, its replica promoted",
            **{"jobs flow again after s": round(min(flowing) - killed_at, 1) if flowing else None},
        )
    lost = [i for i, r in results.items() if r is None or not r.done]
    assert not lost, f"{len(lost)} jobs lost"
    assert all(r is not None and r.ok for r in results.values())
    assert all(w.alive() for w in workers)
