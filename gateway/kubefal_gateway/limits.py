"""Connection-level limits of the gateway's HTTP listeners: header size and count, header-read
and idle timeouts, and caps on open connections (per listener and per client address).

Why it exists: uvicorn's httptools protocol has no cap on the size of a request's headers and
no timeout before a request's headers are complete, so unauthenticated connections sending
endless headers grew the gateway by 400 MiB, and a connection that sends its headers slowly
(slowloris) or nothing at all after the TLS handshake stayed open forever. `GuardedProtocol` is a
thin subclass of uvicorn's `HttpToolsProtocol` that adds, before the ASGI app ever sees a request:

* `max_header_bytes`: the request line and headers of one request may take at most this many
  bytes; the bytes of a head are counted as they arrive (so the parser's buffers stay bounded
  too), and a longer head gets `431` with a JSON `detail` and the connection is closed;
* `max_headers`: more header fields get `431` likewise;
* `header_timeout`: from the connection's start (after the TLS handshake), and from the first
  byte of each following request, the head must be complete within this many seconds, else
  `408` and the connection is closed;
* `idle_timeout`: uvicorn's keep-alive timeout between requests;
* `max_connections` / `max_connections_per_ip`: a connection over either cap gets `503` and is
  closed at once (`ConnectionLimiter`, one per listener).

Writes are corked (`CorkedTransport`): uvicorn writes a response's head and its body in two
calls, each a send(2) of its own (a TLS record each with TLS); the head is held until the body
follows in the same step, or until the next loop turn, so a response costs one system call.

On a plain-TCP connection of a listener built with `sendfile=True` (the REST listener), each
request's scope carries the `kubefal.sendfile` extension (zerocopy.py): file downloads go from
the page cache to the socket without passing through Python.

The TLS handshake timeout is the event loop's `ssl_handshake_timeout`, set by server.py. Bodies
are bounded by the handlers (`--max-request-bytes`). On the hot path the guard adds a counter
update per received chunk and one timer per connection that wakes at most every
`header_timeout` (a busy keep-alive connection arms no timer per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import typing
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from kubefal_gateway import zerocopy

LOGGER = logging.getLogger(__name__)

ABORT_GRACE = 2.0
"""Seconds a refused connection gets to take its error response before it is aborted."""


@dataclasses.dataclass(frozen=True)
class ListenerLimits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 128
    header_timeout: float = 10.0
    max_connections: int = 4096
    max_connections_per_ip: int = 0


class ConnectionLimiter:
    """Open connections of one listener, in total and per client address."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self._per_ip: dict[str, int] = {}

    def acquire(self, address: str | None) -> bool:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            return False
        per_ip = self.limits.max_connections_per_ip
        if per_ip > 0 and address is not None:
            count = self._per_ip.get(address, 0)
            if count >= per_ip:
                self.refused += 1
                return False
            self._per_ip[address] = count + 1
        self.open += 1
        return True

    def release(self, address: str | None) -> None:
        self.open -= 1
        if self.limits.max_connections_per_ip > 0 and address is not None:
            count = self._per_ip.get(address, 0) - 1
            if count > 0:
                self._per_ip[address] = count
            else:
                self._per_ip.pop(address, None)


class _HeadRefused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def error_response(status: int, detail: str) -> bytes:
    """A complete HTTP/1.1 error response with a JSON `detail`, closing the connection."""
    body = orjson.dumps({"detail": detail})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


CORK_JOIN_LIMIT = 256 * 1024
"""Bodies up to this size are joined with the held head into one write; larger ones are
written after it (a copy of them would cost more than the second system call)."""


