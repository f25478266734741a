"""HTTP/1.1 under the openai client: promptq's own httpx2 transport (``PROMPTQ_HTTP_CLIENT=http1``,
the default).

The openai client builds each request (URL, headers, body) and reads each response through httpx2;
a transport only carries them. This one keeps, per origin (scheme, host, port), the idle keep-alive
connections (asyncio protocols, plain or TLS), writes a request's head and body in one write, parses
the response's head itself and hands its body over as it arrives: by ``Content-Length``, chunked, or
until the server closes (RFC 9112, section 6). The aiohttp transport it replaces builds a session
request and response of its own around every call: this one costs about 150 µs less of the worker's
CPU a call here (a call through the openai client: about 380 against 530 µs; docs/benchmarks.md).

What it leaves to others: proxies (httpx2 mounts the openai package's aiohttp transport for the URLs
the environment's proxy variables name: see ``worker.llm``) and HTTP/2. An idle connection is kept
``keepalive_expiry`` seconds at most (httpx2's ``Limits``, 5 s as the openai client sets them), and
dropped as soon as its server closes it or sends anything unasked. A connection is used again only
after a response read to its end, framed by a length or chunks, that did not say ``close``; any other
is aborted, except one closed when all that is left of its body is the chunked end, which is
waited for in the background (a second at most) and the connection kept. A reader that stops early
leaves the rest of the body to the next (the openai client drains a stream it has read up to
``[DONE]`` by iterating it anew), which goes on where it stopped.
Tried against the simulator, uvicorn (the server under vLLM's API) and a scripted server of each
framing. Failures are httpx2's errors, which the openai client turns into its own:
``ConnectError``/``ConnectTimeout`` and ``PoolTimeout`` (the request was not sent),
``LocalProtocolError`` (a request that cannot be written, refused before anything is sent),
``WriteError``/``WriteTimeout`` (the request was not sent whole), ``ReadTimeout``, ``ReadError``
(the connection dropped) and ``RemoteProtocolError`` (an answer that is not HTTP/1.x, or cut short).
A server that answers before it has read the whole request (a 413, say) is heard: its answer is
returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx2

__all__ = ["Http1Transport"]

MAX_HEAD_BYTES: Final = 64 * 1024
"""A response's status line and headers, at most."""
MAX_LINE_BYTES: Final = 8 * 1024
"""A chunk-size line or a trailer line of a chunked body, at most."""
MAX_LINES: Final = 100
"""Interim (1xx) answers before the final one, or trailer lines after a chunked body, at most."""
HAPPY_EYEBALLS_S: Final = 0.25
"""A host with several addresses: the next is tried if the last has not connected after this long."""
CHUNKED: Final = -1
UNTIL_CLOSE: Final = -2
"""Body framings other than a length: chunked, or whatever comes until the server closes."""
LAST_CHUNK: Final = b"\r\n0\r\n\r\n"
"""What ends a chunked body after its last chunk's data (without trailers)."""
END_WAIT_S: Final = 1.0
"""How long a connection whose stream was closed just before its end waits for that end, at most."""

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A method or a header name (RFC 9110, section 5.6.2)."""
HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

Origin = tuple[str, str, int, str | None]
"""Scheme, host, port, and the name the TLS handshake asks for when it is not the host."""
Headers = list[tuple[bytes, bytes]]


async def _bounded(
    waiter: asyncio.Future[None], timeout_s: float | None, error: type[httpx2.TimeoutException], what: str
) -> None:
    """Wait for ``waiter``; ``error`` (saying ``what`` did not happen) after ``timeout_s``."""
    timer = None
    if timeout_s is not None:
        timer = asyncio.get_running_loop().call_later(timeout_s, _time_out, waiter, error, what, timeout_s)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


def _time_out(waiter: asyncio.Future[None], error: type[httpx2.TimeoutException], what: str, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(error(f"{what} within {timeout_s:g} s"))


class Connection(asyncio.Protocol):
    """One connection: the bytes received and not read yet, whether more can come, and a waiter
    for the reader."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False
        """The server closed its side, or the connection was lost or dropped: nothing more arrives."""
        self.lost: BaseException | None = None
        self.idle_since: float | None = None
        """When it went back to the idle ones (None: in use)."""
        self.reusable = True
        """False once its exchange went wrong in a way its answer may not show (it is not used again)."""
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        """Set while the transport's write buffer is over its high-water mark."""

    # -- asyncio's side --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.idle_since is not None:  # nothing was asked: it is not the answer to the next request
            self.abort()
            return
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # (the transport closes itself)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ended = True
        self.lost = exc
        self._wake()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the transport's side --------------------------------------------------------------------
    async def receive(self, timeout_s: float | None) -> None:
        """Wait until more bytes arrive or the connection ends (``ReadTimeout`` after ``timeout_s``)."""
        if self.ended:
            return
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await _bounded(waiter, timeout_s, httpx2.ReadTimeout, "no answer from the server")
        finally:
            self._waiter = None

    async def send(self, data: bytes, timeout_s: float | None) -> None:
        """Write ``data``; wait, at most ``timeout_s`` (``WriteTimeout``), while the server is slow to take it."""
        if self.ended or self.transport is None or self.transport.is_closing():
            raise httpx2.WriteError("the connection was closed before the request was sent whole") from self.lost
        self.transport.write(data)
        writable = self._writable
        if writable is not None:
            await _bounded(writable, timeout_s, httpx2.WriteTimeout, "the server took no more of the request")
            if self.ended:
                raise httpx2.WriteError("the connection was closed before the request was sent whole") from self.lost

    def ended_error(self, what: str) -> httpx2.TransportError:
        """The error for a connection that ended where ``what`` was expected."""
        if self.lost is not None:
            return httpx2.ReadError(f"the connection was lost before {what}: {self.lost}")
        return httpx2.RemoteProtocolError(f"the server closed the connection before {what}")

    def abort(self) -> None:
        """Drop the connection now (what it still had to write, and TLS's goodbye, are not waited for)."""
        self.ended = True
        if self.transport is not None:
            self.transport.abort()


