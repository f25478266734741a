"""Named queues: each its own line, ids, depths and keys (one hash tag each); a worker serves the
queues it is told, in turn; the producer, the CLI and the HTTP API name them; bad names are refused
before anything is written."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import cast
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import redis

from devtools.stack import Api, Simulator
from producer import InvalidJobError, Producer, ProducerConfig
from producer.cli import main as promptq
from promptq_core.contract import queue_keys
from promptq_core.env import ConfigError
from tests.conftest import run_burst
from worker.config import WorkerConfig


async def test_an_id_is_a_job_per_queue_and_a_worker_runs_only_its_queues(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    assert await producer.submit("for the gpu pool", job_id="order-42", queue="gpu") == "order-42"
    assert await producer.submit("for the default pool", job_id="order-42") == "order-42"  # another job
    assert await producer.submit("for the gpu pool", job_id="order-42", queue="gpu") == "order-42"  # nothing new
    assert (await producer.depths(queue="gpu")).waiting == 1 and (await producer.depths()).waiting == 1
    await run_burst(dataclasses.replace(worker_config, queues=("gpu",)))
    gpu = await producer.get("order-42", queue="gpu")
    assert gpu is not None and gpu.ok and gpu.queue == "gpu"
    assert [c["prompt"] for c in sim.calls()] == ["for the gpu pool"]
    queued = await producer.get("order-42")
    assert queued is not None and queued.status == "queued" and queued.queue == "default"  # not this worker's
    await run_burst(worker_config)  # PROMPTQ_QUEUES unset: the default queue
    assert (await producer.wait("order-42", timeout=1)).content is not None
    assert [c["prompt"] for c in sim.calls()] == ["for the gpu pool", "for the default pool"]
    assert await producer.get("order-42", queue="other") is None


async def test_a_worker_claims_from_its_queues_in_turn(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    await producer.submit_many([{"prompt": f"a{i}", "queue": "a"} for i in range(6)])
    await producer.submit_many([{"prompt": f"b{i}", "queue": "b"} for i in range(6)])
    await run_burst(dataclasses.replace(worker_config, queues=("a", "b"), max_jobs=1, urgent_slots=0))
    calls = [c["prompt"][0] for c in sim.calls()]
    assert sorted(calls) == ["a"] * 6 + ["b"] * 6
    assert all(calls[i] != calls[i + 1] for i in range(len(calls) - 1)), calls  # one slot: a, b, a, b...


async def test_every_key_a_job_touches_carries_its_queues_tag(
    producer: Producer,
    worker_config: WorkerConfig,
    sim: Simulator,
    sync_redis: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """What a Cluster needs: every key of a queue in one slot, the rest in the fleet's or the backends'."""
    sim.configure(error_rate=1.0, error_statuses=[400])
    failed = await producer.submit("fails", queue="gpu")
    await run_burst(dataclasses.replace(worker_config, queues=("gpu",)))
    sim.configure(error_rate=0.0)
    streamed = await producer.submit("streamed", queue="gpu", stream=True)
    assert (await producer.wait(failed, queue="gpu", timeout=1)).status == "failed"
    await producer.retry(failed, queue="gpu")
    await producer.submit("cancelled", job_id="c-1", queue="gpu")
    await producer.cancel("c-1", queue="gpu")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"prompt": "a row"}) + "\n")
    err = io.StringIO()
    assert promptq(["--redis-url", redis_url, "submit", str(tmp_path / "rows.jsonl"), "--queue", "gpu"], err=err) == 0
    await run_burst(dataclasses.replace(worker_config, queues=("gpu",)))
    assert (await producer.wait(streamed, queue="gpu", timeout=1)).ok
    assert (await producer.wait(failed, queue="gpu", timeout=1)).ok
    keys = [k.decode() for k in cast("list[bytes]", sync_redis.keys("*"))]
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys if "{" in k}
    assert [k for k in keys if "{" not in k] == [] and tags <= {"gpu", "fleet", "backends"}, keys
    assert any(k.startswith("arq:job:{gpu}") or k.startswith("promptq:{gpu}:batch:") for k in keys)
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps({"prompt": "a row", "queue": "other"}) + "\n")
    code = promptq(["--redis-url", redis_url, "submit", str(tmp_path / "elsewhere.jsonl")], err=err)
    assert code == 2 and "a line may not name a queue" in err.getvalue()  # the batch is one queue's


async def test_bad_queue_names_are_refused_before_anything_is_written(
    producer: Producer, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("", "x" * 65, "a b", "a{b}", "a:b", 7):
        with pytest.raises(InvalidJobError, match="queue must be 1 to 64"):
            await producer.submit("hi", queue=bad)
        with pytest.raises(InvalidJobError, match="item 1: queue must be"):
            await producer.submit_many(["fine", {"prompt": "hi", "queue": bad}])
        if isinstance(bad, str):
            with pytest.raises(InvalidJobError, match="queue must be"):
                await producer.get("x", queue=bad)
    for reserved in ("fleet", "backends"):  # the tags of the keys of no queue
        with pytest.raises(InvalidJobError, match="is reserved"):
            await producer.submit("hi", queue=reserved)
        with pytest.raises(ConfigError, match=r"PROMPTQ_QUEUES: .* is reserved"):
            WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "PROMPTQ_QUEUES": f"a,{reserved}"})
    assert sync_redis.keys("*") == []
    with pytest.raises(ValueError, match="queue name"):
        ProducerConfig(queue="no way")
    for value, message in [
        ("", "is not a queue name"),
        ("a,,b", "is not a queue name"),
        ("a, b, a", "names a more than once"),
        ("gpu{x}", "is not a queue name"),
    ]:
        with pytest.raises(ConfigError, match=f"PROMPTQ_QUEUES: .*{message}|PROMPTQ_QUEUES names a"):
            WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "PROMPTQ_QUEUES": value})
        with pytest.raises(ConfigError, match="PROMPTQ_QUEUE"):
            ProducerConfig.from_env({"PROMPTQ_QUEUE": value})
    assert WorkerConfig.from_env({"OPENAI_BASE_URL": "http://x", "PROMPTQ_QUEUES": "gpu, default"}).queues == (
        "gpu",
        "default",
    )
    with pytest.raises(SystemExit):  # argparse: a usage error, naming the option
        promptq(["result", "x", "--queue", "no way"])
    assert "--queue: queue must be 1 to 64" in capsys.readouterr().err


@pytest.mark.process
def test_the_http_api_names_the_queue_in_the_body_and_the_query(redis_server_url: str) -> None:
    headers = {"Content-Type": "application/json"}
    with Api({"REDIS_URL": redis_server_url}) as api:
        body = json.dumps({"prompt": "hi", "job_id": "http-q", "queue": "gpu"}).encode()
        with urlopen(Request(api.url + "/v1/jobs", data=body, headers=headers), timeout=5) as r:
            assert json.loads(r.read())["queue"] == "gpu"
        with urlopen(api.url + "/v1/jobs/http-q?queue=gpu", timeout=5) as r:
            assert json.loads(r.read())["status"] == "queued"
        with pytest.raises(HTTPError) as missing:
            urlopen(api.url + "/v1/jobs/http-q", timeout=5)  # the default queue has no such job
        assert missing.value.code == 404
        missing.value.close()
        with urlopen(api.url + "/v1/dashboard?queue=gpu", timeout=5) as r:
            doc = json.loads(r.read())
            assert doc["queue"]["name"] == "gpu" and doc["queue"]["totals"]["ready"] == 1
        for url in ("/v1/dashboard?queue=a%20b", "/v1/dashboard?colour=red", "/v1/jobs/http-q?queue=gpu&x=1"):
            with pytest.raises(HTTPError) as refused:
                urlopen(api.url + url, timeout=5)
            assert refused.value.code == 422
            refused.value.close()
        bad = json.dumps({"prompt": "hi", "queue": "a:b"}).encode()
        with pytest.raises(HTTPError) as refused:
            urlopen(Request(api.url + "/v1/jobs", data=bad, headers=headers), timeout=5)
        assert refused.value.code == 422
        refused.value.close()
    client = redis.Redis.from_url(redis_server_url)
    try:
        client.delete(
            *cast("list[bytes]", client.keys(queue_keys("gpu").base + "*")), queue_keys("gpu").record("http-q")
        )
    finally:
        client.close()
