"""A Redis that could lose jobs is refused; a full one refuses whole jobs and lets workers finish."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import redis

from devtools.stack import ROOT, Api, RedisServer, Simulator
from producer import EvictionPolicyError, Producer, ProducerConfig, QueueFullError, SyncProducer
from producer.cli import main as promptq
from promptq_core.contract import LEASES, RESULT, ROUTES, queue_keys
from promptq_core.env import ConfigError
from tests.conftest import run_burst, start_worker, stop_worker, worker_env
from worker.config import WorkerConfig

pytestmark = pytest.mark.process


@pytest.fixture(params=["allkeys-lru", "volatile-lru"])
def evicting_redis(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with RedisServer("--maxmemory", "64mb", "--maxmemory-policy", request.param) as server:
        yield server.url, request.param


async def test_a_redis_that_evicts_keys_is_refused_before_anything_is_written(
    evicting_redis: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, policy = evicting_redis
    async with Producer(url) as p:
        with pytest.raises(EvictionPolicyError, match=f"maxmemory-policy {policy}") as caught:
            await p.submit("lost?")
        assert "noeviction" in str(caught.value) and "PROMPTQ_ALLOW_EVICTION=1" in str(caught.value)
        with pytest.raises(EvictionPolicyError):
            await p.submit_many(["a", "b"])
    with SyncProducer(url) as s, pytest.raises(EvictionPolicyError):
        s.submit("lost?")
    assert redis.Redis.from_url(url).dbsize() == 0
    allowed = dataclasses.replace(ProducerConfig.from_env({}), redis_url=url, allow_eviction=True)
    with caplog.at_level(logging.WARNING, logger="promptq.producer"):
        async with Producer(config=allowed) as p:
            await p.submit("at my own risk")
    assert any(policy in r.getMessage() for r in caplog.records)


def test_a_worker_will_not_start_on_a_redis_that_evicts_keys(evicting_redis: tuple[str, str], sim: Simulator) -> None:
    url, policy = evicting_redis
    arq = str(Path(sys.executable).with_name("arq"))
    env = {**os.environ, **worker_env(url, sim)}
    done = subprocess.run([arq, "worker.Settings"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and f"maxmemory-policy {policy}" in done.stderr
    assert "PROMPTQ_ALLOW_EVICTION" in done.stderr and "Traceback" not in done.stderr


async def test_the_override_lets_a_worker_run_there(
    evicting_redis: tuple[str, str], worker_config: WorkerConfig, sim: Simulator
) -> None:
    url, _ = evicting_redis
    config = dataclasses.replace(worker_config, redis_url=url, allow_eviction=True)
    async with Producer(config=ProducerConfig(redis_url=url, allow_eviction=True)) as p:
        job_id = await p.submit("fine")
        await run_burst(config)
        assert (await p.wait(job_id, timeout=1)).ok
    with pytest.raises(ConfigError, match="maxmemory-policy"):  # without it, the in-process worker stops too
        await run_burst(dataclasses.replace(worker_config, redis_url=url))


def _whole(client: redis.Redis) -> None:
    """Every job not yet ended is whole: a record, a document, a route and a place (in line or leased)."""
    records = {k.decode().removeprefix(queue_keys().record("")) for k in cast("list[bytes]", client.keys("arq:job:*"))}
    routes = {k.decode() for k in cast("list[bytes]", client.hkeys(queue_keys().key(ROUTES)))}
    placed = cast("list[bytes]", client.zrange(queue_keys().ready(5, "default"), 0, -1))
    placed += cast("list[bytes]", client.zrange(queue_keys().key(LEASES), 0, -1))
    docs = {
        k.decode().removeprefix(queue_keys().key(RESULT))
        for k in cast("list[bytes]", client.keys(queue_keys().result("*")))
    }
    assert records == routes == {j.decode() for j in placed} and records <= docs


async def test_a_full_redis_refuses_whole_jobs_and_the_workers_keep_finishing(
    worker_config: WorkerConfig, sim: Simulator, tmp_path: Path
) -> None:
    sim.configure(latency_ms=100, reply="ok")  # short answers: a finished job takes less room than a queued one
    with RedisServer("--maxmemory", "16mb", "--maxmemory-policy", "noeviction") as server:
        client = redis.Redis.from_url(server.url)
        async with Producer(server.url) as p:
            submitted: list[str] = []
            with pytest.raises(QueueFullError, match="out of memory") as caught:
                for n in range(100):  # about 2,000 jobs of 3 kB fill 16 MB
                    submitted += await p.submit_many([{"prompt": f"row {n}-{i} " + "x" * 3000} for i in range(100)])
            assert "nothing of this call was written" in str(caught.value) and submitted
            _whole(client)  # the refused chunk left no job half there
            with pytest.raises(QueueFullError):  # smaller ones fit a while longer, then not
                for n in range(10_000):
                    submitted.append(await p.submit(f"single {n} " + "x" * 3000))
            # The room left moves by some kilobytes as Redis frees buffers (client query buffers shrink on
            # its own clock), so a larger job may still fit once or twice: bounded tries, then refused.
            with pytest.raises(QueueFullError):
                for n in range(50):
                    submitted.append(await p.submit(f"one more {n} " + "x" * 30_000))
            for n in range(50):  # the CLI says so too (each try its own batch: a re-run would only skip)
                (tmp_path / f"more{n}.jsonl").write_text(json.dumps({"prompt": "more " + "x" * 30_000}) + "\n")
                err = io.StringIO()
                code = promptq(["--redis-url", server.url, "submit", str(tmp_path / f"more{n}.jsonl")], err=err)
                if code != 0:
                    break
            assert code == 1 and "out of memory" in err.getvalue()
            # the room kept free lets a worker start and finish every queued job
            # (read by polling: thousands of waits would each hold a channel in the full Redis)
            worker, main = start_worker(dataclasses.replace(worker_config, redis_url=server.url, max_jobs=50))
            try:
                while (depths := await p.depths()).waiting or depths.running:
                    await asyncio.sleep(0.1)
            finally:
                await stop_worker(worker, main)
            results = [await p.get(i) for i in submitted]
            assert all(r is not None and r.ok for r in results)
            info: Any = client.info("memory")
            assert int(info["used_memory"]) < int(info["maxmemory"])
            again = await p.get(await p.submit("room again"))
            assert again is not None and again.status == "queued"
        client.close()


def test_the_http_api_answers_503_with_retry_after_when_redis_is_full() -> None:
    big = "x" * 3000
    with RedisServer("--maxmemory", "16mb", "--maxmemory-policy", "noeviction") as server:
        with SyncProducer(server.url) as p:
            with pytest.raises(QueueFullError):
                for n in range(1000):
                    p.submit_many([{"prompt": f"row {n}-{i} {big}"} for i in range(100)])
            with pytest.raises(QueueFullError):
                for n in range(10_000):
                    p.submit(f"single {n} {big}")
        with Api({"REDIS_URL": server.url}) as api:
            headers = {"Content-Type": "application/json"}
            request = Request(api.url + "/v1/jobs", data=json.dumps({"prompt": big}).encode(), headers=headers)
            with pytest.raises(HTTPError) as caught:  # (the few bytes freed by the producer's going fit a job or two)
                for _ in range(100):
                    urlopen(request, timeout=10).close()
            assert caught.value.code == 503 and caught.value.headers["Retry-After"] == "5"
            assert "out of memory" in json.loads(caught.value.read())["detail"]


async def test_the_policy_is_read_from_info_where_config_is_forbidden() -> None:
    with RedisServer("--maxmemory-policy", "allkeys-lfu", "--rename-command", "CONFIG", '""') as server:
        client = redis.Redis.from_url(server.url)
        with pytest.raises(redis.ResponseError):
            client.config_get("maxmemory-policy")  # as on a managed Redis
        client.close()
        async with Producer(server.url) as p:
            with pytest.raises(EvictionPolicyError, match="maxmemory-policy allkeys-lfu"):
                await p.submit("lost?")
