"""The control plane's TLS front door: ALPN splits one port into gRPC and REST, with limits.

A real grpcio server on a Unix socket behind a real :class:`FrontDoor`, the real REST
connection handling (:class:`RestApi`, whose routes that need the cluster are not reached
here), and real clients: grpcio over TLS, httpx, raw sockets for the misbehaving ones.
"""

from __future__ import annotations

import contextlib
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest

from kubefal_cli import localca
from kubefal_controlplane import auth, frontdoor, rest, settings
from testkit import waiting

SERVICE = "kubefal.test.Echo"


@pytest.fixture
def tls(tmp_path: pathlib.Path) -> localca.LocalTls:
    return localca.ensure(tmp_path / "ca")


@contextlib.contextmanager
def _serving(
    tmp_path: pathlib.Path, tls: localca.LocalTls, **limits: Any
) -> Iterator[frontdoor.FrontDoor]:
    socket_path = str(tmp_path / "grpc.sock")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2),
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    )
    peers = auth.PeerAddresses()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request[::-1])
    # The client address the key check's per-IP throttle would charge for this call.
    client = grpc.unary_unary_rpc_method_handler(
        lambda request, context: str(peers.client(context.peer())).encode()
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Reverse": handler, "Client": client}),)
    )
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    config = settings.Settings(local_credentials=True, rest_header_timeout=1.0)
    api = rest.RestApi(
        controller=None,  # type: ignore[arg-type]
        logs=None,
        authenticator=None,  # type: ignore[arg-type]
        settings=config,
    )
    door = frontdoor.FrontDoor(
        host="127.0.0.1",
        port=0,
        context=frontdoor.server_context(str(tls.server_cert), str(tls.server_key)),
        grpc_socket=socket_path,
        rest=api.serve,
        handshake_timeout=1.0,
        peers=peers,
        **({"max_connections": 3} | limits),
    )
    door.start()
    try:
        yield door
    finally:
        door.stop(grace=1.0)
        door.close_socket()
        api.close()
        server.stop(0).wait()


@pytest.fixture
def door(tmp_path: pathlib.Path, tls: localca.LocalTls) -> Iterator[frontdoor.FrontDoor]:
    with _serving(tmp_path, tls) as serving:
        yield serving


def _reverse(door: frontdoor.FrontDoor, tls: localca.LocalTls, payload: bytes) -> Any:
    credentials = grpc.ssl_channel_credentials(tls.ca_bundle.read_bytes())
    with grpc.secure_channel(
        f"localhost:{door.port}",
        credentials,
        options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
    ) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Reverse")
        return call(payload, timeout=30)


def test_h2_reaches_grpc_and_http1_reaches_rest_on_one_port(
    door: frontdoor.FrontDoor, tls: localca.LocalTls
) -> None:
    assert _reverse(door, tls, b"abc") == b"cba"
    big = bytes(range(256)) * (3 * 4096)  # 3 MiB, many TLS records and HTTP/2 frames
    assert _reverse(door, tls, big) == big[::-1]

    with httpx.Client(verify=str(tls.ca_bundle), timeout=30) as client:
        health = client.get(f"https://localhost:{door.port}/healthz")
        unknown = client.get(f"https://localhost:{door.port}/nope")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert health.http_version == "HTTP/1.1"
    assert unknown.status_code == 404
    assert "not served" in unknown.json()["detail"]


def _tls_socket(
    door: frontdoor.FrontDoor, tls: localca.LocalTls, *, source: str = "127.0.0.1"
) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(tls.ca_bundle))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", door.port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(raw, server_hostname="localhost")


def _healthz(door: frontdoor.FrontDoor, tls: localca.LocalTls, *, source: str) -> bytes:
    with _tls_socket(door, tls, source=source) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return _read_all(client)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_slow_request_head_gets_408_and_a_huge_one_431(
    door: frontdoor.FrontDoor, tls: localca.LocalTls
) -> None:
    with _tls_socket(door, tls) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        answer = _read_all(slow)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"detail"' in answer

    with _tls_socket(door, tls) as huge:
        huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 100_000 + b"\r\n\r\n")
        answer = _read_all(huge)
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"detail"' in answer


def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    door: frontdoor.FrontDoor,
) -> None:
    with socket.create_connection(("127.0.0.1", door.port), timeout=30) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server, not by this timeout
    assert time.monotonic() - started < 25


