"""The circuit breaker's rules, on a real Redis (``worker/lua/circuit.lua``), call by call: failures
"in a row" are counted in the order calls were routed, not the order their answers came."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from promptq_core.contract import BACKEND_WAITS, DELAYED, circuit_key, queue_keys
from worker.backends import Backend
from worker.circuit import CircuitRules, Circuits
from worker.queue import JobQueue
from worker.routing import Router

RULES = CircuitRules(failures=3, cool_down_s=1, max_cool_down_s=4)


@pytest.fixture
async def circuits(redis_url: str) -> AsyncIterator[Circuits]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield Circuits(client, RULES)
    await client.aclose()


async def test_failures_in_a_row_open_it_and_a_later_success_ends_the_run(circuits: Circuits) -> None:
    for at in (10, 11):
        assert not (await circuits.failed("b", probe=False, routed_at_ms=at)).open
    assert not (await circuits.succeeded("b", probe=False, routed_at_ms=12)).open  # routed after both: the run ends
    for at in (13, 14):
        assert not (await circuits.failed("b", probe=False, routed_at_ms=at)).open
    assert (await circuits.failed("b", probe=False, routed_at_ms=15)).open


async def test_answers_of_calls_sent_before_the_failures_change_nothing(circuits: Circuits) -> None:
    await circuits.failed("b", probe=False, routed_at_ms=100)
    await circuits.succeeded("b", probe=False, routed_at_ms=50)  # in flight when the backend went down
    await circuits.failed("b", probe=False, routed_at_ms=101)
    await circuits.succeeded("b", probe=False, routed_at_ms=60)
    assert (await circuits.failed("b", probe=False, routed_at_ms=102)).open


async def test_a_failure_routed_before_the_latest_success_is_stale(circuits: Circuits) -> None:
    await circuits.succeeded("b", probe=False, routed_at_ms=200)
    for at in (150, 160, 170):  # slow calls sent before the success: the backend answered since
        assert not (await circuits.failed("b", probe=False, routed_at_ms=at)).open


async def test_a_failed_probe_opens_it_for_longer_and_a_good_one_wakes_the_waiting_jobs(
    circuits: Circuits, redis_url: str
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for at in (1, 2, 3):
            health = await circuits.failed("b", probe=False, routed_at_ms=at)
        assert health.open and health.wait_s == pytest.approx(RULES.cool_down_s, abs=0.01)
        assert (await circuits.failed("b", probe=False, routed_at_ms=4)).open  # a straggler: still open
        again = await circuits.failed("b", probe=True, routed_at_ms=5)
        assert again.open and again.wait_s == pytest.approx(2 * RULES.cool_down_s, abs=0.01)
        await client.zadd(queue_keys().key(DELAYED), {"parked": 10**15})
        await client.zadd(queue_keys().key(BACKEND_WAITS), {"parked": 1})
        ok = await circuits.succeeded("b", probe=True, routed_at_ms=6)
        assert ok.recovered and ok.recoveries == 1 and not ok.open
        assert await JobQueue(client, lease_s=60).wait_over(ok.recoveries) == 1  # what a worker then does
        assert (await client.zscore(queue_keys().key(DELAYED), "parked") or 0) < 10**15  # due now
        assert await client.exists(circuit_key("b"), queue_keys().key(BACKEND_WAITS)) == 0
    finally:
        await client.aclose()


@pytest.fixture
async def router(redis_url: str) -> AsyncIterator[Router]:
    client = redis.asyncio.Redis.from_url(redis_url)
    backends = tuple(Backend(name, "http://127.0.0.1:9/v1", "k", None) for name in ("quick-a", "quick-b"))
    yield Router(client, backends, probe_s=1)
    await client.aclose()


async def test_the_quick_route_goes_by_weight_and_a_cool_down_moves_every_call_off_that_backend(
    router: Router,
) -> None:
    picked = Counter([(await router.route("m", 10)).backend.name for _ in range(200)])
    assert set(picked) == {"quick-a", "quick-b"} and min(picked.values()) > 50
    assert router._read is not None  # routed from a reading of the backends' health, not route.lua
    await router.cool_down(router.backends[0], "m", 5)
    picked = Counter([(await router.route("m", 10)).backend.name for _ in range(50)])
    assert picked == {"quick-b": 50}


async def test_a_reading_on_its_way_when_health_changes_is_not_trusted(router: Router) -> None:
    cool_downs = tuple(router.keys(b, "m")[2] for b in router.backends)
    reading = asyncio.create_task(router._health_now(cool_downs))
    while router._reading is None:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # the reading has begun: its answer may predate what follows
    router.stale()  # (a failure seen here, a cool-down written)
    assert await reading is None and router._read is None
    fresh = await router._health_now(cool_downs)
    assert fresh is not None and fresh.clean == {"quick-a", "quick-b"}
