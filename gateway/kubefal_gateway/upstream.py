"""A small HTTP/1.1 keep-alive client from the gateway to runners, built on httptools.

Why not httpx or aiohttp: on this machine httpx costs 0.8-2.5 ms of CPU per proxied request and
aiohttp about 90 us more than this client (docs/design-decisions.md). The gateway forwards
tiny JSON bodies at thousands of requests per second, so the hop must stay near the kernel floor.

What it does: one pool of idle connections per runner origin (LIFO, so warm sockets are reused),
requests written in one `transport.write`, responses parsed by httptools either buffered (the hot
path: one future resolved when the message is complete) or streamed (SSE: headers first, then body
chunks as they arrive). Any failure surfaces as `UpstreamError` for the dispatcher's policy.

Resending (decided here, documented in the dispatcher): a request is written to a runner at most
once unless that is provably harmless. It is resent on a fresh connection only when

* the pooled connection was found closed before a byte of the request was written, or
* the method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and the reused connection
  died before any byte of the answer arrived.

A POST whose reused connection dies is not resent: the runner may have read and started it (its
uvicorn reads pipelined bytes before it closes), and resending would run it twice behind the
back of the app's `skipRetryConditions`. It surfaces as `UpstreamError(sent=True)`. To keep that
rare, the pool never reuses a connection that uvicorn is about to close: none after a 500
(uvicorn closes the connection after an unhandled exception, once its traceback is logged, so a
request sent meanwhile would be lost), none with `connection: close`, and none idle for longer
than `idle_seconds` (below the runner's keep-alive timeout of 300 s).

Every request line and header is checked before it is written (`targets.check_target`, no CR,
LF or NUL anywhere in the head, header names are tokens): `InvalidRequest` otherwise. A buffered
answer longer than `max_body` is not read further: `ResponseTooLarge`, and the connection is
closed.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import typing
from collections.abc import AsyncIterator

import httptools

from kubefal_gateway import targets

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


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
DEFAULT_IDLE_SECONDS = 60.0
"""A pooled connection idle longer than this is closed instead of reused (runners keep idle
connections for 300 s, fal's SDK the same)."""
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKED_NAMES: set[bytes] = set()
"""Header names already found to be tokens (most requests repeat the same few)."""
MAX_CHECKED_NAMES = 4096


def _check_name(name: bytes) -> None:
    if not name or name.translate(None, _TOKEN_BYTES):
        raise InvalidRequest(f"invalid header name {name[:40]!r}")
    if len(_CHECKED_NAMES) < MAX_CHECKED_NAMES:
        _CHECKED_NAMES.add(name)


NO_REUSE_STATUS = 500
"""uvicorn closes the connection after an app's unhandled exception (which answers 500)."""

STREAM_HIGH_WATER = 64
"""Streamed chunks buffered before the runner connection stops being read (back-pressure)."""
STREAM_LOW_WATER = 16


class UpstreamError(Exception):
    """The runner could not be reached, or the connection broke during the exchange.

    `sent` is False only when no byte of the request can have reached the runner (the connection
    could not be made): then it provably did not run the request."""

    def __init__(self, message: str, *, response_started: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.response_started = response_started
        self.sent = sent


class _StaleConnection(UpstreamError):
    """A pooled connection failed before any byte of the response."""


class InvalidRequest(ValueError):
    """The request line or a header holds bytes that must never be written to a runner."""


class ResponseTooLarge(Exception):
    """A buffered answer exceeded the caller's `max_body`; the connection was closed."""

    def __init__(self, limit: int, size: int | None) -> None:
        shown = "more than" if size is None else f"{size} bytes,"
        super().__init__(f"Result of {shown} exceeds the limit of {limit} bytes")
        self.limit = limit
        self.size = size


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
        self.max_body: int | None = None
        self.body_size = 0
        self.idle_since = 0.0

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
        self.keep_alive = self.parser.should_keep_alive() and self.status != NO_REUSE_STATUS
        limit = self.max_body
        if limit is not None and not self.streaming:
            for name, value in self.headers:
                if name == b"content-length":
                    try:
                        size = int(value)
                    except ValueError:
                        break
                    if size > limit:
                        self._too_large(size)
                    break
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
        elif self.waiter is not None:
            limit = self.max_body
            if limit is not None:
                self.body_size += len(body)
                if self.body_size > limit:
                    self._too_large(None)
                    return
            self.body_parts.append(body)

    def _too_large(self, size: int | None) -> None:
        assert self.max_body is not None
        waiter = self.waiter
        self.waiter = None
        self.body_parts = []
        self.keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(ResponseTooLarge(self.max_body, size))
        self.close()

    def on_message_complete(self) -> None:
        self.message_done = True
        if self.streaming:
            self.chunks.put_nowait(None)
            return
        waiter = self.waiter
        if waiter is None:  # abandoned (too large): nothing to deliver, nothing to reuse
            self.close()
            return
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

    def start(
        self, payload: bytes, *, streaming: bool, max_body: int | None = None
    ) -> asyncio.Future[UpstreamResponse]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.streaming = streaming
        self.max_body = max_body
        self.body_size = 0
        self.got_bytes = False
        self.message_done = False
        self.status = 0
        self.headers = []
        self.body_parts = []
        self.failure = None
        if streaming:
            self.chunks = asyncio.Queue()
        if self.transport is None or self.closed or self.transport.is_closing():
            raise _StaleConnection("connection closed before the request was sent", sent=False)
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
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.ssl_context = ssl_context
        self.idle_seconds = idle_seconds
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
            connection.idle_since = time.monotonic()
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
                f"cannot connect to runner {self.host}:{self.port}: {error}", sent=False
            ) from error
        return protocol

    async def _acquire(self) -> _Connection:
        if self.idle:
            oldest_usable = time.monotonic() - self.idle_seconds
            while self.idle:
                connection = self.idle.pop()
                if connection.closed:
                    continue
                if connection.idle_since < oldest_usable:
                    connection.close()  # the runner may be closing it right now
                    continue
                return connection
        return await self._connect()

    def _payload(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        if not method.isalpha() or not method.isascii():
            raise InvalidRequest(f"invalid method {method[:20]!r}")
        if not targets.valid_target(target):
            raise InvalidRequest(f"refusing to send a request for {target[:200]!r} to a runner")
        lines = [
            f"{method} {target} HTTP/1.1\r\n".encode(),
            b"host: ",
            self.host_header,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        checked = _CHECKED_NAMES
        for name, value in headers:
            if name not in checked:
                _check_name(name)
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Exactly the line breaks written above, and no NUL: no value can add a line.
        if len(head) - len(head.translate(None, b"\r\n\0")) != 2 * len(headers) + 8:
            raise InvalidRequest("a header value contains CR, LF or NUL")
        return head + body if body else head

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        stream: bool = False,
        max_body: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; headers must already exclude hop-by-hop ones.

        `max_body` bounds a buffered answer (ResponseTooLarge beyond it). See the module
        docstring for when a request is resent."""
        payload = self._payload(method, target, headers, body)
        resendable = method in IDEMPOTENT_METHODS
        for _ in range(2):
            connection = await self._acquire()
            try:
                return await connection.start(payload, streaming=stream, max_body=max_body)
            except _StaleConnection as error:
                connection.close()
                if error.sent and not resendable:
                    raise UpstreamError(str(error)) from None
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
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
    ) -> None:
        self.ssl_context = ssl_context
        """When set, every origin is spoken to over TLS (runners serving HTTPS)."""
        self.idle_seconds = idle_seconds
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
                idle_seconds=self.idle_seconds,
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
