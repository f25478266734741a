"""promptq's HTTP/1.1 transport (``worker.http1``) against real servers: a scripted one here (each
test says what it answers, byte for byte, and sees what it was sent), and the simulator through the
openai client. Keep-alive and when a connection is not reused, each framing of a body, the errors a
server's misbehaviour becomes, timeouts, TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from devtools.stack import Simulator
from worker import llm
from worker.config import WorkerConfig
from worker.http1 import Http1Transport

Answer = Callable[[int, bytes], bytes | None]
"""(the request's number on the server, its head and body) → the bytes to write (None: nothing, and
the server closes the connection)."""


class Scripted:
    """A server whose answers a test writes; it records each request with its connection's number."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.requests: list[tuple[int, bytes]] = []
        self.connections = 0
        self.hold = asyncio.Event()
        """A server that answers ``b"HOLD"`` waits for this before closing (an answer that starts with
        ``b"CLOSE"`` is written without it, then the connection closed)."""
        self._server: asyncio.Server | None = None
        self._serving: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.hold.set()
        self._server.close()
        for task in self._serving:
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1/x"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: each request read, then answered as the test says."""
        conn = self.connections
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await _read_body(reader, head)
            self.requests.append((conn, head + body))
            out = self.answer(len(self.requests), head + body)
            if out is None:
                return
            if out == b"HOLD":
                await self.hold.wait()
                return
            writer.write(out.removeprefix(b"CLOSE"))
            await writer.drain()
            if out.startswith(b"CLOSE"):
                return


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                return b"<chunked>" + body
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


def ok(body: bytes = b'{"ok":true}', *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(h + b"\r\n" for h in extra),
        body,
    )


def client(**limits: Any) -> httpx2.AsyncClient:
    tls = httpx2.create_ssl_context()
    return httpx2.AsyncClient(transport=Http1Transport(tls, httpx2.Limits(keepalive_expiry=5.0, **limits)))


async def test_a_connection_carries_one_request_after_another() -> None:
    async with Scripted(lambda n, _: ok(b"answer %d" % n)) as server, client() as http:
        for n in (1, 2, 3):
            response = await http.post(server.url, content=b'{"n":%d}' % n, headers={"x-try": str(n)})
            assert (response.status_code, response.content) == (200, b"answer %d" % n)
            assert response.http_version == "HTTP/1.1" and response.reason_phrase == "OK"
        assert server.connections == 1
        first = server.requests[0][1]
        assert first.startswith(b"POST /v1/x HTTP/1.1\r\n")
        assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nx-try: 1\r\n" in first and first.endswith(b'\r\n\r\n{"n":1}')


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
            b"hello world",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n", b"abc"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi", b"hi"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-folded: a\r\n b\r\n\r\nhi", b"hi"),
    ],
)
async def test_each_framing_of_a_body_keeps_the_connection(answer: bytes, body: bytes) -> None:
    async with Scripted(lambda n, _: answer) as server, client() as http:
        for _ in range(2):
            response = await http.get(server.url)
            assert response.content == body
        assert server.connections == 1


async def test_a_body_split_into_single_bytes_arrives_whole() -> None:
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"

    class Trickle(Scripted):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            for n in range(len(answer)):
                writer.write(answer[n : n + 1])
                await writer.drain()
                await asyncio.sleep(0)
            writer.close()

    async with Trickle(lambda n, _: None) as server, client() as http:
        assert (await http.get(server.url)).content == b"abcdef"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ],
)
async def test_a_connection_the_server_closes_is_not_used_again(answer: bytes) -> None:
    async with Scripted(lambda n, _: answer) as server, client() as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"hi"
        assert server.connections == 2


