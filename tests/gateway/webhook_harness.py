"""What the webhook tests share: a real HTTP receiver on 127.0.0.1 and a finished job that owes
a webhook.

``Receiver`` is a minimal HTTP/1.1 server answering POSTs with scripted status codes and keeping
what it received; ``complete_hooked_job`` submits, leases and completes a job with a webhook URL
on a real store, so its delivery lands in the store's outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

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
