"""HTTP/1.1 for the control plane's REST routes: one connection the TLS front door handed over,
parsed by ``h11`` (a strict, sans-IO parser, never by hand), with the limits of the REST side
(request head time, body size, time between body chunks) and JSON error answers
``{"detail", "error_type"}``.

Why a module of its own: the connection layer is independent of what is served; the routes are
:mod:`kubefal_controlplane.rest`.
"""

from __future__ import annotations

import asyncio
import http
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import h11

from kubefal_controlplane import errors
from kubefal_controlplane import settings as settings_module

READ_CHUNK: Final = 64 * 1024
ERROR_TYPE: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "unavailable",
}


class HttpError(Exception):
    """End the request with ``status`` and a JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Gone(Exception):
    """The client went away or broke the protocol; nothing more can be said to it."""


class Connection:
    """One HTTP/1.1 connection: h11 state, the stream, and the time limits."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: settings_module.Settings,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = settings.rest_header_timeout
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=settings.rest_max_header_bytes
        )
        self.received = 0
        """Bytes received since the current request cycle began."""

    async def _receive(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        wait = self.timeout if deadline is None else max(0.0, deadline - loop.time())
        try:
            data = await asyncio.wait_for(self.reader.read(READ_CHUNK), wait)
        except TimeoutError:
            raise HttpError(408, "The request was not sent in time") from None
        except (ConnectionError, ssl.SSLError, OSError):
            raise Gone() from None
        self.received += len(data)
        self.h11.receive_data(data)

    async def next_event(self, *, deadline: float | None = None) -> Any:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as error:
                raise HttpError(error.error_status_hint, f"Malformed request: {error}") from None
            if event is h11.NEED_DATA:
                await self._receive(deadline)
                continue
            return event

    async def send(self, event: Any) -> None:
        try:
            data = self.h11.send(event)
        except h11.LocalProtocolError as error:
            raise Gone() from error
        if data:
            self.writer.write(data)
            try:
                # A client that stops reading would otherwise hold the connection (and a log
                # stream's slot) for as long as it likes.
                async with asyncio.timeout(self.timeout):
                    await self.writer.drain()
            except (ConnectionError, ssl.SSLError, OSError, TimeoutError):
                raise Gone() from None

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The request body, each chunk within the timeout, all within ``limit`` bytes."""
        total = 0
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise HttpError(413, f"Request body too large: the limit is {limit} bytes")
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise Gone()

    async def read_body(self, limit: int) -> bytes:
        return b"".join([chunk async for chunk in self.body_chunks(limit)])

    async def send_json(
        self, status: int, payload: Any, *, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        await self.send(
            h11.Response(
                status_code=status,
                reason=reason(status),
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            )
        )
        await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def send_error(self, error: HttpError) -> None:
        payload = {"detail": error.detail, "error_type": ERROR_TYPE.get(error.status, "error")}
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self.send_json(error.status, payload)


def reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


STATUS_OF: Final = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def from_failure(failure: errors.RpcFailure) -> HttpError:
    return HttpError(STATUS_OF.get(failure.code, 500), failure.message)
