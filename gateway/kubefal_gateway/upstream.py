"""A small HTTP/1.1 keep-alive client from the gateway to runners, built on httptools.

Why not httpx or aiohttp: on this machine httpx costs 0.8-2.5 ms of CPU per proxied request and
aiohttp about 90 us more than this client (performance.md, proxy-floor.md). The gateway forwards
tiny JSON bodies at thousands of requests per second, so the hop must stay near the kernel floor.

What it does: one pool of idle connections per runner origin (LIFO, so warm sockets are reused),
requests written in one `transport.write`, responses parsed by httptools either buffered (the hot
path: one future resolved when the message is complete) or streamed (SSE: headers first, then body
chunks as they arrive). A reused connection that dies before any response byte arrives is stale
(uvicorn closes the connection after an unhandled 500 in the app, fal-compat §2.3): the request
is resent once on a fresh connection. Any other failure surfaces as `UpstreamError` for the
dispatcher's retry policy.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import typing
from collections.abc import AsyncIterator

import httptools

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)


STREAM_HIGH_WATER = 64
"""Streamed chunks buffered before the runner connection stops being read (back-pressure)."""
STREAM_LOW_WATER = 16


class UpstreamError(Exception):
    """The runner could not be reached, or the connection broke during the exchange."""

    def __init__(self, message: str, *, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class _StaleConnection(UpstreamError):
    """A pooled connection failed before any byte of the response: safe to resend once."""


class UpstreamResponse:
    """Status, headers (lower-case names) and, when buffered, the body."""

    __slots__ = ("_connection", "body", "headers", "status")

    def __init__(
        self,
        *,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        connection: _Connection | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._connection = connection

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Stream the body of a response requested with `stream=True`."""
        connection = self._connection
        if connection is None:
            if self.body:
                yield self.body
            return
        chunks = connection.chunks
        while True:
            chunk = await chunks.get()
            connection.chunk_taken()
            if chunk is None:
                break
            yield chunk
        if connection.failure is not None:
            raise connection.failure
        self._connection = None
        connection.finish()

    def abandon(self) -> None:
        """Drop a streamed response that will not be read to the end (closes the socket)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; exactly one exchange at a time."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.streaming = False
        self.got_bytes = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.failure: UpstreamError | None = None
        self.message_done = False
        self.keep_alive = True
        self.reading_paused = False

    def chunk_taken(self) -> None:
        """A streamed chunk was consumed: resume reading once the backlog is small again."""
        if self.reading_paused and self.chunks.qsize() <= STREAM_LOW_WATER:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(
                UpstreamError(f"invalid response from runner: {error}", response_started=True)
            )
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.message_done and (self.waiter is not None or self.streaming):
            reason = f"connection to runner lost: {exc or 'closed by peer'}"
            if self.used and not self.got_bytes:
                self._fail(_StaleConnection(reason))
            else:
                self._fail(UpstreamError(reason, response_started=self.got_bytes))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self.streaming and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(
                UpstreamResponse(
                    status=self.status, headers=self.headers, body=b"", connection=self
                )
            )
            self.waiter = None

    def on_body(self, body: bytes) -> None:
        if self.streaming:
            self.chunks.put_nowait(body)
            if self.chunks.qsize() >= STREAM_HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()  # the client reads slower than the runner writes
                self.reading_paused = True
        else:
            self.body_parts.append(body)

    def on_message_complete(self) -> None:
        self.message_done = True
        if self.streaming:
            self.chunks.put_nowait(None)
            return
        waiter = self.waiter
        self.waiter = None
        body = self.body_parts[0] if len(self.body_parts) == 1 else b"".join(self.body_parts)
        response = UpstreamResponse(
            status=self.status, headers=self.headers, body=body, connection=None
        )
        self.finish()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # exchange management
    def _fail(self, error: UpstreamError) -> None:
        if self.streaming and self.waiter is None:
            self.failure = error
            self.chunks.put_nowait(None)
            return
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def start(self, payload: bytes, *, streaming: bool) -> asyncio.Future[UpstreamResponse]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.streaming = streaming
        self.got_bytes = False
        self.message_done = False
        self.status = 0
        self.headers = []
        self.body_parts = []
        self.failure = None
        if streaming:
            self.chunks = asyncio.Queue()
        if self.transport is None or self.closed:
            raise _StaleConnection("connection closed before the request was sent")
        self.transport.write(payload)
        return self.waiter

    def finish(self) -> None:
        """The exchange is over: back to the pool if the connection can be reused."""
        self.used = True
        self.streaming = False
        if self.closed or not self.keep_alive:
            self.close()
            return
        self.pool.release(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class OriginPool:
    """Idle keep-alive connections to one runner (`host:port`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        connect_timeout: float,
        max_idle: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.host_header = f"{host}:{port}".encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: collections.deque[_Connection] = collections.deque()

    def release(self, connection: _Connection) -> None:
        if len(self.idle) >= self.max_idle:
            connection.close()
        else:
            self.idle.append(connection)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    host=self.host,
                    port=self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except (OSError, TimeoutError) as error:
            raise UpstreamError(
                f"cannot connect to runner {self.host}:{self.port}: {error}"
            ) from error
        return protocol

    async def _acquire(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
        return await self._connect()

    def _payload(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1\r\n".encode(),
            b"host: ",
            self.host_header,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stream: bool = False,
    ) -> UpstreamResponse:
        """Send one request; headers must already exclude hop-by-hop ones."""
        payload = self._payload(method, target, headers, body)
        for _ in range(2):
            connection = await self._acquire()
            try:
                return await connection.start(payload, streaming=stream)
            except _StaleConnection:
                connection.close()
                continue
            except BaseException:
                connection.close()
                raise
        raise UpstreamError(f"runner {self.host}:{self.port} keeps closing connections")

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class UpstreamClient:
    """All origin pools of the gateway, owned by the server's lifespan."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        max_idle_per_origin: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        """When set, every origin is spoken to over TLS (runners serving HTTPS)."""
        self.connect_timeout = connect_timeout
        self.max_idle_per_origin = max_idle_per_origin
        self.pools: dict[tuple[str, int], OriginPool] = {}

    def pool(self, host: str, port: int) -> OriginPool:
        key = (host, port)
        pool = self.pools.get(key)
        if pool is None:
            pool = OriginPool(
                host=host,
                port=port,
                connect_timeout=self.connect_timeout,
                max_idle=self.max_idle_per_origin,
                ssl_context=self.ssl_context,
            )
            self.pools[key] = pool
        return pool

    def forget(self, host: str, port: int) -> None:
        pool = self.pools.pop((host, port), None)
        if pool is not None:
            pool.close()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
