"""The simulator, spoken to by the real openai client over HTTP, as the worker speaks to it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from devtools.stack import Simulator
from tests.conftest import TEST_API_KEY

QUESTION = "What is the capital of Vietnam?"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(api_key=TEST_API_KEY, base_url=sim.base_url, max_retries=0, timeout=5)
    yield c
    await c.close()


async def test_a_completion_echoes_with_usage(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert r.choices[0].message.content == QUESTION
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-4o-mini" and r.id
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


async def test_max_tokens_cuts_the_reply(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="m", messages=USER, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 2


async def test_streaming_gives_the_same_text_in_chunks_then_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == QUESTION and finish == "stop"
    assert usage is not None and usage.completion_tokens > 0


async def test_models_are_listed(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert "gpt-4o-mini" in models


async def test_a_wrong_key_is_refused(sim: Simulator) -> None:
    sim.configure(require_api_key="sk-right")
    async with openai.AsyncOpenAI(api_key="sk-wrong", base_url=sim.base_url, max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.chat.completions.create(model="m", messages=USER)


async def test_a_429_carries_the_advised_wait(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(error_rate=1.0, error_statuses=[429], retry_after_ms=1500)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    headers = caught.value.response.headers
    assert headers["retry-after-ms"] == "1500" and headers["retry-after"] == "2"
    assert caught.value.code == "rate_limit_exceeded"
    assert sim.stats()["by_status"] == {"429": 1} and sim.stats()["completions"] == 0


async def test_insufficient_quota_is_a_429_with_its_code(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(error_rate=1.0, error_statuses=[429], error_code="insufficient_quota")
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "insufficient_quota"


async def test_the_rpm_limit_answers_429_with_rate_limit_headers(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(rpm=60, rpm_burst=2)  # one a second, two at once
    for _ in range(2):
        await client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "60" and headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < int(headers["retry-after-ms"]) <= 1000


async def test_a_windowed_limit_counts_per_calendar_second(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(rpm=180, limit_window_s=1.0)  # 3 in each second of the clock, however they come
    await asyncio.sleep(1 - time.time() % 1 + 0.01)  # just after a second begins
    for _ in range(3):
        await client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=USER)
    assert 0 < int(caught.value.response.headers["retry-after-ms"]) <= 1000
    await asyncio.sleep(1 - time.time() % 1 + 0.01)  # the next second: three more
    for _ in range(3):
        await client.chat.completions.create(model="m", messages=USER)
    assert sim.stats()["faults"] == {"requests_limited": 1}


async def test_the_tpm_limit_charges_the_prompt_and_max_tokens(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(tpm=600, tpm_burst=50)  # 10 tokens a second, 50 at once
    messages: Any = [{"role": "user", "content": "x" * 40}]  # 10 tokens + 3
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=messages, max_tokens=20)
    assert raw.headers["x-ratelimit-limit-tokens"] == "600" and raw.headers["x-ratelimit-remaining-tokens"] == "17"
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=messages, max_tokens=20)
    assert "tokens" in caught.value.message
    assert 1500 <= int(caught.value.response.headers["retry-after-ms"]) <= 1700  # 16 tokens short at 10/s
    assert sim.stats()["faults"] == {"tokens_limited": 1}


async def test_faults_reach_the_client_as_the_real_errors(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(reset_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=USER)
    sim.configure(reset_rate=0.0, malformed_rate=1.0)
    with pytest.raises((openai.APIError, ValueError)):  # openai 3 lets the JSONDecodeError through
        await client.chat.completions.create(model="m", messages=USER)
    sim.configure(malformed_rate=0.0, hang_rate=1.0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - started < 3
    assert sim.stats()["faults"] == {"reset": 1, "malformed": 1, "hang": 1}


async def test_the_error_rate_is_a_share_of_requests(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(error_rate=0.5, error_statuses=[500, 503], seed=7)
    statuses = []
    for _ in range(60):
        try:
            await client.chat.completions.create(model="m", messages=USER)
            statuses.append(200)
        except openai.InternalServerError as e:
            statuses.append(e.status_code)
    assert 15 <= statuses.count(200) <= 45
    assert set(statuses) == {200, 500, 503}


async def test_embeddings_are_deterministic_unit_vectors_as_floats_or_base64(
    client: openai.AsyncOpenAI, sim: Simulator
) -> None:
    r = await client.embeddings.create(model="text-embedding-3-small", input=["a cat", "a dog", "a cat"])
    vectors = [d.embedding for d in r.data]  # the client asks for base64 and decodes it
    assert [len(v) for v in vectors] == [1536] * 3 and [d.index for d in r.data] == [0, 1, 2]
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-5
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    floats = await client.post(
        "/embeddings",
        cast_to=object,
        body={"model": "text-embedding-3-small", "input": "a cat", "encoding_format": "float"},
    )
    assert isinstance(floats, dict) and floats["data"][0]["embedding"] == vectors[0]  # the same float32 values
    small = await client.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]], dimensions=256)
    assert len(small.data[0].embedding) == 256


async def test_embeddings_refuse_bad_input_and_take_the_faults(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    with pytest.raises(openai.BadRequestError, match="at most 2048 inputs"):
        await client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    with pytest.raises(openai.BadRequestError, match="input must be"):
        await client.embeddings.create(model="text-embedding-3-small", input=[])
    sim.configure(error_rate=1.0, error_statuses=[503])
    with pytest.raises(openai.InternalServerError):
        await client.embeddings.create(model="text-embedding-3-small", input="x")


async def test_a_response_echoes_with_usage_and_is_cut_at_max_output_tokens(client: openai.AsyncOpenAI) -> None:
    r = await client.responses.create(model="gpt-4o-mini", input=QUESTION, instructions="be brief")
    assert r.output_text == QUESTION and r.status == "completed"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    items = await client.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there"}]}]
    )
    assert items.output_text == "hello there"
    cut = await client.responses.create(model="gpt-4o-mini", input=QUESTION, max_output_tokens=2)
    assert cut.status == "incomplete" and cut.output_text == QUESTION[:8]


async def test_a_streamed_response_sends_text_deltas_then_the_whole_response(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(model="gpt-4o-mini", input=QUESTION, stream=True)
    kinds, text = [], ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert text == QUESTION and final.output_text == QUESTION
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 2  # 16 characters a piece


def _batch_file(n: int, model: str = "gpt-4o-mini") -> bytes:
    lines = [
        json.dumps(
            {
                "custom_id": f"row-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": f"batched {i}"}]},
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


async def _ended(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(100):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "expired", "cancelled", "failed"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end")


def _rows(raw: bytes) -> dict[str, Any]:
    return {row["custom_id"]: row for row in map(json.loads, raw.decode().splitlines())}


async def test_the_batch_api_answers_each_line_as_the_live_endpoint_would(
    client: openai.AsyncOpenAI, sim: Simulator
) -> None:
    sim.configure(batch_delay_ms=50)
    upload = await client.files.create(file=("rows.jsonl", _batch_file(5)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"promptq": "p1"}
    )
    assert batch.status == "in_progress" and batch.metadata == {"promptq": "p1"}
    done = await _ended(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.output_file_id is not None and done.error_file_id is None
    rows = _rows((await client.files.content(done.output_file_id)).read())
    assert rows["row-3"]["response"]["status_code"] == 200
    assert rows["row-3"]["response"]["body"]["choices"][0]["message"]["content"] == "batched 3"
    stats = sim.stats()
    assert (stats["files"], stats["batches"], stats["batch_lines"], stats["requests"]) == (1, 1, 5, 0)  # no live call
    listed = await client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]


async def _start(client: openai.AsyncOpenAI, file_id: str) -> Any:
    return await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")


async def test_a_batch_fails_lines_expires_and_cancels_on_demand(client: openai.AsyncOpenAI, sim: Simulator) -> None:
    sim.configure(batch_delay_ms=20, batch_line_error_rate=1.0, seed=1)
    upload = await client.files.create(file=("rows.jsonl", _batch_file(3)), purpose="batch")
    failed = await _ended(client, (await _start(client, upload.id)).id)
    assert failed.status == "completed" and failed.output_file_id is None and failed.error_file_id is not None
    errors = _rows((await client.files.content(failed.error_file_id)).read())
    assert errors["row-0"]["response"]["status_code"] == 500
    sim.configure(batch_line_error_rate=0.0, batch_expire=True)
    expired = await _ended(client, (await _start(client, upload.id)).id)
    assert expired.status == "expired" and expired.error_file_id is not None
    expired_rows = _rows((await client.files.content(expired.error_file_id)).read())
    assert expired_rows["row-2"]["error"]["code"] == "batch_expired"
    sim.configure(batch_expire=False, batch_delay_ms=5_000)
    started = await _start(client, upload.id)
    assert (await client.batches.cancel(started.id)).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
