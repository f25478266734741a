"""What the worker sends under the openai client is what the client's own way would send (its short
``build_request``, and a plain call's options made once a path)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx2
import openai
import pytest

from worker.wire import ShortBuild


class Recording(ShortBuild):
    """Keeps the arguments the openai client passes, and answers every request itself (setting a
    cookie, as a provider's front may)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(transport=httpx2.MockTransport(self.answer), **kwargs)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.long_way = 0

    def build_request(self, *args: Any, **kwargs: Any) -> httpx2.Request:
        self.calls.append((args, kwargs))
        return super().build_request(*args, **kwargs)

    def answer(self, request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"ok": True}, headers={"set-cookie": "front=abc; Path=/"})


@pytest.fixture
def long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """Count, on each Recording, the builds that went to httpx's own ``build_request``."""
    stock_build = httpx2.AsyncClient.build_request

    def counted(self: httpx2.AsyncClient, *args: Any, **kwargs: Any) -> httpx2.Request:
        if isinstance(self, Recording):
            self.long_way += 1
        return stock_build(self, *args, **kwargs)

    monkeypatch.setattr(httpx2.AsyncClient, "build_request", counted)


def same(a: httpx2.Request, b: httpx2.Request) -> None:
    assert a.method == b.method
    assert str(a.url) == str(b.url)
    assert a.headers.raw == b.headers.raw  # the same names, values and order on the wire
    assert a.content == b.content
    assert a.extensions == b.extensions


STOCK_BUILD = httpx2.AsyncClient.build_request


def stock(client: httpx2.AsyncClient, *args: Any, **kwargs: Any) -> httpx2.Request:
    return STOCK_BUILD(client, *args, **kwargs)


@pytest.mark.parametrize(
    ("base_url", "make"),
    [
        ("http://127.0.0.1:8/v1", openai.AsyncOpenAI),
        ("https://api.example.test/v1/", openai.AsyncOpenAI),
        ("https://res.example.test", openai.AsyncAzureOpenAI),
    ],
)
def test_what_the_openai_client_sends_is_built_as_httpx_builds_it(base_url: str, make: Any, long_way: None) -> None:
    http = Recording(timeout=12.5, headers={"X-Fleet": "a"})
    if make is openai.AsyncAzureOpenAI:
        client = make(api_key="sk-t", api_version="2024-10-21", azure_endpoint=base_url, http_client=http)
    else:
        client = make(api_key="sk-t", base_url=base_url, default_headers={"X-Team": "t"}, http_client=http)

    async def calls() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "ü"}]}
        await client.post("/chat/completions", cast_to=httpx2.Response, body=body, options={})
        embed = {"model": "m", "input": "x"}
        await client.post("/embeddings", cast_to=httpx2.Response, body=embed, options={"timeout": 3})
        await client.get("/models", cast_to=httpx2.Response)
        await client.close()

    asyncio.run(calls())
    assert len(http.calls) == 3
    # the short way for every call but an Azure client's (its api-version is a query parameter)
    assert http.long_way == (3 if make is openai.AsyncAzureOpenAI else 0)
    assert http.cookies.get("front") == "abc"  # (a cookie received is sent again, as httpx's own does)
    for args, kwargs in http.calls:
        same(ShortBuild.build_request(http, *args, **kwargs), stock(http, *args, **kwargs))


def test_what_it_does_not_shorten_goes_to_httpx() -> None:
    http = ShortBuild(base_url="http://127.0.0.1:8/v1/", headers={"User-Agent": "ua"}, timeout=5)
    cases: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("GET", "models"), {"headers": [("accept", "x")]}),  # relative: joined to base_url
        (("POST", "http://h.test/a"), {"headers": [("user-agent", "mine")], "params": {"q": "1"}}),
        (("POST", "http://h.test/a"), {"headers": [("x", "1")], "cookies": {"c": "1"}}),
        (("POST", "http://h.test/a"), {"headers": {"x": "1"}, "json": {"a": 1}}),
        (("POST", "http://h.test/a"), {"headers": [("User-Agent", "mine"), ("x", "1"), ("x", "2")], "content": b"{}"}),
        (("POST", httpx2.URL("http://h.test/a")), {"headers": [("x", "1")], "timeout": None}),
    ]
    for args, kwargs in cases:
        same(http.build_request(*args, **kwargs), stock(http, *args, **kwargs))
    http.cookies.set("kept", "1")  # a cookie the client holds goes with the short way too
    for args, kwargs in cases[-2:]:
        same(http.build_request(*args, **kwargs), stock(http, *args, **kwargs))


@pytest.mark.parametrize("make", [openai.AsyncOpenAI, openai.AsyncAzureOpenAI])
def test_a_plain_call_sends_what_post_sends(make: Any) -> None:
    from worker import llm

    http = Recording(timeout=12.5)
    if make is openai.AsyncAzureOpenAI:  # (the deployment goes into the path from the body's model)
        client = make(api_key="sk-t", api_version="2024-10-21", azure_endpoint="https://r.test", http_client=http)
    else:
        client = make(api_key="sk-t", base_url="http://127.0.0.1:8/v1", http_client=http)
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "one"}]}, {}),
        ("/chat/completions", {"model": "n", "messages": [{"role": "user", "content": "two"}]}, {"timeout": 3.0}),
        ("/embeddings", {"model": "m", "input": ["a", "b"]}, {}),
    ]

    async def both() -> None:
        for path, body, options in calls:
            await client.post(path, cast_to=httpx2.Response, body=body, options=cast(Any, options))
            await llm._post(client, path, body, options)
        await client.close()

    asyncio.run(both())
    assert len(http.calls) == 2 * len(calls)
    for n in range(0, len(http.calls), 2):
        assert http.calls[n] == http.calls[n + 1]  # the same URL, headers, body and timeout
    assert "one" in str(http.calls[0]) and "two" in str(http.calls[2])  # (each call its own body)
    forms = [form for kept in llm._FORMS.values() for form in kept.values()]
    assert forms
    for form in forms:  # the kept options hold no call's body or timeout
        assert form.json_data is None and not isinstance(form.timeout, float)