def test_connections_over_the_cap_are_refused_and_the_port_recovers(
    door: frontdoor.FrontDoor, tls: localca.LocalTls
) -> None:
    held = [socket.create_connection(("127.0.0.1", door.port), timeout=30) for _ in range(3)]
    try:
        waiting.wait_for(
            lambda: door.open_connections == 3, timeout=30, description="three open connections"
        )
        with socket.create_connection(("127.0.0.1", door.port), timeout=30) as extra:
            try:
                refused = extra.recv(1) == b""
            except ConnectionResetError:
                refused = True
        assert refused
    finally:
        for sock in held:
            sock.close()
    waiting.wait_for(
        lambda: door.open_connections == 0, timeout=30, description="the connections to close"
    )
    assert _reverse(door, tls, b"again") == b"niaga"


def test_the_grpc_side_knows_each_call_s_client_address_from_the_tls_connection(
    door: frontdoor.FrontDoor, tls: localca.LocalTls
) -> None:
    """grpcio behind the relay saw every call come from the Unix socket, so a per-IP throttle of
    the key check had no client to count: the relay's socket now names the TLS peer."""
    credentials = grpc.ssl_channel_credentials(tls.ca_bundle.read_bytes())
    with grpc.secure_channel(f"localhost:{door.port}", credentials) as channel:
        client = channel.unary_unary(f"/{SERVICE}/Client")(b"", timeout=30)
        assert len(door.peers) == 1
        # Metadata is the caller's to set: it does not change the address.
        spoofed = channel.unary_unary(f"/{SERVICE}/Client")(
            b"", timeout=30, metadata=[("x-forwarded-for", "10.9.9.9")]
        )
    assert client == spoofed == b"127.0.0.1"
    waiting.wait_for(lambda: len(door.peers) == 0, timeout=30, description="the relay to end")


def test_connections_over_the_per_ip_limit_are_refused_while_another_client_connects(
    tmp_path: pathlib.Path, tls: localca.LocalTls
) -> None:
    """One client could hold every place under --rest-max-connections (idle h2 connections,
    say); --max-connections-per-ip stops it at its own share."""
    with _serving(tmp_path, tls, max_connections=10, max_connections_per_ip=2) as door:
        held = [_tls_socket(door, tls) for _ in range(2)]
        try:
            waiting.wait_for(
                lambda: door.connections_per_ip.get("127.0.0.1") == 2,
                timeout=30,
                description="two connections from 127.0.0.1",
            )
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                _tls_socket(door, tls).close()
            answer = _healthz(door, tls, source="127.0.0.2")
            assert answer.startswith(b"HTTP/1.1 200") and b'"ok"' in answer
        finally:
            for sock in held:
                sock.close()
        waiting.wait_for(
            lambda: door.connections_per_ip == {}, timeout=30, description="the count to drop"
        )
        assert _healthz(door, tls, source="127.0.0.1").startswith(b"HTTP/1.1 200")


@pytest.fixture
def flooding_door(tmp_path: pathlib.Path, tls: localca.LocalTls) -> Iterator[frontdoor.FrontDoor]:
    """A front door whose gRPC side answers every connection with 64 MiB at once (the relay
    is a byte pipe: what the upstream says does not matter, only that it is more than the
    buffers on the way hold)."""
    socket_path = str(tmp_path / "flood.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(4)

    def flood() -> None:
        with contextlib.suppress(OSError):
            while True:
                upstream, _ = listener.accept()
                with upstream, contextlib.suppress(OSError):
                    upstream.sendall(b"\0" * (64 * 1024 * 1024))

    threading.Thread(target=flood, name="flood", daemon=True).start()
    door = frontdoor.FrontDoor(
        host="127.0.0.1",
        port=0,
        context=frontdoor.server_context(str(tls.server_cert), str(tls.server_key)),
        grpc_socket=socket_path,
        rest=None,  # type: ignore[arg-type]
        max_connections=3,
        handshake_timeout=1.0,
    )
    door.start()
    yield door
    door.stop(grace=1.0)
    door.close_socket()
    listener.close()


def test_a_grpc_client_that_stops_reading_is_cut_off_and_frees_its_place(
    flooding_door: frontdoor.FrontDoor, tls: localca.LocalTls
) -> None:
    """It held the connection for ever (the relay waited on ``drain`` without a limit), so
    --rest-max-connections such clients shut the port for everyone."""
    context = ssl.create_default_context(cafile=str(tls.ca_bundle))
    context.set_alpn_protocols(["h2"])
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(30)
    raw.connect(("127.0.0.1", flooding_door.port))
    with context.wrap_socket(raw, server_hostname="localhost") as client:
        assert client.selected_alpn_protocol() == "h2"
        waiting.wait_for(
            lambda: flooding_door.open_connections == 1, timeout=30, description="the connection"
        )
        # Never read: the front door must give up on its own.
        waiting.wait_for(
            lambda: flooding_door.open_connections == 0,
            timeout=60,
            description="the front door to drop the client that does not read",
        )
