"""The control plane's one TLS port, split by ALPN: HTTP/2 to gRPC, HTTP/1.1 to REST.

Why one port: fal's SDK sends its REST calls (``fal runners logs``, ``fal files``,
``fal.sync_dir``, app_files) to the gRPC host itself when the host has no ``api`` in its
name, as ``127.0.0.1:PORT`` and most self-hosted names do not; a second port would need a
client setting fal does not have. gRPC clients always negotiate ``h2`` by ALPN (gRPC needs
HTTP/2); fal's REST client (httpx without HTTP/2) offers only ``http/1.1``. So the TLS
handshake already says which side a connection is for.

How: grpcio serves ``IsolateController`` without TLS on a Unix socket in a private directory
(mode 0700, so no other local user can reach it; every call is still authenticated by its API
key). This module accepts TCP connections, counts them against ``--rest-max-connections``
*before* the handshake, does the handshake (``--rest-header-timeout`` bounds it), then either
relays the decrypted bytes of an ``h2`` connection to that socket unchanged, both ways, or
hands an ``http/1.1`` (or no-ALPN) connection to :class:`kubefal_controlplane.rest.RestApi`.
gRPC keeps its own HTTP/2 implementation, flow control, limits and deadlines; the relay is a
byte pipe of 64 KiB reads with backpressure (``drain``, each within ``--rest-header-timeout``),
on one asyncio loop in its own thread.

Per client: at most ``--max-connections-per-ip`` connections from one IP are open at once (the
next is closed before the handshake), so one client cannot hold every place under
``--rest-max-connections``; grpcio closes an h2 connection with no call in progress after
``--grpc-idle-timeout``. The relay connects to grpcio from a Unix socket bound to a fresh path
of the socket's private directory and records path -> client IP in
:class:`kubefal_controlplane.auth.PeerAddresses`: grpcio names that path as the call's peer, so
the key check's per-IP throttle sees the TLS client's real address, which no caller can set.

Consequence: a REST client that offers ``h2`` (``curl`` does by default) reaches gRPC, which
refuses it; use HTTP/1.1 (``curl --http1.1``). The relay's cost is in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Final

from kubefal_controlplane import auth

logger = logging.getLogger(__name__)

READ_CHUNK: Final = 64 * 1024
ALPN_GRPC: Final = "h2"
ALPN_REST: Final = "http/1.1"


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ with the certificate, offering ``h2`` (gRPC) and ``http/1.1`` (REST)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols([ALPN_GRPC, ALPN_REST])
    return context


RestHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FrontDoor:
    """The listening socket and its event loop thread."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        context: ssl.SSLContext,
        grpc_socket: str,
        rest: RestHandler,
        max_connections: int,
        handshake_timeout: float,
        max_connections_per_ip: int = 0,
        peers: auth.PeerAddresses | None = None,
    ) -> None:
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=512)
        self.port = int(self._socket.getsockname()[1])
        self.context = context
        self.grpc_socket = grpc_socket
        self.rest = rest
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.open_connections = 0
        self.max_connections_per_ip = max_connections_per_ip
        self.connections_per_ip: dict[str, int] = {}
        self.peers = peers if peers is not None else auth.PeerAddresses()
        self._upstream_names = itertools.count()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(
            target=self._run, name="controlplane-frontdoor", daemon=True
        )
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Accept connections (the socket is bound already: :attr:`port`)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise OSError(f"cannot serve {self.host}:{self.port}: {self._error}")

    def close_socket(self) -> None:
        """Release the port of a front door that was never started."""
        self._socket.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                asyncio.start_server(self._accept, sock=self._socket, limit=READ_CHUNK)
            )
        except BaseException as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def call(self, coroutine: Awaitable[None], timeout: float) -> None:
        """Run ``coroutine`` on the front door's loop and wait for it (from another thread)."""

        async def wrapped() -> None:
            await coroutine

        asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def stop_accepting(self) -> None:
        if self._server is None or not self.loop.is_running():
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()

        self.call(close(), timeout=5.0)

    def stop(self, grace: float) -> None:
        """Stop accepting, give open connections ``grace`` seconds, then cut them."""
        if not self.loop.is_running():
            return

        async def drain() -> None:
            if self._server is not None:
                self._server.close()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=grace)
            # Whatever is left (connections still open, refused ones closing): cut it.
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others, timeout=2.0)

        with contextlib.suppress(Exception):
            self.call(drain(), timeout=grace + 10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self.loop.close()

    # ---- connections ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.open_connections >= self.max_connections:
            logger.warning(
                "refused a connection: %d open (--rest-max-connections)", self.max_connections
            )
            writer.transport.abort()
            return
        client = auth.socket_ip(writer.get_extra_info("peername")) or "unknown"
        per_ip = self.connections_per_ip.get(client, 0)
        if self.max_connections_per_ip and per_ip >= self.max_connections_per_ip:
            logger.warning(
                "refused a connection from %s: %d open from it (--max-connections-per-ip)",
                client,
                per_ip,
            )
            writer.transport.abort()
            return
        self.connections_per_ip[client] = per_ip + 1
        self.open_connections += 1
        self._tasks.add(task)
        try:
            try:
                await writer.start_tls(self.context, ssl_handshake_timeout=self.handshake_timeout)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError, asyncio.CancelledError):
                writer.transport.abort()
                return
            ssl_object = writer.get_extra_info("ssl_object")
            protocol = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if protocol == ALPN_GRPC:
                await self._relay_grpc(reader, writer, client)
            else:
                await self.rest(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("front door connection failed")
        finally:
            self.open_connections -= 1
            left = self.connections_per_ip.pop(client, 1) - 1
            if left > 0:
                self.connections_per_ip[client] = left
            self._tasks.discard(task)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)

    async def _relay_grpc(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        client: str,
    ) -> None:
        # A fresh name per connection (never reused while this front door runs): grpcio
        # reports it as the peer, and self.peers maps it to the client's IP.
        name = os.path.join(os.path.dirname(self.grpc_socket), f"c{next(self._upstream_names)}")
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.setblocking(False)
            upstream.bind(name)
            os.unlink(name)  # the socket keeps its name; the directory keeps no file
            self.peers.add(name, client)
            await asyncio.get_running_loop().sock_connect(upstream, self.grpc_socket)
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                sock=upstream, limit=READ_CHUNK
            )
        except OSError as error:
            upstream.close()
            self.peers.remove(name)
            logger.error("the gRPC server's socket %s is unreachable: %s", self.grpc_socket, error)
            return

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, half_close: bool
        ) -> None:
            try:
                while data := await source.read(READ_CHUNK):
                    sink.write(data)
                    # A side that stops reading would otherwise hold the connection (and its
                    # place under --rest-max-connections) for ever: as on the REST side, each
                    # part must be taken within --rest-header-timeout. (asyncio.timeout, not
                    # wait_for: no Task per 64 KiB chunk on Python 3.11.)
                    async with asyncio.timeout(self.handshake_timeout):
                        await sink.drain()
            except TimeoutError:
                sink.transport.abort()  # ends the other direction's read as well
            except (OSError, ssl.SSLError, ConnectionError):
                pass
            finally:
                if half_close and sink.can_write_eof():
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                else:
                    sink.close()

        try:
            await asyncio.gather(
                pipe(client_reader, upstream_writer, True),
                pipe(upstream_reader, client_writer, False),
            )
        finally:
            upstream_writer.close()
            self.peers.remove(name)
