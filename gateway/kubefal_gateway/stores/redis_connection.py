"""The Redis queue store's hot-path connection: one auto-pipelined connection per store.

Why it exists (docs/design-decisions.md): redis-py issuing one command per round trip costs
~220 µs of gateway CPU per request; the same commands auto-pipelined over one connection cost
~10-16 µs. `AutoPipeline` sends every command issued in one event-loop turn as one write on one
dedicated connection (hiredis packs and parses) and hands each caller its reply from the protocol
callback; batches pipeline behind each other. It also owns the faults: every connect and every
wait for a reply is bounded by the command timeout (the gateway's ``--redis-timeout``), and
reconnects back off. `sentinel_from_url` turns a ``redis+sentinel://`` URL into the redis-py
Sentinel client the store asks for the current master at every reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
import typing
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.exceptions

from kubefal_gateway import queueing

LOG = logging.getLogger(__name__)

DEFAULT_COMMAND_TIMEOUT = 2.0
"""Seconds Redis may stay silent with replies outstanding (or take to connect) before the
connection is dropped and the calls fail (the gateway's ``--redis-timeout``)."""
RECONNECT_BACKOFF_MIN = 0.05
RECONNECT_BACKOFF_MAX = 1.0
SENTINEL_SCHEME = "redis+sentinel"


class AutoPipeline(asyncio.Protocol):
    """One Redis connection on which every command issued in a loop turn goes out in one write.

    Commands are packed by hiredis at once; the turn's packed commands are written together on
    the next loop iteration (``call_soon``); replies are parsed by hiredis in ``data_received`` and
    resolve the callers' futures in order, with no coroutine per reply. Several batches may be in
    flight at once (true pipelining). redis-py is used only for the rare paths (script loading,
    pub/sub); this is the hot path (docs/design-decisions.md: redis-py costs ~220 µs per
    request, this design ~10-16 µs).

    Faults are bounded: connecting (TCP, AUTH/SELECT and a PING) must finish within
    ``command_timeout``; while replies are outstanding, a server that sends nothing for
    ``command_timeout`` (stalled, or a dead peer) gets its connection aborted, which fails every
    outstanding call with QueueError; the socket has TCP keepalive. After a failed or aborted
    connection, reconnecting waits a backoff that doubles from `RECONNECT_BACKOFF_MIN` to
    `RECONNECT_BACKOFF_MAX`; calls made meanwhile fail at once (the HTTP layer answers 503).
    """

    def __init__(
        self,
        url: str,
        *,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self._options: dict[str, Any] = dict(redis.asyncio.connection.parse_url(url))
        self._command_timeout = command_timeout
        self._address = address
        """Where to connect, asked at each (re)connect (Sentinel); None: the URL's host/port."""
        self._progress_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._backoff = RECONNECT_BACKOFF_MIN
        self._retry_at = 0.0
        self._last_error = ""
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._ready = False
        self._parser = hiredis.Reader()
        self._sent: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outbox: list[bytes] = []
        self._outbox_replies: list[asyncio.Future[Any]] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, or raises ResponseError/QueueError."""
        reply = self._loop.create_future()
        if self._closed:
            reply.set_exception(queueing.QueueError("the queue store is closed"))
            return reply
        self._outbox.append(hiredis.pack_command(args))
        self._outbox_replies.append(reply)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return reply

    @property
    def connected(self) -> bool:
        return self._ready and self._transport is not None

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        if self._transport is None or not self._ready:
            if self._connecting is None:
                if time.monotonic() < self._retry_at:
                    self._fail_outbox(
                        queueing.QueueError(f"redis unavailable (reconnecting): {self._last_error}")
                    )
                    return
                self._connecting = self._loop.create_task(self._connect())
            return
        self._transport.write(b"".join(self._outbox))
        if not self._sent:
            self._progress_at = time.monotonic()
        self._sent.extend(self._outbox_replies)
        self._outbox, self._outbox_replies = [], []
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._command_timeout, self._check_progress)

    def _check_progress(self) -> None:
        """Abort a connection on which outstanding replies made no progress for too long."""
        self._watchdog = None
        if not self._sent or self._transport is None:
            return
        silent = time.monotonic() - self._progress_at
        if silent < self._command_timeout:
            self._watchdog = self._loop.call_later(
                self._command_timeout - silent, self._check_progress
            )
            return
        self._last_error = f"no reply within {self._command_timeout:g} s"
        LOG.warning("redis sent no reply for %.1f s: dropping the connection", silent)
        self._transport.abort()

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_BACKOFF_MAX)

    async def _connect(self) -> None:
        options = self._options
        try:
            async with asyncio.timeout(self._command_timeout):
                if "path" in options:
                    await self._loop.create_unix_connection(lambda: self, options["path"])
                else:
                    tls = None
                    if options.get("connection_class") is redis.asyncio.connection.SSLConnection:
                        tls = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
                    if self._address is not None:
                        host, port = await self._address()
                    else:
                        host, port = options.get("host", "localhost"), options.get("port", 6379)
                    await self._loop.create_connection(lambda: self, host, port, ssl=tls)
                    keepalive(self._transport)
                if self._transport is None:
                    raise queueing.QueueError("the connection closed while it was being set up")
                handshake = []
                if options.get("password"):
                    credentials = [options["username"]] if options.get("username") else []
                    handshake.append(self._send_now("AUTH", *credentials, options["password"]))
                if options.get("db"):
                    handshake.append(self._send_now("SELECT", options["db"]))
                handshake.append(self._send_now("PING"))  # a stalled server accepts TCP
                if self._address is not None:
                    handshake.append(self._send_now("ROLE"))
                replies = await asyncio.gather(*handshake)
                if self._address is not None and replies[-1][0] != b"master":
                    raise queueing.QueueError("the Sentinel-named server is not a master")
        except Exception as error:  # any failure fails the waiting calls; the next call retries
            self._last_error = str(error) or type(error).__name__
            self._schedule_retry()
            if self._transport is not None:
                self._transport.abort()
            self._fail_outbox(queueing.QueueError(f"redis unavailable: {self._last_error}"))
            return
        finally:
            self._connecting = None
        self._ready = True
        self._backoff = RECONNECT_BACKOFF_MIN
        self._retry_at = 0.0
        self._flush()

    def _send_now(self, *args: Any) -> asyncio.Future[Any]:
        assert self._transport is not None
        reply = self._loop.create_future()
        self._transport.write(hiredis.pack_command(args))
        self._sent.append(reply)
        return reply

    def _fail_outbox(self, error: Exception) -> None:
        replies, self._outbox_replies, self._outbox = self._outbox_replies, [], []
        for reply in replies:
            if not reply.done():
                reply.set_exception(error)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self._transport = typing.cast(asyncio.Transport, transport)
        self._parser = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        self._progress_at = time.monotonic()
        self._parser.feed(data)
        while (response := self._parser.gets()) is not False:
            reply = self._sent.popleft()
            if reply.done():
                continue
            if isinstance(response, hiredis.ReplyError):
                message = str(response)
                if message.startswith("READONLY") and self._transport is not None:
                    # The master was demoted (failover): find the new one.
                    self._last_error = message
                    self._loop.call_soon(self._drop)
                error_class = (
                    redis.exceptions.NoScriptError
                    if message.startswith("NOSCRIPT")
                    else redis.exceptions.ResponseError
                )
                reply.set_exception(error_class(message))
            else:
                reply.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ready and not self._closed:
            self._schedule_retry()
            self._last_error = str(exc or self._last_error or "connection closed")
        self._ready = False
        failure = queueing.QueueError(f"redis connection lost: {exc or self._last_error}")
        sent, self._sent = self._sent, collections.deque()
        for reply in sent:
            if not reply.done():
                reply.set_exception(failure)
        if self._outbox and not self._closed and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    async def close(self) -> None:
        """Send what is queued, wait for the replies, close the connection."""
        if self._outbox and not self._flush_scheduled:
            self._flush()
        pending = [*self._sent, *self._outbox_replies]
        self._closed = True
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.close()


def keepalive(transport: asyncio.BaseTransport | None) -> None:
    """TCP keepalive on the connection, so a vanished server (host down, network cut) is noticed
    even while nothing is outstanding: probes after 10 s idle, every 5 s, 3 unanswered = dead."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def sentinel_from_url(url: str, timeout: float) -> tuple[redis.asyncio.sentinel.Sentinel, str, str]:
    """(Sentinel client, service name, the master's plain URL without host) of a
    ``redis+sentinel://`` URL."""
    parsed = urllib.parse.urlsplit(url)
    credentials, _, hosts = parsed.netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for entry in hosts.split(","):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise queueing.QueueError(f"Sentinel address {entry!r} must be host:port")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [part for part in parsed.path.split("/") if part]
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise queueing.QueueError("a redis+sentinel URL's path is /service or /service/db")
    query = urllib.parse.parse_qs(parsed.query)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][-1]
    sentinel = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    if credentials:
        user, _, password = credentials.partition(":")
        sentinel.connection_kwargs["username"] = urllib.parse.unquote(user) or None
        sentinel.connection_kwargs["password"] = urllib.parse.unquote(password) or None
    db = parts[1] if len(parts) == 2 else "0"
    sentinel.connection_kwargs["db"] = int(db)
    master_url = f"redis://{credentials + '@' if credentials else ''}sentinel-master/{db}"
    return sentinel, parts[0], master_url
