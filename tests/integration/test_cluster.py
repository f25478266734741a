"""promptq on a Redis Cluster (three primaries with a replica each, ``redis-server --cluster-enabled``):
everything a user does through one ``redis+cluster://`` URL, queues on different shards, a
failover mid-run that loses nothing, and clear errors for a URL that does not match the Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.demo import PROMPTS
from devtools.stack import ROOT, Api, ClusterSet, RedisServer, Simulator, Worker, wait_until
from producer import Producer, ProducerConfig, QueueUnavailableError, SyncProducer
from producer.cli import main as promptq
from promptq_core.connect import async_client, load_everywhere, load_everywhere_sync, sync_client
from promptq_core.contract import queue_keys
from promptq_core.env import ConfigError
from promptq_core.scripts import script
from tests.conftest import run_burst, start_worker, stop_worker, worker_env
from tests.integration.test_http import TOKEN, call
from worker.config import WorkerConfig
from worker.redis_conn import check_access

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSet]:
    with ClusterSet() as c:
        yield c


@pytest.fixture
def cluster_url(cluster: ClusterSet) -> Iterator[str]:
    yield cluster.url
    for server in cluster.primaries_now():  # each test starts from an empty cluster
        client = redis.Redis(port=server.port)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture
def on_cluster(worker_config: WorkerConfig, cluster_url: str) -> WorkerConfig:
    return dataclasses.replace(worker_config, redis_url=cluster_url)


def _shards(cluster: ClusterSet, queues: list[str]) -> dict[str, int]:
    return {q: cluster.node_of(queue_keys(q).key("levels")).port for q in queues}


async def test_a_job_goes_through_a_cluster_as_through_one_redis(
    cluster: ClusterSet, cluster_url: str, on_cluster: WorkerConfig, sim: Simulator, tmp_path: Path
) -> None:
    queues = ["default", "gpu", "batch-2", "q4"]
    shards = _shards(cluster, queues)
    assert len(set(shards.values())) >= 2, shards  # the queues spread over the shards
    async with Producer(config=ProducerConfig(redis_url=cluster_url)) as p:
        ids = {q: await p.submit(f"hello {q}", queue=q, job_id="same-id") for q in queues}
        streamed = await p.submit("streamed", queue="gpu", stream=True)
        cancelled = await p.submit("never runs", queue="q4")
        assert (await p.cancel(cancelled, queue="q4")).cancelled
        many = await p.submit_many([{"prompt": f"row {i}", "queue": queues[i % 4]} for i in range(40)])
        await run_burst(dataclasses.replace(on_cluster, queues=tuple(queues)))
        for q in queues:
            r = await p.wait(ids[q], queue=q, timeout=5)
            assert r.ok and r.content == f"hello {q}" and r.queue == q
        events = [e async for e in p.stream(streamed, queue="gpu")]
        assert events[-1].type == "done" and "".join(e.text or "" for e in events) == "streamed"
        results = [await p.get(job_id, queue=queues[i % 4]) for i, job_id in enumerate(many)]
        assert all(r is not None and r.ok for r in results)
        assert (await p.get(cancelled, queue="q4")).status == "cancelled"  # type: ignore[union-attr]
        # a failed job, retried
        sim.configure(error_rate=1.0, error_statuses=[400])
        failed = await p.submit("fails first", queue="gpu")
        await run_burst(dataclasses.replace(on_cluster, queues=("gpu",)))
        sim.configure(error_rate=0.0)
        assert (await p.wait(failed, queue="gpu", timeout=5)).status == "failed"
        assert [r.job_id for r in await p.failed(queue="gpu")] == [failed]
        await p.retry(failed, queue="gpu")
        await run_burst(dataclasses.replace(on_cluster, queues=("gpu",)))
        assert (await p.wait(failed, queue="gpu", timeout=5)).ok
        overview = await p.overview(queue="gpu")
        assert overview.queue["name"] == "gpu" and sum(m["succeeded"] for m in overview.minutes) >= 13
        depths = await p.depths(queue="default")
        assert (depths.waiting, depths.running, depths.deferred) == (0, 0, 0)
    # the CLI: a batch, its wait and its output, in a named queue
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"line {i}", "custom_id": f"c{i}"}) + "\n" for i in range(5)))
    out, err = io.StringIO(), io.StringIO()
    assert promptq(["--redis-url", cluster_url, "submit", str(rows), "--queue", "batch-2"], out=out, err=err) == 0
    await run_burst(dataclasses.replace(on_cluster, queues=("batch-2",)))
    code = promptq(["--redis-url", cluster_url, "--queue", "batch-2", "collect", "rows", "-o", str(tmp_path / "o")])
    assert code == 0 and len((tmp_path / "o").read_text().splitlines()) == 5
    with SyncProducer(config=ProducerConfig(redis_url=cluster_url)) as sp:  # the blocking client, its wait
        job_id = sp.submit("sync")
        worker, main = start_worker(on_cluster)
        try:
            assert (await asyncio.to_thread(sp.wait, job_id, 5)).ok  # (in a thread: the worker runs in this loop)
        finally:
            await stop_worker(worker, main)


async def test_a_running_job_is_cancelled_and_a_submit_wakes_an_idle_worker_through_the_cluster(
    cluster_url: str, on_cluster: WorkerConfig, sim: Simulator
) -> None:
    """The pub/sub a Cluster carries: the cancel channel reaches the worker running the job, the
    wake channel an idle worker polling a minute apart, the done channel the waiter."""
    sim.configure(hang_rate=1.0)  # never answered: only the cancel frees the slot
    config = dataclasses.replace(on_cluster, queues=("gpu",), request_timeout_s=30, job_timeout_s=40, poll_delay_s=60)
    worker, main = start_worker(config)
    try:
        async with Producer(config=ProducerConfig(redis_url=cluster_url, queue="gpu")) as p:
            job_id = await p.submit("hangs")
            while sim.stats()["in_flight"] == 0:  # claimed at once: the submit woke the idle worker
                await asyncio.sleep(0.01)
            assert (await p.cancel(job_id)).cancelled
            assert (await p.wait(job_id, timeout=2)).status == "cancelled"
            sim.configure(hang_rate=0.0)
            assert (await p.wait(await p.submit("next"), timeout=5)).ok  # the slot is free, the worker awake
    finally:
        await stop_worker(worker, main)


async def test_a_failover_mid_run_loses_nothing(
    cluster: ClusterSet, cluster_url: str, on_cluster: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(latency_ms=50)
    async with Producer(config=ProducerConfig(redis_url=cluster_url)) as p:
        ids = await p.submit_many([f"job {i}" for i in range(300)])
        worker, main = start_worker(dataclasses.replace(on_cluster, max_jobs=20))
        try:
            while (await p.depths()).waiting > 200:
                await asyncio.sleep(0.05)
            primary = cluster.node_of(queue_keys().key("levels"))
            replica = next(s for s in cluster.servers if s not in cluster.primaries_now() and _replica_of(s, primary))
            client = redis.Redis(port=replica.port)
            try:
                _command(client, "CLUSTER", "FAILOVER")  # the replica takes over, in step with its primary
            finally:
                client.close()
            deadline = time.monotonic() + 20  # (waiting without holding up the worker's loop)
            while cluster.node_of(queue_keys().key("levels")) is not replica:
                assert time.monotonic() < deadline, "the failover did not happen within 20 s"
                await asyncio.sleep(0.05)
            results = [await p.wait(job_id, timeout=60) for job_id in ids]
        finally:
            await stop_worker(worker, main)
    assert all(r.ok for r in results)
    prompts = [c["prompt"] for c in sim.calls()]
    assert sorted(set(prompts)) == sorted(f"job {i}" for i in range(300))  # every job ran (a few maybe twice)


def _replica_of(server: RedisServer, primary: RedisServer) -> bool:
    client = redis.Redis(port=server.port)
    try:
        info: Any = client.info("replication")
        return bool(info.get("role") == "slave" and int(info.get("master_port", 0)) == primary.port)
    finally:
        client.close()


async def test_a_url_that_does_not_match_the_redis_is_refused_clearly(cluster: ClusterSet) -> None:
    node = f"redis://127.0.0.1:{cluster.servers[0].port}/0"
    with pytest.raises(ConfigError, match="is a node of a Redis Cluster: use REDIS_URL=redis\\+cluster://"):
        check_access(node)
    async with Producer(node) as p:
        with pytest.raises(QueueUnavailableError, match="is a node of a Redis Cluster"):
            await p.submit("lost?")
    with RedisServer() as plain:
        url = f"redis+cluster://127.0.0.1:{plain.port}"
        with pytest.raises(ConfigError, match="is not in cluster mode"):
            check_access(url)
        async with Producer(url) as p:
            with pytest.raises(QueueUnavailableError, match="not in cluster mode"):
                await p.submit("lost?")
        assert redis.Redis(port=plain.port).keys("*") == []
    for bad, message in [
        ("redis+cluster://", "no node"),
        ("redis+cluster://h:port", "is not host or host:port"),
        ("redis+cluster://h:70000", "is not host or host:port"),
        ("redis+cluster://h:7000/3", "one database"),
    ]:
        with pytest.raises(ConfigError, match=f"REDIS_URL .*{message}"):
            WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "REDIS_URL": bad})
    with pytest.raises(ConfigError, match="PROMPTQ_MIN_REPLICAS is not supported"):
        ProducerConfig.from_env({"REDIS_URL": cluster.url, "PROMPTQ_MIN_REPLICAS": "1"})


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    run: Any = client.execute_command
    return run(*args)


@pytest.mark.parametrize("side", ["async", "sync"])
async def test_a_script_a_node_lacks_is_loaded_on_every_primary(
    cluster: ClusterSet, cluster_url: str, side: str
) -> None:
    """What the worker and the producers do when a script is still missing after redis-py loaded it on
    the primaries its map names (a replica promoted meanwhile): read the map afresh and load it on
    every primary."""
    source = script("claim").source
    sha = hashlib.sha1(source.encode()).hexdigest()
    for server in cluster.servers:
        redis.Redis(port=server.port).script_flush()
    if side == "async":
        client = async_client(cluster_url)
        await load_everywhere(client, source)
        await client.aclose()
    else:
        load_everywhere_sync(sync_client(cluster_url), source)
    assert all(redis.Redis(port=s.port).script_exists(sha) == [True] for s in cluster.primaries_now())


def test_the_http_api_takes_jobs_for_a_named_queue_and_shows_its_figures_on_a_cluster(
    cluster: ClusterSet, cluster_url: str, sim: Simulator
) -> None:
    """uvicorn and a worker process, both with REDIS_URL=redis+cluster://: jobs POSTed to a named
    queue run, read back succeeded, and the dashboard shows each queue's own figures (the two
    queues on different shards)."""
    shards = _shards(cluster, ["gpu", "batch-2"])
    assert shards["gpu"] != shards["batch-2"], shards
    api_env = {"REDIS_URL": cluster_url, "PROMPTQ_API_TOKEN": TOKEN}
    with Api(api_env) as api, Worker(worker_env(cluster_url, sim, PROMPTQ_QUEUES="gpu")):
        status, docs, _ = call(api, "POST", "/v1/jobs", [{"prompt": f"http {i}", "queue": "gpu"} for i in range(3)])
        assert status == 202 and [d["queue"] for d in docs] == ["gpu"] * 3
        status, waiting, _ = call(api, "POST", "/v1/jobs", {"prompt": "no worker serves it", "queue": "batch-2"})
        assert status == 202 and waiting["status"] == "queued"
        for i, doc in enumerate(docs):
            path = f"/v1/jobs/{doc['job_id']}?queue=gpu"
            wait_until(lambda path=path: call(api, "GET", path)[1]["status"] == "succeeded", 15, "the job run")
            status, got, _ = call(api, "GET", path)
            assert status == 200 and got["queue"] == "gpu" and got["content"] == f"http {i}"  # (the echo)
        assert call(api, "GET", f"/v1/jobs/{docs[0]['job_id']}")[0] == 404  # not in the default queue

        def figures(queue: str) -> dict[str, Any]:
            status, board, _ = call(api, "GET", f"/v1/dashboard?queue={queue}")
            assert status == 200
            return dict(board)

        wait_until(lambda: sum(m["succeeded"] for m in figures("gpu")["minutes"]) == 3, 10, "the gpu figures")
        gpu, other = figures("gpu"), figures("batch-2")
    assert gpu["queue"]["name"] == "gpu" and other["queue"]["name"] == "batch-2"
    assert (gpu["queue"]["totals"]["ready"], gpu["queue"]["totals"]["failed"]) == (0, 0)
    assert [w["queues"] for w in gpu["workers"]] == [["gpu"]]
    assert other["queue"]["totals"]["ready"] == 1 and sum(m["succeeded"] for m in other["minutes"]) == 0


def test_make_demo_answers_its_prompts_through_a_cluster_url(cluster_url: str) -> None:
    """``make demo`` (``python -m devtools.demo``) with REDIS_URL=redis+cluster://: its worker and
    its producer use the cluster (not a redis-server of its own), on the bundled simulator."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY" and not k.startswith("PROMPTQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        env={**env, "REDIS_URL": cluster_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"Redis: {cluster_url}\n" in out and "API: the bundled simulator" in out
    assert all(prompt in out for prompt in PROMPTS) and "all four succeeded" in out
    ids = re.findall(r"job (\S+)  succeeded  ", out)
    assert len(ids) == len(PROMPTS)
    with SyncProducer(config=ProducerConfig(redis_url=cluster_url)) as p:  # the answers are in the cluster
        results = [p.get(job_id) for job_id in ids]
    assert all(r is not None and r.ok and r.content for r in results)
