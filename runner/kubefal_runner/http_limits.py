"""Limits on a request's head (request line and headers) at the runner's HTTP parser.

Why a module of its own: uvicorn's httptools protocol keeps every header a client sends, with
no limit on their size or number, so one request with a huge or endless head fills the runner's
memory. The gateway refuses such requests before they reach a runner (docs/security.md), but a
runner's port is also reached without the gateway (``kubefal run`` on 127.0.0.1, a cluster
without enforced NetworkPolicies). This protocol answers 431 with a JSON ``detail`` and closes
the connection instead; the limits are settings (`settings.DEFAULT_MAX_HEADER_BYTES`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a refused head."""


def protocol_class(*, max_header_bytes: int, max_headers: int) -> type[asyncio.Protocol] | None:
    """uvicorn's httptools protocol with the limits; None without httptools (then uvicorn's
    h11 protocol is used, limited by ``h11_max_incomplete_event_size``)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the bytes of a head while it arrives (httptools buffers a header until it
        ends) and checks the parsed head once complete."""

        def connection_made(self, transport: Any) -> None:
            self._reading_head = True
            self._head_bytes = 0
            self._refused = False
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._reading_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._reading_head and not self._refused and self._head_bytes > max_header_bytes:
                self._refuse(f"the request's headers exceed {max_header_bytes} bytes")

        def on_headers_complete(self) -> None:
            size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
            if len(self.headers) > max_headers:
                self._refuse(f"the request has more than {max_headers} header fields")
                raise _HeadRefused
            if size > max_header_bytes:
                self._refuse(f"the request's headers exceed {max_header_bytes} bytes")
                raise _HeadRefused
            self._reading_head = False
            self._head_bytes = 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._reading_head = True
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # a refused head stops the parser with an error: answered
                super().send_400_response(msg)

        def _refuse(self, detail: str) -> None:
            self._refused = True
            body = json.dumps({"detail": detail}).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
            self.transport.close()

    return LimitedHttpToolsProtocol