async def test_a_body_without_length_runs_until_the_server_closes() -> None:
    async with Scripted(lambda n, _: b"CLOSE" + b"HTTP/1.1 200 OK\r\n\r\nall of it") as server, client() as http:
        for _ in range(2):
            assert (await http.get(server.url)).content == b"all of it"
        assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    def answer(n: int, _: bytes) -> bytes:
        return ok(b"%d" % n, b"connection: keep-alive")

    async with Scripted(answer) as server, client() as http:
        assert (await http.get(server.url)).content == b"1"
        transport = http._transport
        assert isinstance(transport, Http1Transport)
        (idle,) = [c for conns in transport._idle.values() for c in conns]
        assert idle.transport is not None
        idle.transport.abort()  # as a server ending an idle connection: its end is seen before the next request
        await asyncio.sleep(0.05)
        assert (await http.get(server.url)).content == b"2"
        assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (None, httpx2.RemoteProtocolError, "before a response"),
        (b"CLOSEHTTP/1.1 200 OK\r\ncontent-le", httpx2.RemoteProtocolError, "end of the response's head"),
        (b"CLOSESPDY/3 200 OK\r\n\r\n", httpx2.RemoteProtocolError, "not an HTTP/1.x status line"),
        (b"CLOSEHTTP/1.1 200 OK\r\nno colon here\r\n\r\n", httpx2.RemoteProtocolError, "not a header line"),
        (b"CLOSEHTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx", httpx2.RemoteProtocolError, "not one number"),
        (
            b"CLOSEHTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
            httpx2.RemoteProtocolError,
            "6 of 10 bytes missing",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            httpx2.RemoteProtocolError,
            "not a chunk size",
        ),
        (
            b"CLOSEHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n",
            httpx2.RemoteProtocolError,
            "longer",
        ),
        (b"CLOSEHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc", httpx2.RemoteProtocolError, "missing"),
    ],
)
async def test_a_server_that_misbehaves_is_a_clear_error(
    answer: bytes | None, error: type[Exception], says: str
) -> None:
    async with Scripted(lambda n, _: answer) as server, client() as http:
        with pytest.raises(error, match=says):
            await http.get(server.url)
        transport = http._transport
        assert isinstance(transport, Http1Transport)
        assert not any(transport._idle.values())  # (the broken connection is not kept)


async def test_a_request_streams_its_body_chunked() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"", b"two"):
            yield piece

    async with Scripted(lambda n, _: ok()) as server, client() as http:
        response = await http.post(server.url, content=pieces())
        assert response.status_code == 200
        assert server.requests[0][1].endswith(b"<chunked>one two")


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with Scripted(lambda n, _: ok()) as server, client() as http:
        request = http.build_request("GET", server.url)
        request.headers["x-evil"] = "a"
        request.headers._list[-1] = (b"x-evil", b"x-evil", b"a\r\nx-injected: 1")  # past httpx's own checks
        with pytest.raises(httpx2.LocalProtocolError, match="line break"):
            await http.send(request)
        assert server.requests == []


async def test_a_body_closed_before_its_end_does_not_leave_its_connection_for_the_next() -> None:
    big = b"x" * 100_000
    async with Scripted(lambda n, _: ok(big)) as server, client() as http:
        async with http.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                break
        assert (await http.get(server.url)).content == big
        assert server.connections == 2


async def test_a_server_that_does_not_answer_is_a_read_timeout() -> None:
    async with Scripted(lambda n, _: b"HOLD") as server, client() as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.get(server.url, timeout=httpx2.Timeout(5.0, read=0.2))


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with Scripted(lambda n, _: ok()) as server:
        url = server.url
    await asyncio.sleep(0.05)
    async with client() as http:
        with pytest.raises(httpx2.ConnectError, match="could not connect"):
            await http.get(url)


