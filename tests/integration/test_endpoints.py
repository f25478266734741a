"""Jobs for each endpoint (chat completions, embeddings, responses) end to end: submitted through the
producer, run by the worker in-process against the simulator through the openai client."""

from __future__ import annotations

import math
from typing import cast

import pytest
import redis

from devtools.stack import Simulator
from producer import InvalidJobError, Producer
from promptq_core.contract import queue_keys
from tests.conftest import run_burst
from worker.config import WorkerConfig

EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"


async def test_an_embeddings_job_gives_one_unit_vector_an_input_stored_compactly(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator, sync_redis: redis.Redis
) -> None:
    many = await producer.submit(
        endpoint=EMBEDDINGS, input=["a cat", "a dog", "a cat"], model="text-embedding-3-small", metadata={"row": 1}
    )
    one = await producer.submit("a cat", endpoint=EMBEDDINGS, model="text-embedding-3-small")
    small = await producer.submit(endpoint=EMBEDDINGS, input=[[1, 2, 3]], model="text-embedding-3-large", dimensions=64)
    await run_burst(worker_config)
    r = await producer.wait(many, timeout=1)
    assert r.ok and r.endpoint == EMBEDDINGS and r.content is None and r.metadata == {"row": 1}
    vectors = r.vectors
    assert vectors is not None and [len(v) for v in vectors] == [1536] * 3
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(sum(x * x for x in vectors[0]), 1, rel_tol=1e-5)
    assert r.usage is not None and r.usage.prompt_tokens == r.usage.total_tokens > 0 and r.usage.completion_tokens == 0
    single = await producer.wait(one, timeout=1)
    assert single.vectors == [vectors[0]]  # the same input, the same float32 values
    assert [len(v) for v in (await producer.wait(small, timeout=1)).vectors or []] == [64]
    assert isinstance(r.embeddings, list) and all(isinstance(e, str) for e in r.embeddings)  # base64 float32
    size = int(cast(int, sync_redis.memory_usage(queue_keys().result(one))))
    assert 1536 * 4 < size < 11_000  # one 1,536-dimension vector as base64 float32: ~10.3 KB, not ~41 KB as JSON


async def test_a_responses_job_keeps_the_output_items_and_their_text(
    producer: Producer, worker_config: WorkerConfig
) -> None:
    plain = await producer.submit("What is the capital of Vietnam?", endpoint=RESPONSES, instructions="be brief")
    items = await producer.submit(
        endpoint=RESPONSES, input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]
    )
    cut = await producer.submit("a long question " * 5, endpoint=RESPONSES, max_output_tokens=2)
    await run_burst(worker_config)
    r = await producer.wait(plain, timeout=1)
    assert r.ok and r.endpoint == RESPONSES and r.content == "What is the capital of Vietnam?"
    assert r.finish_reason == "stop" and r.output is not None and r.output[0]["type"] == "message"
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert (await producer.wait(items, timeout=1)).content == "hello there"
    short = await producer.wait(cut, timeout=1)
    assert short.ok and short.finish_reason == "length" and short.content == "a long q"


async def test_a_streamed_responses_job_streams_its_text(producer: Producer, worker_config: WorkerConfig) -> None:
    job_id = await producer.submit("Tell me about queues, at length.", endpoint=RESPONSES, stream=True)
    await run_burst(worker_config)
    events = [e async for e in producer.stream(job_id)]
    assert "".join(e.text or "" for e in events if e.type == "delta") == "Tell me about queues, at length."
    done = events[-1]
    assert done.type == "done" and done.result is not None and done.result.content == "Tell me about queues, at length."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoint": "/v1/completions", "prompt": "x"}, "endpoint must be one of"),
        ({"endpoint": EMBEDDINGS, "messages": [{"role": "user", "content": "x"}], "model": "e"}, "messages is for"),
        ({"endpoint": EMBEDDINGS, "model": "e"}, "give exactly one of prompt or input"),
        ({"endpoint": EMBEDDINGS, "input": "x"}, "needs a model"),
        ({"endpoint": EMBEDDINGS, "input": ["x"] * 2049, "model": "e"}, "over the 2048"),
        ({"endpoint": EMBEDDINGS, "input": ["x", ""], "model": "e"}, "empty string"),
        ({"endpoint": EMBEDDINGS, "input": [1.5], "model": "e"}, "input must be a string"),
        ({"endpoint": EMBEDDINGS, "input": "x", "stream": True, "model": "e"}, "stream is not possible"),
        ({"endpoint": EMBEDDINGS, "input": "x", "temperature": 1, "model": "e"}, "unknown parameter 'temperature' for"),
        (
            {"endpoint": EMBEDDINGS, "input": "x", "dimensions": 0, "model": "e"},
            "dimensions must be a positive integer",
        ),
        ({"endpoint": RESPONSES, "input": []}, "non-empty list of input items"),
        ({"endpoint": RESPONSES, "input": [{"text": "x"}]}, r"input\[0\] must be an object with a type or a role"),
        ({"endpoint": RESPONSES, "input": "x", "max_tokens": 5}, "unknown parameter 'max_tokens' for"),
        ({"prompt": "x", "input": "y"}, "input is for"),
    ],
)
async def test_each_endpoint_refuses_what_it_cannot_take(
    producer: Producer, sync_redis: redis.Redis, kwargs: dict[str, object], message: str
) -> None:
    before = sync_redis.dbsize()
    with pytest.raises(InvalidJobError, match=message):
        await producer.submit(**kwargs)  # type: ignore[arg-type]
    assert sync_redis.dbsize() == before


async def test_a_flex_job_goes_at_the_flex_tier_and_a_batch_job_runs_live_without_a_batch_backend(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    flex = await producer.submit("at the flex tier", tier="flex", stream=True)
    batch = await producer.submit("at the batch tier", tier="batch")
    live = await producer.submit("at once")
    await run_burst(worker_config)
    results = {r.job_id: r for r in await producer.get_many([flex, batch, live]) if r is not None}
    assert [(results[j].tier, results[j].content) for j in (flex, batch, live)] == [
        ("flex", "at the flex tier"),
        ("batch", "at the batch tier"),
        ("live", "at once"),
    ]
    assert sim.stats()["service_tiers"] == {"flex": 1, "default": 2}
    with pytest.raises(InvalidJobError, match="cannot stream"):
        await producer.submit("no", tier="batch", stream=True)
