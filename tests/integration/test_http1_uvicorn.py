"""promptq's HTTP/1.1 transport (``worker.http1``) against uvicorn, the server under vLLM's and many
other OpenAI-compatible APIs (its h11 framing: Content-Length answers, chunked streams, its own
keep-alive), through the worker's openai client: plain and streamed calls, each connection used
again."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from promptq_core.validation import PromptJob
from worker import llm
from worker.config import WorkerConfig
from worker.http1 import Http1Transport

uvicorn = pytest.importorskip("uvicorn")
fastapi = pytest.importorskip("fastapi")
responses = pytest.importorskip("fastapi.responses")


def _app(connections: list[str]) -> Any:
    app = fastapi.FastAPI()

    @app.middleware("http")  # type: ignore[untyped-decorator]
    async def count(request: Any, call_next: Any) -> Any:
        peer = f"{request.client.host}:{request.client.port}"
        if peer not in connections:
            connections.append(peer)
        return await call_next(request)

    @app.post("/v1/chat/completions")  # type: ignore[untyped-decorator]
    async def chat(body: dict[str, Any]) -> Any:
        text = "hello from uvicorn " * 4
        usage = {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            return {
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }

        async def events() -> AsyncIterator[bytes]:
            base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            for i in range(0, len(text), 10):
                choice = {"index": 0, "delta": {"content": text[i : i + 10]}, "finish_reason": None}
                yield b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"
                await asyncio.sleep(0)
            end = {"index": 0, "delta": {}, "finish_reason": "stop"}
            yield b"data: " + json.dumps({**base, "choices": [end]}).encode() + b"\n\n"
            yield b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return responses.StreamingResponse(events(), media_type="text/event-stream")

    return app


async def test_plain_and_streamed_calls_to_uvicorn_each_keep_their_connection() -> None:
    connections: list[str] = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(connections), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "sk-t", "REDIS_URL": "redis://x"}
        clients = llm.Clients(WorkerConfig.from_env(env))
        api = clients.take("default")
        assert isinstance(api._client._transport, Http1Transport)
        payload = {"messages": [{"role": "user", "content": "hi"}], "model": "m"}
        job = PromptJob.from_payload("j1", payload, 100_000)
        deltas: list[str] = []

        async def on_delta(text: str) -> None:
            deltas.append(text)

        for _ in range(3):
            plain = await llm.complete(api, job, "m")
            assert plain.content == "hello from uvicorn " * 4
            deltas.clear()
            streamed = await llm.complete(api, job, "m", on_delta=on_delta)
            assert streamed.content == "".join(deltas) == plain.content
            assert streamed.usage is not None and streamed.usage.total_tokens == 11
        assert len(connections) == 1  # six calls, plain and streamed, on one connection
        await clients.aclose()
    finally:
        server.should_exit = True
        await serving