class Http1Transport(httpx2.AsyncBaseTransport):
    """The connections of one client, per origin, and each request's exchange on one of them."""

    def __init__(self, tls: ssl.SSLContext, limits: httpx2.Limits) -> None:
        tls.set_alpn_protocols(["http/1.1"])  # (a context shared with another transport may have asked for h2)
        self._tls = tls
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._keep_s = limits.keepalive_expiry
        self._max_idle = limits.max_keepalive_connections
        self._max = limits.max_connections
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._ending: set[asyncio.Task[None]] = set()
        """Connections waiting in the background for the end of a stream closed just before it."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"promptq's HTTP/1.1 transport speaks http and https, not {scheme!r}")
        head = _request_head(request)  # (a request that cannot be written takes no slot, no connection)
        sni: str | None = request.extensions.get("sni_hostname")
        origin = (scheme, url.raw_host.decode("ascii"), url.port or (443 if scheme == "https" else 80), sni)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        self._same_loop()
        await self._take_slot(timeouts.get("pool"))
        conn = None
        try:
            conn = self._idle_connection(origin)
            if conn is None:
                conn = await self._connect(origin, timeouts.get("connect"))
            await self._exchange(conn, request, head, timeouts.get("write"))
            read_s = timeouts.get("read")
            version, status, reason, headers = await _head(conn, read_s)
            length, keep = _framing(request, version, status, headers)
            body = Body(self, conn, length, keep, read_s)
        except BaseException:
            if conn is not None:
                conn.abort()
            self._free_slot()
            raise
        extensions = {"http_version": version, "reason_phrase": reason}
        return httpx2.Response(status, headers=headers, stream=body, request=request, extensions=extensions)

    async def aclose(self) -> None:
        self._closed = True
        for ending in list(self._ending):
            ending.cancel()
        await asyncio.gather(*self._ending, return_exceptions=True)
        self._drop_idle()

    # -- connections -------------------------------------------------------------------------------
    def _same_loop(self) -> None:
        """Connections and the slots' semaphore belong to one event loop: a transport used from
        another (a test's next ``asyncio.run``) starts afresh there."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._drop_idle()
            self._loop = loop
            self._slots = None if self._max is None else asyncio.Semaphore(self._max)

    def _drop_idle(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                with contextlib.suppress(RuntimeError):  # (its event loop is closed: its socket with it)
                    conn.abort()
        self._idle.clear()
        self._idle_count = 0

    async def _take_slot(self, timeout_s: float | None) -> None:
        slots = self._slots
        if slots is None:
            return
        if not slots.locked():
            await slots.acquire()  # (returns at once)
            return
        try:
            async with asyncio.timeout(timeout_s):
                await slots.acquire()
        except TimeoutError:
            raise httpx2.PoolTimeout(f"no connection came free within {timeout_s:g} s") from None

    def _free_slot(self) -> None:
        if self._slots is not None:
            self._slots.release()

    def _idle_connection(self, origin: Origin) -> Connection | None:
        """The most recently used idle connection to ``origin`` still open and fresh, if any."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if self._fresh(conn, time.monotonic()):
                conn.idle_since = None
                return conn
            conn.abort()
        return None

    def _fresh(self, conn: Connection, now: float) -> bool:
        assert conn.idle_since is not None
        return not conn.ended and (self._keep_s is None or now - conn.idle_since < self._keep_s)

    async def _connect(self, origin: Origin, timeout_s: float | None) -> Connection:
        scheme, host, port, sni = origin
        tls = self._tls if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s) as bound:
                _, conn = await loop.create_connection(
                    lambda: Connection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=(sni or host) if tls else None,
                    happy_eyeballs_delay=HAPPY_EYEBALLS_S,
                )
        except TimeoutError as e:
            if bound.expired():
                raise httpx2.ConnectTimeout(f"could not connect to {host}:{port} within {timeout_s:g} s") from None
            raise httpx2.ConnectError(f"could not connect to {host}:{port}: {e}") from e
        except OSError as e:  # (ssl.SSLError among them)
            raise httpx2.ConnectError(f"could not connect to {host}:{port}: {e}") from e
        if tls is not None and conn.transport is not None:
            chosen = conn.transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if chosen not in (None, "http/1.1"):
                conn.abort()
                raise httpx2.ConnectError(f"{host}:{port} chose {chosen!r}, not HTTP/1.1")
        return conn

    def keep_after_end(self, conn: Connection, read_s: float | None) -> None:
        """Wait in the background for the end of a chunked body closed just before it, then keep
        the connection (anything else, or nothing within ``END_WAIT_S``: drop it)."""
        ending = asyncio.get_running_loop().create_task(self._end_then_release(conn, read_s))
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)

    async def _end_then_release(self, conn: Connection, read_s: float | None) -> None:
        reuse = False
        try:
            async with asyncio.timeout(min(END_WAIT_S, read_s or END_WAIT_S)):
                while LAST_CHUNK.startswith(conn.buffer) and conn.buffer != LAST_CHUNK and not conn.ended:
                    await conn.receive(None)
            if conn.buffer == LAST_CHUNK:
                conn.buffer.clear()
                reuse = True
        except (TimeoutError, httpx2.TransportError):
            pass
        finally:
            self.release(conn, reuse)

    def release(self, conn: Connection, reuse: bool) -> None:
        """A response is over: its connection goes back to the idle ones (``reuse``), or is dropped."""
        self._free_slot()
        if not (reuse and conn.reusable and not conn.ended and not conn.buffer and not self._closed):
            conn.abort()
            return
        now = time.monotonic()
        idle = self._idle.setdefault(conn.origin, [])
        while idle and not self._fresh(idle[0], now):  # (the oldest, not taken since it went stale)
            idle.pop(0).abort()
            self._idle_count -= 1
        if self._max_idle is not None and self._idle_count >= self._max_idle:
            conn.abort()
            return
        conn.idle_since = now
        idle.append(conn)
        self._idle_count += 1

    # -- one exchange ------------------------------------------------------------------------------
    @staticmethod
    async def _exchange(conn: Connection, request: httpx2.Request, head: bytes, timeout_s: float | None) -> None:
        """Send the request; a server that answers before it has taken all of it (and closes) is
        let be heard: the answer is read as any other."""
        try:
            await _send(conn, request, head, timeout_s)
        except httpx2.WriteError:
            if not conn.buffer:
                raise
            conn.reusable = False  # (its answer is read; the connection is not used again)


def _request_head(request: httpx2.Request) -> bytes:
    method = request.method.encode("ascii", "replace")
    if not TOKEN.fullmatch(method):
        raise httpx2.LocalProtocolError("the request's method is not a token")
    lines = [b"%s %s HTTP/1.1\r\n" % (method, request.url.raw_path)]
    for name, value in request.headers.raw:
        if not TOKEN.fullmatch(name):
            raise httpx2.LocalProtocolError("a request header's name is not a token")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    head = b"".join(lines)
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines) or b"\x00" in head:
        raise httpx2.LocalProtocolError("the request's target or a header's value has a line break (or a NUL)")
    return head


async def _send(conn: Connection, request: httpx2.Request, head: bytes, timeout_s: float | None) -> None:
    """The request's head and body, the body chunked if its headers say so (a stream of unknown
    length), or checked against its ``Content-Length``."""
    try:
        content: bytes | None = request.content
    except httpx2.RequestNotRead:
        content = None
    if content is not None:
        await conn.send(head + content, timeout_s)
        return
    chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
    declared = request.headers.get("content-length")
    await conn.send(head, timeout_s)
    sent = 0
    stream: Any = request.stream
    async for piece in stream:
        if piece:
            sent += len(piece)
            await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece, timeout_s)
    if chunked:
        await conn.send(b"0\r\n\r\n", timeout_s)
    elif declared is not None and sent != int(declared):
        raise httpx2.LocalProtocolError(f"the request's body was {sent} bytes, not the {declared} it declared")


async def _head(conn: Connection, timeout_s: float | None) -> tuple[bytes, int, bytes, Headers]:
    """The response's version, status, reason and headers (interim 1xx answers skipped)."""
    for _ in range(MAX_LINES):
        scanned = 0
        while (end := conn.buffer.find(b"\r\n\r\n", scanned)) < 0:
            if len(conn.buffer) > MAX_HEAD_BYTES:
                raise httpx2.RemoteProtocolError(f"the response's head is over {MAX_HEAD_BYTES} bytes")
            if conn.ended:
                raise conn.ended_error("a response" if not conn.buffer else "the end of the response's head")
            scanned = max(0, len(conn.buffer) - 3)
            await conn.receive(timeout_s)
        if end > MAX_HEAD_BYTES:
            raise httpx2.RemoteProtocolError(f"the response's head is over {MAX_HEAD_BYTES} bytes")
        head = bytes(conn.buffer[:end])
        del conn.buffer[: end + 4]
        version, status, reason, headers = _parse_head(head)
        if not (100 <= status < 200) or status == 101:
            return version, status, reason, headers
    raise httpx2.RemoteProtocolError(f"over {MAX_LINES} interim answers")


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, Headers]:
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx2.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:100]!r}")
    headers: Headers = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and headers:  # an obsolete folded line: part of the header before
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not TOKEN.fullmatch(name):
            raise httpx2.RemoteProtocolError(f"not a header line: {line[:100]!r}")
        headers.append((name, value.strip(b" \t")))
    return version, int(code), reason, headers


