"""What the webhook tests share: real HTTP receivers on 127.0.0.1 and a finished job that owes
a webhook.

``Receiver`` is a minimal asyncio HTTP/1.1 server answering POSTs with scripted status codes and
keeping what it received (for tests whose webhook worker runs in the test's event loop);
``webhook_server`` is a threaded one answering 200 (for tests whose gateway is another process);
``complete_hooked_job`` submits, leases and completes a job with a webhook URL on a real store,
so its delivery lands in the store's outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.message
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubefal_gateway import queueing

APP = "team/app"
LOCAL = ("127.0.0.1/32",)
"""The receivers listen on loopback, which only the operator's allow-list admits."""


@dataclasses.dataclass
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A minimal HTTP/1.1 server on 127.0.0.1 answering POSTs with scripted status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[Received] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name:
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.received.append(Received(headers=headers, body=body))
                status = self.statuses.pop(0) if self.statuses else 200
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode("latin-1"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def complete_hooked_job(
    store: queueing.QueueStore,
    url: str,
    *,
    app_id: str = APP,
    request_id: str = "job-1",
    now: float | None = None,
) -> None:
    """A job of ``app_id`` with webhook ``url``, leased and completed with a JSON result."""
    await store.submit(
        queueing.Job(
            request_id=request_id,
            app_id=app_id,
            path="/",
            method="POST",
            headers=(),
            body=b"{}",
            submitted_at=time.time(),
            webhook_url=url,
        )
    )
    job = await store.lease(app_id, holder="gw", lease_seconds=30, now=now)
    assert job is not None and job.request_id == request_id
    result = queueing.Result(
        status_code=200,
        headers=(("content-type", "application/json"),),
        body=b'{"images": [1, 2]}',
        completed_at=time.time(),
    )
    assert await store.complete(request_id, holder="gw", result=result, now=now)


OnDelivery = Callable[[email.message.Message, bytes], None]


@contextlib.contextmanager
def webhook_server(on_delivery: OnDelivery) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 handing each POST's headers and body to
    ``on_delivery`` (in the server's threads) and answering 200; yields its webhook URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            on_delivery(self.headers, body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