async def test_requests_beyond_the_connections_allowed_wait_then_time_out() -> None:
    async with Scripted(lambda n, _: b"HOLD") as server, client(max_connections=1) as http:
        first = asyncio.create_task(http.get(server.url))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx2.PoolTimeout):
            await http.get(server.url, timeout=httpx2.Timeout(5.0, pool=0.2))
        first.cancel()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_with_the_given_certificates(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    async with Scripted(lambda n, _: ok(b"secret"), tls=served) as server:
        trusting = httpx2.AsyncClient(
            transport=Http1Transport(ssl.create_default_context(cafile=str(cert)), httpx2.Limits())
        )
        async with trusting:
            assert (await trusting.get(server.url)).content == b"secret"
            assert (await trusting.get(server.url)).content == b"secret"
        assert server.connections == 1
        async with client() as untrusting:  # (the system's certificates do not vouch for it)
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get(server.url)


async def test_the_openai_client_over_it_calls_streams_and_fails_as_over_aiohttp() -> None:
    """The worker's own client (``PROMPTQ_HTTP_CLIENT`` unset: http1) against the simulator: a call,
    a streamed call (a chunked body), an error status, and a server that is gone."""
    from promptq_core.validation import PromptJob

    sim = Simulator().start()
    try:
        config = WorkerConfig.from_env(
            {"OPENAI_BASE_URL": sim.base_url, "OPENAI_API_KEY": "sk-t", "REDIS_URL": "redis://x"}
        )
        assert config.http_client == "http1"
        clients = llm.Clients(config)
        api = clients.take("default")
        assert isinstance(api._client._transport, Http1Transport)
        payload = {"messages": [{"role": "user", "content": "hello"}], "model": config.model}
        job = PromptJob.from_payload("j1", payload, config.max_payload_bytes)
        first = await llm.complete(api, job, config.model)
        assert first.content
        deltas: list[str] = []

        async def on_delta(text: str) -> None:
            deltas.append(text)

        streamed = await llm.complete(api, job, config.model, on_delta=on_delta)
        assert streamed.content and "".join(deltas) == streamed.content
        sim.configure(break_streams=1)
        with pytest.raises(llm.LLMError) as broken:
            await llm.complete(api, job, config.model, on_delta=on_delta)
        assert broken.value.type == "connection_error" and broken.value.retryable
        sim.configure(reset_rate=1.0)
        with pytest.raises(llm.LLMError) as reset:
            await llm.complete(api, job, config.model)
        assert reset.value.type == "connection_error" and reset.value.retryable
        sim.configure(reset_rate=0.0, error_rate=1.0, error_statuses=[400])
        with pytest.raises(llm.LLMError) as refused:
            await llm.complete(api, job, config.model)
        assert refused.value.status_code == 400 and not refused.value.retryable
    finally:
        sim.stop()
    with pytest.raises(llm.LLMError) as gone:
        await llm.complete(api, job, config.model)
    assert gone.value.type == "connection_error" and gone.value.retryable
    await clients.aclose()


def test_a_url_the_environment_sends_through_a_proxy_keeps_the_aiohttp_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    http = llm._Http1Client(verify=True, timeout=5)
    assert isinstance(http._transport_for_url(httpx2.URL("https://api.openai.com/v1")), AiohttpTransport)
    assert isinstance(http._transport_for_url(httpx2.URL("http://127.0.0.1:8000/v1")), Http1Transport)


async def test_an_answer_with_a_bad_head_gives_back_its_connection_slot() -> None:
    answers = [
        b"CLOSEHTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"CLOSEHTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
    ]

    def answer(n: int, _: bytes) -> bytes:
        return answers[n - 1] if n <= len(answers) else ok()

    async with Scripted(answer) as server, client(max_connections=1) as http:
        for _ in answers:
            with pytest.raises(httpx2.RemoteProtocolError):
                await http.get(server.url)
        response = await http.get(server.url, timeout=httpx2.Timeout(5.0, pool=1.0))
        assert response.status_code == 200  # (not a PoolTimeout: the slot came back each time)


async def test_bytes_a_server_sends_on_an_idle_connection_are_not_the_next_answer() -> None:
    def answer(n: int, _: bytes) -> bytes:
        return ok(b"answer %d" % n) + (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 5\r\n\r\nstale" if n == 1 else b""
        )

    async with Scripted(answer) as server, client() as http:
        assert (await http.get(server.url)).content == b"answer 1"
        await asyncio.sleep(0.05)  # (the unasked answer arrives while the connection is idle)
        assert (await http.get(server.url)).content == b"answer 2"
        assert (await http.get(server.url)).content == b"answer 3"


async def test_an_answer_before_the_whole_request_is_read_is_returned() -> None:
    big = b"x" * 20_000_000

    class Refusing(Scripted):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo long")
            await writer.drain()
            writer.close()

    async with Refusing(lambda n, _: None) as server, client() as http:
        response = await http.post(server.url, content=big)
        assert (response.status_code, response.content) == (413, b"too long")


async def test_a_large_body_to_a_slow_reader_without_a_write_timeout() -> None:
    big = b"y" * 8_000_000

    class Slow(Scripted):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.3)  # (the client's writes pause meanwhile)
            body = await _read_body(reader, head)
            writer.write(ok(b"%d" % len(body)))
            await writer.drain()

    async with Slow(lambda n, _: None) as server, client() as http:
        response = await http.post(server.url, content=big, timeout=httpx2.Timeout(None))
        assert response.content == b"%d" % len(big)