class CorkedTransport:
    """A transport whose writes within one event-loop step go out as one.

    The first write is held and a flush is scheduled for the next loop turn; a write that
    follows before then is sent together with it. `close` sends what is held first; everything
    but `write`, `writelines`, `close`, `abort` and `write_eof` is the wrapped transport's."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            if not data:
                return
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._held = None
        if len(data) <= CORK_JOIN_LIMIT:
            self._transport.write(held + bytes(data))
        else:
            self._transport.write(held)
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    def __init__(
        self, *args: Any, limiter: ConnectionLimiter, sendfile: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._offer_sendfile = sendfile
        self._raw_transport: asyncio.Transport | None = None
        self._limiter = limiter
        self._limits = limiter.limits
        self._address: str | None = None
        self._counted = False
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started: float | None = None
        self._refused = False
        self._skip_chunk = False

    # ---- connection lifecycle ----
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if not self._limiter.acquire(self._address):
            self.transport = transport
            self._refuse(503, "Too many open connections; retry later")
            return
        self._counted = True
        if self._offer_sendfile and transport.get_extra_info("sslcontext") is None:
            self._raw_transport = transport  # plain TCP: zero-copy file responses offered
        corked = typing.cast(asyncio.Transport, CorkedTransport(transport, self.loop))
        super().connection_made(corked)
        self._head_started = self.loop.time()
        self._arm_head_timer(self._limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._counted:
            self._counted = False
            self._limiter.release(self._address)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the transport over; this connection stops counting here.
        self._cancel_head_timer()
        if self._counted:
            self._counted = False
            self._limiter.release(self._address)
        super().handle_websocket_upgrade()

    # ---- data ----
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if self._in_head and self._head_started is None:
            self._head_started = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _HeadRefused):
                self._refuse(cause.status, cause.detail)
            else:
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._skip_chunk:
            # A head that began after a body in this chunk: its bytes here are at most one chunk.
            self._skip_chunk = False
        elif self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(
                    431,
                    f"Request line and headers exceed {self._limits.max_header_bytes} bytes",
                )

    # ---- parser callbacks ----
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._head_started is None:
            self._head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._head_started = None
        # Counted here, not per header: the byte cap already bounds the parser's memory.
        if len(self.headers) > self._limits.max_headers:
            raise _HeadRefused(431, f"More than {self._limits.max_headers} header fields")
        super().on_headers_complete()
        cycle = self.cycle
        if self._raw_transport is not None and cycle is not None and cycle.scope is self.scope:
            # Bound to this request's cycle (a pipelined next request gets its own).
            extensions: dict[str, Any] = {
                zerocopy.EXTENSION: functools.partial(self._sendfile, cycle)
            }
            self.scope["extensions"] = extensions

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if self.parser.should_upgrade() or cycle.body or cycle.response_complete:
            if isinstance(cycle.body, bytes):  # a chunk handed on as it was: extend a copy
                cycle.body = bytearray(cycle.body)
            super().on_body(body)
            return
        # The common case (the handler keeps up): the parser's chunk becomes the next body
        # message as it is; uvicorn would copy it into a bytearray and out again (two copies
        # per byte of an upload). `bytes(chunk)` in uvicorn's receive() is the chunk itself.
        cycle.body = body  # type: ignore[assignment]
        if len(body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._skip_chunk = True

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    async def _sendfile(
        self, cycle: RequestResponseCycle, fd: int, offset: int, count: int
    ) -> None:
        """`zerocopy.EXTENSION`: `count` bytes of the file `fd` as part of `cycle`'s body,
        counted against its Content-Length like a body message."""
        transport = self._raw_transport
        if (
            transport is None
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not False
            or count > cycle.expected_content_length
        ):
            raise RuntimeError("sendfile needs a started response with room in its Content-Length")
        if cycle.disconnected:
            raise zerocopy.SendfileError("the client went away")
        if count <= 0:
            return
        typing.cast(CorkedTransport, cycle.transport).flush()  # the head goes out first
        await zerocopy.sendfile(
            transport, fd, offset, count, stall_timeout=float(self.timeout_keep_alive)
        )
        cycle.expected_content_length -= count

    # ---- refusing ----
    def _arm_head_timer(self, delay: float) -> None:
        self._head_timer = self.loop.call_later(delay, self._check_head)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _check_head(self) -> None:
        """One timer per connection, not per request: it wakes every `header_timeout` at most
        and refuses the connection when the head in progress started that long ago."""
        self._head_timer = None
        if self._refused or self.transport is None or self.transport.is_closing():
            return
        timeout = self._limits.header_timeout
        started = self._head_started
        if self._in_head and started is not None:
            elapsed = self.loop.time() - started
            if elapsed >= timeout:
                self._refuse(408, f"Request headers not received within {timeout} s")
                return
            self._arm_head_timer(timeout - elapsed)
            return
        self._arm_head_timer(timeout)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` when no response is under way, and close the connection."""
        self._refused = True
        self._cancel_head_timer()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            transport.write(error_response(status, detail))
        transport.close()
        # A TLS close waits for the peer's close_notify; a hostile peer gets a bounded grace.
        self.loop.call_later(ABORT_GRACE, _abort, transport)


def _abort(transport: asyncio.Transport) -> None:
    with contextlib.suppress(Exception):
        transport.abort()
