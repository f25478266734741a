"""Several backends at once (real simulators, real Redis, in-process arq workers): routing by model
and weight, spill-over, a backend taken down and probed back, outages that fail nothing, deadlines,
fallbacks, and Azure's request shape."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.stack import Simulator, Worker
from producer import Producer, SyncProducer
from promptq_core.contract import JobResult
from tests.conftest import TEST_API_KEY, run_burst, start_worker, stop_worker
from worker.backends import Backend, Limit
from worker.circuit import CircuitRules
from worker.config import WorkerConfig

MODEL = "gpt-4o-mini"
FAST_CIRCUIT = CircuitRules(failures=3, cool_down_s=0.2, max_cool_down_s=0.5)
"""Opens after three failures, probes after 0.2 s, then every 0.4 and 0.5 s: short tests."""


@pytest.fixture(scope="module")
def sims() -> Iterator[list[Simulator]]:
    with Simulator() as a, Simulator() as b:
        yield [a, b]


@pytest.fixture
def fleet(sims: list[Simulator]) -> list[Simulator]:
    for sim in sims:
        sim.reset()
    return sims


def backend(name: str, sim: Simulator, *models: str, **fields: Any) -> Backend:
    served = {m: m for m in models or (MODEL,)}
    return Backend(name, sim.base_url, TEST_API_KEY, served, **fields)


def with_backends(config: WorkerConfig, *backends: Backend, **changes: Any) -> WorkerConfig:
    return dataclasses.replace(config, backends=backends, **changes)


def big_down_small_up(config: WorkerConfig, fleet: list[Simulator], **changes: Any) -> WorkerConfig:
    """``gpt-4o`` on the first simulator, down (its circuit opens at the first failure, for 30 s);
    ``gpt-4o-mini`` on the second, up."""
    a, b = fleet
    a.configure(outage="503")
    slow_probe = CircuitRules(failures=1, cool_down_s=30, max_cool_down_s=30)
    return with_backends(config, backend("big", a, "gpt-4o"), backend("small", b, MODEL), circuit=slow_probe, **changes)


async def results(producer: Producer, ids: list[str]) -> list[JobResult]:
    found = await producer.get_many(ids)
    assert all(r is not None for r in found)
    return [r for r in found if r is not None]


async def test_calls_spread_over_the_backends_of_a_model_by_weight(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    config = with_backends(worker_config, backend("a", a), backend("b", b, weight=3))
    ids = await producer.submit_many([f"spread {i}" for i in range(200)])
    await run_burst(config)
    done = await results(producer, ids)
    assert all(r.ok for r in done)
    by_backend = Counter(r.backend for r in done)
    assert by_backend == {"a": a.stats()["completions"], "b": b.stats()["completions"]}
    assert 0.6 <= by_backend["b"] / 200 <= 0.9  # three to one, give or take chance


async def test_a_model_goes_only_to_its_backends_by_their_name_for_it(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    local = Backend("local", a.base_url, TEST_API_KEY, {MODEL: "mini-q4"})
    vectors = backend("vectors", b, "text-embedding-3-small")
    chats = await producer.submit_many([f"chat {i}" for i in range(5)])
    embeds = await producer.submit_many(
        [{"endpoint": "/v1/embeddings", "input": f"text {i}", "model": "text-embedding-3-small"} for i in range(3)]
    )
    unserved = await producer.submit("for a model nobody serves", model="gpt-5")
    await run_burst(with_backends(worker_config, local, vectors))
    assert a.stats()["models"] == {"mini-q4": 5} and b.stats()["models"] == {"text-embedding-3-small": 3}
    assert {(r.model, r.backend, r.status) for r in await results(producer, chats)} == {(MODEL, "local", "succeeded")}
    assert {(r.backend, r.status) for r in await results(producer, embeds)} == {("vectors", "succeeded")}
    failed = await producer.get(unserved)
    assert failed is not None and failed.status == "failed" and failed.error is not None
    assert failed.error.type == "no_backend" and not failed.error.retryable and failed.attempts == 1
    assert "'gpt-5'" in failed.error.message and "local, vectors" in failed.error.message


async def test_a_backend_whose_budget_is_spent_spills_over_to_another(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    for sim in fleet:
        sim.configure(rpm=120, limit_window_s=1)  # each enforces 2 calls in any calendar second
    limited = Limit(rpm=120)
    config = with_backends(worker_config, backend("a", a, limit=limited), backend("b", b, limit=limited))
    ids = await producer.submit_many([f"budget {i}" for i in range(16)])
    await run_burst(config)
    done = await results(producer, ids)
    assert all(r.ok for r in done)
    assert Counter(r.backend for r in done) == {"a": 8, "b": 8}  # taking turns at the pace of both budgets
    assert a.stats()["faults"] == {} and b.stats()["faults"] == {}  # not one 429


async def test_a_dead_backend_gets_only_probes_and_comes_back_when_one_succeeds(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    a.configure(outage="503")
    config = with_backends(worker_config, backend("a", a), backend("b", b), circuit=FAST_CIRCUIT, max_jobs=4)
    ids = await producer.submit_many([f"failover {i}" for i in range(60)])
    await run_burst(config)
    done = await results(producer, ids)
    assert all(r.ok and r.backend == "b" for r in done)
    dead_calls = a.stats()["requests"]
    assert dead_calls <= FAST_CIRCUIT.failures + config.max_jobs + 6  # the failures that opened it, then probes
    a.configure(outage="")
    await asyncio.sleep(FAST_CIRCUIT.max_cool_down_s)  # a probe may go
    ids = await producer.submit_many([f"after {i}" for i in range(40)])
    await run_burst(config)
    assert all(r.ok for r in await results(producer, ids))
    assert a.stats()["completions"] > 0  # the probe closed its circuit: it takes calls again


@pytest.mark.parametrize("outage", ["503", "529", "refuse"])
async def test_an_outage_of_the_only_backend_fails_nothing_and_costs_only_probes(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator], outage: str
) -> None:
    a, _ = fleet
    config = with_backends(worker_config, backend("a", a), circuit=FAST_CIRCUIT, max_jobs=5, max_tries=2)
    a.configure(outage=outage, outage_s=3)
    started = time.monotonic()
    ids = await producer.submit_many([f"outage {i}" for i in range(30)])
    await run_burst(config)
    done = await results(producer, ids)
    assert time.monotonic() - started >= 2.5  # the outage was waited out, not failed through
    assert all(r.ok for r in done), Counter((r.status, r.error.type if r.error else None) for r in done)
    assert a.stats()["completions"] == 30
    if outage != "refuse":  # the simulator counts what reached it; refused connections reach nothing
        failed_calls = a.stats()["requests"] - 30
        assert failed_calls <= FAST_CIRCUIT.failures + config.max_jobs + 10  # not 30 jobs times 2 tries


async def test_a_job_past_its_deadline_expires_without_a_call(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    late = await producer.submit("too late", deadline_s=0.2)
    on_time = await producer.submit("in time", deadline_s=60)
    await asyncio.sleep(0.3)
    await run_burst(worker_config)
    expired = await producer.get(late)
    assert expired is not None and expired.status == "failed" and expired.error is not None
    assert (expired.error.type, expired.error.retryable) == ("expired", False)
    assert sim.stats()["requests"] == 1 and (await producer.wait(on_time, 1)).ok


@pytest.mark.parametrize(
    ("submitted", "fleet_default"),
    [({"deadline_s": 2}, {}), ({}, {"default_deadline_s": 2})],
    ids=["its-own-deadline", "the-fleets-default"],
)
async def test_a_job_waiting_for_a_down_backend_expires_at_its_deadline(
    producer: Producer,
    worker_config: WorkerConfig,
    fleet: list[Simulator],
    submitted: dict[str, Any],
    fleet_default: dict[str, Any],
) -> None:
    a, _ = fleet
    a.configure(outage="503")
    slow_probe = CircuitRules(failures=1, cool_down_s=30, max_cool_down_s=30)
    config = with_backends(worker_config, backend("a", a), circuit=slow_probe, max_tries=5, **fleet_default)
    job_id = await producer.submit("waits in vain", **submitted)
    started = time.monotonic()
    await run_burst(config)
    r = await producer.get(job_id)
    assert r is not None and r.status == "failed" and r.error is not None
    assert (r.error.type, r.error.retryable) == ("expired", False)
    assert a.stats()["requests"] == 1  # the failure that opened the circuit; then it waited, no try spent
    assert 1.5 <= time.monotonic() - started <= 10


async def test_a_job_moves_to_its_fallback_model_when_its_own_stays_down(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, _ = fleet
    config = big_down_small_up(worker_config, fleet, fallbacks={"gpt-4o": (MODEL,)}, fallback_after_s=0)
    by_fleet = await producer.submit("fleet fallback", model="gpt-4o")
    own = await producer.submit("own fallback", model="gpt-4o", fallbacks=[MODEL], job_id="own")
    await run_burst(config)
    for job_id in (by_fleet, own):
        r = await producer.get(job_id)
        assert r is not None and r.ok and (r.model, r.backend) == (MODEL, "small")
    assert a.stats()["requests"] <= 2  # the calls sent before its circuit opened; then the fallback


async def test_an_input_too_long_for_the_model_moves_to_the_fallback_at_once(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    a.configure(error_rate=1.0, error_statuses=[400], error_code="context_length_exceeded")
    config = with_backends(worker_config, backend("short", a, "small-context"), backend("long", b, "long-context"))
    moved = await producer.submit("a long document", model="small-context", fallbacks=["long-context"])
    stuck = await producer.submit("no fallback", model="small-context")
    await run_burst(config)
    r = await producer.get(moved)
    assert r is not None and r.ok and (r.model, r.backend, r.attempts) == ("long-context", "long", 1)
    failed = await producer.get(stuck)
    assert failed is not None and failed.status == "failed" and failed.error is not None
    assert failed.error.type == "context_length_exceeded" and failed.attempts == 1


async def test_an_azure_backend_gets_azure_requests(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, _ = fleet
    a.configure(require_api_key="azure-key-1")
    base = a.base_url.removesuffix("/v1")
    azure = Backend("azure", base, "azure-key-1", {MODEL: "my-deployment"}, kind="azure", api_version="2024-10-21")
    job_id = await producer.submit("to azure")
    await run_burst(with_backends(worker_config, azure))
    r = await producer.wait(job_id, 1)
    assert r.ok and r.backend == "azure" and r.model == MODEL
    assert a.stats()["deployments"] == {"my-deployment api-version=2024-10-21": 1}


async def test_the_overview_shows_each_backend_up_or_down_and_the_jobs_waiting_for_one(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    a.configure(outage="503")
    config = with_backends(
        worker_config, backend("a", a), backend("b", b, "gpt-4o"), circuit=CircuitRules(failures=2, cool_down_s=30)
    )
    worker, main = start_worker(config)
    try:
        ids = await producer.submit_many([f"to a {i}" for i in range(6)])
        served = await producer.submit("to b", model="gpt-4o")
        assert (await producer.wait(served, 5)).ok
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the workers' next beat carries their calls
            seen = await producer.overview()
            rows = {row["name"]: row for row in seen.backends}
            if rows.get("b", {}).get("calls") and seen.queue["totals"]["waiting_for_backend"] == len(ids):
                break
            await asyncio.sleep(0.2)
        assert rows["a"]["up"] is False and rows["a"]["probe_in_s"] > 0 and rows["a"]["errors"] >= 2
        assert rows["b"]["up"] is True and rows["b"]["calls"] == 1 and rows["b"]["errors"] == 0
        states = [(r.status, r.attempts, r.error.type if r.error else None) for r in await results(producer, ids)]
        assert seen.queue["totals"]["waiting_for_backend"] == len(ids), (seen.queue["totals"], states)
        assert all(
            r.status == "queued" and r.error and r.error.type == "backend_down" for r in await results(producer, ids)
        )
    finally:
        await stop_worker(worker, main)


@pytest.mark.process
def test_two_worker_processes_share_each_backends_budget(
    redis_url: str, fleet: list[Simulator], sync_producer: SyncProducer
) -> None:
    a, b = fleet
    for sim, rpm in ((a, 120), (b, 240)):  # 2 and 4 calls in each calendar second
        sim.configure(rpm=rpm, rpm_burst=rpm // 60, limit_window_s=1)
    listing = [
        {"name": "a", "base_url": a.base_url, "models": [MODEL], "rpm": 120},
        {"name": "b", "base_url": b.base_url, "models": [MODEL], "rpm": 240},
    ]
    env = {
        "REDIS_URL": redis_url,
        "PROMPTQ_BACKENDS": json.dumps(listing),
        "PROMPTQ_POLL_DELAY_S": "0.05",
        "PROMPTQ_MAX_JOBS": "16",
    }
    with Worker(env), Worker(env):
        ids = sync_producer.submit_many([f"two workers {i}" for i in range(36)])
        done = [sync_producer.wait(i, timeout=60) for i in ids]
    assert all(r.ok for r in done)
    by_backend = Counter(r.backend for r in done)
    assert 8 <= by_backend["a"] <= 16 and by_backend["a"] + by_backend["b"] == 36  # about a third: 2 of 6 a second
    assert a.stats()["by_status"].get("429", 0) == 0 and b.stats()["by_status"].get("429", 0) == 0


async def test_a_streamed_job_streams_from_a_listed_backend(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    _, b = fleet
    job_id = await producer.submit("stream me from b", stream=True)
    await run_burst(with_backends(worker_config, backend("b", b)))
    text = "".join([e.text async for e in producer.stream(job_id) if e.type == "delta" and e.text])
    r = await producer.wait(job_id, 1)
    assert r.ok and r.backend == "b" and text == r.content == "stream me from b"


async def test_a_waiting_job_moves_to_its_fallback_when_the_time_comes_not_a_minute_later(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    config = big_down_small_up(worker_config, fleet, fallback_after_s=1.5)
    moves = await producer.submit("moves on", model="gpt-4o", fallbacks=[MODEL])
    stays = await producer.submit("a fallback nobody serves", model="gpt-4o", fallbacks=["gpt-9"])
    worker, main = start_worker(config)
    try:
        started = time.monotonic()
        r = await producer.wait(moves, 10)
        assert r.ok and (r.model, r.backend) == (MODEL, "small") and time.monotonic() - started < 8
        await asyncio.sleep(1.5)  # past the time it would move on, were its fallback served
        for _ in range(50):  # its fallback cannot run: it waits for its own model (read between claims)
            waiting = await producer.get(stays)
            if waiting is not None and waiting.status == "queued":
                break
            await asyncio.sleep(0.05)
        assert waiting is not None and waiting.status == "queued" and waiting.error is not None
        assert waiting.error.type == "backend_down" and waiting.attempts <= 1
    finally:
        await stop_worker(worker, main)


@pytest.mark.process
def test_an_outage_seen_by_a_worker_process_fails_nothing_and_costs_only_probes(
    redis_url: str, fleet: list[Simulator], sync_producer: SyncProducer
) -> None:
    a, _ = fleet
    rules, max_jobs = FAST_CIRCUIT, 5
    env = {
        "REDIS_URL": redis_url,
        "PROMPTQ_BACKENDS": json.dumps([{"name": "a", "base_url": a.base_url, "models": [MODEL]}]),
        "PROMPTQ_POLL_DELAY_S": "0.02",
        "PROMPTQ_MAX_JOBS": str(max_jobs),
        "PROMPTQ_MAX_TRIES": "2",
        "PROMPTQ_CIRCUIT_FAILURES": str(rules.failures),
        "PROMPTQ_CIRCUIT_COOL_DOWN_S": str(rules.cool_down_s),
        "PROMPTQ_CIRCUIT_MAX_COOL_DOWN_S": str(rules.max_cool_down_s),
    }
    with Worker(env):
        a.configure(outage="503", outage_s=3)
        started = time.monotonic()
        ids = sync_producer.submit_many([f"process outage {i}" for i in range(30)])
        done = [sync_producer.wait(i, timeout=30) for i in ids]
        took_s = time.monotonic() - started
    assert all(r.ok and r.backend == "a" for r in done), Counter((r.status, r.error and r.error.type) for r in done)
    assert 2.5 <= took_s <= 20  # the outage was waited out, not failed through
    assert a.stats()["completions"] == 30
    refused = [call for call in a.calls() if call["status"] == 503]
    assert 1 <= len(refused) <= rules.failures + max_jobs + 10  # the failures that opened it, then probes: not 30 x 2


async def test_a_backends_headers_go_with_each_of_its_calls_and_only_its_own(
    producer: Producer, worker_config: WorkerConfig, fleet: list[Simulator]
) -> None:
    a, b = fleet
    config = with_backends(worker_config, backend("a", a, headers={"x-team": "search"}), backend("b", b, "other-model"))
    ids = await producer.submit_many([f"headed {i}" for i in range(5)])
    other = await producer.submit("elsewhere", model="other-model")
    await run_burst(config)
    assert all(r.ok for r in await results(producer, [*ids, other]))
    assert a.stats()["headers"] == {"x-team: search": 5}
    assert b.stats()["headers"] == {} and b.stats()["completions"] == 1