def _framing(request: httpx2.Request, version: bytes, status: int, headers: Headers) -> tuple[int, bool]:
    """How the body ends (its length, ``CHUNKED`` or ``UNTIL_CLOSE``), and whether the connection
    can carry another request after it."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    close = keep_alive = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif lower == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif lower == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
    keep = not close and (version == b"HTTP/1.1" or keep_alive)
    if request.headers.get("connection", "").lower() == "close" or status == 101:
        keep = False
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0, keep
    if codings:
        if codings != [b"chunked"]:
            raise httpx2.RemoteProtocolError(f"a transfer coding other than chunked: {b', '.join(codings)[:100]!r}")
        # (with a Content-Length too, or from HTTP/1.0, the answer is suspect: read, then let go)
        return CHUNKED, keep and not lengths and version == b"HTTP/1.1"
    if lengths:
        length = next(iter(lengths))
        if len(lengths) != 1 or not length.isdigit():
            raise httpx2.RemoteProtocolError("the response's Content-Length is not one number")
        return int(length), keep
    return UNTIL_CLOSE, False


class Body(httpx2.AsyncByteStream):
    """A response's body as it arrives; at its end the connection goes back to the transport."""

    def __init__(
        self, owner: Http1Transport, conn: Connection, length: int, keep: bool, timeout_s: float | None
    ) -> None:
        self._owner = owner
        self._conn: Connection | None = conn
        self._length = length
        self._keep = keep
        self._timeout_s = timeout_s
        self._rest = -1
        """Bytes of the current chunk (or of a sized body) not yet handed over; -1 before the first."""
        self._pieces: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's pieces. A reader that stops early leaves the rest to a later one (the openai
        client drains a stream it has read up to ``[DONE]`` by iterating it anew), which goes on
        where it stopped; ``aclose`` ends it."""
        conn = self._conn
        if conn is None:
            raise httpx2.StreamClosed()
        if self._pieces is None:
            if self._length >= 0:
                self._pieces = self._sized(conn, self._length)
            elif self._length == CHUNKED:
                self._pieces = self._chunked(conn)
            else:
                self._pieces = self._until_close(conn)
        pieces = self._pieces
        try:
            while True:
                try:
                    piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                yield piece
        except GeneratorExit:  # (this reader stopped: the body stays for another, or for aclose)
            return
        except BaseException:
            self._done(reuse=False)
            raise
        self._done(reuse=self._keep)

    async def aclose(self) -> None:
        """A body not read to its end leaves its connection unusable, unless all that is left of it
        is the end of a chunked one (the openai client closes a stream once it has read its last
        event, before that end): arrived already, the connection is kept; on its way, it is waited
        for in the background (``END_WAIT_S`` at most) while the caller goes on."""
        conn = self._conn
        if conn is not None and self._length == CHUNKED and self._rest == 0 and LAST_CHUNK.startswith(conn.buffer):
            if conn.buffer == LAST_CHUNK:
                conn.buffer.clear()
                self._done(reuse=self._keep)
                return
            if self._keep:
                self._conn = None
                self._owner.keep_after_end(conn, self._timeout_s)
                return
        self._done(reuse=False)

    def _done(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._owner.release(conn, reuse)

    async def _sized(self, conn: Connection, length: int) -> AsyncIterator[bytes]:
        left = length
        while left > 0:
            if not conn.buffer:
                if conn.ended:
                    raise conn.ended_error(f"the end of the response's body ({left} of {length} bytes missing)")
                await conn.receive(self._timeout_s)
                continue
            piece = bytes(conn.buffer[:left])
            del conn.buffer[:left]
            left -= len(piece)
            self._rest = left
            yield piece

    async def _chunked(self, conn: Connection) -> AsyncIterator[bytes]:
        while True:
            size_text = (await self._line(conn)).partition(b";")[0].strip(b" \t")
            if not HEX.fullmatch(size_text):
                raise httpx2.RemoteProtocolError(f"not a chunk size: {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                for _ in range(MAX_LINES):  # trailers, up to an empty line
                    if not await self._line(conn):
                        return
                raise httpx2.RemoteProtocolError(f"over {MAX_LINES} trailer lines")
            async for piece in self._sized(conn, size):
                yield piece
            if await self._line(conn):
                raise httpx2.RemoteProtocolError("a chunk is longer than its size says")

    async def _line(self, conn: Connection) -> bytes:
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_LINE_BYTES:
                raise httpx2.RemoteProtocolError(f"a line of the chunked body is over {MAX_LINE_BYTES} bytes")
            if conn.ended:
                raise conn.ended_error("the end of the response's chunked body")
            await conn.receive(self._timeout_s)
        line = bytes(conn.buffer[:end])
        del conn.buffer[: end + 2]
        return line

    async def _until_close(self, conn: Connection) -> AsyncIterator[bytes]:
        while True:
            if conn.buffer:
                piece = bytes(conn.buffer)
                conn.buffer.clear()
                yield piece
            elif conn.ended:
                if conn.lost is not None:
                    raise conn.ended_error("the end of the response's body")
                return
            else:
                await conn.receive(self._timeout_s)
