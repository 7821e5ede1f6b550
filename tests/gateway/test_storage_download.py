"""File downloads from the embedded store: zero-copy (`sendfile`) on a plain-TCP REST listener,
body messages with TLS; both give the exact bytes, whole or one Range, and both keep the URL's
access checks. Real gateway processes (gwharness), real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubefal_api import apikeys
from kubefal_gateway import limits, zerocopy
from tests.gateway import gwharness, storage_harness

pytestmark = pytest.mark.slow

SIZE = 9 * 1024 * 1024 + 333  # larger than a socket's send buffer: sendfile has to wait


class Stack(storage_harness.FileGateway):
    def __init__(self, workdir: pathlib.Path, *, tls: bool) -> None:
        super().__init__(workdir, tls=gwharness.Tls(workdir) if tls else None)
        self.data = os.urandom(SIZE)

    def http(self) -> httpx.Client:
        verify: Any = str(self.tls.ca_path) if self.tls is not None else False
        return httpx.Client(verify=verify, timeout=120, trust_env=False)

    def auth(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        return {"Authorization": f"Key {key or self.key}"}

    def upload(self) -> str:
        with self.http() as http:
            answer = http.post(
                f"{self.rest_url}/files/upload",
                content=self.data,
                headers={**self.auth(), "Content-Type": "application/x-test"},
            )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_url"])


@pytest.fixture(scope="module", params=["plain", "tls"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp(f"download-{request.param}")
    built = Stack(workdir, tls=request.param == "tls")
    with gwharness.cleanup(built.gateway):
        built.gateway.wait_ready()
        url = built.upload()
        yield built, url


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_whole_file_and_ranges_are_the_exact_bytes(stack: tuple[Stack, str]) -> None:
    built, url = stack
    data = built.data
    with built.http() as http:
        whole = http.get(url)
        assert whole.status_code == 200
        assert whole.headers["content-length"] == str(SIZE)
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-type"] == "application/x-test"
        assert _digest(whole.content) == _digest(data)
        cases = {
            "bytes=0-0": (0, 1),
            "bytes=100-199": (100, 100),
            "bytes=5000000-": (5_000_000, SIZE - 5_000_000),
            "bytes=-10": (SIZE - 10, 10),
            f"bytes=1-{SIZE + 1000}": (1, SIZE - 1),  # end past the file: up to its end
            f"bytes=-{SIZE * 2}": (0, SIZE),  # suffix longer than the file: all of it
        }
        for header, (start, length) in cases.items():
            part = http.get(url, headers={"Range": header})
            assert part.status_code == 206, (header, part.text)
            assert part.headers["content-range"] == f"bytes {start}-{start + length - 1}/{SIZE}"
            assert part.headers["content-length"] == str(length)
            assert _digest(part.content) == _digest(data[start : start + length]), header
        # several ranges, another unit, a malformed or reversed range: the whole file
        for header in ("bytes=0-1,5-6", "items=0-1", "bytes=x-y", "bytes=9-3"):
            full = http.get(url, headers={"Range": header})
            assert full.status_code == 200, header
            assert _digest(full.content) == _digest(data), header
        past = http.get(url, headers={"Range": f"bytes={SIZE}-"})
        assert past.status_code == 416
        assert past.headers["content-range"] == f"bytes */{SIZE}"
        assert past.json()["error_type"] == "range_not_satisfiable"
        head = http.head(url, headers={"Range": "bytes=10-19"})
        assert head.status_code == 206 and head.headers["content-length"] == "10"
        assert head.content == b""
        # keep-alive after a zero-copy response: the same connection serves the next request
        again = http.get(url, headers={"Range": "bytes=-3"})
        assert again.content == data[-3:]


def test_access_checks_apply_to_every_download(stack: tuple[Stack, str]) -> None:
    built, url = stack
    path = url.removeprefix(built.rest_url)
    _, _, namespace, object_id, token, name = path.split("/")
    expires, _, signature = token.partition(".")
    bad_signature = "A" * len(signature) if signature[0] != "A" else "B" * len(signature)
    with built.http() as http:
        for target, headers in (
            (f"/files/{namespace}/{object_id}/{expires}.{bad_signature}/{name}", {}),
            (f"/files/other/{object_id}/{token}/{name}", {}),
            (f"/files/{namespace}/{object_id}/1.{signature}/{name}", {}),  # expired / altered
            (f"/files/{namespace}/{object_id}/-/{name}", built.auth(built.other_key)),
        ):
            for extra in ({}, {"Range": "bytes=0-99"}):
                refused = http.get(built.rest_url + target, headers={**headers, **extra})
                assert refused.status_code == 403, (target, refused.text)
                assert "detail" in refused.json()
                assert built.data[:100] not in refused.content
        unsigned = http.get(built.rest_url + f"/files/{namespace}/{object_id}/-/{name}")
        assert unsigned.status_code == 401
        keyed = http.get(
            built.rest_url + f"/files/{namespace}/{object_id}/-/{name}",
            headers={**built.auth(), "Range": "bytes=7-8"},
        )
        assert keyed.status_code == 206 and keyed.content == built.data[7:9]
        missing = http.get(built.rest_url + f"/files/{namespace}/{'0' * len(object_id)}/-/{name}",
                           headers=built.auth())  # fmt: skip
        assert missing.status_code in (403, 404)


def test_a_client_gone_mid_download_leaves_the_gateway_serving(stack: tuple[Stack, str]) -> None:
    built, url = stack
    path = url.removeprefix(built.rest_url)
    for _ in range(3):
        raw = socket.create_connection(("127.0.0.1", built.rest_port), timeout=30)
        conn: socket.socket = raw
        if built.tls is not None:
            context = ssl.create_default_context(cafile=str(built.tls.ca_path))
            conn = context.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert conn.recv(65536)  # the head and the start of the body, then gone
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # a reset while the gateway is still sending
    with built.http() as http:
        whole = http.get(url)
    assert whole.status_code == 200 and _digest(whole.content) == _digest(built.data)


# ---- the listener's extension, in-process ------------------------------------------------------
def test_the_sendfile_extension_is_offered_on_plain_tcp_only(tmp_path: pathlib.Path) -> None:
    """A listener built with sendfile=True hands handlers `kubefal.sendfile` on plain TCP; the
    bytes it sends are the file's slice and count against Content-Length; with TLS the
    extension is absent (handlers fall back to body messages)."""
    payload = os.urandom(6 * 1024 * 1024)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    seen: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        extension = scope.get("extensions", {}).get(zerocopy.EXTENSION)
        seen.append(extension is not None)
        start, length = 123, len(payload) - 1000
        headers = [(b"content-length", str(length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if extension is None:
            await send({"type": "http.response.body", "body": payload[start : start + length]})
            return
        descriptor = os.open(source, os.O_RDONLY)
        try:
            await extension(descriptor, start, length)
        finally:
            os.close(descriptor)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def fetch(port: int, context: ssl.SSLContext | None) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
        writer.close()
        return body

    async def scenario(tls: gwharness.Tls | None) -> bytes:
        import uvicorn

        limiter = limits.ConnectionLimiter(
            limits.ListenerLimits(
                max_header_bytes=65536,
                max_headers=100,
                header_timeout=30,
                max_connections=10,
                max_connections_per_ip=10,
            )
        )
        port = gwharness.free_port()
        ssl_options: dict[str, Any] = {}
        if tls is not None:
            ssl_options = {"ssl_certfile": str(tls.cert_path), "ssl_keyfile": str(tls.key_path)}
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=lambda *a, **k: limits.GuardedProtocol(*a, limiter=limiter, sendfile=True, **k),
            lifespan="off",
            log_level="warning",
            **ssl_options,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        try:
            context = None
            if tls is not None:
                context = ssl.create_default_context(cafile=str(tls.ca_path))
            return await fetch(port, context)
        finally:
            server.should_exit = True
            await task

    expected = payload[123 : 123 + len(payload) - 1000]
    assert asyncio.run(scenario(None)) == expected
    assert asyncio.run(scenario(gwharness.Tls(tmp_path))) == expected
    assert seen == [True, False]