def test_a_transport_used_from_one_event_loop_then_another() -> None:
    transport = Http1Transport(httpx2.create_ssl_context(), httpx2.Limits(max_connections=2, keepalive_expiry=5.0))

    async def twice() -> None:
        async with Scripted(lambda n, _: ok(b"%d" % n)) as server:
            http = httpx2.AsyncClient(transport=transport)
            assert (await http.get(server.url)).content == b"1"
            assert (await http.get(server.url, timeout=httpx2.Timeout(2.0))).content == b"2"

    asyncio.run(twice())
    asyncio.run(twice())  # (its idle connection and its slots belonged to the first loop)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx2.ConnectTimeout("no"), "connection_error"),
        (httpx2.PoolTimeout("no"), "connection_error"),
        (httpx2.WriteTimeout("no"), "connection_error"),
        (httpx2.ReadTimeout("no"), "timeout"),
    ],
)
async def test_a_timeout_before_the_request_was_sent_whole_is_not_one_the_api_may_have_processed(
    error: Exception, kind: str
) -> None:
    from promptq_core.validation import PromptJob

    def fail(request: httpx2.Request) -> httpx2.Response:
        raise error

    http = llm._Http1Client(transport=httpx2.MockTransport(fail))
    api = openai.AsyncOpenAI(api_key="sk-t", base_url="http://127.0.0.1:9/v1", http_client=http, max_retries=0)
    job = PromptJob.from_payload("j1", {"messages": [{"role": "user", "content": "x"}], "model": "m"}, 100_000)
    with pytest.raises(llm.LLMError) as failed:
        await llm.complete(api, job, "m")
    assert failed.value.type == kind and failed.value.retryable
    await api.close()


async def read_up_to_done(http: httpx2.AsyncClient, url: str) -> None:
    """Read a stream up to its ``[DONE]`` event, then close it (as the openai client stops reading)."""
    async with http.stream("GET", url) as response:
        async for piece in response.aiter_raw():
            if b"[DONE]" in piece:
                break


async def test_a_stream_closed_after_its_last_chunk_leaves_its_connection_for_the_next() -> None:
    """As the openai client does: it reads events up to ``[DONE]`` and closes the stream, before the
    chunked body's end, which arrived with it."""
    events = b"data: 1\n\ndata: [DONE]\n\n"
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)
    async with Scripted(lambda n, _: answer) as server, client() as http:
        for _ in range(2):
            await read_up_to_done(http, server.url)
        assert server.connections == 1


async def test_a_stream_closed_before_its_end_arrives_waits_for_it_in_the_background() -> None:
    events = b"data: [DONE]\n\n"

    class LateEnd(Scripted):
        async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append((self.connections, head))
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n%s" % (len(events), events))
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"\r\n0\r\n\r\n")
                await writer.drain()

    async with LateEnd(lambda n, _: None) as server, client() as http:
        for _ in range(2):
            await read_up_to_done(http, server.url)
            await asyncio.sleep(0.3)  # (the end arrives; the connection goes back to the idle ones)
        assert server.connections == 1 and len(server.requests) == 2
